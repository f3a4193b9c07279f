"""A local Twilio: a stateful subset of the 2010-04-01 REST API and of the voice platform.

Behind ``hamsa-bridge emulate-twilio`` (for users without a Twilio account) and the Twilio peer
the test suite runs against. Shapes and errors come from the sans-I/O core
:mod:`bridge.protocols.twilio_rest` (checked against the official OpenAPI spec by
``tests/test_twilio_openapi.py``); the media side of every call is
:func:`bridge.dev.media_leg.run_media_stream`, the one implementation of Twilio's side of a
Media Stream. References are to twilio-media-streams.md.

REST (HTTP Basic ``AccountSid:AuthToken``; form bodies; JSON answers)
=====================================================================

* ``GET|POST /2010-04-01/Accounts/{AccountSid}.json`` — fetch; update ``FriendlyName``.
* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` — create (201, ``queued``): ``To``,
  ``From``, ``Url`` or ``Twiml`` (≤ 4000 characters, ignored if ``Url`` is given), ``Method``,
  ``FallbackUrl``, ``StatusCallback``, ``StatusCallbackEvent`` (repeated keys),
  ``StatusCallbackMethod``, ``Timeout``, ``TimeLimit``, ``MachineDetection``.
* ``GET …/Calls.json`` — newest first; filters ``To``, ``From``, ``Status``, ``ParentCallSid``;
  paging with ``PageSize``/``Page``.
* ``GET|POST …/Calls/{Sid}.json`` — fetch; update ``Status=completed|canceled``, ``Twiml``,
  ``Url``/``Method``, ``StatusCallback``…; an ended call gets 400/21220.
* ``GET …/IncomingPhoneNumbers.json`` (filters ``PhoneNumber`` — partial, ``*`` for any digit —
  and ``FriendlyName``; paging), ``GET|POST …/IncomingPhoneNumbers/{Sid}.json`` (update changes
  only the fields sent).

Bad or missing credentials: 401/20003 (checked before anything else); unknown resources:
404/20404; wrong method: 405/20004.

Voice platform (asyncio tasks; no request handler waits for a call)
===================================================================

* **Inbound call** (:meth:`TwilioEmulatorState.start_inbound_call` or ``POST
  /_emulator/inbound``): the number's VoiceUrl is requested (its VoiceMethod; signed; fields
  ``CallSid AccountSid From To Called Caller CallStatus=ringing Direction=inbound ApiVersion``),
  VoiceFallbackUrl on failure, and the TwiML runs. The call is answered (``in-progress``) when
  the first verb other than ``<Reject>`` runs.
* **Outbound call** (REST create): ``queued``, after a tick ``initiated`` then ``ringing``; then
  the destination's :class:`Outcome`: answered after ``ring_seconds`` (``AnsweredBy`` when
  ``MachineDetection`` was asked) — unless that exceeds ``Timeout`` (then ``no-answer``) —, or
  ``busy``/``no-answer``/``failed``. On answer ``Twiml`` runs, or ``Url`` is requested
  (``Direction=outbound-api``, signed).
* **TwiML**: ``<Connect><Stream>`` runs the media leg with a signed handshake and records its
  :class:`~bridge.dev.media_leg.StreamResult`; when the stream closes, ``<Connect action>`` is
  requested or the verbs after ``</Connect>`` run; nothing left → ``completed``. ``<Hangup/>``
  ends the call; ``<Redirect>`` is followed (signed); ``<Dial>`` records a transfer and ends the
  call; ``<Reject>`` as first verb ends it ``busy``; ``<Say>``, ``<Play>``, ``<Pause>``,
  ``<Gather>`` and the rest are recorded only (no audio, no waiting).
* **Live updates**: ``Status=completed`` (or TwiML that hangs up) stops the stream — ``stop``
  with the next ``sequenceNumber``, then close 1000, as Twilio does — and ends the call; other
  ``Twiml``/``Url`` stops the stream and replaces the running TwiML (a ``<Dial>`` there records
  the transfer).
* **Status callbacks**: per call, in order, signed: each event asked for in
  ``StatusCallbackEvent`` (default ``completed`` only, as Twilio does; inbound calls use the
  number's StatusCallback, ``completed`` only): ``CallSid AccountSid From To Called Caller
  CallStatus Direction ApiVersion Timestamp CallbackSource=call-progress-events
  SequenceNumber`` (from 0), ``CallDuration`` on ``completed``, ``AnsweredBy`` with AMD.
  ``<Stream statusCallback>`` gets ``stream-started``/``stream-stopped``/``stream-error``.

How a running stream is stopped
-------------------------------

:func:`run_media_stream` has no way to be told to hang up once it is running, so each stream is
routed through a WebSocket relay inside the emulator (``/_emulator/streams/{StreamSid}``, passed
as ``CallerBehaviour.connect_url``): the leg's handshake (with its signature over the TwiML's
stream URL) and every frame are forwarded unchanged both ways; on a live update the relay stops
forwarding, sends ``stop`` (``sequenceNumber`` one above the last one forwarded) and closes both
sides with 1000. The bridge sees exactly what Twilio sends.

Records
=======

Everything lives in one :class:`TwilioEmulatorState` per app (``app.state.twilio_emulator``);
the module holds no mutable state. ``requests`` (every REST exchange), ``webhooks`` (every TwiML
request), ``callbacks`` (status callbacks, with the HTTP status each got), ``streams`` (the
media result per stream), ``transfers``, ``verbs``, per-call ``errors``; ``GET /_emulator/log``
returns them as JSON. Wait for anything with :meth:`TwilioEmulatorState.wait_until` under
``asyncio.timeout()``; for a call's end (callbacks delivered) with
:meth:`TwilioEmulatorState.wait_for_call`.

Run it in-process on an ephemeral port (tests)::

    config = TwilioEmulatorConfig(numbers={"+15005550006": {"voice_url": url}})
    async with TwilioEmulatorServer(config) as twilio:
        client = Client(config.account_sid, config.auth_token)
        client.api.base_url = twilio.http_url
        sid = twilio.state.start_inbound_call("+15005550006", "+14155550100")
        async with asyncio.timeout(5):
            call = await twilio.state.wait_for_call(sid)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import random
import re
import secrets
import socket
import time
import xml.etree.ElementTree as ET  # noqa: S405 - parsing TwiML from the application under test
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlencode, urljoin, urlsplit

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bridge.dev.caller import parse_connect_stream
from bridge.dev.media_leg import CallerBehaviour, StreamResult, run_media_stream
from bridge.dev.servers import AppServer
from bridge.protocols import twilio_rest as rest
from bridge.protocols.twilio_rest import (
    AccountInfo,
    ApiError,
    CallEvent,
    CallInfo,
    CallStatus,
    Direction,
    Form,
    IncomingNumber,
    UpdateAction,
)
from bridge.settings import Settings
from bridge.signatures import TwilioSignatures

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "CallRecord",
    "CallbackRecord",
    "NumberConfig",
    "Outcome",
    "RestRecord",
    "StreamRecord",
    "TransferRecord",
    "TwilioEmulatorConfig",
    "TwilioEmulatorServer",
    "TwilioEmulatorState",
    "VerbRecord",
    "WebhookRecord",
    "create_twilio_emulator_app",
    "run_twilio_emulator",
    "run_twilio_emulator_command",
    "serve_twilio_emulator",
]

logger = logging.getLogger(__name__)

DEFAULT_ACCOUNT_SID: Final = "AC" + "0" * 31 + "1"
DEFAULT_AUTH_TOKEN: Final = "0123456789abcdef0123456789abcdef"  # noqa: S105 - a fake
DEFAULT_PORT: Final = 8766

WEBHOOK_USER_AGENT: Final = "TwilioProxy/1.1"
STREAM_USER_AGENT: Final = "Twilio.TmeWs/1.0"
_API_PREFIX: Final = "/" + rest.API_VERSION + "/"
_RELAY_PATH: Final = "/_emulator/streams/"
_SENDABLE_CLOSE: Final = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015))
_DIAL_PREFIXES: Final = {"Client": "client:", "Conference": "conference:", "Queue": "queue:"}


def _sendable(code: int | None) -> int:
    """A close code that may go on the wire (1005/1006/1015 may not): else 1000."""
    if code is not None and (code in _SENDABLE_CLOSE or 3000 <= code <= 4999):
        return code
    return 1000


OutcomeStatus = Literal["answered", "busy", "no-answer", "failed"]
_OUTCOME_STATUSES: Final[Mapping[str, OutcomeStatus]] = {
    "answered": "answered",
    "busy": "busy",
    "no-answer": "no-answer",
    "failed": "failed",
}
ANSWERED_BY: Final = frozenset(
    {
        "human",
        "machine_start",
        "machine_end_beep",
        "machine_end_silence",
        "machine_end_other",
        "fax",
        "unknown",
    }
)


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberConfig:
    """The initial configuration of one of the account's phone numbers."""

    voice_url: str | None = None
    voice_method: str = "POST"
    voice_fallback_url: str | None = None
    voice_fallback_method: str = "POST"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    friendly_name: str | None = None
    """Default: the number formatted as Twilio does (``(415) 555-0100`` for NANP)."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> NumberConfig:
        """snake_case (``voice_url``) or Twilio's names (``VoiceUrl``)."""
        known = {
            "voice_url": "VoiceUrl",
            "voice_method": "VoiceMethod",
            "voice_fallback_url": "VoiceFallbackUrl",
            "voice_fallback_method": "VoiceFallbackMethod",
            "status_callback": "StatusCallback",
            "status_callback_method": "StatusCallbackMethod",
            "friendly_name": "FriendlyName",
        }
        kwargs: dict[str, Any] = {}
        for attr, twilio_name in known.items():
            for key in (attr, twilio_name):
                if key in values:
                    kwargs[attr] = values[key]
        unknown = set(values) - set(known) - set(known.values())
        if unknown:
            raise ValueError(f"unknown number settings: {sorted(unknown)}")
        return cls(**kwargs)


