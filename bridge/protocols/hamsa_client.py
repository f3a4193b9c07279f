"""Sans-I/O client core for Hamsa's realtime WebSocket (text-to-speech and speech-to-text).

The object in this module never touches a socket, a clock or a task. The I/O layer feeds it what
the socket delivered (:meth:`HamsaProtocol.receive_text`, :meth:`~HamsaProtocol.receive_bytes`,
:meth:`~HamsaProtocol.receive_close`) and gets back a list of events; it asks it for the text of a
request (:meth:`~HamsaProtocol.request` for TTS, :meth:`~HamsaProtocol.request_stt` for STT) and
writes that string itself. Timeouts, retries and truncation checks belong to the caller: the core
only says what happened, in order.

Wire protocol (``docs/hamsa-ws.md`` §2, §3, §10)
-------------------------------------------------

Every server text frame of TTS is a JSON envelope ``{"type": …, "payload": {"message": …}}``;
audio comes as bare binary frames. One TTS reply looks like::

    server: {"type": "info", ...}            once, right after the upgrade
    client: {"type":"tts","payload":{...}}
    server: {"type": "ack", ...}             "Real time text to speach connection establesh"
    server: <binary> <binary> ...            zero or more audio chunks, arbitrary sizes
    server: {"type": "end", ...}             "End of TTS stream"

An STT request carries one whole utterance (a WAV, base64) and is answered by one transcript,
whose form is uncertain (§10), so the core accepts both that have been seen::

    client: {"type":"stt","payload":{"audioBase64":…,"language":"ar","isEosEnabled":false}}
    server: [THINKING]                       optional, plain text: still working
    server: <the transcript as plain text>   or {"type":"response","payload":{"text":…}}
    server: {"type": "end", ...}             perhaps; reported as Unexpected(trailing_end)

There is **no request id** and **no cancel**: only one request (of either kind) may be in flight
per socket and every frame belongs to the request at the head of the line (§3.3). The core
remembers which kind is in flight (:attr:`HamsaProtocol.in_flight_kind`) and reads each frame
for that kind:

===============================  =======================================  ======================
frame                            TTS in flight                            STT in flight
===============================  =======================================  ======================
text, not a JSON object          ``Unexpected(not_json)``                 ``[THINKING]`` (after
                                                                          strip): ``Thinking``;
                                                                          else ``Transcript(via=
                                                                          "text")``, request ends
``response`` with a string at    ``Unexpected(unknown_type)``             ``Transcript(via=
payload.text / transcript /                                               "json")``, request ends
message, or payload itself
``ack``                          ``Ack`` (then STREAMING)                 ``Ack`` (tolerated)
binary                           ``Audio`` (counted)                      ``Unexpected(binary_
                                                                          during_stt)``, not
                                                                          counted
``end``                          ``End``, request ends                    ``Unexpected(end_during
                                                                          _stt)``, stays
``error``                        ``ReplyError``, request ends             ``ReplyError``, ends
===============================  =======================================  ======================

"Not a JSON object" includes JSON scalars: a transcript such as ``123`` or ``true`` parses as
JSON but is still a transcript. A transcript longer than :data:`MAX_TRANSCRIPT_CHARS` is cut
there (:attr:`Transcript.truncated`).

An ``error`` frame, or a transcript, ends the request in flight; whether an ``end`` follows it is
unknown (§3.4, §10), so a trailing ``end`` that arrives right after one — before anything of the
next request — is reported as :class:`Unexpected` (``trailing_end``) instead of ending the next
request early.

State machine
-------------

::

                    info              request() / request_stt()        ack / audio
    AWAITING_INFO ─────────▶ IDLE ──────────────────▶ AWAITING_ACK ─────────────▶ STREAMING
          │                   ▲                          │   ▲                        │
          │ request()         │ end / error / transcript │   └── (info, [THINKING]:   │
          │ request_stt()     │                          │        no change)          │
          └───────────────────┼──────────────────────────┘                            │
                              └───────────────────────────────────────────────────────┘
                                          end / error (TTS); transcript / error (STT)
    any state ── close ──▶ CLOSED (terminal; later input is reported as Unexpected)

For an STT request only ``ack`` moves AWAITING_ACK to STREAMING (binary frames are not its
answer). A request may be sent before the server's ``info`` arrived (it may still be on the way),
so AWAITING_INFO also accepts a request; the late ``info`` is then reported without changing
state. Audio before ``ack`` is accepted (tolerant) and moves to STREAMING; a late ``ack`` is still
reported as :class:`Ack`.

Errors
------

Peer input never raises: anything odd becomes an :class:`Unexpected` event (``kind`` is one of the
``UNEXPECTED_*`` constants). Only misuse by our own code raises :class:`~bridge.errors.InvalidState`
(a request while one is in flight or after close, an empty or over-long text, an STT audio that
is empty, not a RIFF/WAVE file or over :data:`MAX_STT_WAV_BYTES`). The close code of a finished
socket maps to the error tree with :func:`classify_close`; whether a refused connection (close
code or HTTP status of the upgrade) was the key or the balance is
:func:`classify_connect_error`, the one place Hamsa's refusal codes are read.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from bridge.errors import (
    HamsaAuthError,
    HamsaConnectError,
    HamsaError,
    HamsaReplyError,
    InvalidState,
)
from bridge.voice import Voice

__all__ = [
    "MAX_STT_WAV_BYTES",
    "MAX_TEXT_CHARS",
    "MAX_TRANSCRIPT_CHARS",
    "THINKING_TEXT",
    "Ack",
    "Audio",
    "Closed",
    "ConnectRefusal",
    "End",
    "Event",
    "HamsaProtocol",
    "HamsaState",
    "Info",
    "ReplyError",
    "RequestKind",
    "Thinking",
    "Transcript",
    "Unexpected",
    "classify_close",
    "classify_connect_error",
]

MAX_TEXT_CHARS: Final = 2000
"""Hamsa's documented limit for ``text``, counted in characters (code points), not UTF-8 bytes."""
MAX_TRANSCRIPT_CHARS: Final = 1000
"""The longest transcript the core passes on; a longer one is cut (:attr:`Transcript.truncated`).
An utterance is at most a few seconds of speech: more than this is the peer misbehaving."""
MAX_STT_WAV_BYTES: Final = 2 * 1024 * 1024
"""The largest WAV :meth:`HamsaProtocol.request_stt` sends (2 MiB: over a minute of 16 kHz PCM16,
six times the longest utterance the bridge cuts). Hamsa documents no limit (``docs/hamsa-ws.md``
§10); this one keeps a runaway caller of ours from sending megabytes of base64."""
THINKING_TEXT: Final = "[THINKING]"
"""The plain-text frame Hamsa's STT sends while it is still working (after ``strip()``)."""

