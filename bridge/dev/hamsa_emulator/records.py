"""What the emulator saw: connections, requests, preloads, and the shared state."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bridge.dev.espeak import (
    EspeakError,
    render,
)
from bridge.dev.hamsa_emulator.config import EmulatorConfig, Fault, SttFault, _draw
from bridge.dev.hamsa_emulator.wire import _SPEECH_CACHE_ENTRIES, logger
from bridge.dev.tone import synthesize


@dataclass
class ConnectionRecord:
    """One upgrade attempt on ``/v1/realtime/ws``."""

    id: int
    opened_at: float
    auth_ok: bool | None = None
    auth_via: str | None = None
    """``"header"`` (X-Api-Key), ``"query"`` (api_key), ``"authorization"`` or ``None``."""
    refused_status: int | None = None
    """HTTP status if the upgrade was denied (503 refusal, 401/403 auth)."""
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    closed_by: Literal["server", "client"] | None = None


@dataclass
class RequestRecord:
    """One ``tts`` frame and what the emulator answered."""

    number: int
    connection_id: int
    text: str | None
    payload: dict[str, Any]
    received_at: float
    fault: Fault | None = None
    mulaw: bool = False
    error: str | None = None
    """The message of the ``error`` frame sent for this request, if any."""
    acked_at: float | None = None
    audio: bytes = b""
    """The exact audio bytes sent, excluding any WAV header."""
    header: bytes = b""
    """WAV header bytes sent (header faults only)."""
    frames: list[int] = field(default_factory=list)
    """Size of every binary frame sent, header bytes included."""
    first_audio_at: float | None = None
    """``time.monotonic()`` just before the first binary frame carrying audio was sent."""
    end_at: float | None = None
    """``time.monotonic()`` just before ``end`` was sent."""


@dataclass
class SttRecord:
    """One ``stt`` frame and what the emulator answered."""

    number: int
    """The global request number (shared with ``tts``: the order of requests of both kinds)."""
    stt_number: int
    """The 1-based number among ``stt`` requests only (the key of
    :attr:`EmulatorState.stt_faults`)."""
    connection_id: int
    received_at: float
    language: Any = None
    eos: Any = None
    """The request's ``isEosEnabled``, as sent."""
    audio_seconds: float | None = None
    """The WAV's length; ``None`` if it could not be read."""
    recognized: str | None = None
    """What :func:`bridge.dev.stt_tones.recognize` heard (``""``: no tones)."""
    fault: SttFault | None = None
    answer: str | None = None
    """The transcript sent (text or JSON form, or the bytes of a binary frame decoded)."""
    answered_via: Literal["text", "json", "binary", "error", "thinking", "none"] | None = None
    """How it was answered; ``None`` until it is."""
    error: str | None = None
    """The message of the ``error`` frame sent, if any."""
    answered_at: float | None = None


@dataclass
class PreloadRecord:
    """One ``POST /v2/tts/voices/custom/preload``."""

    voice_id: Any
    auth: str
    """``"token"``, ``"bearer"``, ``"missing"`` or ``"other"`` (the scheme, not the key)."""
    status: int
    at: float


