"""How a reply is cut into frames and timed (pure)."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from bridge.dev.hamsa_emulator.config import EmulatorConfig, Fault, _draw
from bridge.dev.hamsa_emulator.wire import (
    TRUNCATED_BYTES,
    canonical_pcm16_header,
    streaming_mulaw_header,
)
from bridge.dev.tone import MULAW_RATE, PCM_RATE, synthesize
from bridge.hamsa_trace import TraceRequest, detect_format


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
