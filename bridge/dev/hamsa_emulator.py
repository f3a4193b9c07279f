"""A faithful local Hamsa: the realtime TTS WebSocket and the custom-voice preload endpoint.

Behind ``hamsa-bridge emulate-hamsa`` (for users without a Hamsa account) and the peer the test
suite runs against. It reproduces the wire format of ``docs/hamsa-api.md`` §11 byte for byte
(misspellings included), Hamsa's observed timing (§3.5), and, on request, every failure the
bridge must survive (§2, §3.4, §4, §5.3): all deterministic, so a test can say "the third request
gets the 640-byte reply" and a rerun does the same.

Routes
------

* ``WS /v1/realtime/ws`` — auth by ``X-Api-Key`` header, ``api_key`` query or
  ``Authorization: Token KEY`` (``Bearer`` too). Sends ``info`` at once; for each ``tts`` frame,
  strictly FIFO: ``ack``, the text's audio in irregular binary frames, ``end``. The audio is
  :func:`bridge.dev.tone.synthesize`'s one tone per character (the default: deterministic), or
  with :attr:`EmulatorConfig.speech` ``"espeak"`` the text spoken by espeak-ng's Arabic voice
  (:mod:`bridge.dev.espeak`).
* ``POST /v2/tts/voices/custom/preload`` — ``{"voiceId": UUID}`` with Token/Bearer auth.
* ``GET /_emulator/log`` — everything recorded, as JSON (``?audio=base64`` adds the audio).

Timing: a named delivery model (:meth:`EmulatorConfig.model`, :data:`DELIVERY_MODELS`:
``instant``, ``realistic``, ``observed``, ``slow``, ``bursty``, ``fast``) or any mix of the
fields; each reply's schedule is the pure :func:`reply_schedule` of seeded draws, and its frames
go at absolute times from the ``ack`` (sending time never accumulates). Or the timing of a trace
recorded from the real API (:attr:`EmulatorConfig.replay`, :mod:`bridge.hamsa_trace`).

Everything lives in one :class:`EmulatorState` per app (``app.state.emulator``); the module
holds no mutable state. Request numbers are global and 1-based: every ``tts`` frame, on every
connection, valid or not, takes the next number when the emulator starts working on it; faults
are keyed by that number.

Run it in-process on an ephemeral port (tests)::

    async with EmulatorServer(EmulatorConfig(api_keys=frozenset({"k"}))) as emu:
        url = emu.ws_url            # ws://127.0.0.1:<port>/v1/realtime/ws
        ...
        async with asyncio.timeout(2):
            await emu.state.wait_until(lambda s: len(s.requests) == 1)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import enum
import hashlib
import itertools
import json
import logging
import math
import random
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from bridge.dev.espeak import (
    DEFAULT_TIMEOUT,
    DEFAULT_VOICE,
    EspeakError,
    Speech,
    render,
    resolve_speech,
)
from bridge.dev.servers import (
    AppServer,
    port_problem,
    quiet_uvicorn,
    reachable_url,
    serve_until_stopped,
)
from bridge.dev.tone import MULAW_RATE, PCM_RATE, synthesize
from bridge.errors import TraceError
from bridge.hamsa_trace import Trace, TraceRequest, detect_format, read_trace
from bridge.settings import Settings

__all__ = [
    "ACK_FRAME",
    "DEFAULT_API_KEY",
    "DELIVERY_MODELS",
    "END_FRAME",
    "INFO_FRAME",
    "MODEL_SUMMARIES",
    "PRELOAD_OK_BODY",
    "ConnectionRecord",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "PreloadRecord",
    "Range",
    "RequestRecord",
    "canonical_pcm16_header",
    "create_emulator_app",
    "replay_schedule",
    "reply_schedule",
    "run_emulator",
    "run_emulator_command",
    "serve_emulator",
    "startup_lines",
    "streaming_mulaw_header",
]

logger = logging.getLogger(__name__)

# --- wire constants (docs/hamsa-api.md §2, §3.2, §7; verbatim, misspellings included) -----------

INFO_FRAME: Final = (
    '{"type": "info", "payload": {"message": "Connected to realtime WebSocket server"}}'
)
ACK_FRAME: Final = (
    '{"type": "ack", "payload": {"message": "Real time text to speach connection establesh"}}'
)
END_FRAME: Final = '{"type": "end", "payload": {"message": "End of TTS stream"}}'
PRELOAD_OK_BODY: Final[Mapping[str, Any]] = {
    "success": True,
    "message": "Custom voice have been preloaded successfully",
    "data": [],
}
DEFAULT_API_KEY: Final = "emulator-key"

MAX_TEXT_CHARS: Final = 2000
ABORTED_MESSAGE: Final = "TTS stream error: aborted"
TRUNCATED_BYTES: Final = 640

_SPEECH_CACHE_ENTRIES: Final = 1024
"""espeak-ng renderings kept per emulator (the oldest go first)."""
_UUID_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
_WS_PATH: Final = "/v1/realtime/ws"
_AUTH_FAILED: Final = "Authentication failed: invalid or missing API key"
_NO_FUNDS: Final = "Insufficient funds: project wallet balance depleted"


def _error_frame(message: str) -> str:
    return json.dumps({"type": "error", "payload": {"message": message}}, ensure_ascii=False)


def streaming_mulaw_header() -> bytes:
    """A streaming WAV header for 8 kHz mono μ-law: ``RIFF`` and ``data`` sizes ``0xFFFFFFFF``.

    The ``fmt `` chunk is the 18-byte non-PCM form (``cbSize`` 0), so the header is 46 bytes, not
    44: a client that cuts a fixed 44 bytes plays two header bytes as audio (§5.4).
    """
    fmt = struct.pack("<HHIIHHH", 7, 1, MULAW_RATE, MULAW_RATE, 1, 8, 0)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def canonical_pcm16_header(data_size: int) -> bytes:
    """The canonical 44-byte WAV header for ``data_size`` bytes of 16 kHz mono s16le PCM."""
    fmt = struct.pack("<HHIIHH", 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )


# --- configuration -----------------------------------------------------------------------------


class Fault(enum.Enum):
    """A deterministic failure for one request (see :attr:`EmulatorConfig.faults`)."""

    TRUNCATE_640 = "truncate_640"
    """``ack``, one 640-byte binary frame (the first 640 bytes of the real audio), normal ``end``,
    no error: the "640-byte" failure of §4."""
    TRUNCATE_3X640 = "truncate_3x640"
    """``ack``, three 640-byte binary frames (the first 1920 bytes of the real audio), normal
    ``end``: a short reply long enough to pass a hold of 200 ms ("3 audio chunks (640 bytes
    each)", §4)."""
    ERROR = "error"
    """``ack``, then an ``error`` frame (``TTS stream error: aborted``) and no ``end``."""
    ERROR_THEN_END = "error_then_end"
    """``ack``, an ``error`` frame, then a normal ``end``."""
    CLOSE_MID_REPLY = "close_mid_reply"
    """``ack``, about half of the audio frames (at least one), then close 1011."""
    CLOSE_AFTER_END = "close_after_end"
    """A complete normal reply, then close 1000 ("Hamsa drops the socket between utterances")."""
    CLOSE_4001 = "close_4001"
    """No reply: close 4001 (authentication failed) as the request arrives."""
    CLOSE_4003 = "close_4003"
    """No reply: close 4003 (insufficient funds) as the request arrives."""
    CLOSE_4500 = "close_4500"
    """No reply: close 4500 (internal authentication error) as the request arrives."""
    CLOSE_1001 = "close_1001"
    """No reply: close 1001 (server going away) as the request arrives."""
    NEVER_END = "never_end"
    """``ack`` and all the audio, then nothing: the socket stays open and answers no further
    ``tts`` (the connection is wedged)."""
    ENDLESS = "endless"
    """``ack``, the reply's audio, then the same audio again and again, frame after frame, never
    ``end``: a reply that never ends while it keeps streaming. After the first pass each frame
    follows the previous one after its audio duration (divided by
    :attr:`EmulatorConfig.synthesis_speed` if set: real time otherwise), until the client closes
    the socket."""
    SLOW_FIRST_BYTE = "slow_first_byte"
    """A normal reply whose first audio comes after :attr:`EmulatorConfig.slow_first_byte_delay`."""
    RIFF_MULAW = "riff_mulaw"
    """μ-law audio with :func:`streaming_mulaw_header` prepended to the first binary frame
    (μ-law even if PCM was requested: the header always tells the truth)."""
    RIFF_MULAW_SPLIT = "riff_mulaw_split"
    """As :attr:`RIFF_MULAW`, the header split across the first two frames; the first frame holds
    header bytes only."""
    RIFF_PCM16 = "riff_pcm16"
    """16 kHz PCM16 audio behind :func:`canonical_pcm16_header`, even though μ-law was requested."""


