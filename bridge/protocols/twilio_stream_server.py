"""The bridge's side of one Twilio bidirectional Media Stream, as a sans-I/O core.

References are to ``docs/twilio-streams.md`` (§1 wire rules, §2 messages Twilio sends,
§3 messages the app may send, §4 playback model, §5 error codes) and ``docs/design-notes.md`` §4
(sans-I/O style).

Theory of operation
===================

:class:`TwilioMediaStream` owns no socket and no clock. The I/O layer feeds it every WebSocket
message from Twilio through :meth:`~TwilioMediaStream.receive`, which returns a list of events, and
sends the JSON strings returned by :meth:`~TwilioMediaStream.media`, :meth:`~TwilioMediaStream.mark`
and :meth:`~TwilioMediaStream.clear` (docs/design-notes.md §4.1).

States (docs/design-notes.md §4.2)::

    NEW ──connected──▶ CONNECTED ──start──▶ STARTED ──stop──▶ STOPPED
     └──────────────────start──────────────────┘
     NEW / CONNECTED ──stop──▶ STOPPED   (a call that ends before ``start``)

``connected`` is optional: an older capture suggests Twilio may begin with ``start`` (§2), so
``start`` is accepted from ``NEW`` as well. Builders are valid only in ``STARTED``: before ``start``
the ``streamSid`` that every app message must carry (§3) is unknown, and after ``stop`` the socket
is closing. Calling them in another state is a bug in our code and raises
:class:`~bridge.errors.InvalidState`.

Peer input never raises (docs/design-notes.md §4.3, ``bridge/errors.py``). Anything Twilio sends
that we cannot use becomes a :class:`Violation` event with a stable ``kind``, is counted in
:attr:`TwilioMediaStream.violations`, and the stream carries on in the state it was in:

=======================  ==========================================================================
``kind``                 cause
=======================  ==========================================================================
``after_stop``           any message after ``stop`` (§2: the socket closes after ``stop``)
``binary_frame``         a binary WebSocket frame (§1: Twilio sends JSON text frames only)
``too_large``            message longer than ``max_message_bytes`` UTF-8 bytes (checked unparsed)
``invalid_json``         not JSON (or nested too deeply to parse)
``not_object``           JSON, but not an object
``missing_field``        a required field is absent (``event``, ``streamSid``, ``media.payload``…)
``bad_field``            a field has the wrong JSON type or value (``chunk`` not a digit string…)
``unknown_event``        ``event`` is none of ``connected start media dtmf mark stop``
``bad_base64``           ``media.payload`` is not strict, padded, standard base64
``before_start``         ``media``, ``dtmf`` or ``mark`` before ``start``
``duplicate_start``      a second ``start``
``unexpected_connected`` ``connected`` after ``connected`` or ``start``
``stream_sid_mismatch``  ``streamSid`` differs from the one ``start`` announced (§1)
=======================  ==========================================================================

A ``media`` message whose ``chunk`` or ``timestamp`` is present but not a decimal string (§1: they
are strings) still delivers its audio — the payload matters more than its label — as a
:class:`MediaReceived` with that field ``None``, followed by a ``bad_field`` :class:`Violation`.

Unknown *extra* fields in Twilio's messages are ignored: Twilio may add fields without notice, and
the 31951 "unexpected fields" rule (§5) binds the app, not Twilio. ``sequenceNumber`` and
``media.track`` are not checked. ``mediaFormat`` is reported as received in :class:`Started`;
whether it is ``audio/x-mulaw``/8000/1 (§1) is the caller's decision.

Cost
====

Inbound ``media`` runs 50 times a second per call (§2). A message in exactly the shape Twilio
sends (``{"event":"media","sequenceNumber":"…","media":{"track":"inbound","chunk":"…",
"timestamp":"…","payload":"…"},"streamSid":"<ours>"}``, no spaces, no other field) is recognised by
one anchored regular expression (compiled once) instead of ``json.loads``: a match whose
``streamSid`` is ours proves it is that JSON object with decimal labels of at most 18 digits
(``_MAX_DIGITS``, the general path's limit too), so the result is
the one the general path would give (the payload still goes through the same strict base64
decoding). Any other message — another key order, extra fields, escapes, longer labels — takes the
general path: one ``json.loads``, one strict ``binascii.a2b_base64``, and only the event and its
one-element list allocated. Outbound ``media`` concatenates a prefix precomputed at ``start``, the
base64 text and a constant suffix.
"""