class EmulatorState:
    """The live state and records of one emulator app (``app.state.emulator``).

    Handlers read :attr:`config` and :attr:`faults` on every use, so a test may replace either
    while the emulator runs. Timestamps are ``time.monotonic()``.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.faults: dict[int, Fault] = dict(config.faults)
        self.connections: list[ConnectionRecord] = []
        self.requests: list[RequestRecord] = []
        self.stt_requests: list[SttRecord] = []
        self.stt_faults: dict[int, SttFault] = dict(config.stt_faults)
        self.stt_count = 0
        self.preloads: list[PreloadRecord] = []
        self.preloaded: set[str] = set()
        self.upgrades = 0
        self.request_count = 0
        # Seeded for reproducibility, not security.
        self._fault_rng = random.Random(f"faults:{config.seed}")  # noqa: S311
        self._latency_rng = random.Random(f"latency:{config.seed}")  # noqa: S311
        self._stt_rng = random.Random(f"stt:{config.seed}")  # noqa: S311
        self._text_requests: dict[str, int] = {}
        self.connects_started = 0
        """Upgrades that began their connect delay (replay: the j-th takes the j-th delay)."""
        self._changed = asyncio.Event()
        self._speech: dict[tuple[str, bool, str], asyncio.Future[bytes | None]] = {}

    # --- used by the handlers

    def notify(self) -> None:
        """Wake every :meth:`wait_until` (call after any change to the records)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def next_request(self) -> int:
        self.request_count += 1
        return self.request_count

    def fault_for(self, number: int) -> Fault | None:
        fault = self.faults.get(number)
        rate = self.config.truncate_rate
        if fault is None and rate > 0 and self._fault_rng.random() < rate:
            fault = Fault.TRUNCATE_640
        return fault

    def next_stt(self) -> tuple[int, int]:
        """The global and the ``stt``-only number of the next ``stt`` request."""
        self.stt_count += 1
        return self.next_request(), self.stt_count

    def stt_plan(self, stt_number: int) -> tuple[SttFault | None, float]:
        """The fault (explicit, else drawn from the error and thinking rates) and the delay of
        ``stt`` request ``stt_number``. Draw order per request: delay, error, thinking."""
        cfg, rng = self.config, self._stt_rng
        delay = _draw(rng, cfg.stt_delay)
        error, thinking = rng.random(), rng.random()
        fault = self.stt_faults.get(stt_number)
        if fault is None and error < cfg.stt_error_rate:
            fault = SttFault.ERROR
        elif fault is None and thinking < cfg.stt_thinking_rate:
            fault = SttFault.THINKING
        return fault, delay

    def reply_rngs(self, number: int, text: str) -> tuple[random.Random, random.Random]:
        """The RNGs of request ``number``'s reply: its cuts (seeded by seed, number and text)
        and its timing (one sequence shared by all requests in arrival order); with
        :attr:`EmulatorConfig.draws_per_text` both seeded by (seed, n, text), n counting the
        requests for that text so far. (Two RNGs, so the draws of configurations that predate
        the delivery models stay what they were.)"""
        seed = self.config.seed
        if not self.config.draws_per_text:
            return random.Random(f"{seed}:{number}:{text}"), self._latency_rng  # noqa: S311
        n = self._text_requests[text] = self._text_requests.get(text, 0) + 1
        return (
            random.Random(f"{seed}:text{n}:{text}"),  # noqa: S311
            random.Random(f"latency:{seed}:{n}:{text}"),  # noqa: S311
        )

    def reset_draws(self) -> None:
        """Forget the per-text request counts (:attr:`EmulatorConfig.draws_per_text`): the next
        request for any text draws as the first did."""
        self._text_requests.clear()

    async def audio_for(self, text: str, mulaw: bool) -> bytes:
        """The whole audio of ``text`` (8 kHz μ-law, or 16 kHz PCM16), as
        :attr:`EmulatorConfig.speech` says. Tones return without yielding to the event loop;
        espeak-ng renders each (text, format, voice) once, concurrent requests sharing it. A
        failed rendering gives the tones, with a warning, and is not cached: the next request
        for the text tries espeak-ng again."""
        cfg = self.config
        tones = cfg.speech == "tones"
        if not tones:
            key = (text, mulaw, cfg.espeak_voice)
            future = self._speech.get(key)
            if future is None:
                while len(self._speech) >= _SPEECH_CACHE_ENTRIES:
                    del self._speech[next(iter(self._speech))]
                future = asyncio.ensure_future(self._espeak(text, mulaw, cfg))
                self._speech[key] = future
            audio = await asyncio.shield(future)
            if audio is not None:
                return audio
            if self._speech.get(key) is future:
                del self._speech[key]
        return synthesize(text, mulaw=mulaw, ms_per_char=cfg.ms_per_char)

    @staticmethod
    async def _espeak(text: str, mulaw: bool, cfg: EmulatorConfig) -> bytes | None:
        try:
            return await render(
                text, mulaw=mulaw, voice=cfg.espeak_voice, time_limit=cfg.espeak_timeout
            )
        except EspeakError as exc:
            logger.warning("Hamsa emulator: %s; tones instead for %r", exc, text[:60])
            return None

    def connect_delay(self) -> float:
        """The delay of the next upgrade (see :attr:`EmulatorConfig.replay`)."""
        self.connects_started += 1
        cfg = self.config
        delays = cfg.replay.connect_delays if cfg.replay is not None else ()
        if not delays:
            return cfg.connect_delay
        return delays[(self.connects_started - 1) % len(delays)]

    def key_ok(self, key: str | None) -> bool:
        if not key:
            return False
        keys = self.config.api_keys
        return keys is None or key in keys

    # --- used by tests

    async def wait_until(self, predicate: Callable[[EmulatorState], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checking after every change to the records.

        Bound it with ``asyncio.timeout()``.
        """
        while not predicate(self):
            await self._changed.wait()

    def snapshot(self, *, include_audio: bool = False) -> dict[str, Any]:
        """All records as JSON-ready data (what ``GET /_emulator/log`` returns)."""
        requests = []
        for r in self.requests:
            item = asdict(r)
            item["fault"] = r.fault.value if r.fault else None
            item["audio_bytes"] = len(r.audio)
            item["audio_sha256"] = hashlib.sha256(r.audio).hexdigest()
            item["header"] = base64.b64encode(r.header).decode()
            item["audio"] = base64.b64encode(r.audio).decode() if include_audio else None
            requests.append(item)
        stt_requests = []
        for record in self.stt_requests:
            item = asdict(record)
            item["fault"] = record.fault.value if record.fault else None
            stt_requests.append(item)
        return {
            "upgrades": self.upgrades,
            "request_count": self.request_count,
            "connections": [asdict(c) for c in self.connections],
            "requests": requests,
            "stt_requests": stt_requests,
            "preloads": [asdict(p) for p in self.preloads],
            "preloaded": sorted(self.preloaded),
        }
