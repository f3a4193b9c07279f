"""The bridge's one error hierarchy.

::

    BridgeError                      (carries call_sid / stream_sid when known)
    ├── ConfigError                  invalid or missing configuration, refused at startup
    ├── SignatureError               X-Twilio-Signature or stream token rejected
    ├── AudioFormatError             a reply's audio cannot be decoded (unsupported WAV fmt)
    ├── InvalidState                 a protocol core was driven in the wrong state (a bug)
    ├── PreloadError                 a custom voice could not be preloaded (names the voice)
    ├── FlowInvalid                  an IVR flow file cannot be used (a ``FlowError`` per problem)
    ├── AnnouncementInvalid          an outbound announcement's request is invalid (names the field)
    │   └── NumberNotAllowed         the number is outside BRIDGE_ALLOWED_PREFIXES (toll fraud)
    ├── TwimlTooLong                 a call's TwiML would exceed Twilio's 4000-character limit
    ├── TwilioApiError               a Twilio REST request failed (Twilio's status and code)
    ├── StoreError                   the database cannot be opened or is not ours
    ├── TraceError                   a recorded Hamsa timing trace is unreadable or invalid
    ├── CampaignError                a campaign cannot start or go on (says what to do)
    │   ├── CampaignInvalid          its file, text or options are wrong (lists every problem)
    │   ├── CampaignBusy             another live runner holds its lease
    │   └── LeaseLost                another runner took the lease over from this one
    └── HamsaError                   anything on the Hamsa side
        ├── HamsaConnectError        could not open the realtime socket
        ├── HamsaAuthError           non-retryable: bad key (4001/401/403) or no balance (4003)
        ├── HamsaReplyError          an ``error`` frame, or the socket closed mid-reply
        │   └── UndecodableReply     a reply whose audio the bridge cannot decode
        ├── HamsaTimeout             first byte or end did not come in time
        └── TruncatedReply           a reply far too short for its text (the 640-byte failure)

Protocol cores never raise into the I/O loop for bad *peer* input: they return events describing
the problem. They raise ``InvalidState`` only when our own code misuses them.

This module imports nothing of the project, so every layer can raise from it: the TwiML builders
of the top-level ``twiml`` package raise ``TwimlTooLong`` from here (their one import of
``bridge``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    def __init__(
        self, message: str, *, call_sid: str | None = None, stream_sid: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.call_sid = call_sid
        self.stream_sid = stream_sid

    def __str__(self) -> str:
        ids = [
            f"{k}={v}"
            for k, v in (("call_sid", self.call_sid), ("stream_sid", self.stream_sid))
            if v
        ]
        return f"{self.message} ({', '.join(ids)})" if ids else self.message


class ConfigError(BridgeError):
    pass


class SignatureError(BridgeError):
    pass


class AudioFormatError(BridgeError):
    pass


class InvalidState(BridgeError):
    pass


class PreloadError(BridgeError):
    def __init__(self, message: str, *, voice_id: str, status: int | None = None) -> None:
        super().__init__(message)
        self.voice_id = voice_id
        self.status = status


@dataclass(frozen=True, slots=True)
class FlowError:
    """One problem in an IVR flow file: where it is and what is wrong (``bridge.ivr.load``)."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class FlowInvalid(BridgeError):
    """A flow file cannot be used; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[FlowError]) -> None:
        self.errors = list(errors)
        count = len(self.errors)
        lines = "".join(f"\n  {error}" for error in self.errors)
        super().__init__(f"invalid IVR flow ({count} error{'s' if count != 1 else ''}):{lines}")


class AnnouncementInvalid(BridgeError):
    """An announcement or campaign request that cannot be placed; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class NumberNotAllowed(AnnouncementInvalid):
    """A well-formed number outside ``BRIDGE_ALLOWED_PREFIXES``."""


class TwimlTooLong(BridgeError):
    """A call's TwiML document exceeds Twilio's 4000-character ``Twiml`` limit."""


class TwilioApiError(BridgeError):
    """A Twilio REST call failed; ``status``/``code`` are Twilio's when it answered."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StoreError(BridgeError):
    pass


class TraceError(BridgeError):
    """A Hamsa timing trace (``bridge.hamsa_trace``) cannot be used; the message starts with
    ``FILE:LINE:`` (``FILE:`` alone when the file cannot be read)."""

    def __init__(self, problem: str, *, path: str, line: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {problem}")
        self.problem = problem
        self.path = path
        self.line = line


class CampaignError(BridgeError):
    """A campaign cannot start or go on; the message says what to do."""


class CampaignInvalid(CampaignError):
    """A campaign's file, text or options are wrong; ``problems`` lists each (with its line)."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class CampaignBusy(CampaignError):
    """Another runner holds the campaign's lease and keeps renewing it."""


class LeaseLost(CampaignError):
    """Another runner took the campaign's lease over (this one stalled past its TTL)."""


class HamsaError(BridgeError):
    """Anything that went wrong on the Hamsa side. ``retryable`` says whether to try again."""

    retryable = True
    kind = "reply"
    """The ``kind`` label of ``hamsa_bridge_hamsa_errors_total``."""


class HamsaConnectError(HamsaError):
    kind = "connect"


class HamsaAuthError(HamsaError):
    retryable = False
    kind = "auth"

    def __init__(self, message: str, *, code: int | None = None, **ids: str | None) -> None:
        super().__init__(message, **ids)
        self.code = code


class HamsaReplyError(HamsaError):
    def __init__(self, message: str, *, audio_received: bool = False, **ids: str | None) -> None:
        super().__init__(message, **ids)
        self.audio_received = audio_received


class UndecodableReply(HamsaReplyError):
    """A reply whose audio the bridge cannot decode (an unsupported WAV format)."""

    kind = "audio_format"


class HamsaTimeout(HamsaError):
    kind = "timeout"


class TruncatedReply(HamsaError):
    kind = "truncated"

    def __init__(self, message: str, *, audio_ms: float, threshold_ms: float, **ids: str | None):
        super().__init__(message, **ids)
        self.audio_ms = audio_ms
        self.threshold_ms = threshold_ms