@dataclass(frozen=True)
class Outcome:
    """What the destination of an outbound call does."""

    status: OutcomeStatus = "answered"
    answered_by: str = "human"
    """``AnsweredBy`` when AMD was asked: ``human``, ``machine_end_beep``, … With
    ``MachineDetection=Enable`` a ``machine_end_*`` value is reported as ``machine_start``."""
    ring_seconds: float | None = None
    """How long it rings: before answering (default :attr:`TwilioEmulatorConfig.ring_seconds`),
    or before ``no-answer`` (default: the call's ``Timeout``)."""
    keys: tuple[tuple[float, str], ...] = ()
    """Keys the callee presses on each stream: (seconds after ``start``, digit)."""
    hangup_after: float | None = None
    """The callee hangs up this long after a stream's ``start``."""

    def __post_init__(self) -> None:
        if self.status not in ("answered", "busy", "no-answer", "failed"):
            raise ValueError(f"unknown outcome status {self.status!r}")
        if self.answered_by not in ANSWERED_BY:
            raise ValueError(f"unknown AnsweredBy {self.answered_by!r}")

    @classmethod
    def parse(cls, value: Outcome | str) -> Outcome:
        """An :class:`Outcome`, or a word: ``busy``, ``no-answer``, ``failed``, ``answered``, or
        an ``AnsweredBy`` value (``human``, ``machine_end_beep``, …) meaning "answered by"."""
        if isinstance(value, Outcome):
            return value
        status = _OUTCOME_STATUSES.get(value)
        if status is not None:
            return cls(status=status)
        if value in ANSWERED_BY:
            return cls(answered_by=value)
        raise ValueError(
            f"unknown outcome {value!r}: expected busy, no-answer, failed, answered or one of "
            f"{sorted(ANSWERED_BY)}"
        )


@dataclass(frozen=True)
class TwilioEmulatorConfig:
    """Everything the emulator can be told. Defaults: fast (tests), signed, checked."""

    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    friendly_name: str = "Hamsa bridge Twilio emulator"
    numbers: Mapping[str, NumberConfig | Mapping[str, Any]] = field(default_factory=dict)
    """The account's phone numbers: E.164 → :class:`NumberConfig` (or a mapping of its fields)."""
    ring_seconds: float = 0.05
    """How long an outbound call rings before it is answered (real phones: ~2–10 s)."""
    outcomes: Mapping[str, Outcome | str] = field(default_factory=dict)
    """Per destination (``To``) of outbound calls: an :class:`Outcome` or a word for one."""
    default_outcome: Outcome | str = field(default_factory=Outcome)
    max_call_seconds: float = 4 * 60 * 60
    """Hard limit on any call (Twilio's default ``TimeLimit`` is 4 hours)."""
    seed: int | None = None
    """Seed for SIDs (reproducible runs); ``None``: unpredictable SIDs."""
    verified_caller_ids: frozenset[str] = frozenset()
    """Numbers besides :attr:`numbers` that outbound calls may use as ``From``."""
    check_caller_id: bool = True
    """``False``: any ``From`` is accepted (Twilio answers 21210 for unknown ones)."""
    sign_requests: bool = True
    """Sign webhooks and callbacks with ``X-Twilio-Signature`` (``False`` to test rejection)."""
    sign_handshake: bool = True
    """Sign stream handshakes (``False`` to test a bridge that requires the signature)."""
    webhook_timeout: float = 15.0
    """Twilio gives a webhook 15 s."""
    require_wss: bool = False
    """``True``: a ``ws://`` stream URL fails with 31922, as on real Twilio."""
    ping_interval: float | None = 20.0

    def __post_init__(self) -> None:
        if not rest.is_sid(self.account_sid, "AC"):
            raise ValueError("account_sid must be 'AC' followed by 32 hex digits")
        if not self.auth_token:
            raise ValueError("auth_token must not be empty")
        for number, value in self.numbers.items():
            if not rest.is_e164(number):
                raise ValueError(f"phone number {number!r} is not E.164 (+ and 7-15 digits)")
            _number_config(value)
        for outcome in [*self.outcomes.values(), self.default_outcome]:
            Outcome.parse(outcome)
        if self.ring_seconds < 0 or self.max_call_seconds <= 0:
            raise ValueError("ring_seconds must be >= 0 and max_call_seconds > 0")

    @classmethod
    def realistic(cls, **overrides: Any) -> TwilioEmulatorConfig:
        """Phones ring ~2 s before answering; any field may be overridden."""
        values: dict[str, Any] = {"ring_seconds": 2.0}
        values.update(overrides)
        return cls(**values)

    def number_settings(self) -> dict[str, NumberConfig]:
        return {number: _number_config(value) for number, value in self.numbers.items()}

    def outcome_for(self, to: str) -> Outcome:
        return Outcome.parse(self.outcomes.get(to, self.default_outcome))


def _number_config(value: NumberConfig | Mapping[str, Any]) -> NumberConfig:
    config = value if isinstance(value, NumberConfig) else NumberConfig.from_mapping(value)
    for url in (config.voice_url, config.voice_fallback_url, config.status_callback):
        if url is not None and (urlsplit(url).scheme not in ("http", "https") or "//" not in url):
            raise ValueError(f"webhook URLs must be absolute http(s) URLs, not {url!r}")
    for method in (
        config.voice_method,
        config.voice_fallback_method,
        config.status_callback_method,
    ):
        if rest.parse_method(method) is None:
            raise ValueError(f"HTTP method must be GET or POST, not {method!r}")
    return config


# --- records --------------------------------------------------------------------------------------


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
    ended_by: Literal["bridge", "caller", "api", "time-limit", "error"] | None = None
    """Who ended it: the bridge closed the socket, the caller hung up (``stop``), a REST update
    (``stop`` sent by the emulator), the call's time limit, or a failure (see ``error``)."""
    stop_sent: bool = False
    """A ``stop`` reached the bridge (caller hang-up, time limit or REST update)."""
    error: tuple[int, str] | None = None
    """Twilio's error code and detail when the stream could not run (31901, 31920, …)."""


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
class _Redirect:
    twiml: str | None
    url: str | None
    method: str