RequestKind: TypeAlias = Literal["tts", "stt"]
"""Which kind of request is in flight (:attr:`HamsaProtocol.in_flight_kind`)."""

# ``Unexpected.kind`` values: what the peer did that the protocol does not allow or expect.
UNEXPECTED_NOT_JSON: Final = "not_json"
"""A text frame that is not JSON while no STT request is in flight (valid only as a transcript)."""
UNEXPECTED_BAD_ENVELOPE: Final = "bad_envelope"
"""JSON that is not an object with a string ``type``."""
UNEXPECTED_UNKNOWN_TYPE: Final = "unknown_type"
"""An envelope whose ``type`` the TTS client does not handle (``response``, ``stt``, new)."""
UNEXPECTED_NO_REQUEST: Final = "no_request"
"""``ack``, audio, ``end`` or ``error`` with no request in flight."""
UNEXPECTED_DUPLICATE_ACK: Final = "duplicate_ack"
"""A second ``ack`` for the same request."""
UNEXPECTED_TRAILING_END: Final = "trailing_end"
"""An ``end`` right after an ``error`` or a transcript, before any sign of the next request."""
UNEXPECTED_BINARY_DURING_STT: Final = "binary_during_stt"
"""A binary frame while an STT request is in flight (its answer is text): ignored, not counted."""
UNEXPECTED_END_DURING_STT: Final = "end_during_stt"
"""An ``end`` while an STT request awaits its transcript (not right after one): ignored."""
UNEXPECTED_NO_TRANSCRIPT: Final = "no_transcript"
"""A ``response`` for an STT request with no string where a transcript could be: ignored."""
UNEXPECTED_AFTER_CLOSE: Final = "after_close"
"""Any input after :meth:`HamsaProtocol.receive_close`."""


