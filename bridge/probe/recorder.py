"""The probe's recorder: a sans-I/O core, Hamsa events with their times in, trace records out.

It never reads a clock or touches a socket. The runner (:mod:`bridge.probe.runner`) stamps
every event it feeds with its own clock (``time.monotonic()`` in production, anything monotonic
in tests) and the recorder turns the stamps into seconds after the request was sent.

Per request the runner calls::

    recorder.opened(connect_s)      only when a new socket was opened for this request
    recorder.sent(text, at)         just before the ``tts`` frame is written
    recorder.feed(event, at)        for every HamsaProtocol event, until ``reply_over``
    recorder.finish()               → the request's :class:`RequestTrace`

The trace (version 1, ``docs/hamsa-probe.md``) is JSON lines: one ``probe`` header, then one
``request`` line per request::

    {"type": "probe", "version": 1, "started": "2026-12-07T09:00:00Z", "url": "wss://…",
     "voice": {"speaker": "Majd", "dialect": "ksa", "language": "ar"}, "mulaw": true}
    {"type": "request", "n": 1, "text": "…", "chars": 51, "connect_s": 1.21, "ack_s": 0.05,
     "frames": [[0.31, 7398], [0.52, 32000]], "head_hex": "52494646…", "end_s": 2.9,
     "error": null, "close": null}

All ``*_s`` values and frame times are seconds after the request was sent, rounded to 0.1 ms;
``connect_s`` is set only on the request that opened its socket; ``frames`` are
``[time_s, size_bytes]``; ``head_hex`` is the first :data:`HEAD_BYTES` bytes of the reply (all
frames concatenated); ``error`` the ``error`` frame's message; ``close`` ``[code, reason]`` when
the socket closed during the request. The key never appears: it travels as a header, and
:func:`public_url` strips credentials and query strings from the URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from bridge.errors import InvalidState
from bridge.hamsa_trace import HEAD_BYTES, TRACE_VERSION, replayable
from bridge.protocols.hamsa_client import (
    UNEXPECTED_TRAILING_END,
    Ack,
    Audio,
    Closed,
    End,
    Event,
    ReplyError,
    Unexpected,
)
from bridge.voice import Voice

_DIGITS: Final = 4  # 0.1 ms


def public_url(url: str) -> str:
    """``url`` without user info, query string or fragment: what may be written to a trace."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _seconds(value: float) -> float:
    return round(value, _DIGITS)


@dataclass(frozen=True, slots=True)
class ProbeHeader:
    """The trace's first line."""

    started: datetime
    url: str
    voice: Voice
    mulaw: bool = True

    def to_json(self) -> dict[str, Any]:
        started = self.started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "type": "probe",
            "version": TRACE_VERSION,
            "started": started,
            "url": public_url(self.url),
            "voice": {
                "speaker": self.voice.speaker,
                "dialect": self.voice.dialect,
                "language": self.voice.language,
            },
            "mulaw": self.mulaw,
        }


@dataclass(frozen=True, slots=True)
class RequestTrace:
    """What one request did (times in seconds after it was sent, already rounded)."""

    n: int
    text: str
    connect_s: float | None
    ack_s: float | None
    frames: tuple[tuple[float, int], ...]
    head: bytes
    end_s: float | None
    error: str | None
    close: tuple[int | None, str] | None

    @property
    def chars(self) -> int:
        return len(self.text)

    @property
    def audio_bytes(self) -> int:
        """Every byte of the reply (a WAV header included, if any)."""
        return sum(size for _, size in self.frames)

    @property
    def succeeded(self) -> bool:
        """A normal reply, as replay needs it (``bridge.hamsa_trace.replayable``): ``ack``,
        audio, then ``end``, no ``error`` frame, socket still open."""
        return replayable(self.ack_s, len(self.frames), self.end_s, self.error, self.close)

    @property
    def first_byte_s(self) -> float | None:
        return self.frames[0][0] if self.frames else None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "request",
            "n": self.n,
            "text": self.text,
            "chars": self.chars,
            "connect_s": self.connect_s,
            "ack_s": self.ack_s,
            "frames": [[t, size] for t, size in self.frames],
            "head_hex": self.head.hex(),
            "end_s": self.end_s,
            "error": self.error,
            "close": None if self.close is None else [self.close[0], self.close[1]],
        }


