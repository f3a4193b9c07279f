"""Twilio's side of one bidirectional Media Stream, as a sans-I/O core.

One implementation for the Twilio caller simulator and the Twilio emulator
(``docs/twilio-streams.md`` §12). References are to that document: §1 wire rules, §2 messages
Twilio sends, §3 messages the app may send, §4 playback model, §5 warning codes.

Theory of operation
===================

:class:`TwilioMediaLeg` owns no socket and no clock. The I/O layer

* sends the strings built by :meth:`~TwilioMediaLeg.connected`, :meth:`~TwilioMediaLeg.start`,
  :meth:`~TwilioMediaLeg.media`, :meth:`~TwilioMediaLeg.dtmf` and :meth:`~TwilioMediaLeg.stop`,
  in that order of states (``NEW → CONNECTED → STARTED → STOPPED``; ``connected`` may be skipped);
* feeds every message the app sends to :meth:`~TwilioMediaLeg.receive` with the current time and
  sends back the mark echoes it returns;
* calls :meth:`~TwilioMediaLeg.advance` periodically — ideally at
  :meth:`~TwilioMediaLeg.next_due` — and sends the mark echoes it returns.

Times are floats in seconds from any monotonic origin, passed in; they must never decrease
(:class:`~bridge.errors.InvalidState` otherwise, as for builders called in the wrong state).

Sequence numbers (§1): ``connected`` has none; ``start`` is ``"1"``; every later message Twilio
sends — ``media``, ``dtmf``, mark echoes, ``stop`` — takes the next number when it is built, so
strings must be sent in the order they were built.

Playout model (§4)
==================

App ``media`` is appended to an outbound buffer that plays at 8000 bytes/s. Audio starts playing
when it arrives at an empty buffer; a *run* is a stretch of continuous playback. When a run's
buffer runs dry and time passes with nothing new, that is an **underrun**: it is recorded at the
instant the audio ran out, with ``duration=None`` until audio arrives again (then ``arrival -
at``). Playback resumes at the arrival time; there is no catch-up. Audio arriving at exactly the
instant the buffer runs dry continues the run with no underrun. A ``clear`` ends the run
deliberately: the silence after it is **not** an underrun.

A ``mark`` is queued behind the audio already buffered. Its due time is fixed when it arrives:
``run start + (bytes before the mark − bytes at run start) / 8000`` — exactly the instant the audio
before it finishes playing (a mark behind 1 s of audio that arrived at ``t0`` is due at
``t0 + 1.0``). With nothing buffered it is echoed at once. ``clear`` drops the buffered audio and
echoes every pending mark at once, in order (§4). Echoes are strings
``{"event":"mark","sequenceNumber":…,"streamSid":…,"mark":{"name":…}}`` (§2).

More than 10 minutes of buffered audio: the new ``media`` is discarded with warning 31931 (§4).

Validation (§3, §5): record, never raise
========================================

Every problem is appended to :attr:`TwilioMediaLeg.warnings` as ``(code or kind, detail)`` and the
offending message is dropped (the call continues, as Fonoster's emulation does — §5, **UNCERTAIN**
for real Twilio):

===============  ============================================================================
code / kind      cause
===============  ============================================================================
31950            binary frame (§5)
31951            invalid JSON, not an object, missing/unknown ``event``, missing or unexpected
                 fields (top level or inside ``media``/``mark``), wrong JSON types, wrong
                 ``streamSid`` (§3, §5)
31931            more than 10 minutes buffered; the message's audio is discarded (§4)
``bad_base64``   ``media.payload`` not strict base64 (product rule); message dropped
``frame_size``   decoded payload not exactly 160 bytes (product rule); the audio still plays,
                 since Twilio accepts any size (§3)
``before_start`` an app message before :meth:`~TwilioMediaLeg.start`; dropped
``after_stop``   an app message after :meth:`~TwilioMediaLeg.stop`; dropped
===============  ============================================================================

Twilio reports 31931/31950/31951 only **once per stream** (§5): :attr:`reported_warnings` lists the
first warning of each of those codes, i.e. what Twilio's debugger would show; ``warnings`` keeps
every occurrence.
"""