class HamsaState(enum.Enum):
    """Where the client side of one Hamsa socket stands (see the module docstring's diagram)."""

    AWAITING_INFO = "awaiting_info"
    """Socket open, the server's ``info`` greeting not yet seen, nothing in flight."""
    IDLE = "idle"
    """Nothing in flight; a request may be sent."""
    AWAITING_ACK = "awaiting_ack"
    """A request was sent; neither ``ack`` nor audio has arrived yet."""
    STREAMING = "streaming"
    """The reply started (``ack`` or audio seen); waiting for more audio and ``end``."""
    CLOSED = "closed"
    """The socket closed. Terminal."""


# --- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Info:
    """The server's greeting (``"Connected to realtime WebSocket server"``)."""

    message: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The server accepted the request in flight (misspelled message verbatim)."""

    message: str


@dataclass(frozen=True, slots=True)
class Audio:
    """One binary frame of the reply in flight, exactly as received (may hold a WAV header)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The reply in flight finished normally. The socket is ready for the next request.

    Completeness is *not* implied: the 640-byte failure (``docs/hamsa-ws.md`` §4) ends with a
    normal ``end``. Check :attr:`HamsaProtocol.bytes_received` against the text length.
    """

    message: str


@dataclass(frozen=True, slots=True)
class ReplyError:
    """An ``error`` frame: the request in flight failed. The socket may or may not survive."""

    message: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """The answer to the STT request in flight, which it ends.

    ``via`` is the form it came in: ``"text"`` (a plain text frame) or ``"json"`` (a ``response``
    envelope). ``text`` is exactly what came (not stripped; possibly empty), cut to
    :data:`MAX_TRANSCRIPT_CHARS` characters when ``truncated``.
    """

    text: str
    via: Literal["text", "json"]
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Thinking:
    """Hamsa's ``[THINKING]``: the STT request in flight is still being worked on (stays)."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The socket closed. ``in_flight`` says whether a request was cut off, and if so
    ``audio_received`` whether any of its audio had arrived (so it may have been partly played).

    ``code`` is ``None`` when the connection dropped without a close frame. Map it to an error
    with :func:`classify_close`.
    """

    code: int | None
    reason: str
    in_flight: bool
    audio_received: bool


@dataclass(frozen=True, slots=True)
class Unexpected:
    """Peer input the protocol did not expect; ``kind`` is one of the ``UNEXPECTED_*`` constants.

    Informational: the state is unchanged unless documented otherwise. The I/O layer logs it and
    decides whether the socket is still trustworthy.
    """

    kind: str
    detail: str


Event: TypeAlias = (
    Info | Ack | Audio | End | ReplyError | Transcript | Thinking | Closed | Unexpected
)
"""Everything :class:`HamsaProtocol` can report."""

_IN_FLIGHT: Final = frozenset({HamsaState.AWAITING_ACK, HamsaState.STREAMING})
_DETAIL_LIMIT: Final = 200


def _excerpt(text: str) -> str:
    """Shorten peer text for an :class:`Unexpected` detail (it may be a large transcript)."""
    return text if len(text) <= _DETAIL_LIMIT else text[:_DETAIL_LIMIT] + "…"


def _transcript(text: str, via: Literal["text", "json"]) -> Transcript:
    if len(text) > MAX_TRANSCRIPT_CHARS:
        return Transcript(text[:MAX_TRANSCRIPT_CHARS], via, truncated=True)
    return Transcript(text, via)


def _transcript_of(envelope: dict[str, Any]) -> str | None:
    """The transcript of a ``response`` envelope: a string at ``payload.text``,
    ``payload.transcript``, ``payload.message`` (in that order) or ``payload`` itself."""
    payload = envelope.get("payload")
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        for key in ("text", "transcript", "message"):
            value = payload.get(key)
            if isinstance(value, str):
                return value
    return None


def _is_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def _message_of(envelope: dict[str, Any]) -> str:
    """``payload.message`` if it is a string, else a readable rendering of whatever came.

    Tolerant on purpose: the envelope's shape is only documented by example.
    """
    payload = envelope.get("payload")
    if isinstance(payload, dict):
        message = payload.get("message")
        if isinstance(message, str):
            return message
        if message is not None:
            return _excerpt(json.dumps(message, ensure_ascii=False))
    if payload is None:
        return ""
    return _excerpt(json.dumps(payload, ensure_ascii=False))


class HamsaProtocol:
    """The client side of one Hamsa realtime socket, for text-to-speech and speech-to-text.

    Create one per socket, right after the upgrade succeeded. Drive it with what the socket
    delivers; send what :meth:`request` returns. All methods are synchronous and cheap.

    Attributes exposed as read-only properties:

    * :attr:`state` — a :class:`HamsaState`;
    * :attr:`info_received` — whether the ``info`` greeting has been seen;
    * :attr:`in_flight` — whether a request awaits its ``end``/``error`` (TTS) or its
      transcript/``error`` (STT);
    * :attr:`in_flight_kind` — ``"tts"``, ``"stt"`` or ``None`` (nothing in flight);
    * :attr:`acked` — whether the request in flight (or the last one) was acknowledged;
    * :attr:`bytes_received` — audio bytes of the current (or, once ended, the last) reply;
    * :attr:`frames_received` — binary frames of that reply;
    * :attr:`requests_sent` — requests (of both kinds) built on this socket.
    """

    def __init__(self) -> None:
        self._state = HamsaState.AWAITING_INFO
        self._info_received = False
        self._acked = False
        self._bytes_received = 0
        self._frames_received = 0
        self._requests_sent = 0
        self._kind: RequestKind = "tts"
        # True between an ``error`` frame (or a transcript) and the first sign of the next reply:
        # an ``end`` seen then is the finished request's trailing ``end`` (docs/hamsa-ws.md §3.4,
        # §10), not the next one's.
        self._after_error = False

    # --- read-only view ----------------------------------------------------------------------

    @property
    def state(self) -> HamsaState:
        return self._state

    @property
    def info_received(self) -> bool:
        return self._info_received

    @property
    def in_flight(self) -> bool:
        return self._state in _IN_FLIGHT

    @property
    def in_flight_kind(self) -> RequestKind | None:
        return self._kind if self._state in _IN_FLIGHT else None

    @property
    def acked(self) -> bool:
        return self._acked

    @property
    def bytes_received(self) -> int:
        return self._bytes_received

    @property
    def frames_received(self) -> int:
        return self._frames_received

    @property
    def requests_sent(self) -> int:
        return self._requests_sent

    # --- client → server ---------------------------------------------------------------------

    def request(self, text: str, voice: Voice, *, mulaw: bool = True) -> str:
        """Build the text frame of a TTS request and mark it in flight.

        Returns exactly
        ``{"type":"tts","payload":{"text":…,"speaker":…,"dialect":…,"languageId":…,"mulaw":true}}``
        (compact separators, non-ASCII kept as is). Resets :attr:`bytes_received`.

        Raises :class:`~bridge.errors.InvalidState` — our bug, never the peer's — when a request is
        already in flight (Hamsa has no request id: queue above this layer), when the socket is
        closed, when ``text`` is blank or longer than :data:`MAX_TEXT_CHARS` characters (split it
        first), or when the voice has no speaker.
        """
        if self._state is HamsaState.CLOSED:
            raise InvalidState("cannot send a Hamsa request: the socket is closed")
        if self._state in _IN_FLIGHT:
            raise InvalidState("cannot send a Hamsa request: another request is in flight")
        if not text.strip():
            raise InvalidState("cannot send a Hamsa request: the text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidState(
                f"cannot send a Hamsa request: {len(text)} characters, "
                f"over the limit of {MAX_TEXT_CHARS}; split the text first"
            )
        if not voice.speaker:
            raise InvalidState("cannot send a Hamsa request: the voice has no speaker")
        frame = json.dumps(
            {
                "type": "tts",
                "payload": {
                    "text": text,
                    "speaker": voice.speaker,
                    "dialect": voice.dialect,
                    "languageId": voice.language,
                    "mulaw": mulaw,
                },
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        self._start("tts")
        return frame

    def request_stt(self, wav: bytes, *, language: str) -> str:
        """Build the text frame of an STT request for one whole utterance and mark it in flight.

        Returns exactly
        ``{"type":"stt","payload":{"audioBase64":…,"language":…,"isEosEnabled":false}}``
        (compact separators). ``isEosEnabled`` is always ``false``: with ``true`` Hamsa may answer
        ``[THINKING]`` and nothing more (``docs/hamsa-ws.md`` §10).

        Raises :class:`~bridge.errors.InvalidState` — our bug, never the peer's — when a request is
        already in flight, when the socket is closed, when ``wav`` is empty, is not a RIFF/WAVE
        file or is larger than :data:`MAX_STT_WAV_BYTES`, or when ``language`` is blank.
        """
        if self._state is HamsaState.CLOSED:
            raise InvalidState("cannot send a Hamsa STT request: the socket is closed")
        if self._state in _IN_FLIGHT:
            raise InvalidState("cannot send a Hamsa STT request: another request is in flight")
        if not wav:
            raise InvalidState("cannot send a Hamsa STT request: the audio is empty")
        if not _is_wav(wav):
            raise InvalidState("cannot send a Hamsa STT request: the audio is not a RIFF/WAVE file")
        if len(wav) > MAX_STT_WAV_BYTES:
            raise InvalidState(
                f"cannot send a Hamsa STT request: {len(wav)} bytes of audio, "
                f"over the limit of {MAX_STT_WAV_BYTES}"
            )
        if not language.strip():
            raise InvalidState("cannot send a Hamsa STT request: the language is empty")
        frame = json.dumps(
            {
                "type": "stt",
                "payload": {
                    "audioBase64": base64.b64encode(wav).decode("ascii"),
                    "language": language,
                    "isEosEnabled": False,
                },
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        self._start("stt")
        return frame

    def _start(self, kind: RequestKind) -> None:
        self._state = HamsaState.AWAITING_ACK
        self._kind = kind
        self._acked = False
        self._bytes_received = 0
        self._frames_received = 0
        self._requests_sent += 1

    # --- server → client ---------------------------------------------------------------------

    def receive_text(self, text: str) -> list[Event]:
        """Feed one text frame. Never raises."""
        if self._state is HamsaState.CLOSED:
            return [Unexpected(UNEXPECTED_AFTER_CLOSE, f"text frame: {_excerpt(text)}")]
        stt = self.in_flight_kind == "stt"
        try:
            envelope = json.loads(text)
        except ValueError:  # JSONDecodeError; also "Out of range float values" and the like
            if stt:
                return self._on_plain_text(text)
            return [Unexpected(UNEXPECTED_NOT_JSON, _excerpt(text))]
        except RecursionError:  # absurdly nested JSON: still the peer's fault, not ours
            if stt:
                return self._on_plain_text(text)
            return [Unexpected(UNEXPECTED_BAD_ENVELOPE, "JSON nested too deeply")]
        if stt and not isinstance(envelope, dict):
            return self._on_plain_text(text)  # "123", "true": a transcript that parses as JSON
        if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
            return [Unexpected(UNEXPECTED_BAD_ENVELOPE, _excerpt(text))]
        kind: str = envelope["type"]
        if stt and kind == "response":
            return self._on_response(envelope, text)
        message = _message_of(envelope)
        if kind == "info":
            return self._on_info(message)
        if kind == "ack":
            return self._on_ack(message)
        if kind == "end":
            return self._on_end(message)
        if kind == "error":
            return self._on_error(message)
        return [Unexpected(UNEXPECTED_UNKNOWN_TYPE, f"{kind!r}: {_excerpt(text)}")]

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Feed one binary frame (audio). Never raises.

        Audio before ``ack`` is accepted and moves the reply to STREAMING. Audio with no request
        in flight is reported as :class:`Unexpected` and not counted.
        """
        if self._state is HamsaState.CLOSED:
            return [Unexpected(UNEXPECTED_AFTER_CLOSE, f"binary frame of {len(data)} bytes")]
        if self._state not in _IN_FLIGHT:
            return [Unexpected(UNEXPECTED_NO_REQUEST, f"binary frame of {len(data)} bytes")]
        if self._kind == "stt":
            return [Unexpected(UNEXPECTED_BINARY_DURING_STT, f"binary frame of {len(data)} bytes")]
        self._state = HamsaState.STREAMING
        self._after_error = False
        self._bytes_received += len(data)
        self._frames_received += 1
        return [Audio(bytes(data))]

    def receive_close(self, code: int | None, reason: str) -> list[Event]:
        """Report that the socket closed (``code`` ``None``: no close frame). Never raises.

        The first call returns :class:`Closed` and moves to CLOSED; later calls return
        :class:`Unexpected`.
        """
        if self._state is HamsaState.CLOSED:
            return [Unexpected(UNEXPECTED_AFTER_CLOSE, f"second close: {code} {reason!r}")]
        in_flight = self._state in _IN_FLIGHT
        audio = in_flight and self._bytes_received > 0
        self._state = HamsaState.CLOSED
        return [Closed(code, reason, in_flight, audio)]

    # --- handlers ------------------------------------------------------------------------------

    def _on_plain_text(self, text: str) -> list[Event]:
        """A text frame that is not a JSON object, while an STT request is in flight."""
        self._after_error = False  # a sign of this request, whatever it says
        if text.strip() == THINKING_TEXT:
            return [Thinking()]
        return self._answer(_transcript(text, "text"))

    def _on_response(self, envelope: dict[str, Any], text: str) -> list[Event]:
        self._after_error = False
        transcript = _transcript_of(envelope)
        if transcript is None:
            return [Unexpected(UNEXPECTED_NO_TRANSCRIPT, _excerpt(text))]
        return self._answer(_transcript(transcript, "json"))

    def _answer(self, transcript: Transcript) -> list[Event]:
        self._state = HamsaState.IDLE
        self._after_error = True  # a trailing ``end`` may follow (§10): never the next request's
        return [transcript]

    def _on_info(self, message: str) -> list[Event]:
        self._info_received = True
        if self._state is HamsaState.AWAITING_INFO:
            self._state = HamsaState.IDLE
        return [Info(message)]

    def _on_ack(self, message: str) -> list[Event]:
        if self._state not in _IN_FLIGHT:
            return [Unexpected(UNEXPECTED_NO_REQUEST, f"ack: {_excerpt(message)}")]
        if self._acked:
            return [Unexpected(UNEXPECTED_DUPLICATE_ACK, _excerpt(message))]
        self._acked = True
        self._after_error = False
        self._state = HamsaState.STREAMING
        return [Ack(message)]

    def _on_end(self, message: str) -> list[Event]:
        if self._after_error and self._state is not HamsaState.STREAMING:
            # Either nothing is in flight, or the next request is waiting for its ack: this
            # ``end`` belongs to the request the ``error`` already finished.
            self._after_error = False
            return [Unexpected(UNEXPECTED_TRAILING_END, _excerpt(message))]
        if self._state not in _IN_FLIGHT:
            return [Unexpected(UNEXPECTED_NO_REQUEST, f"end: {_excerpt(message)}")]
        if self._kind == "stt":
            return [Unexpected(UNEXPECTED_END_DURING_STT, _excerpt(message))]
        self._state = HamsaState.IDLE
        return [End(message)]

    def _on_error(self, message: str) -> list[Event]:
        if self._state not in _IN_FLIGHT:
            # A connection-level complaint, or a second error for a finished request.
            return [Unexpected(UNEXPECTED_NO_REQUEST, f"error: {_excerpt(message)}")]
        self._state = HamsaState.IDLE
        self._after_error = True
        return [ReplyError(message)]


