"""When may a reply start playing? The start rule, pure, beside ``PacingClock``.

Hamsa streams a reply in a few irregular binary frames. Playing from the first byte is fastest,
but when the next frame comes later than the audio on hand lasts, the caller hears the reply stop
mid-word. Collecting the whole reply first (the seed FAQ's pattern) never gaps but makes the caller
wait for all of it. The rule here sits between the two: **a reply starts as soon as the audio on
hand covers the predicted wait for the rest** (``docs/start-policy.md``).

The prediction (``_Plan``)
--------------------------
Playing position ``P`` of the audio (seconds into what is held) at playout start ``T`` is heard at
``T + P``; a frame that arrives at ``t_k`` carrying the audio from position ``P_k`` is in time iff
``T >= t_k - P_k``. So the earliest gap-free start is ``max_k(t_k - P_k)`` over the frames still
to come, plus ``margin`` for jitter. Frames to come are predicted from:

- this reply's arrivals so far (when the last one came, how much audio it brought, its own pace
  once two frames have come), and
- ``PaceEstimate``: the per-process picture of Hamsa's delivery, learned by ``HamsaPace`` from
  recent clean replies with a prior before any: seconds of audio per second of wall time (a low
  quantile: a slow Hamsa is the dangerous case), the spacing of its frames (a high quantile), the
  first-byte latency, the first frame's size and the audio per character (which predicts how
  much of the reply is still to come).

Later sentences of the same utterance are predicted too (each requested when the previous reply
ends, as ``Synthesizer`` does): holding the first sentence a little longer can spare a pause
before the second.

The decision (``StartPolicy``)
------------------------------
::

    IDLE --first audio of a segment--> HOLDING --covered / cap / reply ended--> PLAYING
                                          ^                                       |
                                          +------playout ran dry, more to come----+

- ``HOLDING``: audio is kept back. Released when the playout start it would get (``now``, or the
  end of what is already playing) reaches the target; at ``max_hold`` after the hold began
  whatever the prediction (a stalled Hamsa never means silence forever); at the reply's ``end``.
- The target: gap-free for the rest of the **utterance** if that fits within ``max_hold``;
  otherwise at least gap-free for the rest of this **sentence**, holding up to ``max_hold`` to
  shorten the pauses before later sentences. When Hamsa is slower than real time a pause is
  unavoidable; this puts it at a sentence boundary rather than mid-word.
- ``PLAYING``: audio goes straight through. If the playout has run dry while more audio is due
  (the prediction was wrong), the rest of the sentence is held again, once, by the same rule: one
  pause instead of a stutter at every frame.

Every method takes ``now`` and returns a ``Decision``; the caller must act on it: on ``release``
push everything held and stream what follows; otherwise keep holding and call ``due(now)`` at
``Decision.wake`` (if not ``None``) unless an arrival comes first. Cost: O(sentences) arithmetic
per arrival (a handful of Hamsa frames per sentence), nothing per 20 ms frame.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "PRIOR",
    "Decision",
    "HamsaPace",
    "HoldRecord",
    "PaceEstimate",
    "ReplyRecord",
    "StartPolicy",
    "StartState",
]


@dataclass(frozen=True, slots=True)
class PaceEstimate:
    """How Hamsa delivers a reply, conservatively (see ``HamsaPace``)."""

    pace: float
    """Seconds of audio per second of wall time after the first frame (low quantile)."""
    spacing: float
    """Seconds between two later frames of a reply (high quantile)."""
    first_spacing: float
    """Seconds from a reply's first frame to its second (high quantile): often the longest wait,
    a small first frame being followed by a large one."""
    first_byte: float
    """Seconds from a request to its first audio (high quantile)."""
    first_chunk: float
    """Seconds of audio in a reply's first frame (low quantile)."""
    ms_per_char: float
    """Milliseconds of audio per character of text (high quantile)."""


