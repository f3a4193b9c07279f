"""Speak text into a call: Hamsa replies → decoded μ-law → 20 ms frames → paced playback.

An *utterance* is one piece of text the call wants heard, ending in one ``mark``. Long text is
split at sentence boundaries into Hamsa requests (*segments*) of at most 2000 characters,
pipelined on the call's one socket: the next request goes out when the previous reply has ended
and less than ``lookahead`` seconds of audio are waiting, so sentence 1 plays while sentence 2 is
synthesised and memory stays bounded. Audio streams from the first usable bytes; only the last
frame of the utterance is padded (with 0xFF).

Failures, per segment:

- A reply held by the ``TruncationGuard`` that ends too short (the 640-byte failure) is never
  heard; it is retried on a fresh socket after 1 s, 2 s, 4 s (``HAMSA_RETRY_DELAYS``).
- A reply that fails *after* some of it was played (socket closed mid-reply, no ``end``, too short
  for its text at ``end``) is retried the same way, and playback **resumes** where it stopped: the
  retry's first bytes, as many as were already played, are skipped. The caller hears the sentence
  once, whole, with a pause where the failure was — never twice, never cut off mid-word.
- A socket found closed before any audio (dropped between utterances) is replaced at once.
- Retries stop after ``HAMSA_RETRY_DELAYS`` is exhausted or ``HAMSA_SEGMENT_BUDGET`` seconds; the
  segment is then skipped with a logged reason, and two skipped segments in a row end the
  utterance (Hamsa is failing systematically: don't keep the caller in silence for the rest).
- A bad key or no balance (4001/4003) is final: what was already queued still plays to its end,
  then the error goes up to the call.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from bridge.audio.decoder import ReplyDecoder
from bridge.audio.formats import MULAW_8K
from bridge.audio.framer import Framer
from bridge.calls.hamsa_session import HamsaSession
from bridge.calls.playback import Playback
from bridge.calls.prompt_cache import PromptCache
from bridge.calls.start_policy import (
    Decision,
    HamsaPace,
    HoldRecord,
    ReplyRecord,
    StartPolicy,
)
from bridge.calls.truncation import TruncationGuard
from bridge.errors import (
    AudioFormatError,
    HamsaError,
    HamsaReplyError,
    HamsaTimeout,
    TruncatedReply,
    UndecodableReply,
)
from bridge.metrics import Metrics
from bridge.sentences import split_text
from bridge.settings import Settings
from bridge.voice import Voice

log = structlog.get_logger("bridge.speech")

MARK_MARGIN = 3.0
"""Seconds past the audio still buffered to wait for a mark echo before giving up on it."""
_SPOKEN_SECONDS_PER_CHAR = 0.08
"""Arabic speech runs about 80 ms a character: a reply may stream for its segment budget plus
this much per character of its text (slow synthesis of a long sentence), and no longer."""


def cache_refusal(text: str, audio_bytes: int, settings: Settings) -> str | None:
    """Why a clean reply's audio is too short to be cached as a whole prompt, or None if it may
    be (8 kHz μ-law: 8 bytes per ms). The reason names the setting and the numbers.

    Two rules decide whether a reply is "too short to be whole", on purpose:

    - ``HAMSA_TRUNCATION_MS_PER_CHAR`` (12, every character counted; ``TruncationGuard``) is the
      live path's: a reply under it is never played and is retried. It is loose so that a fast
      voice is never silenced; its target is the 640-byte failure (a fraction of the audio).
    - ``BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR`` (40, spaces not counted; real speech has 80–100)
      is the cache's: a cached prompt is replayed to every caller until the cache is cleared, so
      a reply cut short that merely passed the guard costs far more there. A voice faster than
      it is played but never cached (lower the setting for such a voice, not to zero).
    """
    chars = len(text.replace(" ", ""))
    minimum = settings.bridge_prompt_cache_min_ms_per_char
    audio_ms = audio_bytes / 8
    if audio_ms >= chars * minimum:
        return None
    return (
        f"reply {audio_ms / 1000:.1f} s for {chars} characters "
        f"({audio_ms / chars:.0f} ms/char, spaces not counted) is shorter than "
        f"BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR={minimum:g} ms/char allows; "
        "possibly truncated, not cached"
    )


def cache_worthy(text: str, audio_bytes: int, settings: Settings) -> bool:
    """Long enough to be cached as a whole prompt (see :func:`cache_refusal`)."""
    return cache_refusal(text, audio_bytes, settings) is None


class SpeechOutcome(enum.Enum):
    PLAYED = "played"
    """Every part of the text was played to its end (the mark came back)."""
    INTERRUPTED = "interrupted"
    """Barge-in: cleared before its end."""
    PARTIAL = "partial"
    """Played to its end, but a part could not be synthesised and was skipped."""


@dataclass(slots=True)
class SpeechStats:
    requests: int = 0
    truncated: int = 0
    retries: int = 0
    resumed: int = 0
    skipped_segments: int = 0
    marks_lost: int = 0
    first_audio_latency: float | None = None
    """Seconds from a ``say`` call to the first frame of it being queued."""


@dataclass(slots=True)
class _Progress:
    """How far one segment got: bytes of its 8 kHz μ-law already handed to playback."""

    played: int = 0


Sink = Callable[[bytes], None]
"""Where synthesised 8 kHz μ-law goes, in order, as it becomes playable."""


class ReplyObserver(Protocol):
    """What a ``Synthesizer`` tells about the replies behind the audio it sinks (the start
    policy's inputs besides the audio itself)."""

    def begin_sentence(self, chars: int, later: Sequence[int]) -> None:
        """A sentence of ``chars`` characters is requested; ``later`` are the utterance's
        sentences after it."""

    def restart_reply(self) -> None:
        """The sentence is requested again (a retry); its audio continues where it stopped."""

    def ended(self) -> None:
        """The sentence's audio is complete (or it was skipped): nothing more will come."""

    def failed(self) -> None:
        """The reply failed after some of its audio was sunk (a retry may follow)."""


class Synthesizer:
    """Text → 8 kHz μ-law through the call's Hamsa session, with every retry rule above."""

    def __init__(
        self,
        settings: Settings,
        hamsa: HamsaSession,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics,
        pace: HamsaPace | None = None,
    ) -> None:
        self._settings = settings
        self._hamsa = hamsa
        self._clock = clock
        self._metrics = metrics
        self.pace = pace if pace is not None else HamsaPace()
        """Learns Hamsa's delivery from this synthesizer's clean replies (per process in the
        app: ``BridgeState.hamsa_pace``)."""
        self.stats = SpeechStats()
        self.first_byte_at: float | None = None
        """When the current reply's first audio bytes arrived (the bridge-added latency's start)."""

    async def text(
        self,
        text: str,
        voice: Voice,
        sink: Sink,
        *,
        room: Callable[[], Awaitable[None]] | None = None,
        observer: ReplyObserver | None = None,
    ) -> bool:
        """Synthesise ``text`` segment by segment into ``sink``; False if a part was skipped.

        ``room`` is awaited before each request (playback's lookahead bound); ``observer`` hears
        about each sentence's request, retries and end.
        """
        settings = self._settings
        started = self._clock()
        complete = True
        segments = split_text(
            text,
            max_chars=settings.bridge_max_text_chars,
            min_chars=settings.bridge_min_sentence_chars,
            language=voice.language,
        )
        failed_in_a_row = 0
        lengths = [len(segment) for segment in segments]
        for index, segment in enumerate(segments):
            if room is not None:
                await room()
            if observer is not None:
                observer.begin_sentence(lengths[index], lengths[index + 1 :])
            ok = await self._segment(segment, voice, sink, started, observer)
            if observer is not None:
                observer.ended()
            complete = complete and ok
            failed_in_a_row = 0 if ok else failed_in_a_row + 1
            if failed_in_a_row >= 2:
                log.error("utterance_abandoned", skipped_segments=len(segments) - index - 1)
                return False
        return complete

    async def _segment(
        self,
        text: str,
        voice: Voice,
        sink: Sink,
        started: float,
        observer: ReplyObserver | None = None,
    ) -> bool:
        """Play one request's reply, retrying failures; False if it had to be skipped."""
        settings = self._settings
        delays = settings.hamsa_retry_delays
        deadline = self._clock() + settings.hamsa_segment_budget
        progress = _Progress()
        immediate_retry_used = False
        attempt = 0
        while True:
            self.stats.requests += 1
            resumed_from = progress.played
            if observer is not None and (attempt or immediate_retry_used):
                observer.restart_reply()
            try:
                # a reply may stream for the budget plus its text's length spoken at real time
                reply_deadline = deadline + len(text) * _SPOKEN_SECONDS_PER_CHAR
                record = await self._play_reply(
                    text, voice, sink, started, progress, reply_deadline
                )
                if not (attempt or immediate_retry_used):
                    self.pace.observe(record)  # a clean reply: Hamsa's delivery as it is
                if resumed_from:
                    self.stats.resumed += 1
                    log.info("hamsa_reply_resumed", skipped_bytes=resumed_from)
                return True
            except TruncatedReply as exc:
                self.stats.truncated += 1
                self._metrics.hamsa_truncated.inc()
                self._metrics.hamsa_error(exc.kind)
                log.warning(
                    "hamsa_reply_truncated",
                    audio_ms=round(exc.audio_ms, 1),
                    threshold_ms=round(exc.threshold_ms, 1),
                    rule="HAMSA_TRUNCATION_MS_PER_CHAR, HAMSA_TRUNCATION_MIN_MS",
                    played_bytes=progress.played,
                    attempt=attempt + 1,
                    chars=len(text),
                )
            except HamsaError as exc:
                # The one place a call's Hamsa failures are counted: each reaches here once.
                self._metrics.hamsa_error(exc.kind)
                if observer is not None and progress.played > resumed_from:
                    observer.failed()  # some of this reply's audio was handed over
                if not exc.retryable:
                    raise
                log.warning(
                    "hamsa_reply_failed",
                    error=str(exc),
                    played_bytes=progress.played,
                    attempt=attempt + 1,
                )
                no_audio = isinstance(exc, HamsaReplyError) and not exc.audio_received
                if no_audio and not immediate_retry_used:
                    # The socket was found closed (dropped between utterances): resend now.
                    immediate_retry_used = True
                    self.stats.retries += 1
                    self._metrics.hamsa_retries.inc()
                    await self._hamsa.reset()
                    continue
            if attempt >= len(delays) or self._clock() + delays[attempt] > deadline:
                self.stats.skipped_segments += 1
                log.error(
                    "hamsa_gave_up",
                    attempts=attempt + 1,
                    chars=len(text),
                    played_bytes=progress.played,
                    reason="no complete reply within the retry limit",
                )
                return False
            await self._hamsa.reset()
            await asyncio.sleep(delays[attempt])
            attempt += 1
            self.stats.retries += 1
            self._metrics.hamsa_retries.inc()

    async def _play_reply(
        self,
        text: str,
        voice: Voice,
        sink: Sink,
        started: float,
        progress: _Progress,
        deadline: float,
    ) -> ReplyRecord:
        """One request: stream its audio into the framer, skipping what an earlier try played;
        returns how the reply arrived (for ``HamsaPace``).

        A reply still streaming at ``deadline`` (``HAMSA_SEGMENT_BUDGET`` plus the text's length
        spoken at real time) is abandoned: Hamsa never ending a reply must not hold the call
        forever."""
        settings = self._settings
        decoder = ReplyDecoder(MULAW_8K)
        guard = TruncationGuard(
            len(text),
            ms_per_char=settings.hamsa_truncation_ms_per_char,
            min_ms=settings.hamsa_truncation_min_ms,
            hold_ms=settings.hamsa_truncation_hold_ms,
        )
        skip = progress.played
        metrics = self._metrics
        clock = self._clock
        self.first_byte_at = None

        def emit(audio: bytes) -> None:
            nonlocal skip
            if skip:
                if len(audio) <= skip:
                    skip -= len(audio)
                    return
                audio, skip = audio[skip:], 0
            if self.stats.first_audio_latency is None:
                self.stats.first_audio_latency = self._clock() - started
            progress.played += len(audio)
            sink(audio)

        budget = settings.hamsa_segment_budget
        record = ReplyRecord(chars=len(text), requested_at=clock())
        arrivals = record.arrivals
        try:
            async with asyncio.timeout(max(0.0, deadline - clock())):
                async with self._hamsa.reply(text, voice) as reply:
                    sent_at = record.requested_at = clock()
                    async for chunk in reply:
                        now = clock()
                        if self.first_byte_at is None:
                            self.first_byte_at = now
                            metrics.hamsa_first_byte.observe(now - sent_at)
                        decoded = decoder.feed(chunk)
                        if decoded:
                            arrivals.append((now, len(decoded) / MULAW_8K.bytes_per_second))
                        audio = guard.feed(decoded, decoder.audio_ms)
                        if audio:
                            emit(audio)
                    tail = decoder.finish()
                    if tail:
                        arrivals.append((clock(), len(tail) / MULAW_8K.bytes_per_second))
                    audio = guard.finish(tail, decoder.audio_ms)
                    if audio:
                        emit(audio)
            return record
        except TimeoutError:
            raise HamsaTimeout(
                f"Hamsa reply not ended within HAMSA_SEGMENT_BUDGET ({budget:g} s) plus the "
                "text's length spoken at real time"
            ) from None
        except AudioFormatError as exc:
            raise UndecodableReply(
                f"Hamsa sent audio the bridge cannot decode: {exc.message}",
                audio_received=progress.played > 0,
            ) from None


class Speaker:
    """Turns text into audio in the call, one utterance at a time.

    Static prompts (``cacheable=True``) are played from the ``PromptCache`` when it has them —
    no Hamsa request, first frame at once — and stored there after a complete synthesis.
    """

    def __init__(
        self,
        settings: Settings,
        hamsa: HamsaSession,
        playback: Playback,
        *,
        cache: PromptCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics,
        pace: HamsaPace | None = None,
    ) -> None:
        self._settings = settings
        self._playback = playback
        self._cache = cache
        self._clock = clock
        self._metrics = metrics
        self._synth = Synthesizer(settings, hamsa, clock=clock, metrics=metrics, pace=pace)
        self._ids = itertools.count(1)
        self._producer: asyncio.Task[bool] | None = None
        self._gate: StartGate | None = None
        self._interrupts = 0
        self.cache_hits = 0
        self.holds: list[HoldRecord] = []
        """Every start-policy decision of this call, in order (the timeline's ``start:`` lines)."""

    def _start_policy(self) -> StartPolicy:
        settings = self._settings
        pace = self._synth.pace
        return StartPolicy(
            pace.estimate(),
            typical=pace.typical(),
            max_hold=settings.bridge_start_hold_max_ms / 1000,
            margin=settings.bridge_start_margin_ms / 1000,
        )

    @property
    def stats(self) -> SpeechStats:
        return self._synth.stats

    async def say(
        self,
        text: str,
        voice: Voice | None = None,
        *,
        label: str = "utt",
        cacheable: bool = False,
    ) -> SpeechOutcome:
        """Speak ``text`` and wait until it was played (its mark echoed) or interrupted.

        The mark is named ``{label}:{n}`` so a listener can tell which prompt was heard.
        """
        voice = voice or self._settings.voice
        name = f"{label}:{next(self._ids)}"
        interrupts = self._interrupts
        framer = Framer()
        producer = asyncio.create_task(self._produce(text, voice, framer, cacheable))
        self._producer = producer
        try:
            complete = await producer
        except asyncio.CancelledError:
            if producer.cancelled() and not _current_task_cancelling():
                return SpeechOutcome.INTERRUPTED
            raise
        except HamsaError:
            # Final (bad key, no balance): let what is already queued finish, then report it.
            await self._finish(name, framer)
            raise
        finally:
            self._producer = None
        if self._interrupts != interrupts:
            return SpeechOutcome.INTERRUPTED
        played = await self._finish(name, framer)
        if not played or self._interrupts != interrupts:
            return SpeechOutcome.INTERRUPTED
        return SpeechOutcome.PLAYED if complete else SpeechOutcome.PARTIAL

    def interrupt(self) -> None:
        """Barge-in: stop synthesis of the current utterance (its reply drains in the background),
        drop its queued audio and ``clear`` what Twilio buffered."""
        self._interrupts += 1
        if self._gate is not None:
            self._gate.close()  # held audio is stale now: never pushed after the clear
        if self._producer is not None:
            self._producer.cancel()
        self._playback.interrupt()

    async def _finish(self, name: str, framer: Framer) -> bool:
        """Pad and queue the utterance's last frame and its mark; wait for the echo (bounded)."""
        tail = framer.flush()
        if tail is not None:
            self._playback.push_frames((tail,))
        mark = self._playback.push_mark(name)
        try:
            async with asyncio.timeout(self._playback.buffered() + MARK_MARGIN):
                return await mark
        except TimeoutError:
            self.stats.marks_lost += 1
            self._metrics.marks_lost.inc()
            log.warning("mark_lost", utterance=name, waited=self._playback.buffered() + MARK_MARGIN)
            return True

    async def _produce(self, text: str, voice: Voice, framer: Framer, cacheable: bool) -> bool:
        playback = self._playback
        cache = self._cache if cacheable else None
        if cache is not None:
            audio = cache.get(text, voice)
            if audio is not None:
                self.cache_hits += 1
                self._metrics.prompt_cache.labels(result="hit").inc()
                playback.push_frames((framer.push_whole(audio),))
                return True
            self._metrics.prompt_cache.labels(result="miss").inc()
        captured = bytearray() if cache is not None else None
        gate = self._gate = StartGate(
            self._start_policy(), playback, framer, clock=self._clock, metrics=self._metrics
        )

        def sink(audio: bytes) -> None:
            if captured is not None:
                captured.extend(audio)
            gate.audio(audio)

        lookahead = self._settings.bridge_lookahead_seconds
        stats = self._synth.stats
        troubles = (stats.truncated, stats.retries, stats.resumed)
        try:
            complete = await self._synth.text(
                text,
                voice,
                sink,
                room=lambda: playback.wait_for_room(lookahead),
                observer=gate,
            )
            gate.finish()
        except HamsaError:
            gate.finish()  # a final error: what already arrived is valid and plays first
            raise
        finally:
            gate.close()
            self.holds.extend(gate.policy.holds)
        clean = troubles == (stats.truncated, stats.retries, stats.resumed)
        if cache is not None and captured is not None and complete and clean:
            refusal = cache_refusal(text, len(captured), self._settings)
            if refusal is None:
                cache.put(text, voice, bytes(captured))
            else:
                log.warning(
                    "prompt_not_cached_short",
                    reason=refusal,
                    chars=len(text),
                    audio_bytes=len(captured),
                )
        return complete


class StartGate:
    """The I/O side of ``StartPolicy`` for one utterance: the ``Synthesizer``'s sink and
    ``ReplyObserver``. Keeps audio back while the policy holds, arms one timer for its wake-up,
    and pushes 160-byte frames to playback when it lets go. ``close()`` (barge-in, hang-up, the
    utterance done) cancels the timer and drops whatever is still held: nothing is pushed after.
    """

    def __init__(
        self,
        policy: StartPolicy,
        playback: Playback,
        framer: Framer,
        *,
        clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self.policy = policy
        self._playback = playback
        self._framer = framer
        self._clock = clock
        self._metrics = metrics
        self._held: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._reported = 0
        self._pushed_any = False

    # --- ReplyObserver

    def begin_sentence(self, chars: int, later: Sequence[int]) -> None:
        if not self._closed:
            self.policy.begin_sentence(chars, later, self._clock())

    def restart_reply(self) -> None:
        if not self._closed:
            self.policy.restart_reply(self._clock())

    def ended(self) -> None:
        if not self._closed:
            now = self._clock()
            self._act(self.policy.ended(now, self._playback.playout_end()))

    def failed(self) -> None:
        if not self._closed:
            self.policy.failed(self._clock())
            self._flush()

    # --- the sink

    def audio(self, audio: bytes) -> None:
        if self._closed or not audio:
            return
        now = self._clock()
        decision = self.policy.arrived(
            now, len(audio) / MULAW_8K.bytes_per_second, self._playback.playout_end()
        )
        self._held.append(audio)
        self._act(decision)

    def finish(self) -> None:
        """The utterance is over: push whatever is still held, then ``close``."""
        if not self._closed:
            self.policy.finish(self._clock())
            self._flush()
        self.close()

    def close(self) -> None:
        self._closed = True
        self._disarm()
        self._held.clear()

    # --- internals

    def _arm(self, wake: float | None) -> None:
        self._disarm()
        if wake is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, wake - self._clock()), self._due)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._clock()
        self._act(self.policy.due(now, self._playback.playout_end()))

    def _act(self, decision: Decision) -> None:
        if decision.release:
            self._flush()
        else:
            self._arm(decision.wake)

    def _flush(self) -> None:
        """Push what is held (the policy let go) and report the holds it decided."""
        self._disarm()
        if self._held:
            audio = b"".join(self._held) if len(self._held) > 1 else self._held[0]
            self._held.clear()
            frames = self._framer.push_whole(audio)
            if frames and not self._pushed_any:
                # The first frames of the utterance: playable since now (bridge-added latency).
                self._pushed_any = True
                self._playback.push_frames((frames,), first_byte_at=self._clock())
            elif frames:
                self._playback.push_frames((frames,))
        holds = self.policy.holds
        while self._reported < len(holds):
            hold = holds[self._reported]
            self._reported += 1
            self._metrics.start_hold.labels(reason=hold.reason).observe(hold.held)
            log.debug(
                "start_hold",
                sentence=hold.sentence,
                held_ms=round(hold.held * 1000),
                predicted_ms=round(hold.predicted * 1000),
                reason=hold.reason,
                rebuffer=hold.rebuffer,
            )


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