from __future__ import annotations

import binascii
import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from bridge.errors import InvalidState
from bridge.protocols.twilio_stream_server import FRAME_BYTES, StreamState, is_dtmf_key

__all__ = [
    "BYTES_PER_SECOND",
    "MAX_BUFFER_BYTES",
    "ONCE_PER_STREAM",
    "ClearRecord",
    "MarkRecord",
    "Timeline",
    "TwilioMediaLeg",
    "UnderrunRecord",
]

BYTES_PER_SECOND: Final = 8000
"""μ-law, 8000 Hz, mono: one byte per sample (§1)."""

MAX_BUFFER_BYTES: Final = 10 * 60 * BYTES_PER_SECOND
"""Buffered outbound audio above 10 minutes is discarded with warning 31931 (§4, §5)."""

ONCE_PER_STREAM: Final = frozenset({31931, 31950, 31951})
"""Warning codes Twilio reports at most once per stream (§5)."""

SILENCE: Final = 0xFF
"""μ-law silence, used by :meth:`TwilioMediaLeg.heard` to fill gaps."""

# Allowance when converting elapsed seconds to whole bytes, so that float error in
# ``start + k / 8000`` never plays one byte short (1e-3 byte = 125 ns).
_EPS_BYTES: Final = 1e-3

_FIELDS: Final[dict[str, frozenset[str]]] = {
    "media": frozenset({"event", "streamSid", "media"}),
    "mark": frozenset({"event", "streamSid", "mark"}),
    "clear": frozenset({"event", "streamSid"}),
}
_BODY_FIELDS: Final[dict[str, frozenset[str]]] = {
    "media": frozenset({"payload"}),
    "mark": frozenset({"name"}),
}


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- the recording for the caller's report (times are the ``now`` values passed in) -------------


@dataclass(slots=True)
class MarkRecord:
    """One app mark: when it arrived, when Twilio echoed it, and whether ``clear`` released it.

    ``echoed_at`` is the exact due instant (arrival for an empty buffer, the clear time when
    cleared), not the possibly later ``now`` at which :meth:`TwilioMediaLeg.advance` noticed it;
    ``None`` while pending or if the stream stopped first.
    """

    name: str
    received_at: float
    echoed_at: float | None = None
    cleared: bool = False


@dataclass(slots=True)
class ClearRecord:
    """One app ``clear``: when, and how many buffered bytes it dropped."""

    at: float
    dropped_bytes: int


@dataclass(slots=True)
class UnderrunRecord:
    """The buffer ran dry at ``at``; ``duration`` is set when audio arrives again."""

    at: float
    duration: float | None = None


@dataclass(slots=True)
class Timeline:
    """Everything time-related the caller's report needs."""

    first_media_at: float | None = None
    media_arrivals: list[float] = field(default_factory=list)
    marks: list[MarkRecord] = field(default_factory=list)
    clears: list[ClearRecord] = field(default_factory=list)
    underruns: list[UnderrunRecord] = field(default_factory=list)
    max_lead_ms: float = 0.0
    """Largest buffered-but-unplayed audio right after a ``media`` arrived, in ms."""
    frames_received: int = 0
    """Well-formed app ``media`` messages (including ones with a ``frame_size`` warning)."""
    discarded_bytes: int = 0
    """Audio discarded by the 10-minute limit (31931)."""


@dataclass(slots=True)
class _PendingMark:
    due: float
    position: int
    """Total bytes played once the audio before the mark has played."""
    record: MarkRecord