PRIOR = PaceEstimate(
    pace=1.0, spacing=0.6, first_spacing=0.8, first_byte=1.2, first_chunk=0.2, ms_per_char=90.0
)
"""Before any reply was seen: Hamsa at real time, a frame every 0.6 s, 1.2 s to the first byte,
90 ms of speech per character (third-party observations put real replies at 0.8–1.8× real time,
4–7 frames, 0.3–1.7 s to the first byte and 80–100 ms per character; ``docs/start-policy.md``).
A fast Hamsa is recognised from its first replies."""


@dataclass(slots=True)
class ReplyRecord:
    """One complete, clean reply as it arrived: what ``HamsaPace`` learns from."""

    chars: int
    requested_at: float
    arrivals: list[tuple[float, float]] = field(default_factory=list)
    """(when, seconds of audio) per chunk of playable audio, in order."""


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


class HamsaPace:
    """A per-process estimate of Hamsa's delivery, learned from the last ``window`` clean replies.

    Each figure is a quantile over the window, blended with ``PRIOR`` while few replies were
    seen (the prior weighs as ``prior_weight`` replies). Lives in app state: one per process,
    shared by its calls; touched once per reply, never per frame.
    """

    def __init__(
        self, *, prior: PaceEstimate = PRIOR, window: int = 64, prior_weight: float = 1.0
    ) -> None:
        self.prior = prior
        self._prior_weight = prior_weight
        self._paces: deque[float] = deque(maxlen=window)
        self._spacings: deque[float] = deque(maxlen=window * 4)
        self._first_spacings: deque[float] = deque(maxlen=window)
        self._first_bytes: deque[float] = deque(maxlen=window)
        self._first_chunks: deque[float] = deque(maxlen=window)
        self._ms_per_char: deque[float] = deque(maxlen=window)
        self.replies = 0
        self._cached: PaceEstimate | None = prior
        self._typical: PaceEstimate | None = prior

    def observe(self, reply: ReplyRecord) -> None:
        """Learn from one complete reply that was neither truncated nor retried."""
        arrivals = reply.arrivals
        if not arrivals:
            return
        self.replies += 1
        first_at, first_audio = arrivals[0]
        total = sum(seconds for _, seconds in arrivals)
        self._first_bytes.append(max(0.0, first_at - reply.requested_at))
        self._first_chunks.append(first_audio)
        if reply.chars > 0:
            self._ms_per_char.append(total * 1000.0 / reply.chars)
        last_at = arrivals[-1][0]
        if len(arrivals) >= 2 and last_at > first_at:
            self._paces.append((total - first_audio) / (last_at - first_at))
            self._first_spacings.append(arrivals[1][0] - first_at)
            for (before, _), (after, _) in zip(arrivals[1:], arrivals[2:], strict=False):
                self._spacings.append(after - before)
        self._cached = self._typical = None

    def estimate(self) -> PaceEstimate:
        """The conservative picture, for the reply being played (cached until ``observe``)."""
        if self._cached is None:
            self._cached = self._quantiles(
                pace=0.2, spacing=0.9, first_spacing=0.98, first_byte=0.8, first_chunk=0.2
            )
        return self._cached

    def typical(self) -> PaceEstimate:
        """The median picture, for sentences not yet requested: a sum of worst cases would hold
        every sentence for the worst of all of them (their own start is held when they come).
        The prior counts too: before any reply it holds a many-sentence utterance back a little
        even when Hamsa turns out fast (~0.7 s on a process's first call), which costs less than
        a slow Hamsa's first calls pausing before every later sentence (BENCHMARKS.md)."""
        if self._typical is None:
            self._typical = self._quantiles(
                pace=0.35, spacing=0.65, first_spacing=0.65, first_byte=0.65, first_chunk=0.35
            )
        return self._typical

    def _quantiles(
        self,
        *,
        pace: float,
        spacing: float,
        first_spacing: float,
        first_byte: float,
        first_chunk: float,
    ) -> PaceEstimate:
        prior = self.prior
        weight = self._prior_weight

        def blend(values: deque[float], q: float, fallback: float) -> float:
            if not values:
                return fallback
            n = len(values)
            return (fallback * weight + _quantile(values, q) * n) / (weight + n)

        return PaceEstimate(
            pace=blend(self._paces, pace, prior.pace),
            spacing=blend(self._spacings, spacing, prior.spacing),
            first_spacing=blend(self._first_spacings, first_spacing, prior.first_spacing),
            first_byte=blend(self._first_bytes, first_byte, prior.first_byte),
            first_chunk=blend(self._first_chunks, first_chunk, prior.first_chunk),
            ms_per_char=blend(self._ms_per_char, 0.8, prior.ms_per_char),
        )


