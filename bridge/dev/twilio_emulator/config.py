"""What the Twilio emulator can be told: the account, its phone numbers, what callees do."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from bridge.dev.twilio_emulator import rest_model as rest

__all__ = [
    "ANSWERED_BY",
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "ApiKey",
    "NumberConfig",
    "Outcome",
    "OutcomeStatus",
    "TwilioEmulatorConfig",
]

DEFAULT_ACCOUNT_SID: Final = "AC" + "0" * 31 + "1"
DEFAULT_AUTH_TOKEN: Final = "0123456789abcdef0123456789abcdef"  # noqa: S105 - a fake

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
    answers: tuple[str, ...] = ()
    """Keys the callee presses in answer to prompts that wait for input (see
    :attr:`~bridge.dev.media_leg.CallerBehaviour.answers`): one string per prompt."""
    hangup_after: float | None = None
    """The callee hangs up this long after a stream's ``start``."""
    echo_marks: bool = True
    """False: the call's streams never echo marks (Twilio's echoes lost)."""

    def __post_init__(self) -> None:
        if self.status not in _OUTCOME_STATUSES:
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
class ApiKey:
    """An API key of the emulated account (https://www.twilio.com/docs/iam/api-keys): its SID
    (``SK…``, the key of :attr:`TwilioEmulatorConfig.api_keys`) and :attr:`secret` authenticate
    REST requests as the HTTP Basic user and password, the account's SID staying in the path."""

    secret: str
    main: bool = False
    """A Main key may use every resource. A Standard key (the default, and the only kind the Keys
    API creates) may use all but the Account resource (``/Accounts/{Sid}.json``) and the Keys
    (which the emulator does not serve): there it gets 401/20003, as on Twilio."""


@dataclass(frozen=True)
class TwilioEmulatorConfig:
    """Everything the emulator can be told. Defaults: fast (tests), signed, checked."""

    account_sid: str = DEFAULT_ACCOUNT_SID
    auth_token: str = DEFAULT_AUTH_TOKEN
    api_keys: Mapping[str, ApiKey | str] = field(default_factory=dict)
    """The account's API keys: SID (``SK…``) → :class:`ApiKey`, or its secret for a Standard
    key. REST requests authenticate with the account SID and auth token, or with one of these."""
    friendly_name: str = "Hamsa bridge Twilio emulator"
    numbers: Mapping[str, NumberConfig | Mapping[str, Any]] = field(default_factory=dict)
    """The account's phone numbers: E.164 → :class:`NumberConfig` (or a mapping of its fields)."""
    ring_seconds: float = 0.05
    """How long an outbound call rings before it is answered (real phones: ~2–10 s)."""
    outcomes: Mapping[str, Outcome | str] = field(default_factory=dict)
    """Per destination (``To``) of outbound calls: an :class:`Outcome` or a word for one."""
    default_outcome: Outcome | str = field(default_factory=Outcome)
    drop_status_callbacks: frozenset[str] = frozenset()
    """Destinations (``To``) of outbound calls whose call-progress status callbacks are never
    delivered (a bridge Twilio cannot reach): their outcome is learnt by polling alone."""
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

    def __post_init__(self) -> None:
        if not rest.is_sid(self.account_sid, "AC"):
            raise ValueError("account_sid must be 'AC' followed by 32 hex digits")
        if not self.auth_token:
            raise ValueError("auth_token must not be empty")
        for sid, key in self.api_keys.items():
            if not rest.is_sid(sid, "SK"):
                raise ValueError(f"API key SID {sid!r} is not 'SK' followed by 32 hex digits")
            if not (key.secret if isinstance(key, ApiKey) else key):
                raise ValueError(f"API key {sid}: the secret must not be empty")
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

    def api_key(self, sid: str) -> ApiKey | None:
        key = self.api_keys.get(sid)
        return ApiKey(key) if isinstance(key, str) else key

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