# --- close codes ---------------------------------------------------------------------------------

_CLOSE_MEANINGS: Final[dict[int, str]] = {
    1000: "normal closure (Hamsa closes idle sockets, and sometimes between utterances)",
    1001: "server going away",
    1006: "connection dropped without a close frame",
    1011: "server internal error",
    1012: "server restarting",
    1013: "try again later",
    4500: "Hamsa internal authentication error",
}


class ConnectRefusal(enum.Enum):
    """What a refused Hamsa connection says about our account (:func:`classify_connect_error`)."""

    KEY_REJECTED = "key_rejected"
    """The API key is wrong or missing: not retryable until someone fixes ``HAMSA_API_KEY``."""
    NO_BALANCE = "no_balance"
    """The project's wallet is empty: not retryable until someone tops it up."""
    OTHER = "other"
    """Not a refusal of the account: the network, Hamsa itself; worth retrying."""


_CLOSE_KEY_REJECTED: Final = 4001
_CLOSE_NO_BALANCE: Final = 4003
_HTTP_KEY_REJECTED: Final = frozenset({401, 403})


def classify_connect_error(code: int | None) -> ConnectRefusal:
    """What Hamsa's ``code`` says: the close code of its socket or the HTTP status that refused
    the upgrade (the two never collide: close codes start at 1000, RFC 6455 §7.4).

    Close 4001 and HTTP 401/403 at the upgrade: the key is rejected; close 4003: no balance;
    anything else (``None``, 1000, 4500, HTTP 503 …): :attr:`ConnectRefusal.OTHER`. Close codes
    beyond 1000 are **uncertain** for Hamsa (``docs/hamsa-ws.md`` §2): the two auth codes are
    the ones two independent clients agree on.
    """
    if code == _CLOSE_KEY_REJECTED or code in _HTTP_KEY_REJECTED:
        return ConnectRefusal.KEY_REJECTED
    if code == _CLOSE_NO_BALANCE:
        return ConnectRefusal.NO_BALANCE
    return ConnectRefusal.OTHER