class StartState(enum.Enum):
    IDLE = "idle"
    """No sentence is arriving (between sentences, or before the first)."""
    HOLDING = "holding"
    """Audio of the current sentence is kept back."""
    PLAYING = "playing"
    """Audio of the current sentence goes straight to playback."""


@dataclass(frozen=True, slots=True)
class Decision:
    release: bool
    """Push everything held now; what arrives next streams through (until a rebuffer)."""
    wake: float | None = None
    """While holding: call ``due`` at this time unless an arrival comes first."""


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """One hold, decided: what the timeline and the metrics report."""

    sentence: int
    began: float
    released: float
    reason: str
    """``covered`` (the rule), ``cap`` (``max_hold`` reached), ``ended`` (the whole reply came
    first), ``immediate`` (covered at the first byte: no hold)."""
    rebuffer: bool
    predicted: float
    """The hold the prediction asked for at release time, in seconds (before the cap)."""

    @property
    def held(self) -> float:
        return self.released - self.began


_STREAM = Decision(release=True)


def _unstarted(
    est: PaceEstimate,
    requested_at: float,
    duration: float,
    position: float,
    now: float,
    overdue: float,
) -> tuple[float, float]:
    """A sentence requested at ``requested_at`` whose audio will play from ``position``:
    the largest ``t_k - P_k`` of its predicted frames, and when its last frame comes."""
    first_at = requested_at + est.first_byte
    if first_at < now:  # late: expect it shortly
        first_at = now + overdue * est.first_spacing
    worst = first_at - position
    first_chunk = max(est.first_chunk, 1e-3)
    chunk = max(est.pace * est.spacing, 1e-3)
    rest = max(0.0, duration - first_chunk)
    frames = math.ceil(rest / chunk - 1e-9) if rest > 0 else 0
    if not frames:
        return worst, first_at
    second_at = first_at + est.first_spacing
    extra = (frames - 1) * (est.spacing - chunk) if est.spacing > chunk else 0.0
    worst = max(worst, second_at - position - first_chunk + extra)
    return worst, second_at + (frames - 1) * est.spacing