from __future__ import annotations

import binascii
import collections
import enum
import json
import re
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeGuard

from bridge.errors import InvalidState

__all__ = [
    "DTMF_KEYS",
    "FRAME_BYTES",
    "Connected",
    "DtmfReceived",
    "Event",
    "MarkReceived",
    "MediaReceived",
    "Started",
    "Stopped",
    "StreamState",
    "TwilioMediaStream",
    "Violation",
    "is_dtmf_key",
]

FRAME_BYTES: Final = 160
"""One outbound frame: 20 ms of 8 kHz μ-law (§1, §2 [OBS]: 160 bytes, 216 base64 characters)."""

DTMF_KEYS: Final = "0123456789*#"
"""The keys of a phone's keypad, as Twilio reports them in ``dtmf`` events (§2): one character
each, in keypad order."""


def is_dtmf_key(value: object) -> TypeGuard[str]:
    """``value`` is one key of :data:`DTMF_KEYS` (one character, not a run of them)."""
    return isinstance(value, str) and len(value) == 1 and value in DTMF_KEYS


DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Twilio's messages are ~400 bytes (docs/design-notes.md §3); 64 KiB leaves ample room."""

VIOLATION_KINDS: Final = frozenset(
    {
        "after_stop",
        "binary_frame",
        "too_large",
        "invalid_json",
        "not_object",
        "missing_field",
        "bad_field",
        "unknown_event",
        "bad_base64",
        "before_start",
        "duplicate_start",
        "unexpected_connected",
        "stream_sid_mismatch",
    }
)
"""Every ``Violation.kind`` this core reports (the table in the module docstring)."""

_MISSING: Final = object()
_MAX_DIGITS: Final = 18
"""Longest ``chunk``/``timestamp`` read as a number (fits int64). Longer digit strings are bad
labels: ``int()`` refuses more than 4300 digits with ``ValueError`` (CPython's int/str limit)."""
_MEDIA_SUFFIX: Final = '"}}'
_fast_media = re.compile(
    r'\{"event":"media","sequenceNumber":"[0-9]+","media":\{"track":"inbound",'
    rf'"chunk":"([0-9]{{1,{_MAX_DIGITS}}})","timestamp":"([0-9]{{1,{_MAX_DIGITS}}})",'
    r'"payload":"([A-Za-z0-9+/]*={0,2})"\},'
    r'"streamSid":("[^"\\]*")\}'
).fullmatch
"""Inbound media in exactly Twilio's shape (see "Cost" in the module docstring); the last group
is the ``streamSid`` as JSON, compared with ours."""
_loads = json.loads
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64


class StreamState(enum.Enum):
    """Where the stream is in Twilio's message order (§2): connected → start → … → stop."""

    NEW = "new"
    CONNECTED = "connected"
    STARTED = "started"
    STOPPED = "stopped"


