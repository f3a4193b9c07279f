"""The emulator's configuration: faults, delivery models, replay."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bridge.dev.espeak import (
    DEFAULT_TIMEOUT,
    DEFAULT_VOICE,
    Speech,
)
from bridge.dev.hamsa_emulator.wire import (
    _AUTH_FAILED,
    _NO_FUNDS,
    DEFAULT_API_KEY,
)
from bridge.hamsa_trace import Trace


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


class SttFault(enum.Enum):
    """A deterministic answer to one ``stt`` request (see :attr:`EmulatorConfig.stt_faults`)."""

    ERROR = "error"
    """An ``error`` frame (:data:`~bridge.dev.hamsa_emulator.wire.STT_FAILED_MESSAGE`)."""
    THINKING = "thinking"
    """``[THINKING]`` and nothing more (the next request is answered as usual)."""
    SILENT = "silent"
    """Nothing at all (the next request is answered as usual)."""
    OVERSIZED = "oversized"
    """A transcript of :data:`~bridge.dev.hamsa_emulator.wire.OVERSIZED_STT_BYTES` (100 KB): the
    recognised text (or ``كلام``) repeated, in the :attr:`EmulatorConfig.stt_answer` form."""
    BINARY = "binary"
    """The transcript's UTF-8 bytes as a **binary** frame instead of text, and nothing more."""
    TRAILING_END = "trailing_end"
    """The transcript as usual, then an ``end`` frame (whether Hamsa sends one is unknown)."""


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
    third-party logs of docs/hamsa-ws.md §3.5 read ("2.3–5 s for a sentence of ~4 s of audio").
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

    # --- speech to text (docs/hamsa-ws.md §10)
    stt_delay: float | Range = (0.2, 0.4)
    """From an ``stt`` request's arrival to its answer, drawn per request (seeded)."""
    stt_error_rate: float = 0.0
    """Probability that an ``stt`` request without an explicit fault gets :attr:`SttFault.ERROR`
    (seeded)."""
    stt_thinking_rate: float = 0.0
    """Probability that an ``stt`` request without an explicit fault (nor an error drawn) gets
    :attr:`SttFault.THINKING` (seeded)."""
    stt_answer: Literal["text", "json"] = "text"
    """The transcript's form: a plain text frame, or
    ``{"type":"response","payload":{"text":…}}``."""
    stt_fixed_transcript: str = ""
    """The transcript of audio in which :func:`bridge.dev.stt_tones.recognize` hears no tones
    (espeak-ng speech, noise, silence); ``""``: an empty transcript."""
    stt_ms_per_char: float = 80.0
    """The length of each character's tone in the audio :func:`bridge.dev.stt_tones.recognize`
    hears: the simulated caller's rate (``bridge.dev.tone``'s default), not :attr:`ms_per_char`."""
    stt_faults: Mapping[int, SttFault] = field(default_factory=dict)
    """Answer per ``stt`` request, keyed by its 1-based number among the ``stt`` requests only
    (copied into :attr:`EmulatorState.stt_faults`, which tests may change while it runs)."""

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
            "stt_delay",
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
        for name in ("stt_error_rate", "stt_thinking_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.stt_answer not in ("text", "json"):
            raise ValueError(f"stt_answer must be 'text' or 'json', not {self.stt_answer!r}")
        if any(n < 1 for n in self.stt_faults):
            raise ValueError("stt fault keys are 1-based stt request numbers")
        if any(n < 1 for n in self.faults):
            raise ValueError("fault keys are 1-based request numbers")
        if not self.stt_ms_per_char > 0:
            raise ValueError("stt_ms_per_char must be positive")
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
        """Hamsa's observed timing (docs/hamsa-ws.md §3.5), read generously: connect 1.2 s, first
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
        """The third-party observations of docs/hamsa-ws.md §3.5 (demo-hamsa-2 logs): connect
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