_CLOSING_FAULTS: Final[Mapping[Fault, tuple[int, str]]] = {
    Fault.CLOSE_4001: (4001, _AUTH_FAILED),
    Fault.CLOSE_4003: (4003, _NO_FUNDS),
    Fault.CLOSE_4500: (4500, "Internal authentication error"),
    Fault.CLOSE_1001: (1001, "Server shutting down"),
}

Range = tuple[float, float]
"""A ``(min, max)`` range, drawn uniformly from a seeded RNG."""


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator can be told. Defaults: instant, no faults, one valid key."""

    # --- auth and account
    api_keys: frozenset[str] | None = frozenset({DEFAULT_API_KEY})
    """Accepted API keys; ``None`` accepts any non-empty key."""
    auth_failure: Literal["close", "http"] = "close"
    """Bad WS key: ``"close"`` accepts then closes 4001; ``"http"`` denies the upgrade with
    :attr:`auth_failure_status` (real behaviour unknown, §2)."""
    auth_failure_status: int = 401
    balance_ok: bool = True
    """``False``: every WS connection is accepted, then closed 4003."""
    speakers: frozenset[str] | None = None
    """Known built-in speakers; ``None`` accepts any non-empty speaker. An unknown speaker (not
    here nor in :attr:`custom_voices`) gets ``error`` "TTS stream error: aborted" and no audio."""

    # --- latency (seconds)
    connect_delay: float = 0.0
    """Before each upgrade is answered (accepted or denied)."""
    first_byte_delay: float | Range = 0.0
    """From ``ack`` to the first audio frame."""
    chunk_interval: float | Range = 0.0
    """Between audio frames, unless :attr:`synthesis_speed` is set. Drawn per frame."""
    synthesis_speed: float | Range | None = None
    """If set, each frame after the first follows the previous one after (its audio duration /
    speed): ``3.0`` synthesises three times faster than real time. Drawn once per request."""
    reply_speed: float | Range | None = None
    """If set (instead of :attr:`synthesis_speed`): the whole reply, first byte included, takes
    (its audio / this) seconds after ``ack``. The first-byte delay is capped at half of that and
    the later frames share the rest at a steady pace (each interval still jittered): how the
    third-party logs of docs/hamsa-api.md §3.5 read ("2.3–5 s for a sentence of ~4 s of audio").
    Drawn once per request."""
    interval_jitter: float = 0.0
    """Each interval after the first frame is multiplied by U(1 - j, 1 + j): ``0.3`` → ×0.7–1.3
    (0 ≤ j < 1). Drawn per frame."""
    stall_probability: float = 0.0
    """Each frame after the first is preceded, with this probability, by an extra stall of
    :attr:`stall_seconds` (bursty delivery: frames come in bursts separated by stalls)."""
    stall_seconds: float | Range = 0.0
    """The length of one stall (see :attr:`stall_probability`)."""
    slow_first_byte_delay: float = 1.7
    """First-byte delay of :attr:`Fault.SLOW_FIRST_BYTE`."""
    unpreloaded_voice_delay: float = 0.0
    """Extra first-byte delay when a custom voice is used without a successful preload."""
    draws_per_text: bool = False
    """Draw each reply's latency (first byte, chunk intervals, synthesis speed) and chunking from
    an RNG seeded by (:attr:`seed`, text, n), n counting the requests for that text so far,
    instead of one sequence shared by all requests in arrival order: the n-th request for a text
    gets the same timing whichever connection sends it and whatever runs concurrently, so
    emulators given the same calls side by side stay comparable (``bench/first_audio.py``)."""

    # --- audio
    speech: Speech = "tones"
    """What the audio says. ``"tones"``: :func:`bridge.dev.tone.synthesize`, one tone per
    character, :attr:`ms_per_char` each (deterministic: the tests' default). ``"espeak"``: the
    text spoken by espeak-ng (:mod:`bridge.dev.espeak`; voice :attr:`espeak_voice`), at its real
    length, rendered once per text and format and cached for the emulator's lifetime; a text
    espeak-ng fails on (or takes longer than :attr:`espeak_timeout` for) gets the tones, with a
    warning. The same frame cuts, delivery models, replay and faults apply to either."""
    espeak_voice: str = DEFAULT_VOICE
    espeak_timeout: float = DEFAULT_TIMEOUT
    """Seconds one espeak-ng rendering may take."""
    ms_per_char: float = 80.0
    """Length of each character's tone (:attr:`speech` ``"tones"`` only)."""
    max_chunk_bytes: int = 65536
    """Largest binary frame (real frames were seen up to ~64 KB); long texts get more frames."""
    first_chunk_seconds: float | Range | None = None
    """Audio (seconds) in a reply's first frame; ``None``: U(0.2, 0.5) s."""
    chunk_seconds: float | Range | None = None
    """Audio (seconds) in each later frame, drawn per frame (the last frame holds what is left);
    ``None``: the rest of the reply in 3–6 pieces of random weight (U(0.4, 1.6) each)."""

    # --- replay of a recorded trace
    replay: Trace | None = None
    """Replay a trace recorded from the real API (:mod:`bridge.hamsa_trace`) instead of drawing
    the timing: request k of the emulator's lifetime (global number k) takes the schedule of
    the trace's successful request ((k - 1) mod N): ``ack`` at its ``ack_s``, a binary frame of
    exactly each recorded size at each recorded time and ``end`` at ``end_s``, all measured from
    the moment the request arrived (absolute deadlines, not accumulated sleeps). The audio is
    this emulator's audio for the text (:attr:`speech`), cut or extended (repeated) to the
    recorded total; a recorded μ-law RIFF header (from ``head_hex``) is sent first as recorded.
    Connection j
    (in upgrade order) waits the j-th non-null ``connect_s`` of the trace (cycling), else
    :attr:`connect_delay`. The draw fields (first byte, chunking, speed, jitter, stalls) are
    ignored; of the faults, those that only change the audio (``TRUNCATE_*``, ``RIFF_*``) are
    ignored too, the others apply."""

    # --- failure injection
    seed: int = 0
    faults: Mapping[int, Fault] = field(default_factory=dict)
    """Fault per global 1-based request number (copied into :attr:`EmulatorState.faults`, which
    tests may change while the emulator runs)."""
    truncate_rate: float = 0.0
    """Probability that a request without an explicit fault gets :attr:`Fault.TRUNCATE_640`,
    drawn from an RNG seeded with :attr:`seed`."""

    # --- connection level
    refuse_connections: int = 0
    """The first N upgrades (counted across all connections) are denied with HTTP 503."""
    idle_close_after: float | None = None
    """Close 1000 after this many seconds without a message or a reply (Hamsa: 60 minutes)."""
    ping_interval: float | None = 30.0
    """Server keepalive pings (applied by :class:`EmulatorServer` through uvicorn)."""

    # --- preload endpoint
    custom_voices: frozenset[str] = frozenset()
    """Custom (cloned) voice UUIDs that exist; compared case-insensitively."""
    preload_failures: frozenset[str] = frozenset()
    """Custom voices whose preload answers 500."""

    def __post_init__(self) -> None:
        if self.auth_failure not in ("close", "http"):
            raise ValueError(f"auth_failure must be 'close' or 'http', not {self.auth_failure!r}")
        for name in (
            "first_byte_delay",
            "chunk_interval",
            "synthesis_speed",
            "reply_speed",
            "stall_seconds",
            "first_chunk_seconds",
            "chunk_seconds",
        ):
            value = getattr(self, name)
            low, high = value if isinstance(value, tuple) else (value, value)
            if low is not None and not 0 <= low <= high:
                raise ValueError(f"{name} must be >= 0 (and min <= max), got {value!r}")
        for name in ("synthesis_speed", "reply_speed", "first_chunk_seconds", "chunk_seconds"):
            value = getattr(self, name)
            if value is not None and _low(value) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.interval_jitter < 1.0:
            raise ValueError("interval_jitter must be within [0, 1)")
        if not 0.0 <= self.stall_probability <= 1.0:
            raise ValueError("stall_probability must be within [0, 1]")
        if not 0.0 <= self.truncate_rate <= 1.0:
            raise ValueError("truncate_rate must be within [0, 1]")
        if any(n < 1 for n in self.faults):
            raise ValueError("fault keys are 1-based request numbers")
        if self.max_chunk_bytes < 1 or self.ms_per_char <= 0:
            raise ValueError("max_chunk_bytes and ms_per_char must be positive")
        if self.speech not in ("tones", "espeak"):
            raise ValueError(f"speech must be 'tones' or 'espeak', not {self.speech!r}")
        if not self.espeak_timeout > 0:
            raise ValueError("espeak_timeout must be positive")

    # --- named delivery models (DELIVERY_MODELS); every one takes field overrides

    @classmethod
    def model(cls, name: str, **overrides: Any) -> EmulatorConfig:
        """The named delivery model (one of :data:`DELIVERY_MODELS`) with fields overridden.

        Raises ``ValueError`` for an unknown name.
        """
        if name not in DELIVERY_MODELS:
            raise ValueError(
                f"unknown delivery model {name!r}; expected one of {', '.join(DELIVERY_MODELS)}"
            )
        factory: Callable[..., EmulatorConfig] = getattr(cls, name)
        return factory(**overrides)

    @classmethod
    def instant(cls, **overrides: Any) -> EmulatorConfig:
        """No delays at all (the defaults): connect, first byte and every later frame at once;
        first frame 0.2–0.5 s of audio, the rest in 3–6 pieces of random weight. For tests that
        are about anything but timing."""
        return cls(**overrides)

    @classmethod
    def realistic(cls, **overrides: Any) -> EmulatorConfig:
        """Hamsa's observed timing (docs/hamsa-api.md §3.5), read generously: connect 1.2 s, first
        audio 0.3–1.7 s after the request, first frame 0.2–0.5 s of audio, the rest in 3–6
        pieces of random weight (4–7 frames in all), synthesis 2–4× faster than real time (a
        51-character sentence ends after ≈ 2.3–4 s). Faster than real time: audio on hand
        grows while it plays."""
        return cls._with(
            {"connect_delay": 1.2, "first_byte_delay": (0.3, 1.7), "synthesis_speed": (2.0, 4.0)},
            overrides,
        )

    @classmethod
    def observed(cls, **overrides: Any) -> EmulatorConfig:
        """The third-party observations of docs/hamsa-api.md §3.5 (demo-hamsa-2 logs): connect
        1.2 s, first audio 0.3–1.7 s after the request, a whole sentence in 0.8–1.8× real time
        counted from the request (the logged sentences took 2.3–5 s for ~4 s of audio), a small
        first frame (0.1–0.3 s of audio; the logged 7,398 B and 16,018 B first frames are 0.23 s
        and 0.5 s of 16 kHz PCM16), then 3–6 pieces of irregular size (4–7 frames in all) at a
        steady pace, each interval ×U(0.8, 1.2). At the slow end a sentence and the request of
        the next one take longer than the audio lasts."""
        return cls._with(
            {
                "connect_delay": 1.2,
                "first_byte_delay": (0.3, 1.7),
                "first_chunk_seconds": (0.1, 0.3),
                "reply_speed": (0.8, 1.8),
                "interval_jitter": 0.2,
            },
            overrides,
        )

    @classmethod
    def slow(cls, **overrides: Any) -> EmulatorConfig:
        """Slower than real time (an assumption for planning, not an observation): connect
        1.2 s, first audio 0.3–1.7 s, first frame 0.2–0.3 s of audio, then frames of 0.6–1.4 s
        of audio (≈ 1 s) at 0.9× real time: every frame comes ≈ 10 % later than the audio
        before it has played."""
        return cls._with(
            {
                "connect_delay": 1.2,
                "first_byte_delay": (0.3, 1.7),
                "first_chunk_seconds": (0.2, 0.3),
                "chunk_seconds": (0.6, 1.4),
                "synthesis_speed": 0.9,
            },
            overrides,
        )

    @classmethod
    def bursty(cls, **overrides: Any) -> EmulatorConfig:
        """Fast on average, in bursts (an assumption for planning): connect 1.2 s, first audio
        0.3–1.7 s, first frame 0.2–0.5 s of audio, later frames of 0.3–0.9 s of audio
        synthesised at 4–8× real time, but each later frame is, with probability 0.25, preceded
        by a stall of 0.4–1.0 s. On average 1.5–3× real time (one frame: 0.6 s of audio per
        0.6/6 + 0.25 × 0.7 ≈ 0.28 s ≈ 2.2×); locally, a stall right after a small first frame
        outlasts the audio on hand."""
        return cls._with(
            {
                "connect_delay": 1.2,
                "first_byte_delay": (0.3, 1.7),
                "chunk_seconds": (0.3, 0.9),
                "synthesis_speed": (4.0, 8.0),
                "stall_probability": 0.25,
                "stall_seconds": (0.4, 1.0),
            },
            overrides,
        )

    @classmethod
    def fast(cls, **overrides: Any) -> EmulatorConfig:
        """Fast delivery (an assumption: the best case a start policy must not slow down):
        connect 1.2 s, first audio 0.2–0.4 s, a large first frame of 1.0–1.5 s of audio, the
        rest in 3–6 weighted pieces at 3× real time."""
        return cls._with(
            {
                "connect_delay": 1.2,
                "first_byte_delay": (0.2, 0.4),
                "first_chunk_seconds": (1.0, 1.5),
                "synthesis_speed": 3.0,
            },
            overrides,
        )

    @classmethod
    def _with(cls, values: dict[str, Any], overrides: dict[str, Any]) -> EmulatorConfig:
        return cls(**{**values, **overrides})


DELIVERY_MODELS: Final = ("instant", "realistic", "observed", "slow", "bursty", "fast")
"""The names :meth:`EmulatorConfig.model` accepts (each a classmethod with its numbers)."""


def _low(value: float | Range) -> float:
    return value[0] if isinstance(value, tuple) else value


def _draw(rng: random.Random, value: float | Range) -> float:
    if isinstance(value, tuple):
        return rng.uniform(value[0], value[1])
    return value


# --- records -----------------------------------------------------------------------------------


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
        self.preloads: list[PreloadRecord] = []
        self.preloaded: set[str] = set()
        self.upgrades = 0
        self.request_count = 0
        # Seeded for reproducibility, not security.
        self._fault_rng = random.Random(f"faults:{config.seed}")  # noqa: S311
        self._latency_rng = random.Random(f"latency:{config.seed}")  # noqa: S311
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
        return {
            "upgrades": self.upgrades,
            "request_count": self.request_count,
            "connections": [asdict(c) for c in self.connections],
            "requests": requests,
            "preloads": [asdict(p) for p in self.preloads],
            "preloaded": sorted(self.preloaded),
        }


# --- audio chunking and timing (pure) --------------------------------------------------------


def _cut(
    audio: bytes, rng: random.Random, bytes_per_second: int, cfg: EmulatorConfig
) -> list[bytes]:
    """Cut ``audio`` into frames: the first :attr:`EmulatorConfig.first_chunk_seconds` of audio
    (default 0.2–0.5 s), then :attr:`~EmulatorConfig.chunk_seconds` per frame, or by default the
    rest in 3–6 pieces of random weight; never more than ``max_chunk_bytes`` a frame. Cuts fall
    anywhere, odd offsets included (PCM samples may straddle frames, §5.4)."""
    total, max_chunk = len(audio), cfg.max_chunk_bytes
    if total == 0:
        return []
    first_s = (
        rng.uniform(0.2, 0.5)
        if cfg.first_chunk_seconds is None
        else _draw(rng, cfg.first_chunk_seconds)
    )
    first = min(total, max_chunk, max(1, int(first_s * bytes_per_second)))
    rest = total - first
    cuts = [0, first]
    if rest and cfg.chunk_seconds is None:
        pieces = min(rest, max(rng.randint(3, 6), math.ceil(rest / max_chunk)))
        weights = [rng.uniform(0.4, 1.6) for _ in range(pieces)]
        scale = rest / sum(weights)
        acc = 0.0
        for w in weights[:-1]:
            acc += w * scale
            cuts.append(first + int(acc))
        cuts.append(total)
    elif rest and (per_frame := cfg.chunk_seconds) is not None:
        at = first
        while at < total:
            at = min(total, at + max(1, int(_draw(rng, per_frame) * bytes_per_second)))
            cuts.append(at)
    chunks: list[bytes] = []
    for start, stop in itertools.pairwise(cuts):
        while stop - start > max_chunk:  # an unlucky weight: halve until it fits
            half = start + (stop - start) // 2
            piece_stop = half if half - start <= max_chunk else start + max_chunk
            chunks.append(audio[start:piece_stop])
            start = piece_stop
        if stop > start:
            chunks.append(audio[start:stop])
    return chunks


def _times(
    sizes: list[int],
    first_byte: float,
    speed: float | None,
    bytes_per_second: int,
    cfg: EmulatorConfig,
    rng: random.Random,
) -> list[float]:
    """When each frame goes, in seconds after ``ack``: the first after ``first_byte``; each
    later one after (its audio / ``speed``), or :attr:`EmulatorConfig.chunk_interval` without a
    speed, times the jitter, plus a stall now and then."""
    times: list[float] = []
    at = first_byte
    for i, size in enumerate(sizes):
        if i:
            interval = (
                size / bytes_per_second / speed
                if speed is not None
                else _draw(rng, cfg.chunk_interval)
            )
            if cfg.interval_jitter:
                interval *= rng.uniform(1 - cfg.interval_jitter, 1 + cfg.interval_jitter)
            if cfg.stall_probability and rng.random() < cfg.stall_probability:
                interval += _draw(rng, cfg.stall_seconds)
            at += interval
        times.append(at)
    return times


def _delays(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise([0.0, *times])]


def reply_schedule(
    text: str,
    config: EmulatorConfig,
    rng: random.Random,
    *,
    mulaw: bool = True,
    timing_rng: random.Random | None = None,
) -> list[tuple[float, bytes]]:
    """The reply the emulator sends for ``text`` (no fault, no replay): ``(delay_before_s,
    frame)`` per binary frame, the first delay counted from ``ack``, each later one from the
    previous frame. The frames concatenated are :func:`bridge.dev.tone.synthesize`'s audio.

    Pure: the same RNG states give the same schedule. The cuts are drawn from ``rng``, the
    timing from ``timing_rng`` (default: ``rng`` as well, after the cuts); the emulator passes
    :meth:`EmulatorState.reply_rngs`. Timing draw order: first byte, speed, then per later frame
    its interval (without a speed), jitter and stall.
    """
    plan = _plan_reply(text, mulaw, None, config, rng, timing_rng or rng)
    return list(zip(_delays(plan.times), plan.frames, strict=True))


def _fit(audio: bytes, size: int, pad: int) -> bytes:
    """``audio`` cut to ``size`` bytes, or repeated until it fills them (``pad`` if empty)."""
    if not audio:
        return bytes([pad]) * size
    return (audio * (size // len(audio) + 1))[:size]


def replay_schedule(
    text: str, request: TraceRequest, *, mulaw: bool = True, ms_per_char: float = 80.0
) -> tuple[float, list[tuple[float, bytes]], float]:
    """The replay of one recorded request (see :attr:`EmulatorConfig.replay`): ``(ack_s,
    [(time_s, frame), …], end_s)``, times in seconds after the request arrived (absolute, not
    delays). Frame sizes are exactly the recorded ones; the audio is the tone of ``text``,
    behind the recorded μ-law RIFF header if the trace's reply began with one. Pure."""
    if request.ack_s is None or request.end_s is None or not request.successful:
        raise ValueError(f"trace request {request.n} was not successful: nothing to replay")
    plan = _replay_plan(text, mulaw, None, request, ms_per_char)
    return request.ack_s, list(zip(plan.times, plan.frames, strict=True)), request.end_s


@dataclass
class _Plan:
    """The frames of one reply: ``frames[i]`` is sent whole at ``times[i]`` (seconds after the
    base: ``ack``, or with a replay the request's arrival); ``audio_parts[i]`` is the audio in
    it (the rest is WAV header, if any)."""

    frames: list[bytes]
    audio_parts: list[bytes]
    times: list[float]
    header: bytes
    bytes_per_second: int
    speed: float | None = None
    ack_at: float | None = None
    """Replay: when ``ack`` goes (else at once, and the base is its sending)."""
    end_at: float | None = None
    """Replay: when ``end`` goes (else right after the last frame)."""


def _apply_fault(chunks: list[bytes], fault: Fault | None) -> list[bytes]:
    """The frames a fault leaves of a reply's chunks (truncations, the mid-reply close)."""
    if fault is Fault.TRUNCATE_640:
        return [b"".join(chunks)[:TRUNCATED_BYTES]]
    if fault is Fault.TRUNCATE_3X640:
        audio = b"".join(chunks)
        return [audio[i : i + TRUNCATED_BYTES] for i in range(0, 3 * TRUNCATED_BYTES, 640)]
    if fault is Fault.CLOSE_MID_REPLY:
        return chunks[: max(1, len(chunks) // 2)]
    return chunks


def _audio_mulaw(mulaw: bool, fault: Fault | None) -> bool:
    """Whether a reply's audio is μ-law: as requested, unless a header fault says otherwise."""
    if fault is Fault.RIFF_PCM16:
        return False
    if fault in (Fault.RIFF_MULAW, Fault.RIFF_MULAW_SPLIT):
        return True
    return mulaw


def _plan_reply(
    text: str,
    mulaw: bool,
    fault: Fault | None,
    cfg: EmulatorConfig,
    rng: random.Random,
    timing: random.Random,
    audio: bytes | None = None,
) -> _Plan:
    """The frames and times of one drawn reply; ``audio``: the reply's whole audio in the format
    :func:`_audio_mulaw` says (default: the tones of ``text``)."""
    header = b""
    audio_mulaw = _audio_mulaw(mulaw, fault)
    if audio is None:
        audio = synthesize(text, mulaw=audio_mulaw, ms_per_char=cfg.ms_per_char)
    bps = MULAW_RATE if audio_mulaw else PCM_RATE * 2
    chunks = _apply_fault(_cut(audio, rng, bps, cfg), fault)
    first_byte = (
        cfg.slow_first_byte_delay
        if fault is Fault.SLOW_FIRST_BYTE
        else _draw(timing, cfg.first_byte_delay)
    )
    speed = None if cfg.synthesis_speed is None else _draw(timing, cfg.synthesis_speed)
    if cfg.reply_speed is not None and chunks:
        whole = len(audio) / bps / _draw(timing, cfg.reply_speed)
        first_byte = min(first_byte, whole / 2)
        rest = (len(audio) - len(chunks[0])) / bps
        speed = rest / (whole - first_byte) if rest > 0 else None
    times = _times([len(c) for c in chunks], first_byte, speed, bps, cfg, timing)
    frames = list(chunks)
    parts = list(chunks)
    if fault is Fault.RIFF_PCM16:
        header = canonical_pcm16_header(len(audio))
    elif fault in (Fault.RIFF_MULAW, Fault.RIFF_MULAW_SPLIT):
        header = streaming_mulaw_header()
    if header and frames:
        if fault is Fault.RIFF_MULAW_SPLIT:
            cut = rng.randint(1, len(header) - 1)
            frames = [header[:cut], header[cut:] + frames[0], *frames[1:]]
            parts = [b"", *parts]
            times = [times[0], *times]
        else:
            frames[0] = header + frames[0]
    return _Plan(frames, parts, times, header, bps, speed)


def _replay_plan(
    text: str,
    mulaw: bool,
    fault: Fault | None,
    request: TraceRequest,
    ms_per_char: float,
    audio: bytes | None = None,
) -> _Plan:
    """The replay of one recorded request; ``audio``: the text's whole audio in the requested
    format (default: its tones), cut or repeated to the recorded size."""
    total = request.total_bytes
    found = detect_format(request.head, total, None)
    header = b""
    if found.riff and found.mulaw and found.header_bytes is not None:
        header = request.head[: found.header_bytes]
    bps = MULAW_RATE if mulaw else PCM_RATE * 2
    if audio is None:
        audio = synthesize(text, mulaw=mulaw, ms_per_char=ms_per_char)
    audio = _fit(audio, max(0, total - len(header)), 0xFF if mulaw else 0x00)
    content = (header + audio)[:total]
    frames: list[bytes] = []
    parts: list[bytes] = []
    at = 0
    for _, size in request.frames:
        frame = content[at : at + size]
        frames.append(frame)
        parts.append(frame[max(0, len(header) - at) :])
        at += size
    times = [t for t, _ in request.frames]
    if fault is Fault.CLOSE_MID_REPLY:
        keep = max(1, len(frames) // 2)
        frames, parts, times = frames[:keep], parts[:keep], times[:keep]
    return _Plan(
        frames,
        parts,
        times,
        header,
        bps,
        ack_at=request.ack_s,
        end_at=request.end_s,
    )


# --- the realtime WebSocket --------------------------------------------------------------------


def _ws_credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The API key and where it came from: header, then query, then Authorization."""
    key = websocket.headers.get("x-api-key")
    if key is not None:
        return key.strip(), "header"
    key = websocket.query_params.get("api_key")
    if key is not None:
        return key.strip(), "query"
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip(), "authorization"
    return None, None


class _Connection:
    """One accepted socket: a reader, a FIFO worker and an optional idle watchdog."""

    def __init__(self, websocket: WebSocket, state: EmulatorState, record: ConnectionRecord):
        self.ws = websocket
        self.state = state
        self.record = record
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.closed = False
        self.working = False
        self.wedged = False
        self.activity = asyncio.Event()

    # --- sending: every send goes through here and becomes a no-op once the socket is gone

    async def send_text(self, text: str) -> bool:
        if self.closed:
            return False
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            self._gone(1006, "")
            return False
        return True

    async def send_bytes(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            await self.ws.send_bytes(data)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            self._gone(1006, "")
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.record.closed_at = time.monotonic()
        self.record.close_code = code
        self.record.close_reason = reason
        self.record.closed_by = "server"
        self.state.notify()
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
            await self.ws.close(code, reason)

    def _gone(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.record.closed_at = time.monotonic()
        self.record.close_code = code
        self.record.close_reason = reason
        # uvicorn reports its own shutdown to the app as a 1012 disconnect.
        self.record.closed_by = "server" if code == 1012 else "client"
        self.state.notify()

    # --- tasks

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._worker())]
        if self.state.config.idle_close_after is not None:
            tasks.append(asyncio.create_task(self._watchdog(self.state.config.idle_close_after)))
        try:
            await self._reader()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._gone(1006, "")

    async def _reader(self) -> None:
        while not self.closed:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnected, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                self._gone(int(message.get("code", 1005)), message.get("reason") or "")
                return
            text = message.get("text")
            self.inbox.put_nowait(text if text is not None else bytes(message.get("bytes") or b""))
            self.activity.set()

    async def _worker(self) -> None:
        try:
            while not self.closed and not self.wedged:
                data = await self.inbox.get()
                self.working = True
                try:
                    await self._handle(data)
                finally:
                    self.working = False
                    self.activity.set()
        except Exception:
            logger.exception("Hamsa emulator: reply failed")
            await self.close(1011, "Internal error")

    def _busy(self) -> bool:
        return self.working or self.wedged or not self.inbox.empty()

    async def _watchdog(self, limit: float) -> None:
        while not self.closed:
            self.activity.clear()
            if self._busy():
                await self.activity.wait()
                continue
            try:
                async with asyncio.timeout(limit):
                    await self.activity.wait()
            except TimeoutError:
                if not self._busy():
                    await self.close(1000, "Connection closed due to inactivity")
                    return

    # --- one client message

    async def _handle(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.send_text(_error_frame("Invalid message format"))
            return
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            await self.send_text(_error_frame("Invalid message format"))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.send_text(_error_frame("Invalid message format"))
            return
        kind = message["type"]
        if kind == "tts":
            await self._tts(message.get("payload"))
        elif kind == "stt":
            await self.send_text(
                _error_frame("Error generating transcription: STT is not supported by the emulator")
            )
        else:
            await self.send_text(_error_frame(f"Unsupported message type: {kind}"))

    def _invalid(self, payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return "Invalid payload: payload must be an object"
        text = payload.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT_CHARS:
            return f"Invalid payload: text must be between 1 and {MAX_TEXT_CHARS} characters"
        speaker = payload.get("speaker")
        if not isinstance(speaker, str) or not speaker.strip():
            return "Invalid payload: speaker is required"
        cfg = self.state.config
        if cfg.speakers is not None and speaker not in cfg.speakers and not self._custom(speaker):
            return ABORTED_MESSAGE
        return None

    def _custom(self, speaker: str) -> bool:
        return speaker.lower() in {v.lower() for v in self.state.config.custom_voices}

    async def _tts(self, payload: Any) -> None:
        state, cfg = self.state, self.state.config
        number = state.next_request()
        body = payload if isinstance(payload, dict) else {}
        text = body.get("text")
        rec = RequestRecord(
            number=number,
            connection_id=self.record.id,
            text=text if isinstance(text, str) else None,
            payload=dict(body),
            received_at=time.monotonic(),
            mulaw=body.get("mulaw") is True,
        )
        state.requests.append(rec)
        problem = self._invalid(payload)
        if problem is not None:
            rec.error = problem
            state.notify()
            await self.send_text(_error_frame(problem))
            return
        assert isinstance(text, str)
        speaker: str = body["speaker"]
        rec.fault = fault = state.fault_for(number)
        state.notify()

        if fault is not None and fault in _CLOSING_FAULTS:
            await self.close(*_CLOSING_FAULTS[fault])
            return

        replay = cfg.replay
        # Tones come at once; an espeak-ng rendering (the first time a text is asked for) delays
        # the ack by its time (milliseconds), or is absorbed by a replay's recorded ack time.
        audio_mulaw = rec.mulaw if replay is not None else _audio_mulaw(rec.mulaw, fault)
        audio = await state.audio_for(text, audio_mulaw)
        if replay is not None:
            recorded = replay.successful[(number - 1) % len(replay.successful)]
            plan = _replay_plan(text, rec.mulaw, fault, recorded, cfg.ms_per_char, audio)
            await _until(rec.received_at + (plan.ack_at or 0.0))
        else:
            rngs = state.reply_rngs(number, text)
            plan = _plan_reply(text, rec.mulaw, fault, cfg, *rngs, audio=audio)
        rec.acked_at = time.monotonic()
        base = rec.received_at if replay is not None else rec.acked_at
        if not await self.send_text(ACK_FRAME):
            return
        if fault in (Fault.ERROR, Fault.ERROR_THEN_END):
            rec.error = ABORTED_MESSAGE
            state.notify()
            await self.send_text(_error_frame(ABORTED_MESSAGE))
            if fault is Fault.ERROR_THEN_END:
                rec.end_at = time.monotonic()
                await self.send_text(END_FRAME)
            return

        rec.header = plan.header
        # Every frame at its absolute time from the base: sending time does not accumulate.
        shift = 0.0
        if replay is not None and fault is Fault.SLOW_FIRST_BYTE and plan.times:
            shift = max(0.0, cfg.slow_first_byte_delay - plan.times[0])
        if self._custom(speaker) and speaker.lower() not in state.preloaded:
            shift += cfg.unpreloaded_voice_delay
        for frame, part, at in zip(plan.frames, plan.audio_parts, plan.times, strict=True):
            await _until(base + at + shift)
            if part and rec.first_audio_at is None:
                rec.first_audio_at = time.monotonic()
            if not await self.send_bytes(frame):
                return
            rec.audio += part
            rec.frames.append(len(frame))
            state.notify()

        if fault is Fault.CLOSE_MID_REPLY:
            await self.close(1011, "Internal error")
            return
        if fault is Fault.ENDLESS:
            await self._stream_forever(plan, rec)
            return
        if fault is Fault.NEVER_END:
            self.wedged = True
            return
        if plan.end_at is not None:
            await _until(base + plan.end_at + shift)
        rec.end_at = time.monotonic()
        state.notify()
        if not await self.send_text(END_FRAME):
            return
        if fault is Fault.CLOSE_AFTER_END:
            await self.close(1000, "")

    async def _stream_forever(self, plan: _Plan, rec: RequestRecord) -> None:
        """:attr:`Fault.ENDLESS`: the reply's frames again and again until the socket is gone."""
        if not plan.frames:
            return
        for frame in itertools.cycle(plan.audio_parts):
            await asyncio.sleep(len(frame) / plan.bytes_per_second / (plan.speed or 1.0))
            if not await self.send_bytes(frame):
                return
            rec.audio += frame
            rec.frames.append(len(frame))
            self.state.notify()


async def _until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (at once if it has)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _hamsa_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def create_emulator_app(config: EmulatorConfig) -> Starlette:
    """The emulator as a Starlette app; its :class:`EmulatorState` is ``app.state.emulator``."""
    state = EmulatorState(config)

    async def realtime(websocket: WebSocket) -> None:
        cfg = state.config
        delay = state.connect_delay()
        if delay > 0:
            await asyncio.sleep(delay)
        state.upgrades += 1
        record = ConnectionRecord(id=state.upgrades, opened_at=time.monotonic())
        state.connections.append(record)
        state.notify()

        def denied(status: int) -> None:
            record.refused_status = status
            record.closed_at = time.monotonic()
            state.notify()

        if state.upgrades <= cfg.refuse_connections:
            denied(503)
            await websocket.send_denial_response(_hamsa_error(503, "Service Unavailable"))
            return
        key, via = _ws_credentials(websocket)
        record.auth_via = via
        record.auth_ok = state.key_ok(key)
        if not record.auth_ok and cfg.auth_failure == "http":
            denied(cfg.auth_failure_status)
            await websocket.send_denial_response(
                _hamsa_error(cfg.auth_failure_status, "Unauthorized")
            )
            return
        await websocket.accept()
        connection = _Connection(websocket, state, record)
        if not record.auth_ok:
            await connection.close(4001, _AUTH_FAILED)
        elif not cfg.balance_ok:
            await connection.close(4003, _NO_FUNDS)
        elif await connection.send_text(INFO_FRAME):
            await connection.run()

    async def preload(request: Request) -> Response:
        cfg = state.config
        header = request.headers.get("authorization")
        scheme, _, key = (header or "").partition(" ")
        kind = scheme.lower() if scheme.lower() in ("token", "bearer") else "other"
        if header is None:
            kind = "missing"

        def answer(status: int, body: Mapping[str, Any], voice_id: Any = None) -> Response:
            state.preloads.append(PreloadRecord(voice_id, kind, status, time.monotonic()))
            state.notify()
            return JSONResponse(dict(body), status_code=status)

        if kind not in ("token", "bearer") or not state.key_ok(key.strip()):
            return answer(401, {"success": False, "message": "Unauthorized"})
        try:
            body = await request.json()
        except ValueError:
            return answer(400, {"success": False, "message": "Invalid request body"})
        voice_id = body.get("voiceId") if isinstance(body, dict) else None
        if not isinstance(voice_id, str) or not _UUID_RE.fullmatch(voice_id):
            return answer(400, {"success": False, "message": "Invalid voice ID format"}, voice_id)
        voice = voice_id.lower()
        if voice not in {v.lower() for v in cfg.custom_voices}:
            return answer(404, {"success": False, "message": "Voice not found"}, voice_id)
        if voice in {v.lower() for v in cfg.preload_failures}:
            return answer(500, {"success": False, "message": "Internal server error"}, voice_id)
        state.preloaded.add(voice)
        return answer(200, PRELOAD_OK_BODY, voice_id)

    async def log(request: Request) -> Response:
        include = request.query_params.get("audio") == "base64"
        return JSONResponse(state.snapshot(include_audio=include))

    app = Starlette(
        routes=[
            WebSocketRoute(_WS_PATH, realtime),
            Route("/v2/tts/voices/custom/preload", preload, methods=["POST"]),
            Route("/_emulator/log", log, methods=["GET"]),
        ]
    )
    app.state.emulator = state
    return app


# --- running it ----------------------------------------------------------------------------------


class EmulatorServer(AppServer):
    """The emulator under uvicorn in the running event loop, as an async context manager.

    ``port=0`` (the default) binds an ephemeral port; read it from :attr:`port` once started.
    uvicorn's logging configuration is left alone unless ``log_config`` is given; signal handlers
    are installed only with ``handle_signals=True`` (the CLI), so embedding it never steals Ctrl-C.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        handle_signals: bool = False,
        log_config: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        app = create_emulator_app(self.config)
        self.state: EmulatorState = app.state.emulator
        super().__init__(
            app,
            host=host,
            port=port,
            sock=sock,
            handle_signals=handle_signals,
            log_config=log_config,
            ws_ping_interval=self.config.ping_interval,
        )

    @property
    def ws_url(self) -> str:
        return "ws" + self.http_url.removeprefix("http") + _WS_PATH

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self


async def serve_emulator(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    sock: socket.socket | None = None,
    ready: asyncio.Event | None = None,
    handle_signals: bool = True,
    log_config: dict[str, Any] | None = None,
    banner: Callable[[EmulatorServer], Iterable[str]] | None = None,
) -> None:
    """Serve the emulator until a signal (or cancellation). ``ready`` is set once listening.

    Once listening, ``banner(server)``'s lines are printed on stdout (default: the one line
    ``Hamsa emulator listening on ws://…``). For an ephemeral port whose number you need, pass
    an already-bound ``sock`` or use :class:`EmulatorServer` directly.
    """
    server = EmulatorServer(
        config,
        host=host,
        port=port,
        sock=sock,
        handle_signals=handle_signals,
        log_config=log_config,
    )
    lines = banner or (lambda s: [f"Hamsa emulator listening on {_shown_ws_url(s)}"])
    await serve_until_stopped(server, banner=lambda _: lines(server), ready=ready)


def _shown_ws_url(server: EmulatorServer) -> str:
    return "ws" + reachable_url(server).removeprefix("http") + _WS_PATH


def run_emulator(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    banner: Callable[[EmulatorServer], Iterable[str]] | None = None,
) -> None:
    """Blocking entry point for ``hamsa-bridge emulate-hamsa``.

    uvicorn's own lines are kept quiet (:func:`~bridge.dev.servers.quiet_uvicorn`): what the
    user reads is ``banner``'s. SIGTERM and Ctrl-C are re-raised after the graceful stop
    (uvicorn's behaviour), so the exit status is 143, or 130 (Ctrl-C: ``KeyboardInterrupt``,
    which the command line turns into 130).
    """
    quiet_uvicorn()
    asyncio.run(serve_emulator(config, host, port, banner=banner))


MODEL_SUMMARIES: Final[Mapping[str, str]] = {
    "instant": "no delays at all",
    "realistic": "connect 1.2 s, first audio 0.3-1.7 s, then 2-4x faster than real time",
    "observed": "connect 1.2 s, first audio 0.3-1.7 s, a sentence in 0.8-1.8x real time",
    "slow": "connect 1.2 s, first audio 0.3-1.7 s, then 0.9x real time (slower than playback)",
    "bursty": "connect 1.2 s, first audio 0.3-1.7 s, 4-8x real time with stalls of 0.4-1.0 s",
    "fast": "connect 1.2 s, first audio 0.2-0.4 s, a large first frame, then 3x real time",
}
"""One line per delivery model (:data:`DELIVERY_MODELS`) for ``emulate-hamsa``'s banner; the
numbers are those of the model's classmethod."""


def startup_lines(
    config: EmulatorConfig,
    server: EmulatorServer,
    *,
    model: str,
    speech: str,
    replay: str | None = None,
    key_source: str | None = None,
) -> list[str]:
    """``emulate-hamsa``'s banner, in plain words: where it listens (the first line, which says
    "listening"), the delivery model or the replayed trace, the speech, the API key (its
    source, never its value), faults and where the records are."""
    http = reachable_url(server)
    lines = [
        f"Hamsa emulator listening on {_shown_ws_url(server)}",
        f"  set HAMSA_WS_URL to that, and HAMSA_API_URL to {http} (voice preload)",
    ]
    if config.replay is not None:
        count = len(config.replay.successful)
        lines.append(f"  delivery: the timing of {replay} replayed ({count} recorded replies)")
    else:
        lines.append(f"  delivery: {model} ({MODEL_SUMMARIES.get(model, 'see EmulatorConfig')})")
    lines.append(f"  {speech}")
    if key_source:
        lines.append(f"  API key: the value of {key_source}")
    else:
        lines.append("  API key: any non-empty key (HAMSA_API_KEY is unset)")
    faults = [f"request {n} {f.name}" for n, f in sorted(config.faults.items())]
    if config.truncate_rate:
        faults.append(f"{config.truncate_rate:.0%} of replies cut to {TRUNCATED_BYTES} bytes")
    if faults:
        lines.append(f"  faults: {', '.join(faults)}")
    if config.custom_voices:
        lines.append(f"  custom voices: {', '.join(sorted(config.custom_voices))}")
    lines.append(f"  records: GET {http}/_emulator/log; Ctrl-C stops it")
    return lines


def run_emulator_command(settings: Settings, args: argparse.Namespace) -> int:
    """``hamsa-bridge emulate-hamsa``: the emulator with the CLI's options."""
    faults: dict[int, Fault] = {}
    for item in args.fault:
        number, _, name = item.partition("=")
        try:
            faults[int(number)] = Fault[name.strip().upper()]
        except (KeyError, ValueError):
            choices = ", ".join(f.name for f in Fault)
            print(
                f"emulate-hamsa: bad --fault {item!r}; expected N=NAME with NAME one of {choices}",
                file=sys.stderr,
            )
            return 2
    key = settings.hamsa_api_key.get_secret_value()
    try:
        speech, speech_line = resolve_speech(getattr(args, "speech", "auto"))
    except ValueError as exc:
        print(f"emulate-hamsa: --speech espeak: {exc}")
        return 2
    overrides: dict[str, Any] = {
        "api_keys": frozenset({key}) if key else None,
        "faults": faults,
        "truncate_rate": args.truncate_rate,
        "custom_voices": frozenset(args.custom_voice),
        "seed": args.seed,
        "speech": speech,
    }
    name = "realistic" if args.realistic else (args.model or "instant")
    if args.realistic and args.model not in (None, "realistic"):
        print(
            f"emulate-hamsa: --realistic is --model realistic; it contradicts --model {args.model}",
            file=sys.stderr,
        )
        return 2
    if args.replay is not None:
        try:
            overrides["replay"] = read_trace(args.replay)
        except TraceError as exc:
            print(f"emulate-hamsa: {exc}", file=sys.stderr)
            return 2
    try:
        config = EmulatorConfig.model(name, **overrides)
    except ValueError as exc:
        print(f"emulate-hamsa: {exc}", file=sys.stderr)
        return 2
    problem = port_problem(args.host, args.port)
    if problem:
        print(f"emulate-hamsa: {problem}", file=sys.stderr)
        return 2

    def banner(server: EmulatorServer) -> list[str]:
        return startup_lines(
            config,
            server,
            model=name,
            speech=speech_line,
            replay=args.replay,
            key_source="HAMSA_API_KEY" if key else None,
        )

    run_emulator(config, args.host, args.port, banner=banner)
    return 0
