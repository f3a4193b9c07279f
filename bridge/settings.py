"""The one typed configuration object.

Built once at the entry point (``Settings.from_env()`` or ``Settings(...)`` in tests) and passed
down. Nothing below the entry point reads ``os.environ``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.voice import Voice

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


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

    # --- Twilio ------------------------------------------------------------------------------
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_api_url: str = "https://api.twilio.com"
    twilio_phone_number: str = ""

    # --- Bridge ------------------------------------------------------------------------------
    bridge_public_url: str = ""
    bridge_greeting: str = "مرحبا بك في خدمة همسة. شكرا لاتصالك."
    bridge_stream_path: str = "/twilio/stream"
    bridge_stream_token_ttl: float = Field(default=300.0, gt=0)
    bridge_start_timeout: float = Field(default=10.0, gt=0)
    bridge_max_pending_streams: int = Field(default=64, ge=1)
    bridge_playback_lead_ms: float = Field(default=200.0, ge=20, le=1000)
    bridge_lookahead_seconds: float = Field(default=8.0, gt=0)
    bridge_start_hold_max_ms: float = Field(default=3000.0, ge=0, le=10000)
    """Longest the start policy holds a sentence's audio back (0: play from the first byte)."""
    bridge_start_margin_ms: float = Field(default=200.0, ge=0, le=2000)
    """Safety added to the start policy's predicted wait (network and scheduling jitter)."""
    bridge_max_text_chars: int = Field(default=2000, ge=50, le=2000)
    bridge_min_sentence_chars: int = Field(default=30, ge=0)
    bridge_ivr_flow: str = ""
    bridge_prompt_cache_dir: str = ""
    bridge_prompt_cache_mb: int = Field(default=32, ge=0)
    bridge_prompt_cache_min_ms_per_char: float = Field(default=40.0, ge=0)
    bridge_log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    bridge_log_level: str = "info"

    # --- Operations --------------------------------------------------------------------------
    bridge_max_calls: int = Field(default=100, ge=1)
    """Concurrent calls (streams whose `start` was accepted); at it new handshakes get 503."""
    bridge_drain_timeout: float = Field(default=600.0, ge=0)
    """On SIGTERM, how long calls in progress may continue before they are ended."""
    bridge_metrics_port: int = Field(default=0, ge=0, le=65535)
    """0: ``/metrics`` on the main port; otherwise only on this (internal) port."""

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
            raise ValueError("BRIDGE_API_TOKEN must be at least 16 characters (a random secret)")
        return value

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
            if not re.fullmatch(r"\+[1-9][0-9]{0,14}", prefix):
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
        value = value.rstrip("/")
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    "must be an absolute http(s) URL such as https://bridge.example.com"
                )
            if parts.query or parts.fragment:
                raise ValueError("must not carry a query string or fragment")
        return value

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
        """Settings from an explicit environment mapping (the entry point passes os.environ)."""
        names = {name.upper() for name in cls.model_fields}
        values = {k.lower(): v for k, v in environ.items() if k.upper() in names}
        return cls.model_validate(values)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret this configuration holds (the log redactor removes them from output)."""
        values = [
            secret.get_secret_value()
            for secret in (self.twilio_auth_token, self.hamsa_api_key, self.bridge_api_token)
        ]
        password = urlsplit(self.bridge_database_url).password
        if password:
            values.append(password)
        return tuple(value for value in values if value)

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