@dataclass(slots=True)
class _Open:
    """The request being recorded."""

    n: int
    text: str
    sent_at: float
    connect_s: float | None
    ack_s: float | None = None
    frames: list[tuple[float, int]] = field(default_factory=list)
    head: bytearray = field(default_factory=bytearray)
    end_s: float | None = None
    error: str | None = None
    close: tuple[int | None, str] | None = None


class ProbeRecorder:
    """Records a probe's requests; see the module docstring for the calling sequence."""

    def __init__(self, header: ProbeHeader) -> None:
        self.header = header
        self.records: list[RequestTrace] = []
        self._pending_connect: float | None = None
        self._open: _Open | None = None

    @property
    def in_request(self) -> bool:
        return self._open is not None

    @property
    def reply_over(self) -> bool:
        """The request in flight got ``end``, ``error`` or a close: nothing more is awaited
        (though an ``end`` may still trail an ``error``, docs/hamsa-ws.md §3.4)."""
        o = self._open
        return o is not None and (o.end_s is not None or o.error is not None or o.close is not None)

    @property
    def awaiting_trailing_end(self) -> bool:
        """The request in flight got an ``error`` frame and neither ``end`` nor a close yet."""
        o = self._open
        return o is not None and o.error is not None and o.end_s is None and o.close is None

    def opened(self, connect_s: float) -> None:
        """A socket was opened for the next request; ``connect_s`` is how long that took."""
        if self._open is not None:
            raise InvalidState("a socket opened while a request is being recorded")
        self._pending_connect = _seconds(connect_s)

    def sent(self, text: str, at: float) -> None:
        """The next request's frame goes out at ``at`` (the runner's clock)."""
        if self._open is not None:
            raise InvalidState("a request was sent while another one is being recorded")
        self._open = _Open(len(self.records) + 1, text, at, self._pending_connect)
        self._pending_connect = None

    def feed(self, event: Event, at: float) -> None:
        """One event of the socket, received at ``at``. Events outside a request are ignored
        (``info``, a close between requests); so is anything after the request's close."""
        o = self._open
        if o is None or o.close is not None:
            return
        t = _seconds(max(0.0, at - o.sent_at))
        match event:
            case Ack():
                if o.ack_s is None:
                    o.ack_s = t
            case Audio(data=data):
                o.frames.append((t, len(data)))
                if len(o.head) < HEAD_BYTES:
                    o.head += data[: HEAD_BYTES - len(o.head)]
            case End():
                if o.end_s is None:
                    o.end_s = t
            case Unexpected(kind=kind) if kind == UNEXPECTED_TRAILING_END:
                # the protocol core calls an ``end`` after an ``error`` "trailing": it is still
                # this request's end, and whether it comes is what we want to know
                if o.error is not None and o.end_s is None:
                    o.end_s = t
            case ReplyError(message=message):
                if o.error is None:
                    o.error = message
            case Closed(code=code, reason=reason):
                o.close = (code, reason)
            case _:
                pass

    def finish(self) -> RequestTrace:
        """Close the request's record (whatever it holds: a timed-out reply has no ``end``)."""
        o = self._open
        if o is None:
            raise InvalidState("no request is being recorded")
        self._open = None
        record = RequestTrace(
            n=o.n,
            text=o.text,
            connect_s=o.connect_s,
            ack_s=o.ack_s,
            frames=tuple(o.frames),
            head=bytes(o.head),
            end_s=o.end_s,
            error=o.error,
            close=o.close,
        )
        self.records.append(record)
        return record

    def lines(self) -> list[str]:
        """The trace as JSON lines (no newlines): header first, then each finished request."""
        items = [self.header.to_json(), *(r.to_json() for r in self.records)]
        return [json.dumps(item, ensure_ascii=False) for item in items]

    @property
    def succeeded(self) -> int:
        """How many requests got a normal reply (a trace is written only if this is not 0)."""
        return sum(r.succeeded for r in self.records)
