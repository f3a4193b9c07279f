"""What the Twilio emulator remembers: calls, and every exchange with the application under test.

Timestamps (``at``, ``started_at``…) are ``time.monotonic()``; resource dates are in
:attr:`CallRecord.info`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bridge.dev.media_leg import StreamResult
from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.config import Outcome
from bridge.dev.twilio_emulator.rest_model import CallEvent, CallInfo, CallStatus

__all__ = [
    "HANG_UP",
    "CallRecord",
    "CallbackRecord",
    "Redirect",
    "RestRecord",
    "StreamEnd",
    "StreamRecord",
    "TransferRecord",
    "VerbRecord",
    "WebhookRecord",
]


@dataclass
class RestRecord:
    """One REST request and the emulator's answer."""

    at: float
    method: str
    path: str
    query: dict[str, str | list[str]]
    form: dict[str, str | list[str]]
    """The form body, repeated keys as lists (``StatusCallbackEvent``)."""
    auth_user: str | None
    """The Basic-auth user sent (never the password); ``None`` if no usable header."""
    status: int
    response: Any


@dataclass
class WebhookRecord:
    """One TwiML request (voice URL, fallback, ``Url`` of a call, redirect, action)."""

    call_sid: str
    kind: str
    """``voice``, ``voice-fallback``, ``url``, ``fallback``, ``redirect``, ``action`` or
    ``update`` (a REST update's ``Url``)."""
    url: str
    method: str
    params: dict[str, str]
    signature: str | None
    at: float
    status: int | None = None
    body: str = ""
    error: str | None = None


@dataclass
class CallbackRecord:
    """One status callback (``call-progress-events``) or stream status callback."""

    call_sid: str
    event: str
    """``initiated``/``ringing``/``answered``/``completed``, or ``stream-started``/…"""
    url: str
    method: str
    params: dict[str, str]
    signature: str | None
    at: float
    status: int | None = None
    """The HTTP status the callback got (``None``: no answer, see ``error``)."""
    error: str | None = None

    @property
    def sequence_number(self) -> int | None:
        value = self.params.get("SequenceNumber")
        return None if value is None else int(value)


StreamEnd = Literal["bridge", "caller", "api", "time-limit", "error"]


@dataclass
class StreamRecord:
    """One ``<Connect><Stream>``: where it went and what happened on it."""

    call_sid: str
    stream_sid: str
    url: str
    name: str | None
    parameters: dict[str, str]
    result: StreamResult
    started_at: float
    ended_at: float | None = None
    ended_by: StreamEnd | None = None
    """Who ended it: the bridge closed the socket, the caller hung up, a REST update, the call's
    time limit, or a failure (see ``error``)."""
    stop_sent: bool = False
    """Twilio's side sent ``stop`` (caller hang-up, time limit or REST update)."""
    error: tuple[int, str] | None = None
    """Twilio's error code and detail when the stream could not run (31901, 31920, …)."""

    def to_json(self) -> dict[str, Any]:
        result = self.result
        leg = result.leg
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "url": self.url,
            "name": self.name,
            "parameters": self.parameters,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "ended_by": self.ended_by,
            "stop_sent": self.stop_sent,
            "error": list(self.error) if self.error else None,
            "handshake_status": result.handshake_status,
            "close_code": result.close_code,
            "hung_up": result.hung_up,
            "heard_bytes": len(result.heard),
            "keys_sent": [list(k) for k in result.keys_sent],
            "marks": [m.name for m in leg.timeline.marks] if leg else [],
            "warnings": [list(w) for w in leg.warnings] if leg else [],
            "timeline": result.timeline(),
        }


@dataclass
class TransferRecord:
    """A ``<Dial>``: where the call was transferred."""

    call_sid: str
    targets: list[str]
    """Numbers, ``sip:`` addresses, ``client:`` names, ``conference:``/``queue:`` names."""
    twiml: str
    at: float


@dataclass
class VerbRecord:
    """A TwiML verb the call ran."""

    call_sid: str
    verb: str
    attributes: dict[str, str]
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class Redirect:
    """New instructions from a REST update (``Twiml``, or ``Url`` with ``Method``)."""

    twiml: str | None
    url: str | None
    method: str


HANG_UP: Final = "hang-up"
"""A REST update (``Status=completed``) ended the call."""


@dataclass(eq=False)
class CallRecord:
    """One call: its REST facts (:attr:`info`), its instructions, and what it did."""

    info: CallInfo
    url: str | None = None
    method: str = "POST"
    twiml: str | None = None
    fallback_url: str | None = None
    fallback_method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    events: frozenset[CallEvent] = frozenset({CallEvent.COMPLETED})
    machine_detection: str | None = None
    timeout: int = rest.DEFAULT_TIMEOUT
    time_limit: float = float(rest.DEFAULT_TIME_LIMIT)
    outcome: Outcome = field(default_factory=Outcome)
    keys: tuple[tuple[float, str], ...] = ()
    answers: tuple[str, ...] = ()
    hangup_after: float | None = None
    sign_handshake: bool = True
    verbs: list[VerbRecord] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    """Twilio's error/warning codes for this call (11200 webhook failed, 12100 bad TwiML, …)."""
    callback_sequence: int = 0
    answered_mono: float | None = None
    """``time.monotonic()`` at answer; the call ends at most :attr:`time_limit` later."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the call has ended and its callbacks have been delivered."""
    pending: Redirect | Literal["hang-up"] | None = None
    """What a REST update asked of the call in progress, until the call acts on it."""
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by a REST update: wakes the call wherever it waits (ringing, a stream)."""
    outbox: asyncio.Queue[tuple[CallbackRecord, Mapping[str, str]] | None] = field(
        default_factory=asyncio.Queue
    )
    """Status callbacks to deliver, in order; ``None`` ends the delivery."""

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def status(self) -> CallStatus:
        return self.info.status

    @property
    def deadline(self) -> float | None:
        return None if self.answered_mono is None else self.answered_mono + self.time_limit

    def to_json(self) -> dict[str, Any]:
        return {
            "resource": rest.call_resource(self.info),
            "url": self.url,
            "method": self.method,
            "twiml": self.twiml,
            "status_callback": self.status_callback,
            "status_callback_events": sorted(e.value for e in self.events),
            "machine_detection": self.machine_detection,
            "timeout": self.timeout,
            "time_limit": self.time_limit,
            "verbs": [vars(v) for v in self.verbs],
            "errors": [list(e) for e in self.errors],
            "finished": self.finished.is_set(),
        }