def classify_close(
    code: int | None,
    reason: str = "",
    *,
    in_flight: bool = False,
    audio_received: bool = False,
) -> HamsaError:
    """Map a close code to the error the caller should raise or record.

    * the key rejected (:func:`classify_connect_error`: 4001) →
      :class:`~bridge.errors.HamsaAuthError` "invalid or missing API key" (not retryable);
    * no balance (4003) → :class:`~bridge.errors.HamsaAuthError` "insufficient balance" (not
      retryable);
    * anything else (4500, 1000, 1011, ``None`` …) → retryable: a
      :class:`~bridge.errors.HamsaReplyError` if a request was cut off (``in_flight``; it carries
      ``audio_received``), else a :class:`~bridge.errors.HamsaConnectError`. The message names the
      code and, when known, its meaning and the server's reason.
    """
    suffix = f": {reason}" if reason else ""
    refusal = classify_connect_error(code)
    if refusal is ConnectRefusal.KEY_REJECTED:
        return HamsaAuthError(
            f"Hamsa closed with {code}: invalid or missing API key{suffix}", code=code
        )
    if refusal is ConnectRefusal.NO_BALANCE:
        return HamsaAuthError(f"Hamsa closed with {code}: insufficient balance{suffix}", code=code)
    if code is None:
        what = "Hamsa socket closed without a close code"
    else:
        meaning = _CLOSE_MEANINGS.get(code)
        what = f"Hamsa closed with {code}" + (f" ({meaning})" if meaning else "")
    if in_flight:
        return HamsaReplyError(f"{what} during a reply{suffix}", audio_received=audio_received)
    return HamsaConnectError(what + suffix)