class StartPolicy:
    """The start rule for one utterance (see the module docstring)."""

    def __init__(
        self,
        estimate: PaceEstimate,
        *,
        typical: PaceEstimate | None = None,
        max_hold: float,
        margin: float = 0.2,
        overdue: float = 0.25,
    ) -> None:
        if max_hold < 0 or margin < 0:
            raise ValueError("max_hold and margin must be >= 0")
        self.estimate = estimate
        self.typical = typical
        """How sentences not yet requested will be delivered; None: only this one counts."""
        self.max_hold = max_hold
        self.margin = margin
        self.overdue = overdue
        """An overdue frame is expected ``overdue * spacing`` from now."""
        self.state = StartState.IDLE
        self.holds: list[HoldRecord] = []
        self._sentence = 0
        self._chars = 0
        self._later: tuple[int, ...] = ()
        self._arrivals: list[tuple[float, float]] = []
        self._received = 0.0
        """Audio of the current sentence received so far (all tries)."""
        self._held = 0.0
        """Audio received since the current hold began (it may span sentences)."""
        self._hold_began = 0.0
        self._hold_sentence = 0
        self._rebuffered = False
        self._ended = False
        self._requested_at = 0.0

    # --- inputs --------------------------------------------------------------------------------

    def begin_sentence(self, chars: int, later: Sequence[int], now: float) -> None:
        """A new sentence (one Hamsa request) of ``chars`` characters; ``later`` are the
        character counts of the utterance's sentences after it. A hold still running (the
        previous sentence ended before its target) carries on into this one."""
        self._sentence += 1
        self._requested_at = now
        if self.state is not StartState.HOLDING:
            self.state = StartState.IDLE
        self._chars = chars
        self._later = tuple(later)
        self._arrivals = []
        self._received = 0.0
        self._rebuffered = False
        self._ended = False

    def restart_reply(self, now: float) -> None:
        """The sentence's request is being retried: what arrives next is a new reply (its audio
        continues where the failed one stopped)."""
        self._requested_at = now
        self._arrivals = []
        self._ended = False

    def arrived(self, now: float, seconds: float, playout_end: float) -> Decision:
        """Playable audio of ``seconds`` arrived at ``now``; the audio already handed to playback
        plays until ``playout_end``."""
        self._arrivals.append((now, seconds))
        self._received += seconds
        if self.state is StartState.IDLE:
            self._hold(now, seconds)
            return self._decide(now, playout_end)
        if self.state is StartState.PLAYING:
            if playout_end < now and not self._rebuffered and self._more_expected():
                # Ran dry mid-sentence: hold the rest once, by the same rule.
                self._rebuffered = True
                self._hold(now, seconds)
                return self._decide(now, playout_end)
            return _STREAM
        self._held += seconds
        return self._decide(now, playout_end)

    def due(self, now: float, playout_end: float) -> Decision:
        """The wake-up time of the last decision came without an arrival."""
        if self.state is not StartState.HOLDING:
            return _STREAM
        return self._decide(now, playout_end)

    def ended(self, now: float, playout_end: float) -> Decision:
        """The sentence's reply is complete. What is held is released unless the utterance's
        later sentences still need it held (then wait as the decision says)."""
        self._ended = True
        if self.state is not StartState.HOLDING:
            self.state = StartState.IDLE
            return _STREAM
        decision = self._decide(now, playout_end, ended=True)
        if decision.release:
            self.state = StartState.IDLE
        return decision

    def failed(self, now: float) -> Decision:
        """The reply failed after some of its audio arrived: what is held was valid and is
        released (the retry resumes after it). Before any audio of the sentence nothing changes:
        the retry's audio is held by the rule like a first reply's."""
        if self.state is StartState.HOLDING:
            self._release(now, "ended", self._needed(now))
        return _STREAM

    def finish(self, now: float) -> Decision:
        """The utterance is over (or abandoned): release whatever is still held."""
        if self.state is StartState.HOLDING:
            self._release(now, "ended", (now, now))
        self.state = StartState.IDLE
        return _STREAM

    # --- the rule ------------------------------------------------------------------------------

    def _more_expected(self) -> bool:
        """More of the current sentence is still to come."""
        return not self._ended and self._remaining() > 0

    def _expected_total(self) -> float:
        return max(self._received, self._chars * self.estimate.ms_per_char / 1000.0)

    def _remaining(self) -> float:
        return max(0.0, self._expected_total() - self._received)

    def _pace_and_spacing(self) -> tuple[float, float]:
        """This reply's pace and spacing so far, blended with the process estimate (which weighs
        as one interval); one interval alone never raises the pace, nor shortens the spacing."""
        est = self.estimate
        arrivals = self._arrivals
        pace, spacing = est.pace, est.spacing
        if len(arrivals) >= 2:
            first_at = arrivals[0][0]
            last_at = arrivals[-1][0]
            intervals = len(arrivals) - 1
            if last_at > first_at:
                # frames read back to back (a stall, a busy loop) prove no pace: the elapsed
                # time counts as at least half the estimated spacing per interval
                elapsed = max(last_at - first_at, intervals * est.spacing / 2)
                observed = sum(s for _, s in arrivals[1:]) / elapsed
                pace = (est.pace + observed * intervals) / (1 + intervals)
                if intervals < 2:
                    pace = min(pace, est.pace)  # one quick interval proves nothing
            longest = max(b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False))
            spacing = max(spacing, longest)
        return max(pace, 1e-3), max(spacing, 1e-3)

    def _needed(self, now: float) -> tuple[float, float]:
        """(sentence, utterance): the earliest gap-free playout start of what is held, in
        absolute time, for the rest of this sentence and for the rest of the utterance."""
        est = self.estimate
        held = self._held  # the position (in what is held) of the next frame's audio
        sentence = -math.inf
        reply_end = now
        position = held
        if self._ended:
            pass
        elif not self._arrivals:
            # requested, nothing arrived yet: the whole sentence is still to come
            duration = self._chars * est.ms_per_char / 1000.0
            sentence, reply_end = _unstarted(
                est, self._requested_at, duration, position, now, self.overdue
            )
            position += duration
        elif (remaining := self._remaining()) > 0:
            pace, spacing = self._pace_and_spacing()
            chunk = pace * spacing
            last_at = self._arrivals[-1][0]
            wait = est.first_spacing if len(self._arrivals) == 1 else spacing
            next_at = last_at + wait
            if next_at < now:  # overdue: expect it shortly
                next_at = now + self.overdue * wait
            frames = math.ceil(remaining / chunk - 1e-9)
            # t_k - P_k = next_at - held + (k-1)(spacing - chunk): largest at k=1 or k=frames
            worst = max(0, frames - 1) * (spacing - chunk) if spacing > chunk else 0.0
            sentence = next_at - held + worst
            reply_end = next_at + (frames - 1) * spacing
            position += remaining
        utterance = sentence
        typ = self.typical
        if typ is not None:
            for chars in self._later:
                duration = chars * est.ms_per_char / 1000.0
                worst, reply_end = _unstarted(typ, reply_end, duration, position, now, self.overdue)
                utterance = max(utterance, worst)
                position += duration
        return sentence + self.margin, utterance + self.margin

    def _hold(self, now: float, seconds: float) -> None:
        self.state = StartState.HOLDING
        self._hold_began = now
        self._hold_sentence = self._sentence
        self._held = seconds

    def _decide(self, now: float, playout_end: float, *, ended: bool = False) -> Decision:
        sentence, utterance = self._needed(now)
        cap = self._hold_began + self.max_hold
        target = min(cap, max(sentence, min(utterance, cap)))
        start = max(now, playout_end)
        if start >= target:
            if self.max_hold == 0:
                reason = "immediate"  # the policy is off: nothing is ever held
            elif target >= cap and max(sentence, utterance) > cap:
                reason = "cap"
            elif ended:
                reason = "ended"
            elif now == self._hold_began:
                reason = "immediate"
            else:
                reason = "covered"
            self._release(now, reason, (sentence, utterance))
            return _STREAM
        return Decision(release=False, wake=target)

    def _release(self, now: float, reason: str, needed: tuple[float, float]) -> None:
        sentence, utterance = needed
        cap = self._hold_began + self.max_hold
        predicted = max(sentence, min(utterance, cap)) - self._hold_began
        self._held = 0.0
        self.holds.append(
            HoldRecord(
                sentence=self._hold_sentence,
                began=self._hold_began,
                released=now,
                reason=reason,
                rebuffer=self._rebuffered,
                predicted=max(0.0, predicted),
            )
        )
        self.state = StartState.PLAYING
