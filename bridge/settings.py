"""The one typed configuration object.

Built once at the entry point (``Settings.from_env(environment(...))``, or ``Settings(...)`` in
tests) and passed down. Nothing below the entry point reads ``os.environ`` or an env file.
"""

from __future__ import annotations

import io
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.errors import ConfigError
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS
from bridge.protocols.twilio_ids import API_KEY_SID, E164, E164_PREFIX
from bridge.voice import Voice


class Settings(BaseSettings):
    """Every setting of the bridge, its emulators and its CLI (see the README table)."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only explicit values: the entry point hands the environment in through from_env().
        return (init_settings,)

    # --- Hamsa -------------------------------------------------------------------------------
    hamsa_api_key: SecretStr = SecretStr("")
    hamsa_ws_url: str = "wss://api.tryhamsa.com/v1/realtime/ws"
    hamsa_api_url: str = "https://api.tryhamsa.com"
    hamsa_speaker: str = "Majd"
    hamsa_dialect: str = "ksa"
    hamsa_language: str = "ar"
    hamsa_preload_voices: tuple[str, ...] = ()
    hamsa_connect_timeout: float = Field(default=5.0, gt=0)
    hamsa_connect_attempts: int = Field(default=3, ge=1)
    hamsa_first_byte_timeout: float = Field(default=10.0, gt=0)
    hamsa_chunk_timeout: float = Field(default=10.0, gt=0)
    hamsa_truncation_ms_per_char: float = Field(default=12.0, ge=0)
    hamsa_truncation_min_ms: float = Field(default=100.0, ge=0)
    hamsa_truncation_hold_ms: float = Field(default=100.0, ge=0)
    hamsa_retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    hamsa_segment_budget: float = Field(default=20.0, gt=0)
    hamsa_drain_timeout: float = Field(default=1.5, ge=0)
    hamsa_warm_connections: int = Field(default=2, ge=0, le=50)
    """Hamsa sockets kept open ahead of the calls (each taken by one call, then refilled): 0 off."""
    hamsa_stt_timeout: float = Field(default=6.0, gt=0)
    """Seconds for Hamsa's transcript of one utterance (``[THINKING]`` does not extend it)."""
    hamsa_stt_language: str = Field(default="ar", min_length=1)
    """The ``language`` of each speech-to-text request."""

    # --- Twilio ------------------------------------------------------------------------------
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    """Validates Twilio's signatures and keys the stream tokens; authenticates REST requests too
    unless an API key is set."""
    twilio_api_key: str = ""
    """An API key SID (SK…): with ``twilio_api_secret``, REST requests authenticate with it."""
    twilio_api_secret: SecretStr = SecretStr("")
    twilio_api_url: str = "https://api.twilio.com"
    twilio_phone_number: str = ""

    # --- Bridge ------------------------------------------------------------------------------
    bridge_public_url: str = ""
    """Scheme and host only, normalised (``public_base_url``); empty: not set."""
    bridge_greeting: str = "مرحبا بك في خدمة همسة. شكرا لاتصالك."
    bridge_stream_path: str = "/twilio/stream"
    bridge_stream_token_ttl: float = Field(default=300.0, gt=0)
    bridge_start_timeout: float = Field(default=10.0, gt=0)
    bridge_max_pending_streams: int = Field(default=64, ge=1)
    bridge_playback_lead_ms: float = Field(default=220.0, ge=20, le=1000)
    bridge_playback_refill_ms: float = Field(default=80.0, ge=20, le=1000)
    """How far the lead drains before the writer wakes to top it up: refill ÷ 20 ms frames per
    wake, and a smallest margin of lead − 20 ms − refill at Twilio (``PacingClock``). The defaults,
    220 and 80, send 5 frames every 100 ms and never leave Twilio less than 120 ms: the margin
    the earlier 200 and 60 kept, with a fifth fewer wakes (``BENCHMARKS.md``)."""
    bridge_lookahead_seconds: float = Field(default=8.0, gt=0)
    bridge_start_hold_max_ms: float = Field(default=3000.0, ge=0, le=10000)
    """Longest the start policy holds a sentence's audio back (0: play from the first byte)."""
    bridge_start_margin_ms: float = Field(default=200.0, ge=0, le=2000)
    """Safety added to the start policy's predicted wait (network and scheduling jitter)."""
    bridge_max_text_chars: int = Field(default=MAX_TEXT_CHARS, ge=50, le=MAX_TEXT_CHARS)
    bridge_min_sentence_chars: int = Field(default=30, ge=0)
    bridge_ivr_flow: str = ""
    bridge_prompt_cache_dir: str = ""
    bridge_prompt_cache_mb: int = Field(default=32, ge=0)
    bridge_prompt_cache_min_ms_per_char: float = Field(default=40.0, ge=0)
    bridge_speech_start_pad_ms: int = Field(default=300, ge=0, le=1000)
    """Caller audio kept from before an utterance's detected start (``UtteranceDetector``)."""
    bridge_speech_end_silence_ms: int = Field(default=700, ge=200, le=3000)
    """Silence that ends an utterance (kept in it as end padding)."""
    bridge_speech_max_seconds: float = Field(default=10.0, ge=1, le=30)
    """The longest utterance: cut there and sent to speech-to-text."""
    bridge_speech_vad_mode: int = Field(default=2, ge=0, le=3)
    """webrtcvad's aggressiveness: 0 (calls most things speech) to 3 (least)."""
    bridge_speech_no_input_seconds: float = Field(default=5.0, gt=0, le=60)
    """Silence before a script listening for speech gives up, when it does not say."""
    bridge_log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    bridge_log_level: str = "info"

    # --- Operations --------------------------------------------------------------------------
    bridge_max_calls: int = Field(default=100, ge=1)
    """Concurrent calls (streams whose `start` was accepted); at it new handshakes get 503."""
    bridge_drain_timeout: float = Field(default=600.0, ge=0)
    """On SIGTERM, how long calls in progress may continue before they are ended."""
    bridge_metrics_port: int = Field(default=0, ge=0, le=65535)
    """0: ``/metrics`` on the main port; otherwise only on this (internal) port."""
    bridge_stall_report_ms: float = Field(default=0.0, ge=0, le=10000)
    """Log what the event loop was doing whenever it stalls this long or longer (a watchdog
    thread, ``bridge.stall_report``; well under 1 % of a core): 0, off."""
    bridge_gc_tick_ms: float = Field(default=250.0, ge=0, le=10000)
    """Collect the cyclic GC's young generations this often (``bridge.gc_clock``), so no
    collection scans a backlog and stalls every call: 0, only CPython's automatic collections."""
    bridge_workers: int = Field(default=0, ge=0, le=256)
    """``serve``'s processes sharing its port (``bridge.workers``): 0, one per usable CPU; 1, one
    process and no supervisor (containers: scale with replicas)."""

    # --- Outbound announcements and campaigns ------------------------------------------------
    bridge_database_url: str = "sqlite:///hamsa-bridge.db"
    bridge_api_token: SecretStr = SecretStr("")
    bridge_allowed_prefixes: tuple[str, ...] = ()
    bridge_calls_per_second: float = Field(default=1.0, gt=0, le=100)
    bridge_max_concurrent_calls: int = Field(default=10, ge=1)
    bridge_ring_timeout: int = Field(default=30, ge=5, le=600)
    bridge_announce_token_ttl: float = Field(default=900.0, gt=0)
    bridge_confirm_wait: float = Field(default=6.0, gt=0)
    bridge_confirm_max_repeats: int = Field(default=3, ge=0)
    bridge_outcome_poll_interval: float = Field(default=2.0, gt=0)
    bridge_callback_grace: float = Field(default=10.0, ge=0)
    bridge_presynth_connections: int = Field(default=4, ge=0, le=100)
    """Hamsa sockets one process uses at once to synthesise announcements while they ring
    (the bridge for the API, the ``announce``/``campaign`` commands for theirs): 0 disables."""

    @field_validator("bridge_api_token")
    @classmethod
    def _check_api_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token and len(token) < 16:
            raise ValueError("must be at least 16 characters (a random secret)")
        return value

    @field_validator("twilio_api_key")
    @classmethod
    def _check_api_key(cls, value: str) -> str:
        # The value is never shown: a secret pasted into the wrong variable must not be printed.
        if value and not API_KEY_SID.fullmatch(value):
            raise ValueError(
                "is not an API key SID (SK followed by 32 hex digits: the key's SID in the Twilio "
                "console, API keys & tokens); the key's secret goes in TWILIO_API_SECRET"
            )
        return value

    @model_validator(mode="after")
    def _check_api_key_pair(self) -> Settings:
        if bool(self.twilio_api_key) != bool(self.twilio_api_secret.get_secret_value()):
            missing = "TWILIO_API_SECRET" if self.twilio_api_key else "TWILIO_API_KEY"
            raise ValueError(
                f"TWILIO_API_KEY and TWILIO_API_SECRET go together: set {missing} too, or "
                "neither (REST requests then use TWILIO_AUTH_TOKEN)"
            )
        return self

    @field_validator("hamsa_preload_voices", mode="before")
    @classmethod
    def _split_voices(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("bridge_allowed_prefixes", mode="before")
    @classmethod
    def _split_prefixes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("bridge_allowed_prefixes")
    @classmethod
    def _check_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            if not E164_PREFIX.fullmatch(prefix):
                raise ValueError(f"{prefix!r} is not a dialling prefix such as +966 or +9715")
        return value

    @field_validator("bridge_database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                "must be sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://…"
            )
        return value

    @field_validator("hamsa_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        return value

    @field_validator("bridge_public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        return public_base_url(value) if value else value

    @field_validator("twilio_phone_number")
    @classmethod
    def _check_phone_number(cls, value: str) -> str:
        value = value.strip()
        if value and not E164.match(value):
            raise ValueError("must be an E.164 number such as +966501234567")
        return value

    @field_validator("bridge_stream_path")
    @classmethod
    def _check_stream_path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value:
            raise ValueError("must be an absolute path without a query string")
        return value

    @model_validator(mode="after")
    def _check_greeting(self) -> Settings:
        if not self.bridge_greeting.strip():
            raise ValueError("BRIDGE_GREETING must not be empty")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from an explicit environment mapping (the entry point passes
        ``environment(os.environ, ...)``: the process environment over ``.env``)."""
        names = {name.upper() for name in cls.model_fields}
        values = {k.lower(): v for k, v in environ.items() if k.upper() in names}
        return cls.model_validate(values)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret this configuration holds (the log redactor removes them from output)."""
        values = [
            secret.get_secret_value()
            for secret in (
                self.twilio_auth_token,
                self.twilio_api_secret,
                self.hamsa_api_key,
                self.bridge_api_token,
            )
        ]
        password = urlsplit(self.bridge_database_url).password
        if password:
            values.append(password)
        return tuple(value for value in values if value)

    @property
    def twilio_rest_auth(self) -> tuple[str, str]:
        """HTTP Basic ``(user, password)`` of Twilio REST requests: the API key SID and its
        secret when set, else the account SID and auth token. The account SID stays in the
        URL path either way; signatures are always the auth token's."""
        if self.twilio_api_key:
            return self.twilio_api_key, self.twilio_api_secret.get_secret_value()
        return self.twilio_account_sid, self.twilio_auth_token.get_secret_value()

    @property
    def voice(self) -> Voice:
        """The default voice for prompts."""
        return Voice(self.hamsa_speaker, self.hamsa_dialect, self.hamsa_language)

    @property
    def stream_url(self) -> str:
        """The exact ``wss://`` (or ``ws://`` for a plain-http dev URL) URL Twilio streams to."""
        base = self.bridge_public_url
        if base.startswith("https://"):
            base = "wss://" + base.removeprefix("https://")
        elif base.startswith("http://"):
            base = "ws://" + base.removeprefix("http://")
        return base + self.bridge_stream_path

    @property
    def status_callback_url(self) -> str:
        """Where Twilio posts call-status callbacks for calls to our numbers."""
        return self.bridge_public_url + "/twilio/status"

    @property
    def inbound_webhook_url(self) -> str:
        return self.bridge_public_url + "/twiml/inbound"

    def webhook_url(self, path: str) -> str:
        """The public URL Twilio signs for a webhook path."""
        return self.bridge_public_url + path


EXAMPLE_PUBLIC_URL = "https://bridge.example.com"
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_base_url(value: str) -> str:
    """``BRIDGE_PUBLIC_URL`` as the bridge uses it, or ``ValueError`` naming the bad part and the
    fix. Scheme and host only: ``https://`` (port 443, written or not) or ``http://`` on a
    loopback host (the emulators; any port). A lone trailing ``/`` and an explicit ``:443`` are
    dropped: the result is the one form Twilio signs (no port for https)."""
    fix = EXAMPLE_PUBLIC_URL
    if any(c.isspace() for c in value):
        what = "a space" if " " in value else "whitespace"
        raise ValueError(f"{value!r} contains {what}: give scheme and host only, e.g. {fix}")
    _, sep, rest = value.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in authority:
        host = authority.rpartition("@")[2].partition(":")[0] or "bridge.example.com"
        raise ValueError(
            "has a user name or password before the host (the value is not shown): give scheme "
            f"and host only, e.g. https://{host}"
        )
    if not sep:
        host = value.split("/", 1)[0]
        if _HOST_NAME.fullmatch(host):
            raise ValueError(f"{value!r} has no scheme: give scheme and host, e.g. https://{host}")
        raise ValueError(f"{value!r} is not scheme://host: give scheme and host, e.g. {fix}")
    try:
        parts = urlsplit(value)
    except ValueError:  # an unclosed [ of an IPv6 address
        raise ValueError(
            f"{value!r} has an invalid host: give scheme and host, e.g. {fix}"
        ) from None
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    fix = f"https://{shown}" if host else fix
    if parts.scheme in ("ws", "wss"):
        raise ValueError(
            f"{value!r} is a WebSocket URL: give the https:// base URL (the bridge derives its "
            f"wss:// stream URL from it), e.g. {fix}"
        )
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an https:// URL: give scheme and host, e.g. {fix}")
    if not host:
        raise ValueError(f"{value!r} has no host: give scheme and host, e.g. {fix}")
    if not (is_loopback(host) or _is_ip(host) or _HOST_NAME.fullmatch(host)):
        raise ValueError(
            f'{value!r} has an invalid host name ("{host}"): give scheme and host, e.g. '
            f"{EXAMPLE_PUBLIC_URL} (an internationalised name in its xn-- form)"
        )
    # the host as written (Twilio signs the URL as configured, case included), without the port
    if authority.startswith("["):
        written = authority[: authority.index("]") + 1]
    else:
        written = authority.partition(":")[0]
    try:
        port = parts.port
    except ValueError:
        port_text = authority.rpartition(":")[2]
        raise ValueError(
            f'{value!r} has an invalid port ("{port_text}"): give scheme and host only, e.g. {fix}'
        ) from None
    for what, present, part in (
        ("a path", parts.path not in ("", "/"), parts.path),
        ("a query", "?" in value, "?" + parts.query),
        ("a fragment", "#" in value, "#" + parts.fragment),
    ):
        if present:
            raise ValueError(
                f'{value!r} has {what} ("{part}"): give scheme and host only, e.g. {fix}'
            )
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(
            f"{value!r} uses http:// on a host that is not this machine (http:// is only for "
            f"localhost, 127.0.0.0/8 and [::1]: the emulators): give https://, e.g. {fix}"
        )
    if parts.scheme == "https" and port not in (None, 443):
        raise ValueError(
            f"{value!r} has port {port}, but Twilio reaches https:// only on port 443: drop the "
            f"port (a TLS proxy on 443 forwards to the bridge), e.g. {fix}"
        )
    keep_port = parts.scheme == "http" and port is not None
    return f"{parts.scheme}://{written}" + (f":{port}" if keep_port else "")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


DOTENV = ".env"
"""The env file read from the working directory when present (``--env-file`` chooses another)."""


def environment(
    os_environ: Mapping[str, str], env_file: Path | None = None, cwd: Path | None = None
) -> dict[str, str]:
    """The variables settings are built from: an env file overlaid by ``os_environ`` (a variable
    of the process environment wins over the file's, whatever the case of its name).

    The file is ``env_file`` (``--env-file``; relative to ``cwd`` when given; it must exist), else
    ``cwd/.env`` when ``cwd`` is given and that file exists, else none. ``ConfigError`` names the
    file when it is missing, unreadable or has a line that is not ``NAME=value``.
    """
    if env_file is not None:
        path = cwd / env_file if cwd is not None else env_file
        if not path.is_file():
            where = "" if env_file.is_absolute() else f" ({path.absolute()})"
            what = "is not a file" if path.exists() else "no such file"
            raise ConfigError(f"--env-file {env_file}: {what}{where}")
    elif cwd is not None and (cwd / DOTENV).is_file():
        path = cwd / DOTENV
    else:
        return dict(os_environ)
    overridden = {name.upper() for name in os_environ}
    from_file = {
        name: value for name, value in read_env_file(path).items() if name.upper() not in overridden
    }
    return from_file | dict(os_environ)


def read_env_file(path: Path) -> dict[str, str]:
    """The ``NAME=value`` lines of an env file, read as python-dotenv does, without expanding
    ``${VAR}`` (as systemd's ``EnvironmentFile=`` and ``docker --env-file`` read them too).
    A bare ``NAME`` line sets nothing. ``ConfigError`` for an unreadable file or a line that
    cannot be parsed (the line itself is not shown: it may hold a secret)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    bad = [binding.original.line for binding in parse_stream(io.StringIO(text)) if binding.error]
    if bad:
        lines = ", ".join(str(line) for line in bad)
        raise ConfigError(
            f"{path}: line {lines} is not NAME=value"
            if len(bad) == 1
            else f"{path}: lines {lines} are not NAME=value"
        )
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {name: value for name, value in values.items() if value is not None}