# --- events (docs/design-notes.md §4.4: frozen, slotted, converted at the edge) -------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """``connected`` (§2): first, no ``streamSid``; ``protocol`` "Call", ``version`` "1.0.0"."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Started:
    """``start`` (§2): the stream's identity, format and ``<Parameter>`` values (§6).

    ``custom_parameters`` is ``{}`` when Twilio omits the key (§2, **UNCERTAIN** which it does).
    """

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    media_format: dict[str, object]
    custom_parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class MediaReceived:
    """``media`` (§2): 20 ms of caller μ-law, already base64-decoded.

    ``chunk`` counts from 1 and ``timestamp`` is ms since the stream started; both arrive as strings
    (§1) and are ``None`` when absent or not decimal.
    """

    payload: bytes
    chunk: int | None
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """``dtmf`` (§2): one caller keypress (track ``"inbound_track"``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class MarkReceived:
    """``mark`` echo (§2, §4): the audio before our mark was played **or** cleared."""

    name: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """``stop`` (§2): the call ended or the stream stopped; the socket closes next."""

    call_sid: str | None
    account_sid: str | None


@dataclass(frozen=True, slots=True)
class Violation:
    """Twilio sent something unusable; see the module docstring for every ``kind``."""

    kind: str
    detail: str


Event: TypeAlias = (
    Connected | Started | MediaReceived | DtmfReceived | MarkReceived | Stopped | Violation
)


def _decimal(value: object) -> int | None:
    """``"42"`` → 42; anything else (including ``" 4"``, ``"1_0"``, ``"٤"``, 42) → ``None``."""
    if type(value) is str and len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


def _describe(value: object) -> str:
    """A short, safe description of a peer value for a violation's detail (never the payload)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class TwilioMediaStream:
    """Sans-I/O state machine for the bridge's end of one bidirectional Media Stream.

    :param max_message_bytes: messages with more UTF-8 bytes than this are rejected unparsed
        (``too_large``); bounds the work a hostile or broken peer can cause per message.

    Public counters: ``violations`` (per ``kind``), ``media_frames_in`` (valid inbound ``media``),
    ``media_frames_out`` (frames built by :meth:`media`).
    """

    __slots__ = (
        "_account_sid",
        "_call_sid",
        "_custom_parameters",
        "_fast_limit",
        "_inbound_audio",
        "_max_message_bytes",
        "_media_prefix",
        "_sid_json",
        "_state",
        "_stream_sid",
        "media_frames_in",
        "media_frames_out",
        "violations",
    )

    def __init__(
        self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, inbound_audio: bool = True
    ) -> None:
        """``inbound_audio=False``: caller audio is counted but neither decoded nor delivered
        (no ``MediaReceived`` events) — the cheapest path when nothing listens to the caller."""
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._max_message_bytes = max_message_bytes
        self._inbound_audio = inbound_audio
        # UTF-8 needs at most 4 bytes per code point, so a str this short cannot be too large.
        self._fast_limit = max_message_bytes // 4
        self._state = StreamState.NEW
        self._stream_sid: str | None = None
        self._call_sid: str | None = None
        self._account_sid: str | None = None
        self._custom_parameters: dict[str, str] = {}
        self._media_prefix = ""
        self._sid_json = ""
        """Our ``streamSid`` as JSON text (set at ``start``), for the inbound fast path."""
        self.violations: collections.Counter[str] = collections.Counter()
        self.media_frames_in = 0
        self.media_frames_out = 0

    # --- properties ----------------------------------------------------------------------------

    @property
    def inbound_audio(self) -> bool:
        """Caller audio is decoded and delivered as ``MediaReceived`` (else only counted)."""
        return self._inbound_audio

    @inbound_audio.setter
    def inbound_audio(self, on: bool) -> None:
        """Switch decoding on or off from the next message (a call learns at ``start``, from
        its script, whether anything listens to the caller)."""
        self._inbound_audio = on

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def stream_sid(self) -> str | None:
        """``MZ…`` from ``start``; ``None`` before it."""
        return self._stream_sid

    @property
    def call_sid(self) -> str | None:
        """``CA…`` from ``start``; ``None`` before it."""
        return self._call_sid

    @property
    def account_sid(self) -> str | None:
        """``AC…`` from ``start``; ``None`` before it."""
        return self._account_sid

    @property
    def custom_parameters(self) -> dict[str, str]:
        """A copy of ``start.customParameters`` (``{}`` before ``start`` or when omitted)."""
        return dict(self._custom_parameters)

    # --- inbound -------------------------------------------------------------------------------

    def receive(self, message: str | bytes) -> list[Event]:
        """Parse one WebSocket message from Twilio into events. Never raises for peer input.

        Returns one event, except that a ``media`` message with a bad ``chunk``/``timestamp``
        yields its :class:`MediaReceived` plus a :class:`Violation`, and a ``stop`` with a
        malformed body yields :class:`Stopped` plus a :class:`Violation`.
        """
        state = self._state
        if state is StreamState.STOPPED:
            return [self._violation("after_stop", "message after stop")]
        if not isinstance(message, str):
            return [self._violation("binary_frame", "binary frame; Twilio sends JSON text (§1)")]
        if len(message) > self._fast_limit:
            size = (
                len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))
            )
            if size > self._max_message_bytes:
                return [
                    self._violation(
                        "too_large", f"{size} bytes > max_message_bytes {self._max_message_bytes}"
                    )
                ]
        # Hot path: inbound audio in Twilio's own shape (see "Cost" in the module docstring).
        if state is StreamState.STARTED:
            match = _fast_media(message)
            if match is not None and match[4] == self._sid_json:
                if not self._inbound_audio:
                    self.media_frames_in += 1
                    return []
                chunk_text, timestamp_text, payload_text, _ = match.groups()
                try:
                    audio = _a2b(payload_text, strict_mode=True)
                except ValueError:
                    return [self._violation("bad_base64", "media.payload is not strict base64")]
                self.media_frames_in += 1
                return [MediaReceived(audio, int(chunk_text), int(timestamp_text))]
        try:
            obj = _loads(message)
        except (ValueError, RecursionError):
            return [self._violation("invalid_json", "not valid JSON")]
        if type(obj) is not dict:
            return [self._violation("not_object", f"JSON {type(obj).__name__}, not an object")]
        event = obj.get("event")

        # Hot path: inbound audio (§2 media), 50 messages/s per call.
        if event == "media":
            if state is not StreamState.STARTED:
                return [self._violation("before_start", "media before start")]
            if obj.get("streamSid") != self._stream_sid:
                return [self._sid_violation(obj)]
            media = obj.get("media")
            if type(media) is not dict:
                return [self._shape_violation(media, "media")]
            payload = media.get("payload")
            if type(payload) is not str:
                return [self._shape_violation(payload, "media.payload")]
            if not self._inbound_audio:
                self.media_frames_in += 1
                return []
            try:
                audio = _a2b(payload, strict_mode=True)
            except ValueError:  # binascii.Error, or non-ASCII text
                return [self._violation("bad_base64", "media.payload is not strict base64")]
            self.media_frames_in += 1
            return self._media_event(audio, media.get("chunk"), media.get("timestamp"))

        if event == "mark":
            return [self._on_mark(obj, state)]
        if event == "dtmf":
            return [self._on_dtmf(obj, state)]
        if event == "start":
            return [self._on_start(obj, state)]
        if event == "stop":
            return self._on_stop(obj, state)
        if event == "connected":
            return [self._on_connected(obj, state)]
        if event is None:
            return [self._violation("missing_field", "no 'event' field")]
        if not isinstance(event, str):
            return [self._violation("bad_field", f"'event' is {type(event).__name__}")]
        return [self._violation("unknown_event", f"event {_describe(event)}")]

    def _media_event(self, audio: bytes, chunk: object, timestamp: object) -> list[Event]:
        """General path of ``media``: deliver the audio; flag labels present but not decimal."""
        chunk_n = _decimal(chunk)
        timestamp_n = _decimal(timestamp)
        events: list[Event] = [MediaReceived(audio, chunk_n, timestamp_n)]
        bad = [
            name
            for name, raw, parsed in (
                ("media.chunk", chunk, chunk_n),
                ("media.timestamp", timestamp, timestamp_n),
            )
            if raw is not None and parsed is None
        ]
        if bad:
            events.append(self._violation("bad_field", f"{' and '.join(bad)} not a decimal string"))
        return events

    def _on_mark(self, obj: dict[str, object], state: StreamState) -> Event:
        if state is not StreamState.STARTED:
            return self._violation("before_start", "mark before start")
        if obj.get("streamSid") != self._stream_sid:
            return self._sid_violation(obj)
        body = obj.get("mark")
        if type(body) is not dict:
            return self._shape_violation(body, "mark")
        name = body.get("name")
        if type(name) is not str:
            return self._shape_violation(name, "mark.name")
        return MarkReceived(name)

    def _on_dtmf(self, obj: dict[str, object], state: StreamState) -> Event:
        if state is not StreamState.STARTED:
            return self._violation("before_start", "dtmf before start")
        if obj.get("streamSid") != self._stream_sid:
            return self._sid_violation(obj)
        body = obj.get("dtmf")
        if type(body) is not dict:
            return self._shape_violation(body, "dtmf")
        digit = body.get("digit")
        if type(digit) is not str:
            return self._shape_violation(digit, "dtmf.digit")
        if not is_dtmf_key(digit):
            return self._violation("bad_field", f"dtmf.digit {_describe(digit)} is not a key")
        return DtmfReceived(digit)

    def _on_start(self, obj: dict[str, object], state: StreamState) -> Event:
        if state is StreamState.STARTED:
            return self._violation("duplicate_start", "second start")
        body = obj.get("start")
        if type(body) is not dict:
            return self._shape_violation(body, "start")
        sids: list[str] = []
        for key in ("streamSid", "callSid", "accountSid"):
            value = body.get(key)
            if type(value) is not str:
                return self._shape_violation(value, f"start.{key}")
            sids.append(value)
        stream_sid, call_sid, account_sid = sids
        # §1: "start also repeats it inside" — the top-level copy is required and must agree.
        top = obj.get("streamSid", _MISSING)
        if top is _MISSING or top is None:
            return self._violation("missing_field", "no top-level 'streamSid' in start")
        if type(top) is not str:
            return self._violation("bad_field", f"top-level 'streamSid' is {type(top).__name__}")
        if top != stream_sid:
            return self._violation(
                "stream_sid_mismatch",
                f"start.streamSid {_describe(stream_sid)} != {_describe(top)}",
            )
        tracks = body.get("tracks")
        if type(tracks) is not list:
            return self._shape_violation(tracks, "start.tracks")
        if not all(type(track) is str for track in tracks):
            return self._violation("bad_field", "start.tracks holds a non-string")
        media_format = body.get("mediaFormat")
        if type(media_format) is not dict:
            return self._shape_violation(media_format, "start.mediaFormat")
        params = body.get("customParameters", _MISSING)
        if params is _MISSING:
            params = {}  # §2: an older capture omits the key
        elif type(params) is not dict:
            return self._shape_violation(params, "start.customParameters")
        elif not all(type(value) is str for value in params.values()):
            return self._violation("bad_field", "start.customParameters holds a non-string value")

        self._state = StreamState.STARTED
        self._stream_sid = stream_sid
        self._call_sid = call_sid
        self._account_sid = account_sid
        self._custom_parameters = dict(params)
        # §3 shape; json.dumps escapes the SID even though Twilio's are MZ + 32 hex (§1).
        self._media_prefix = (
            '{"event":"media","streamSid":' + json.dumps(stream_sid) + ',"media":{"payload":"'
        )
        self._sid_json = json.dumps(stream_sid)
        return Started(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            tracks=tuple(tracks),
            media_format=dict(media_format),
            custom_parameters=dict(params),
        )

    def _on_stop(self, obj: dict[str, object], state: StreamState) -> list[Event]:
        # A stop before start is accepted: the call is over either way, and there is no started
        # streamSid to compare with. After start the streamSid must match (§1).
        if state is StreamState.STARTED and obj.get("streamSid") != self._stream_sid:
            return [self._sid_violation(obj)]
        body = obj.get("stop", _MISSING)
        call_sid: str | None = None
        account_sid: str | None = None
        problem: str | None = None
        if type(body) is dict:
            call_raw = body.get("callSid")
            account_raw = body.get("accountSid")
            call_sid = call_raw if type(call_raw) is str else None
            account_sid = account_raw if type(account_raw) is str else None
            if (call_raw is not None and call_sid is None) or (
                account_raw is not None and account_sid is None
            ):
                problem = "stop.callSid or stop.accountSid is not a string"
        elif body is not _MISSING:
            problem = f"'stop' is {type(body).__name__}, not an object"
        self._state = StreamState.STOPPED
        events: list[Event] = [Stopped(call_sid, account_sid)]
        if problem is not None:
            events.append(self._violation("bad_field", problem))
        return events

    def _on_connected(self, obj: dict[str, object], state: StreamState) -> Event:
        if state is not StreamState.NEW:
            return self._violation("unexpected_connected", f"connected in state {state.name}")
        protocol = obj.get("protocol")
        if type(protocol) is not str:
            return self._shape_violation(protocol, "protocol")
        version = obj.get("version")
        if type(version) is not str:
            return self._shape_violation(version, "version")
        self._state = StreamState.CONNECTED
        return Connected(protocol, version)

    def _violation(self, kind: str, detail: str) -> Violation:
        self.violations[kind] += 1
        return Violation(kind, detail)

    def _shape_violation(self, value: object, field: str) -> Violation:
        """``missing_field`` if ``value`` is ``None`` (absent or null), else ``bad_field``."""
        if value is None:
            return self._violation("missing_field", f"no '{field}'")
        return self._violation("bad_field", f"'{field}' is {type(value).__name__}")

    def _sid_violation(self, obj: dict[str, object]) -> Violation:
        """Classify a top-level ``streamSid`` that is not the started one (§1, §5 31951)."""
        sid = obj.get("streamSid")
        if sid is None:
            return self._violation("missing_field", f"no 'streamSid' in {obj.get('event')}")
        if type(sid) is not str:
            return self._violation("bad_field", f"'streamSid' is {type(sid).__name__}")
        return self._violation(
            "stream_sid_mismatch", f"streamSid {_describe(sid)} != {self._stream_sid}"
        )

    # --- outbound (§3: only media, mark, clear; only documented fields) -----------------------

    def _require_started(self, what: str) -> None:
        if self._state is not StreamState.STARTED:
            raise InvalidState(
                f"{what}() needs state STARTED, not {self._state.name}",
                call_sid=self._call_sid,
                stream_sid=self._stream_sid,
            )

    def media(self, frame: bytes) -> str:
        """``{"event":"media","streamSid":…,"media":{"payload":…}}`` for one 160-byte frame (§3).

        Raw μ-law only, no file header (§3). Anything but exactly :data:`FRAME_BYTES` is a bug in
        the framer upstream and raises :class:`~bridge.errors.InvalidState`.
        """
        if self._state is not StreamState.STARTED:
            self._require_started("media")
        if len(frame) != FRAME_BYTES:
            raise InvalidState(
                f"media frame must be {FRAME_BYTES} bytes, got {len(frame)}",
                call_sid=self._call_sid,
                stream_sid=self._stream_sid,
            )
        self.media_frames_out += 1
        return self._media_prefix + _b2a(frame, newline=False).decode("ascii") + _MEDIA_SUFFIX

    def mark(self, name: str) -> str:
        """``{"event":"mark","streamSid":…,"mark":{"name":…}}`` (§3); echoed per §4."""
        self._require_started("mark")
        return json.dumps(
            {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": name}},
            separators=(",", ":"),
        )

    def clear(self) -> str:
        """``{"event":"clear","streamSid":…}`` (§3): Twilio drops its buffer, echoes marks (§4)."""
        self._require_started("clear")
        return json.dumps({"event": "clear", "streamSid": self._stream_sid}, separators=(",", ":"))