_HANG_UP: Final = "hang-up"


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
    pending: _Redirect | str | None = None
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)
    outbox: asyncio.Queue[tuple[CallbackRecord, Mapping[str, str]] | None] = field(
        default_factory=asyncio.Queue
    )

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


# --- the relay (see "How a running stream is stopped") ------------------------------------------


@dataclass(eq=False)
class _RelayLink:
    target: str
    record: StreamRecord
    account_sid: str
    on_open: Callable[[], None]
    opened: bool = False
    stopping: bool = False
    last_seq: int = 0
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def stop_frame(self) -> str:
        """``stop`` exactly as :meth:`TwilioMediaLeg.stop` builds it, numbered after the last
        message forwarded."""
        return json.dumps(
            {
                "event": "stop",
                "sequenceNumber": str(self.last_seq + 1),
                "stop": {"accountSid": self.account_sid, "callSid": self.record.call_sid},
                "streamSid": self.record.stream_sid,
            },
            separators=(",", ":"),
        )


def _sequence_number(text: str) -> int | None:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(message, dict):
        value = message.get("sequenceNumber")
        if isinstance(value, str) and value.isdigit():
            return int(value)
    return None


# --- state ----------------------------------------------------------------------------------------


class TwilioEmulatorState:
    """The live state and records of one emulator app (``app.state.twilio_emulator``).

    Timestamps in records are ``time.monotonic()``; resource dates come from ``wall_clock``.
    """

    def __init__(
        self,
        config: TwilioEmulatorConfig,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._wall = wall_clock
        # Seeded for reproducibility, not security.
        self._rng: random.Random = (
            random.Random(f"sids:{config.seed}")  # noqa: S311
            if config.seed is not None
            else random.SystemRandom()
        )
        self._signer = TwilioSignatures(config.auth_token)
        now = self._wall()
        self.account = AccountInfo(
            sid=config.account_sid,
            auth_token=config.auth_token,
            friendly_name=config.friendly_name,
            date_created=now,
            date_updated=now,
        )
        self.numbers: dict[str, IncomingNumber] = {}
        for number, settings in config.number_settings().items():
            sid = self._sid("PN")
            self.numbers[sid] = IncomingNumber(
                sid=sid,
                account_sid=config.account_sid,
                phone_number=number,
                friendly_name=settings.friendly_name or rest.format_number(number),
                date_created=now,
                date_updated=now,
                voice_url=settings.voice_url,
                voice_method=rest.parse_method(settings.voice_method) or "POST",
                voice_fallback_url=settings.voice_fallback_url,
                voice_fallback_method=rest.parse_method(settings.voice_fallback_method) or "POST",
                status_callback=settings.status_callback,
                status_callback_method=rest.parse_method(settings.status_callback_method) or "POST",
            )
        self.calls: dict[str, CallRecord] = {}
        self.requests: list[RestRecord] = []
        self.webhooks: list[WebhookRecord] = []
        self.callbacks: list[CallbackRecord] = []
        self.streams: list[StreamRecord] = []
        self.transfers: list[TransferRecord] = []
        self.base_url: str | None = None
        """``http://host:port`` the emulator itself is reached at (for the stream relay)."""
        self._links: dict[str, _RelayLink] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: httpx2.AsyncClient | None = None
        self._changed = asyncio.Event()
        self._closed = False

    # --- waiting ----------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every :meth:`wait_until` (called after any change to the records)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[TwilioEmulatorState], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checked after every change. Bound it with
        ``asyncio.timeout()``."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_for_call(self, call_sid: str) -> CallRecord:
        """Wait until the call has ended and its status callbacks were delivered."""
        call = self.calls[call_sid]
        await call.finished.wait()
        return call

    # --- lookups ------------------------------------------------------------------------------

    def call(self, call_sid: str) -> CallRecord:
        return self.calls[call_sid]

    def number(self, phone_number: str) -> IncomingNumber | None:
        return next((n for n in self.numbers.values() if n.phone_number == phone_number), None)

    def callbacks_for(self, call_sid: str, *, stream: bool = False) -> list[CallbackRecord]:
        """Status callbacks of a call in the order sent (``stream=True``: stream callbacks)."""
        return [
            c
            for c in self.callbacks
            if c.call_sid == call_sid and c.event.startswith("stream-") == stream
        ]

    def streams_for(self, call_sid: str) -> list[StreamRecord]:
        return [s for s in self.streams if s.call_sid == call_sid]

    def webhooks_for(self, call_sid: str) -> list[WebhookRecord]:
        return [w for w in self.webhooks if w.call_sid == call_sid]

    # --- helpers ------------------------------------------------------------------------------

    def _sid(self, prefix: str) -> str:
        return rest.make_sid(prefix, self._rng)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = httpx2.AsyncClient(
                timeout=self.config.webhook_timeout,
                follow_redirects=True,
                trust_env=False,
                headers={"User-Agent": WEBHOOK_USER_AGENT, "Accept": "*/*"},
            )
        return self._http

    def set_base_url(self, url: str) -> None:
        """Where the emulator listens (``http://host:port``); wildcard hosts become loopback."""
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        if host in ("0.0.0.0", ""):  # noqa: S104 - mapping a wildcard bind to loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{host}:{parts.port}"

    async def aclose(self) -> None:
        """Stop every call and close the webhook client (the app's lifespan calls it)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _set_status(self, call: CallRecord, status: CallStatus) -> None:
        call.info = call.info.moved_to(status, self._wall())
        self.notify()

    def _finish(self, call: CallRecord, status: CallStatus) -> None:
        """End the call in ``status`` (no-op if it has ended) and queue ``completed``."""
        if call.status.is_final:
            return
        self._set_status(call, status)
        self._emit(call, CallEvent.COMPLETED)

    def _error(self, call: CallRecord, code: int, detail: str) -> None:
        call.errors.append((code, detail))
        logger.info("call %s: error %s: %s", call.sid, code, detail)
        self.notify()

    # --- signed HTTP --------------------------------------------------------------------------

    def _signature(self, url: str, params: Mapping[str, str]) -> str | None:
        return self._signer.sign(url, params) if self.config.sign_requests else None

    def _signed(
        self, url: str, method: str, params: Mapping[str, str]
    ) -> tuple[str, dict[str, str] | None, str | None]:
        """``(url, form, signature)``: GET carries the params in the query and signs the full
        URL; POST signs the URL and the sorted params (§7.1)."""
        if method == "GET":
            separator = "&" if urlsplit(url).query else "?"
            full = url + (separator + urlencode(list(params.items())) if params else "")
            return full, None, self._signature(full, {})
        return url, dict(params), self._signature(url, params)

    async def _send(
        self, url: str, form: dict[str, str] | None, signature: str | None
    ) -> httpx2.Response:
        headers = {"X-Twilio-Signature": signature} if signature is not None else {}
        if form is None:
            return await self._client().get(url, headers=headers)
        return await self._client().post(url, data=form, headers=headers)

    def _call_params(self, call: CallRecord, status: str) -> dict[str, str]:
        info = call.info
        params = {
            "AccountSid": info.account_sid,
            "ApiVersion": rest.API_VERSION,
            "CallSid": info.sid,
            "CallStatus": status,
            "Called": info.to,
            "Caller": info.from_,
            "Direction": info.direction.value,
            "From": info.from_,
            "To": info.to,
        }
        if call.machine_detection and info.answered_by:
            params["AnsweredBy"] = info.answered_by
        if info.forwarded_from:
            params["ForwardedFrom"] = info.forwarded_from
        if info.caller_name:
            params["CallerName"] = info.caller_name
        return params

    async def _fetch_twiml(
        self,
        call: CallRecord,
        kind: str,
        url: str,
        method: str,
        extra: Mapping[str, str] | None = None,
    ) -> ET.Element | None:
        """Request TwiML; ``None`` (and an error on the call) if it failed."""
        status = "ringing" if call.status is CallStatus.RINGING else call.status.value
        params = self._call_params(call, status) | dict(extra or {})
        record = WebhookRecord(
            call_sid=call.sid,
            kind=kind,
            url=url,
            method=method,
            params=params,
            signature=None,
            at=time.monotonic(),
        )
        self.webhooks.append(record)
        target, form, record.signature = self._signed(url, method, params)
        try:
            response = await self._send(target, form, record.signature)
        except httpx2.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            self._error(call, 11200, f"HTTP retrieval failure: {url}: {record.error}")
            return None
        record.status = response.status_code
        record.body = response.text
        self.notify()
        if not 200 <= response.status_code < 300:
            record.error = f"HTTP {response.status_code}"
            self._error(call, 11200, f"HTTP retrieval failure: {url} answered {record.error}")
            return None
        try:
            root = ET.fromstring(response.text)  # noqa: S314 - TwiML from the app under test
        except ET.ParseError as exc:
            record.error = f"not XML: {exc}"
            self._error(call, 12100, f"Document parse failure: {url}: {exc}")
            return None
        if root.tag != "Response":
            record.error = f"root element <{root.tag}>, not <Response>"
            self._error(call, 12100, f"Document parse failure: {url}: {record.error}")
            return None
        return root

    async def _fetch_with_fallback(
        self,
        call: CallRecord,
        kinds: tuple[str, str],
        primary: tuple[str, str],
        fallback: tuple[str | None, str],
    ) -> tuple[ET.Element, str] | None:
        root = await self._fetch_twiml(call, kinds[0], *primary)
        if root is not None:
            return root, primary[0]
        url, method = fallback
        if url is None or call.status.is_final:
            return None
        extra = {"ErrorCode": str(call.errors[-1][0]) if call.errors else "11200"}
        extra["ErrorUrl"] = primary[0]
        root = await self._fetch_twiml(call, kinds[1], url, method, extra)
        return (root, url) if root is not None else None

    # --- status callbacks ---------------------------------------------------------------------

    def _emit(self, call: CallRecord, event: CallEvent) -> None:
        """Queue the status callback for ``event`` if the call asked for it."""
        if call.status_callback is None or event not in call.events:
            return
        info = call.info
        params = self._call_params(call, rest.callback_status(event, info.status))
        params |= {
            "Timestamp": rest.rfc2822(self._wall()),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(call.callback_sequence),
        }
        call.callback_sequence += 1
        if event is CallEvent.COMPLETED:
            duration = info.duration
            params["CallDuration"] = str(duration if duration is not None else 0)
        record = CallbackRecord(
            call_sid=call.sid,
            event=event.value,
            url=call.status_callback,
            method=call.status_callback_method,
            params=params,
            signature=None,
            at=time.monotonic(),
        )
        call.outbox.put_nowait((record, params))

    def _emit_stream(
        self, call: CallRecord, stream: StreamRecord, event: str, url: str, method: str
    ) -> None:
        params = {
            "AccountSid": call.info.account_sid,
            "CallSid": call.sid,
            "StreamSid": stream.stream_sid,
            "StreamName": stream.name or stream.stream_sid,
            "StreamEvent": event,
            "Timestamp": self._wall().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if event == "stream-error" and stream.error is not None:
            params["StreamError"] = f"{stream.error[0]}: {stream.error[1]}"
        record = CallbackRecord(
            call_sid=call.sid,
            event=event,
            url=url,
            method=method,
            params=params,
            signature=None,
            at=time.monotonic(),
        )
        call.outbox.put_nowait((record, params))

    async def _deliver_callbacks(self, call: CallRecord) -> None:
        while (item := await call.outbox.get()) is not None:
            record, params = item
            record.at = time.monotonic()
            self.callbacks.append(record)
            target, form, record.signature = self._signed(record.url, record.method, params)
            try:
                response = await self._send(target, form, record.signature)
                record.status = response.status_code
            except httpx2.HTTPError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                self._error(call, 11200, f"status callback {record.url} failed: {record.error}")
            self.notify()

    # --- calls --------------------------------------------------------------------------------

    def start_inbound_call(
        self,
        to: str,
        from_: str,
        *,
        keys: Sequence[tuple[float, str]] = (),
        hangup_after: float | None = None,
        sign_handshake: bool = True,
        forwarded_from: str | None = None,
        caller_name: str | None = None,
    ) -> str:
        """Someone calls ``to`` (one of the account's numbers) from ``from_``; returns the new
        CallSid at once (the call runs as a task of the running loop).

        ``keys`` (seconds after the stream's ``start``, digit) and ``hangup_after`` describe the
        caller on each media stream. Raises ``LookupError`` for an unknown number and
        ``ValueError`` for bad arguments.
        """
        if self._closed:
            raise RuntimeError("the emulator is shut down")
        number = self.number(to)
        if number is None:
            raise LookupError(f"{to} is not one of the account's numbers")
        if not (rest.is_e164(from_) or from_.startswith(("client:", "sip:"))):
            raise ValueError(f"from {from_!r} is not an E.164 number, client: or sip: address")
        if number.voice_url is None:
            raise ValueError(f"{to} has no VoiceUrl: set one through the REST API first")
        for _, digit in keys:
            if len(digit) != 1 or digit not in "0123456789*#":
                raise ValueError(f"not a DTMF digit: {digit!r}")
        now = self._wall()
        info = CallInfo(
            sid=self._sid("CA"),
            account_sid=self.account.sid,
            to=to,
            from_=from_,
            direction=Direction.INBOUND,
            status=CallStatus.RINGING,
            date_created=now,
            date_updated=now,
            start_time=now,
            phone_number_sid=number.sid,
            forwarded_from=forwarded_from,
            caller_name=caller_name,
        )
        call = CallRecord(
            info=info,
            url=number.voice_url,
            method=number.voice_method,
            fallback_url=number.voice_fallback_url,
            fallback_method=number.voice_fallback_method,
            status_callback=number.status_callback,
            status_callback_method=number.status_callback_method,
            time_limit=self.config.max_call_seconds,
            keys=tuple(keys),
            hangup_after=hangup_after,
            sign_handshake=sign_handshake,
        )
        self._start(call)
        return call.sid

    async def place_inbound_call(self, to: str, from_: str, **options: Any) -> CallRecord:
        """:meth:`start_inbound_call` and wait for its end (bound it with a timeout)."""
        return await self.wait_for_call(self.start_inbound_call(to, from_, **options))

    def _create_outbound(self, request: rest.CallRequest) -> CallRecord:
        now = self._wall()
        source = self.number(request.from_)
        info = CallInfo(
            sid=self._sid("CA"),
            account_sid=self.account.sid,
            to=request.to,
            from_=request.from_,
            direction=Direction.OUTBOUND_API,
            status=CallStatus.QUEUED,
            date_created=now,
            date_updated=now,
            phone_number_sid=source.sid if source is not None else None,
        )
        outcome = self.config.outcome_for(request.to)
        call = CallRecord(
            info=info,
            url=request.url,
            method=request.method,
            twiml=request.twiml,
            fallback_url=request.fallback_url,
            fallback_method=request.fallback_method,
            status_callback=request.status_callback,
            status_callback_method=request.status_callback_method,
            events=request.status_callback_events,
            machine_detection=request.machine_detection,
            timeout=request.timeout,
            time_limit=min(float(request.time_limit), self.config.max_call_seconds),
            outcome=outcome,
            keys=outcome.keys,
            hangup_after=outcome.hangup_after,
        )
        self._start(call)
        return call

    def _start(self, call: CallRecord) -> None:
        self.calls[call.sid] = call
        self.notify()
        self._spawn(self._run_call(call))

    async def _run_call(self, call: CallRecord) -> None:
        courier = self._spawn(self._deliver_callbacks(call))
        try:
            if call.info.direction is Direction.INBOUND:
                await self._inbound(call)
            else:
                await self._outbound(call)
        except Exception as exc:
            logger.exception("Twilio emulator: call %s failed", call.sid)
            self._error(call, 11100 if isinstance(exc, ValueError) else 20500, repr(exc))
        finally:
            if not call.status.is_final:
                ending = (
                    CallStatus.COMPLETED
                    if call.status is CallStatus.IN_PROGRESS
                    else CallStatus.FAILED
                )
                self._finish(call, ending)
            call.outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(courier)
            call.finished.set()
            self.notify()

    async def _wait_interrupt(self, call: CallRecord, seconds: float) -> bool:
        """Sleep up to ``seconds``; ``True`` if a REST update interrupted (event cleared)."""
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await call.interrupt.wait()
        except TimeoutError:
            return False
        call.interrupt.clear()
        return True

    async def _ring(self, call: CallRecord, seconds: float) -> bool:
        """Ring for ``seconds``; ``False`` if the call ended (canceled) meanwhile."""
        deadline = time.monotonic() + seconds
        while not call.status.is_final:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            await self._wait_interrupt(call, remaining)
        return False

    async def _outbound(self, call: CallRecord) -> None:
        outcome = call.outcome
        await asyncio.sleep(0)  # "queued", then dialing starts on the next tick
        if call.status.is_final:
            return
        self._emit(call, CallEvent.INITIATED)
        if outcome.status == "failed":
            self._finish(call, CallStatus.FAILED)
            return
        if outcome.status == "busy":
            self._finish(call, CallStatus.BUSY)
            return
        self._set_status(call, CallStatus.RINGING)
        self._emit(call, CallEvent.RINGING)
        if outcome.status == "no-answer":
            ring = float(call.timeout)
            if outcome.ring_seconds is not None:
                ring = min(ring, outcome.ring_seconds)
            if await self._ring(call, ring):
                self._finish(call, CallStatus.NO_ANSWER)
            return
        ring = (
            outcome.ring_seconds if outcome.ring_seconds is not None else self.config.ring_seconds
        )
        if ring > call.timeout:
            if await self._ring(call, float(call.timeout)):
                self._finish(call, CallStatus.NO_ANSWER)
            return
        if not await self._ring(call, ring):
            return
        if call.machine_detection:
            answered_by = outcome.answered_by
            if call.machine_detection == "Enable" and answered_by.startswith("machine_end"):
                answered_by = "machine_start"
            call.info = replace(call.info, answered_by=answered_by)
        self._answer(call)
        if call.twiml is not None and call.url is None:
            root = self._parse_inline(call, call.twiml)
            if root is not None:
                await self._execute(call, root, None)
            return
        assert call.url is not None
        found = await self._fetch_with_fallback(
            call,
            ("url", "fallback"),
            (call.url, call.method),
            (call.fallback_url, call.fallback_method),
        )
        if found is not None:
            await self._execute(call, *found)

    async def _inbound(self, call: CallRecord) -> None:
        assert call.url is not None
        found = await self._fetch_with_fallback(
            call,
            ("voice", "voice-fallback"),
            (call.url, call.method),
            (call.fallback_url, call.fallback_method),
        )
        if found is None:
            # Twilio answers to play "an application error has occurred", then hangs up.
            self._answer(call)
            return
        root, base = found
        first = next(iter(root), None)
        if first is not None and first.tag == "Reject":
            self._record_verb(call, first)
            self._finish(call, CallStatus.BUSY)
            return
        self._answer(call)
        await self._execute(call, root, base)

    def _answer(self, call: CallRecord) -> None:
        if call.status.is_final:
            return
        self._set_status(call, CallStatus.IN_PROGRESS)
        call.answered_mono = time.monotonic()
        self._emit(call, CallEvent.ANSWERED)

    def _parse_inline(self, call: CallRecord, twiml: str) -> ET.Element | None:
        try:
            root = ET.fromstring(twiml)  # noqa: S314 - TwiML given to the API
        except ET.ParseError as exc:
            self._error(call, 12100, f"Document parse failure: Twiml: {exc}")
            return None
        if root.tag != "Response":
            self._error(call, 12100, f"Document parse failure: root <{root.tag}>")
            return None
        return root

    # --- TwiML ----------------------------------------------------------------------------------

    async def _take_pending(self, call: CallRecord) -> tuple[ET.Element, str | None] | None:
        """The document a REST update asked for; ``None`` if it hangs up or fails."""
        pending, call.pending = call.pending, None
        call.interrupt.clear()
        if not isinstance(pending, _Redirect):
            return None
        if pending.url is not None:
            root = await self._fetch_twiml(call, "update", pending.url, pending.method)
            return (root, pending.url) if root is not None else None
        assert pending.twiml is not None
        parsed = self._parse_inline(call, pending.twiml)
        return (parsed, None) if parsed is not None else None

    async def _execute(self, call: CallRecord, root: ET.Element, base: str | None) -> None:
        """Run a TwiML document and whatever it leads to, until the call ends."""
        document: tuple[ET.Element, str | None] | None = (root, base)
        while document is not None:
            root, base = document
            document = None
            for verb in list(root):
                if call.pending is not None:
                    document = await self._take_pending(call)
                    break
                if call.status.is_final:
                    return
                if call.deadline is not None and time.monotonic() >= call.deadline:
                    return  # TimeLimit reached
                step = await self._verb(call, verb, base)
                if call.pending is not None:
                    document = await self._take_pending(call)
                    break
                if step is None:
                    continue
                if step == "end":
                    return
                assert isinstance(step, tuple)
                document = step
                break

    def _record_verb(self, call: CallRecord, verb: ET.Element) -> None:
        text = "".join(verb.itertext()).strip()
        call.verbs.append(VerbRecord(call.sid, verb.tag, dict(verb.attrib), text, time.monotonic()))
        self.notify()

    def _resolve(self, call: CallRecord, url: str, base: str | None) -> str | None:
        resolved = urljoin(base, url) if base else url
        if urlsplit(resolved).scheme not in ("http", "https", "ws", "wss"):
            self._error(call, 11100, f"Invalid URL format: {url!r}")
            return None
        return resolved

    async def _verb(
        self, call: CallRecord, verb: ET.Element, base: str | None
    ) -> tuple[ET.Element, str | None] | str | None:
        """Run one verb: ``None`` to go on, ``"end"`` to hang up, or the next document."""
        self._record_verb(call, verb)
        tag = verb.tag
        if tag == "Hangup":
            return "end"
        if tag == "Reject":
            return "end"
        if tag == "Dial":
            direct = (verb.text or "").strip()
            targets = [direct] if direct else []
            for child in verb:
                name = (child.text or "").strip()
                prefix = _DIAL_PREFIXES.get(child.tag, "")
                if name:
                    targets.append(name if name.startswith(prefix) else prefix + name)
            self.transfers.append(
                TransferRecord(
                    call.sid, targets, ET.tostring(verb, encoding="unicode"), time.monotonic()
                )
            )
            self.notify()
            return "end"
        if tag == "Redirect":
            url = self._resolve(call, (verb.text or "").strip(), base)
            if url is None:
                return "end"
            method = rest.parse_method(verb.get("method")) or "POST"
            root = await self._fetch_twiml(call, "redirect", url, method)
            return (root, url) if root is not None else "end"
        if tag == "Connect":
            stream = verb.find("Stream")
            if stream is None:
                self._error(call, 13201, "<Connect> without <Stream> is not emulated; skipped")
                return None
            ended_by = await self._stream(call, verb, stream, base)
            if ended_by in ("caller", "time-limit") or call.pending is not None:
                return "end" if call.pending is None else None
            action = verb.get("action")
            if action:
                url = self._resolve(call, action, base)
                if url is None:
                    return "end"
                method = rest.parse_method(verb.get("method")) or "POST"
                root = await self._fetch_twiml(call, "action", url, method)
                return (root, url) if root is not None else "end"
            return None
        return None  # Say, Play, Pause, Gather, Start, Stop, …: recorded only

    async def _stream(
        self, call: CallRecord, connect_el: ET.Element, stream_el: ET.Element, base: str | None
    ) -> str | None:
        """Run a ``<Connect><Stream>`` to its end; returns :attr:`StreamRecord.ended_by`."""
        document = "<Response>" + ET.tostring(connect_el, encoding="unicode") + "</Response>"
        found = parse_connect_stream(document)
        assert found is not None
        raw_url, parameters = found
        url = urljoin(base, raw_url) if base and base.startswith("http") else raw_url
        if url.startswith("http"):
            url = "ws" + url.removeprefix("http")
        stream_sid = self._sid("MZ")
        result = StreamResult()
        record = StreamRecord(
            call_sid=call.sid,
            stream_sid=stream_sid,
            url=url,
            name=stream_el.get("name"),
            parameters=parameters,
            result=result,
            started_at=time.monotonic(),
        )
        self.streams.append(record)
        self.notify()
        callback = stream_el.get("statusCallback")
        callback_method = rest.parse_method(stream_el.get("statusCallbackMethod")) or "POST"

        def fail(code: int, detail: str) -> str:
            record.error = (code, detail)
            record.ended_by = "error"
            record.ended_at = time.monotonic()
            self._error(call, code, detail)
            if callback:
                self._emit_stream(call, record, "stream-error", callback, callback_method)
            return "error"

        scheme = urlsplit(url).scheme
        if scheme not in ("ws", "wss") or not urlsplit(url).netloc:
            return fail(31923, f"malformed stream URL {raw_url!r}")
        if scheme == "ws" and self.config.require_wss:
            return fail(31922, f"stream URL scheme must be wss: {url}")
        if self.base_url is None:
            return fail(
                31902, "the emulator does not know its own URL (serve it with an AppServer)"
            )

        def opened() -> None:
            if callback:
                self._emit_stream(call, record, "stream-started", callback, callback_method)

        link = _RelayLink(url, record, call.info.account_sid, opened)
        self._links[stream_sid] = link
        remaining = (
            call.deadline - time.monotonic()
            if call.deadline is not None
            else self.config.max_call_seconds
        )
        remaining = max(0.0, remaining)
        hangup_after = call.hangup_after
        if hangup_after is not None:
            hangup_after = min(hangup_after, remaining)
        behaviour = CallerBehaviour(
            keys=list(call.keys),
            hangup_after=hangup_after,
            max_duration=remaining,
            sign_handshake=call.sign_handshake and self.config.sign_handshake,
            connect_url=f"{self.base_url.replace('http', 'ws', 1)}{_RELAY_PATH}{stream_sid}",
        )
        leg = asyncio.ensure_future(
            run_media_stream(
                url,
                parameters,
                auth_token=self.config.auth_token,
                call_sid=call.sid,
                account_sid=call.info.account_sid,
                stream_sid=stream_sid,
                behaviour=behaviour,
                result=result,
            )
        )
        interrupted = asyncio.ensure_future(call.interrupt.wait())
        try:
            await asyncio.wait({leg, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            if not leg.done():
                link.stop_requested.set()
            await leg
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            record.result.ended_at = time.monotonic()
            return fail(31901, f"stream connection failed: {type(exc).__name__}: {exc}")
        finally:
            interrupted.cancel()
            if not leg.done():
                leg.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await leg
            self._links.pop(stream_sid, None)
        record.ended_at = time.monotonic()
        if record.error is not None:
            record.ended_by = "error"
            self._error(call, *record.error)
            if callback:
                self._emit_stream(call, record, "stream-error", callback, callback_method)
            return "error"
        if result.hung_up:
            record.ended_by = (
                "caller"
                if call.hangup_after is not None and call.hangup_after <= remaining
                else "time-limit"
            )
            record.stop_sent = True
        elif record.ended_by is None:
            record.ended_by = "bridge"
        if callback:
            self._emit_stream(call, record, "stream-stopped", callback, callback_method)
        self.notify()
        return record.ended_by

    async def relay(self, websocket: WebSocket) -> None:
        """``/_emulator/streams/{StreamSid}``: forward one stream between the leg and the app."""
        link = self._links.get(websocket.path_params["stream_sid"])
        if link is None or link.opened:
            await websocket.send_denial_response(Response(status_code=404))
            return
        link.opened = True
        signature = websocket.headers.get("x-twilio-signature")
        headers = {"X-Twilio-Signature": signature} if signature is not None else {}
        try:
            upstream = await connect(
                link.target,
                additional_headers=headers,
                user_agent_header=STREAM_USER_AGENT,
                proxy=None,
                open_timeout=10,
                max_size=2**20,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            link.record.error = (31920, f"stream handshake answered HTTP {status}")
            await websocket.send_denial_response(Response(status_code=status))
            return
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            code = 31901 if isinstance(exc, TimeoutError) else 31902
            link.record.error = (code, f"cannot open the stream: {type(exc).__name__}: {exc}")
            await websocket.send_denial_response(Response(status_code=502))
            return
        try:
            await websocket.accept()
            link.on_open()
            async with upstream:
                await self._pump(websocket, upstream, link)
        finally:
            link.closed.set()

    async def _pump(
        self, websocket: WebSocket, upstream: ClientConnection, link: _RelayLink
    ) -> None:
        async def leg_to_app() -> int:
            while True:
                try:
                    message = await websocket.receive()
                except (WebSocketDisconnect, RuntimeError, OSError):
                    return 1006
                if message["type"] == "websocket.disconnect":
                    return int(message.get("code") or 1005)
                if link.stopping:
                    continue
                text = message.get("text")
                try:
                    if text is not None:
                        seq = _sequence_number(text)
                        if seq is not None:
                            link.last_seq = max(link.last_seq, seq)
                        await upstream.send(text)
                    else:
                        await upstream.send(bytes(message.get("bytes") or b""))
                except ConnectionClosed:
                    return 1006

        async def app_to_leg() -> int | None:
            try:
                async for message in upstream:
                    if isinstance(message, str):
                        await websocket.send_text(message)
                    else:
                        await websocket.send_bytes(message)
            except (ConnectionClosed, WebSocketDisconnect, RuntimeError, OSError):
                pass  # either side is gone
            return upstream.close_code

        leg = asyncio.ensure_future(leg_to_app())
        app = asyncio.ensure_future(app_to_leg())
        stop = asyncio.ensure_future(link.stop_requested.wait())
        try:
            done, _ = await asyncio.wait({leg, app, stop}, return_when=asyncio.FIRST_COMPLETED)
            if app in done:  # the app (bridge) closed the socket
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await websocket.close(_sendable(app.result()))
            elif leg in done:  # the leg closed: after its ``stop`` (hang-up) or abruptly
                await upstream.close(_sendable(leg.result()))
            else:  # a REST update stops the stream: ``stop``, then close, as Twilio does
                link.stopping = True
                link.record.ended_by = "api"
                if link.last_seq >= 1:  # ``start`` went through: the stream exists for the app
                    with contextlib.suppress(ConnectionClosed):
                        await upstream.send(link.stop_frame())
                        link.record.stop_sent = True
                await upstream.close(1000)
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await websocket.close(1000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.wait({leg, app})
        finally:
            for task in (leg, app, stop):
                task.cancel()
            await asyncio.gather(leg, app, stop, return_exceptions=True)

    # --- REST -----------------------------------------------------------------------------------

    def _authorized(self, header: str | None) -> tuple[bool, str | None]:
        credentials = rest.parse_basic_auth(header)
        if credentials is None:
            return False, None
        user, password = credentials
        ok = hmac.compare_digest(user.encode(), self.config.account_sid.encode()) and (
            hmac.compare_digest(password.encode(), self.config.auth_token.encode())
        )
        return ok, user

    async def handle_api(self, request: Request) -> Response:
        """Every ``/2010-04-01/…`` request: auth, route, answer, record."""
        if self.base_url is None:
            server = request.scope.get("server")
            if server and server[1] is not None:
                self.set_base_url(f"http://{server[0]}:{server[1]}")
        method = request.method
        path = request.url.path
        body = await request.body() if method in ("POST", "PUT") else b""
        query = Form.parse(request.url.query)
        form = Form()
        ok, user = self._authorized(request.headers.get("authorization"))
        status: int
        payload: Any
        try:
            form = Form.parse(body)
        except ValueError:
            status, payload = _error_payload(rest.invalid_parameter("body", "", "too many fields"))
        else:
            if not ok:
                status, payload = _error_payload(rest.authenticate())
            else:
                status, payload = self._route(method, path, query, form)
        self.requests.append(
            RestRecord(
                at=time.monotonic(),
                method=method,
                path=path,
                query=query.to_dict(),
                form=form.to_dict(),
                auth_user=user,
                status=status,
                response=payload,
            )
        )
        self.notify()
        headers = {"Twilio-Request-Id": "RQ" + secrets.token_hex(16)}  # not from the SID seed
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        if status == 204:
            return Response(status_code=204, headers=headers)
        return JSONResponse(payload, status_code=status, headers=headers)

    def _route(self, method: str, path: str, query: Form, form: Form) -> tuple[int, Any]:
        account = self.account.sid
        routes: list[tuple[str, dict[str, Callable[[re.Match[str]], tuple[int, Any]]]]] = [
            (
                rf"/2010-04-01/Accounts/{account}\.json",
                {
                    "GET": lambda m: self._fetch_account(),
                    "POST": lambda m: self._update_account(form),
                },
            ),
            (
                rf"/2010-04-01/Accounts/{account}/Calls\.json",
                {
                    "GET": lambda m: self._list_calls(query),
                    "POST": lambda m: self._create_call(form),
                },
            ),
            (
                rf"/2010-04-01/Accounts/{account}/Calls/(?P<sid>[^/]+)\.json",
                {
                    "GET": lambda m: self._fetch_call(m["sid"], path),
                    "POST": lambda m: self._update_call(m["sid"], path, form),
                },
            ),
            (
                rf"/2010-04-01/Accounts/{account}/IncomingPhoneNumbers\.json",
                {"GET": lambda m: self._list_numbers(query)},
            ),
            (
                rf"/2010-04-01/Accounts/{account}/IncomingPhoneNumbers/(?P<sid>[^/]+)\.json",
                {
                    "GET": lambda m: self._fetch_number(m["sid"], path),
                    "POST": lambda m: self._update_number(m["sid"], path, form),
                },
            ),
        ]
        for pattern, handlers in routes:
            match = re.fullmatch(pattern, path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                return _error_payload(rest.method_not_allowed(method))
            return handler(match)
        return _error_payload(rest.not_found(path))

    def _fetch_account(self) -> tuple[int, Any]:
        return 200, rest.account_resource(self.account)

    def _update_account(self, form: Form) -> tuple[int, Any]:
        name = form.get("FriendlyName")
        if name:
            self.account = replace(self.account, friendly_name=name, date_updated=self._wall())
        return 200, rest.account_resource(self.account)

    def _create_call(self, form: Form) -> tuple[int, Any]:
        caller_ids = None
        if self.config.check_caller_id:
            caller_ids = [n.phone_number for n in self.numbers.values()]
            caller_ids += list(self.config.verified_caller_ids)
        request = rest.parse_call_create(form, caller_ids)
        if isinstance(request, ApiError):
            return _error_payload(request)
        if self._closed:
            return _error_payload(ApiError(503, 20503, "Service unavailable"))
        call = self._create_outbound(request)
        return 201, rest.call_resource(call.info)

    def _list_calls(self, query: Form) -> tuple[int, Any]:
        paging = rest.parse_paging(query)
        if isinstance(paging, ApiError):
            return _error_payload(paging)
        filters: list[tuple[str, str]] = []
        calls = list(reversed(self.calls.values()))
        for name, attr in (
            ("To", "to"),
            ("From", "from_"),
            ("Status", "status"),
            ("ParentCallSid", "parent_call_sid"),
        ):
            value = query.get(name)
            if value:
                filters.append((name, value))
                calls = [c for c in calls if str(getattr(c.info, attr)) == value]
        page, size = paging
        return 200, rest.list_page(
            "calls",
            [rest.call_resource(c.info) for c in calls],
            path=rest.calls_uri(self.account.sid),
            filters=filters,
            page=page,
            page_size=size,
        )

    def _fetch_call(self, sid: str, path: str) -> tuple[int, Any]:
        call = self.calls.get(sid)
        if call is None:
            return _error_payload(rest.not_found(path))
        return 200, rest.call_resource(call.info)

    def _update_call(self, sid: str, path: str, form: Form) -> tuple[int, Any]:
        call = self.calls.get(sid)
        if call is None:
            return _error_payload(rest.not_found(path))
        update = rest.parse_call_update(call.status, form)
        if isinstance(update, ApiError):
            return _error_payload(update)
        if update.status_callback is not None:
            call.status_callback = update.status_callback
        if update.status_callback_method is not None:
            call.status_callback_method = update.status_callback_method
        if update.fallback_url is not None:
            call.fallback_url = update.fallback_url
        if update.fallback_method is not None:
            call.fallback_method = update.fallback_method
        if update.time_limit is not None:
            call.time_limit = min(float(update.time_limit), self.config.max_call_seconds)
        action = rest.update_action(call.status, update)
        if action is UpdateAction.CANCEL:
            self._finish(call, CallStatus.CANCELED)
            call.interrupt.set()
        elif action is UpdateAction.HANG_UP:
            self._finish(call, CallStatus.COMPLETED)
            call.pending = _HANG_UP
            call.interrupt.set()
        elif action is UpdateAction.REDIRECT:
            if call.status is CallStatus.IN_PROGRESS:
                call.pending = _Redirect(update.twiml, update.url, update.method)
                call.interrupt.set()
            else:  # not answered yet: these instructions run once it is
                call.url, call.twiml, call.method = update.url, update.twiml, update.method
        call.info = replace(call.info, date_updated=self._wall())
        self.notify()
        return 200, rest.call_resource(call.info)

    def _list_numbers(self, query: Form) -> tuple[int, Any]:
        paging = rest.parse_paging(query)
        if isinstance(paging, ApiError):
            return _error_payload(paging)
        numbers = list(self.numbers.values())
        filters: list[tuple[str, str]] = []
        wanted = query.get("PhoneNumber")
        if wanted:
            filters.append(("PhoneNumber", wanted))
            pattern = re.compile(re.escape(wanted).replace(r"\*", "[0-9]"))
            numbers = [n for n in numbers if pattern.search(n.phone_number)]
        name = query.get("FriendlyName")
        if name:
            filters.append(("FriendlyName", name))
            numbers = [n for n in numbers if n.friendly_name == name]
        page, size = paging
        return 200, rest.list_page(
            "incoming_phone_numbers",
            [rest.incoming_phone_number_resource(n) for n in numbers],
            path=rest.numbers_uri(self.account.sid),
            filters=filters,
            page=page,
            page_size=size,
        )

    def _fetch_number(self, sid: str, path: str) -> tuple[int, Any]:
        number = self.numbers.get(sid)
        if number is None:
            return _error_payload(rest.not_found(path))
        return 200, rest.incoming_phone_number_resource(number)

    def _update_number(self, sid: str, path: str, form: Form) -> tuple[int, Any]:
        number = self.numbers.get(sid)
        if number is None:
            return _error_payload(rest.not_found(path))
        updated = rest.update_number(number, form, self._wall())
        if isinstance(updated, ApiError):
            return _error_payload(updated)
        self.numbers[sid] = updated
        self.notify()
        return 200, rest.incoming_phone_number_resource(updated)

    # --- the log ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """All records as JSON-ready data (what ``GET /_emulator/log`` returns). The log needs
        no credentials, so the auth token is redacted wherever the account resource appears."""
        return {
            "account": _redacted(rest.account_resource(self.account)),
            "numbers": [rest.incoming_phone_number_resource(n) for n in self.numbers.values()],
            "calls": [c.to_json() for c in self.calls.values()],
            "requests": [vars(r) | {"response": _redacted(r.response)} for r in self.requests],
            "webhooks": [vars(w) for w in self.webhooks],
            "callbacks": [vars(c) for c in self.callbacks],
            "streams": [_stream_json(s) for s in self.streams],
            "transfers": [vars(t) for t in self.transfers],
        }


def _redacted(payload: Any) -> Any:
    if isinstance(payload, Mapping) and payload.get("auth_token"):
        return {**payload, "auth_token": "[redacted]"}
    return payload


def _stream_json(stream: StreamRecord) -> dict[str, Any]:
    result = stream.result
    leg = result.leg
    return {
        "call_sid": stream.call_sid,
        "stream_sid": stream.stream_sid,
        "url": stream.url,
        "name": stream.name,
        "parameters": stream.parameters,
        "started_at": stream.started_at,
        "ended_at": stream.ended_at,
        "ended_by": stream.ended_by,
        "stop_sent": stream.stop_sent,
        "error": list(stream.error) if stream.error else None,
        "handshake_status": result.handshake_status,
        "close_code": result.close_code,
        "hung_up": result.hung_up,
        "heard_bytes": len(result.heard),
        "keys_sent": [list(k) for k in result.keys_sent],
        "marks": [m.name for m in leg.timeline.marks] if leg else [],
        "warnings": [list(w) for w in leg.warnings] if leg else [],
        "timeline": result.timeline(),
    }


def _error_payload(error: ApiError) -> tuple[int, Any]:
    return error.status, error.body()


# --- the app --------------------------------------------------------------------------------------


def create_twilio_emulator_app(
    config: TwilioEmulatorConfig, *, wall_clock: Callable[[], datetime] | None = None
) -> Starlette:
    """The emulator as a Starlette app; its state is ``app.state.twilio_emulator``."""
    state = (
        TwilioEmulatorState(config, wall_clock=wall_clock)
        if wall_clock is not None
        else TwilioEmulatorState(config)
    )

    async def api(request: Request) -> Response:
        return await state.handle_api(request)

    async def log(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def inbound(request: Request) -> Response:
        if state.base_url is None:
            server = request.scope.get("server")
            if server and server[1] is not None:
                state.set_base_url(f"http://{server[0]}:{server[1]}")
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("to"), str):
            return JSONResponse({"error": "'to' (E.164) is required"}, status_code=400)
        try:
            keys = [(float(at), str(digit)) for at, digit in body.get("keys") or []]
            hangup = body.get("hangup_after")
            sid = state.start_inbound_call(
                body["to"],
                str(body.get("from") or "+15005550001"),
                keys=keys,
                hangup_after=float(hangup) if hangup is not None else None,
                sign_handshake=bool(body.get("sign_handshake", True)),
                forwarded_from=body.get("forwarded_from"),
                caller_name=body.get("caller_name"),
            )
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(
            {"call_sid": sid, "uri": rest.call_uri(state.account.sid, sid)}, status_code=201
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    app = Starlette(
        routes=[
            Route("/_emulator/log", log, methods=["GET"]),
            Route("/_emulator/inbound", inbound, methods=["POST"]),
            WebSocketRoute(_RELAY_PATH + "{stream_sid}", state.relay),
            Route("/{path:path}", api, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.state.twilio_emulator = state
    return app


class TwilioEmulatorServer(AppServer):
    """The emulator under uvicorn in the running event loop, as an async context manager.

    ``port=0`` binds an ephemeral port. Point twilio-python at :attr:`http_url`
    (``client.api.base_url = server.http_url``) and the bridge's ``TWILIO_API_URL`` likewise.
    """

    def __init__(
        self,
        config: TwilioEmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        handle_signals: bool = False,
        log_config: dict[str, Any] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config or TwilioEmulatorConfig()
        app = create_twilio_emulator_app(self.config, wall_clock=wall_clock)
        self.state: TwilioEmulatorState = app.state.twilio_emulator
        super().__init__(
            app,
            host=host,
            port=port,
            sock=sock,
            handle_signals=handle_signals,
            log_config=log_config,
            ws_ping_interval=self.config.ping_interval,
        )

    async def start(self) -> None:
        await super().start()
        self.state.set_base_url(self.http_url)

    async def __aenter__(self) -> TwilioEmulatorServer:
        await self.start()
        return self


async def serve_twilio_emulator(
    config: TwilioEmulatorConfig,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ready: asyncio.Event | None = None,
    handle_signals: bool = True,
    log_config: dict[str, Any] | None = None,
) -> None:
    """Serve the emulator until a signal (or cancellation). ``ready`` is set once listening."""
    async with TwilioEmulatorServer(
        config, host=host, port=port, handle_signals=handle_signals, log_config=log_config
    ) as server:
        logger.warning("Twilio emulator listening on %s", server.http_url)
        if ready is not None:
            ready.set()
        await server.wait_closed()


def run_twilio_emulator(
    config: TwilioEmulatorConfig, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> None:
    """Blocking entry point for ``hamsa-bridge emulate-twilio``; Ctrl-C stops it quietly."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve_twilio_emulator(config, host, port, log_config=uvicorn.config.LOGGING_CONFIG)
        )


def _number_option(value: str) -> tuple[str, str | None]:
    number, _, url = value.partition("=")
    return number.strip(), url.strip() or None


def run_twilio_emulator_command(settings: Settings, args: argparse.Namespace) -> int:
    """``hamsa-bridge emulate-twilio``: the emulator with the CLI's options.

    Expected arguments: ``--host``, ``--port``, ``--number E164[=VOICE_URL]`` (repeatable),
    ``--status-callback URL``, ``--ring-seconds``, ``--outcome E164=OUTCOME`` (repeatable),
    ``--max-call-seconds``, ``--seed``. Credentials come from ``TWILIO_ACCOUNT_SID`` /
    ``TWILIO_AUTH_TOKEN`` or are generated and printed.
    """
    account_sid = settings.twilio_account_sid or "AC" + secrets.token_hex(16)
    auth_token = settings.twilio_auth_token.get_secret_value() or secrets.token_hex(16)
    public = settings.bridge_public_url
    default_voice = settings.inbound_webhook_url if public else None
    status_callback = getattr(args, "status_callback", None) or (
        settings.status_callback_url if public else None
    )
    numbers: dict[str, NumberConfig] = {}
    for item in getattr(args, "number", None) or []:
        number, url = _number_option(item)
        numbers[number] = NumberConfig(
            voice_url=url or default_voice, status_callback=status_callback
        )
    if not numbers:
        number = settings.twilio_phone_number or "+15005550006"
        numbers[number] = NumberConfig(voice_url=default_voice, status_callback=status_callback)
    outcomes: dict[str, str] = {}
    for item in getattr(args, "outcome", None) or []:
        destination, _, outcome = item.partition("=")
        outcomes[destination.strip()] = outcome.strip()
    try:
        config = TwilioEmulatorConfig(
            account_sid=account_sid,
            auth_token=auth_token,
            numbers=numbers,
            ring_seconds=getattr(args, "ring_seconds", None) or 2.0,
            outcomes=outcomes,
            max_call_seconds=getattr(args, "max_call_seconds", None) or 4 * 60 * 60.0,
            seed=getattr(args, "seed", None),
        )
    except ValueError as exc:
        print(f"emulate-twilio: {exc}")
        return 2
    host = getattr(args, "host", "127.0.0.1")
    port = getattr(args, "port", DEFAULT_PORT)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    print(f"Twilio emulator: http://{shown}:{port}  (set TWILIO_API_URL to this)")
    if not settings.twilio_account_sid or not settings.twilio_auth_token.get_secret_value():
        print(f"TWILIO_ACCOUNT_SID={account_sid}")
        print(f"TWILIO_AUTH_TOKEN={auth_token}")
    for number, settings_ in numbers.items():
        print(f"number {number}: VoiceUrl={settings_.voice_url or '(unset)'}")
    print(
        f"inbound call: curl -X POST http://{shown}:{port}/_emulator/inbound "
        f'-d \'{{"to": "{next(iter(numbers))}", "from": "+15005550001"}}\''
    )
    run_twilio_emulator(config, host, port)
    return 0