class TwilioMediaLeg:
    """Plays Twilio on one Media Stream: builds Twilio's messages, models its playout buffer.

    :param stream_sid: ``MZ`` + 32 hex (§1); every app message must carry it (§3).
    :param custom_parameters: the ``<Parameter>`` values, sent in ``start.customParameters``
        (``{}`` if none, §12.2).
    """

    def __init__(
        self,
        stream_sid: str,
        call_sid: str,
        account_sid: str,
        custom_parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.stream_sid: Final = stream_sid
        self.call_sid: Final = call_sid
        self.account_sid: Final = account_sid
        self.custom_parameters: Final = dict(custom_parameters or {})
        self._state = StreamState.NEW
        self._seq = 0
        self._chunk = 0
        self._now = -math.inf
        # Playout: _pending is buffered, unplayed audio; ``played`` everything played so far.
        self._pending = bytearray()
        self._run_start: float | None = None  # None: no run (nothing playing)
        self._run_start_pos = 0
        self._runs: list[tuple[float, int]] = []  # (start time, len(played) at start)
        self._marks: deque[_PendingMark] = deque()
        self._open_underrun: UnderrunRecord | None = None
        self._reported: list[tuple[int, str]] = []
        self.warnings: list[tuple[int | str, str]] = []
        self.received = bytearray()
        self.played = bytearray()
        self.timeline = Timeline()

    # --- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def buffered_bytes(self) -> int:
        """Audio buffered but not yet played, as of the last ``receive``/``advance``."""
        return len(self._pending)

    @property
    def reported_warnings(self) -> list[tuple[int, str]]:
        """The first warning of each once-per-stream code (:data:`ONCE_PER_STREAM`), in order."""
        return list(self._reported)

    def next_due(self) -> float | None:
        """When the next pending mark becomes due, or ``None`` if no mark is pending."""
        return self._marks[0].due if self._marks else None

    def _require(self, what: str, *states: StreamState) -> None:
        if self._state not in states:
            raise InvalidState(
                f"{what}() not allowed in state {self._state.name}",
                call_sid=self.call_sid,
                stream_sid=self.stream_sid,
            )

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    # --- messages Twilio sends (§2), built exactly as Twilio does ------------------------------

    def connected(self) -> str:
        """``{"event":"connected","protocol":"Call","version":"1.0.0"}`` — no seq, no streamSid."""
        self._require("connected", StreamState.NEW)
        self._state = StreamState.CONNECTED
        return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        """``start``: ``sequenceNumber`` "1", tracks ``["inbound"]``, mulaw/8000/1 (§2, §12.2)."""
        self._require("start", StreamState.NEW, StreamState.CONNECTED)
        self._state = StreamState.STARTED
        self._seq = 0
        return _dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": self.custom_parameters,
                },
                "streamSid": self.stream_sid,
            }
        )

    def media(self, payload: bytes, timestamp_ms: int) -> str:
        """Caller audio (§2): ``chunk`` from "1", ``timestamp`` = ``timestamp_ms``, all strings.

        Real Twilio sends 160-byte payloads every 20 ms with timestamps starting above 0 (§2
        [OBS], §12.3); choosing them is the caller's job.
        """
        self._require("media", StreamState.STARTED)
        if timestamp_ms < 0:
            raise InvalidState(
                f"timestamp_ms must be >= 0, got {timestamp_ms}",
                call_sid=self.call_sid,
                stream_sid=self.stream_sid,
            )
        self._chunk += 1
        return _dumps(
            {
                "event": "media",
                "sequenceNumber": self._next_seq(),
                "media": {
                    "track": "inbound",
                    "chunk": str(self._chunk),
                    "timestamp": str(timestamp_ms),
                    "payload": binascii.b2a_base64(payload, newline=False).decode("ascii"),
                },
                "streamSid": self.stream_sid,
            }
        )

    def dtmf(self, digit: str) -> str:
        """A caller keypress (§2): track ``"inbound_track"`` (not ``"inbound"``)."""
        self._require("dtmf", StreamState.STARTED)
        if not is_dtmf_key(digit):
            raise InvalidState(
                f"not a DTMF digit: {digit!r}", call_sid=self.call_sid, stream_sid=self.stream_sid
            )
        return _dumps(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_seq(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    def stop(self) -> str:
        """``stop`` with ``accountSid``/``callSid`` (§2). Playout ends; pending marks stay unechoed.

        Call :meth:`advance` first if audio played up to the hang-up should be recorded.
        """
        self._require("stop", StreamState.STARTED)
        self._state = StreamState.STOPPED
        return _dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )

    def _mark_echo(self, name: str) -> str:
        return _dumps(
            {
                "event": "mark",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    # --- time ----------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        if not (now >= self._now and math.isfinite(now)):  # also rejects NaN and ±inf
            raise InvalidState(
                f"time went backwards or is not finite: {now!r} (last {self._now!r})",
                call_sid=self.call_sid,
                stream_sid=self.stream_sid,
            )
        self._now = now

    def advance(self, now: float) -> list[str]:
        """Play out up to ``now``; return the mark echoes that became due (in order)."""
        self._tick(now)
        if self._state is not StreamState.STARTED:
            return []
        return self._play_to(now)

    def _play_to(self, now: float) -> list[str]:
        run_start = self._run_start
        if run_start is None:
            return []  # nothing playing, so no mark can be pending
        due: list[_PendingMark] = []
        marks = self._marks
        while marks and marks[0].due <= now:
            due.append(marks.popleft())
        played = self.played
        start_pos = self._run_start_pos
        end_pos = len(played) + len(self._pending)
        end_time = run_start + (end_pos - start_pos) / BYTES_PER_SECOND
        if now >= end_time:
            target = end_pos
        else:
            target = start_pos + int((now - run_start) * BYTES_PER_SECOND + _EPS_BYTES)
            if due:  # the audio before a due mark has played, whatever float rounding says
                target = max(target, due[-1].position)
            target = min(target, end_pos)
        n = target - len(played)
        if n > 0:
            played += self._pending[:n]
            del self._pending[:n]  # amortised O(1) at the front of a bytearray
        if now > end_time:
            self._run_start = None
            self._open_underrun = UnderrunRecord(at=end_time)
            self.timeline.underruns.append(self._open_underrun)
        echoes = []
        for mark in due:
            mark.record.echoed_at = mark.due
            echoes.append(self._mark_echo(mark.record.name))
        return echoes

    # --- messages the app sends (§3) -----------------------------------------------------------

    def _warn(self, code: int | str, detail: str) -> None:
        self.warnings.append((code, detail))
        if (
            isinstance(code, int)
            and code in ONCE_PER_STREAM
            and all(c != code for c, _ in self._reported)
        ):
            self._reported.append((code, detail))

    def receive(self, message: str | bytes, now: float) -> list[str]:
        """Handle one app message at ``now``; return what Twilio sends back now (mark echoes).

        Echoes that fell due before ``now`` come first. Never raises for app input; raises
        :class:`~bridge.errors.InvalidState` only if ``now`` goes backwards.
        """
        out = self.advance(now)
        if self._state is StreamState.STOPPED:
            self._warn("after_stop", "app message after stop")
            return out
        if self._state is not StreamState.STARTED:
            self._warn("before_start", "app message before start")
            return out
        if not isinstance(message, str):
            self._warn(31950, "binary frame instead of JSON text")
            return out
        try:
            obj = json.loads(message)
        except (ValueError, RecursionError):
            self._warn(31951, "invalid JSON")
            return out
        if type(obj) is not dict:
            self._warn(31951, f"not a JSON object: {type(obj).__name__}")
            return out
        if "event" not in obj:
            self._warn(31951, "missing fields: event")
            return out
        event = obj["event"]
        if not isinstance(event, str) or event not in _FIELDS:
            self._warn(31951, f"unknown event {_describe(event)}")
            return out
        keys = obj.keys()
        missing = _FIELDS[event] - keys
        if missing:
            self._warn(31951, f"missing fields in {event}: {', '.join(sorted(missing))}")
            return out
        extra = keys - _FIELDS[event]
        if extra:
            self._warn(31951, f"unexpected fields in {event}: {_describe(sorted(extra))}")
            return out
        sid = obj["streamSid"]
        if not isinstance(sid, str):
            self._warn(31951, f"wrong structure: streamSid is {type(sid).__name__}")
            return out
        if sid != self.stream_sid:
            self._warn(31951, f"streamSid mismatch: {_describe(sid)}")
            return out
        if event == "clear":
            self._on_clear(now, out)
            return out
        body = obj[event]
        if type(body) is not dict:
            self._warn(31951, f"wrong structure: {event} is {type(body).__name__}")
            return out
        body_keys = body.keys()
        missing = _BODY_FIELDS[event] - body_keys
        if missing:
            self._warn(31951, f"missing fields in {event}: {', '.join(sorted(missing))}")
            return out
        extra = body_keys - _BODY_FIELDS[event]
        if extra:
            self._warn(31951, f"unexpected fields in {event}: {_describe(sorted(extra))}")
            return out
        value = body["payload" if event == "media" else "name"]
        if not isinstance(value, str):
            self._warn(31951, f"wrong structure: {event} value is {type(value).__name__}")
            return out
        if event == "media":
            self._on_media(value, now)
        else:
            self._on_mark(value, now, out)
        return out

    def _on_media(self, payload: str, now: float) -> None:
        try:
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            self._warn("bad_base64", "media.payload is not strict base64")
            return
        timeline = self.timeline
        self.received += audio
        timeline.frames_received += 1
        timeline.media_arrivals.append(now)
        if timeline.first_media_at is None:
            timeline.first_media_at = now
        if len(audio) != FRAME_BYTES:
            self._warn("frame_size", f"payload is {len(audio)} bytes, not {FRAME_BYTES}")
        if len(self._pending) + len(audio) > MAX_BUFFER_BYTES:
            self._warn(31931, f"more than 10 minutes buffered; {len(audio)} bytes discarded")
            timeline.discarded_bytes += len(audio)
            return
        if audio:
            if self._run_start is None:  # start playing now; no catch-up after an underrun
                self._run_start = now
                self._run_start_pos = len(self.played)
                self._runs.append((now, len(self.played)))
                if self._open_underrun is not None:
                    self._open_underrun.duration = now - self._open_underrun.at
                    self._open_underrun = None
            self._pending += audio
        lead_ms = len(self._pending) * 1000 / BYTES_PER_SECOND
        if lead_ms > timeline.max_lead_ms:
            timeline.max_lead_ms = lead_ms

    def _on_mark(self, name: str, now: float, out: list[str]) -> None:
        record = MarkRecord(name=name, received_at=now)
        self.timeline.marks.append(record)
        if not self._pending or self._run_start is None:
            record.echoed_at = now  # §4: "at once if nothing is buffered"
            out.append(self._mark_echo(name))
            return
        position = len(self.played) + len(self._pending)
        due = self._run_start + (position - self._run_start_pos) / BYTES_PER_SECOND
        self._marks.append(_PendingMark(due=due, position=position, record=record))

    def _on_clear(self, now: float, out: list[str]) -> None:
        # §4: drop buffered audio, echo every pending mark at once. Not an underrun.
        self.timeline.clears.append(ClearRecord(at=now, dropped_bytes=len(self._pending)))
        self._pending.clear()
        self._run_start = None
        for mark in self._marks:
            mark.record.echoed_at = now
            mark.record.cleared = True
            out.append(self._mark_echo(mark.record.name))
        self._marks.clear()

    # --- what the caller heard -----------------------------------------------------------------

    def heard(self) -> bytes:
        """The played audio on the real-time axis from the first ``media`` arrival.

        Each run of continuous playback is placed at its start time; the gaps between runs
        (underruns, silence after a ``clear``) are filled with μ-law silence (0xFF). Ends where
        the played audio ends (as of the last ``receive``/``advance``).
        """
        first = self.timeline.first_media_at
        if first is None:
            return b""
        out = bytearray()
        played = self.played
        bounds = [*self._runs, (math.inf, len(played))]
        for (start, pos), (_, next_pos) in zip(bounds, bounds[1:], strict=False):
            offset = round((start - first) * BYTES_PER_SECOND)
            if offset > len(out):
                out += bytes([SILENCE]) * (offset - len(out))
            out += played[pos:next_pos]
        return bytes(out)
