"""What a probe found, as plain aligned text (pure: records in, lines out).

* the format of the reply, by :func:`bridge.hamsa_trace.detect_format` on its first bytes: a
  RIFF/WAVE header and what its ``fmt `` chunk says (encoding, rate, channels, header size), or
  none — then what the bytes look like (μ-law or PCM16, a guess from their statistics, with its
  evidence) at that encoding's default rate (docs/hamsa-ws.md §5.4). Beside it, what was requested
  (``mulaw: true``: 8 kHz μ-law mono), and a warning when the reply is not that;
* per request: connect, ``ack``, first byte and ``end`` times, frames, bytes, audio seconds and
  the pace in × real time (audio seconds / seconds from the request to ``end``, and from the first
  byte to ``end``);
* over all replies: first-byte latency p50, the median pace, frames per reply and frame sizes
  (min/median/max, first frames), and the audio per character at the detected rate against the
  80–100 ms the logged replies carry (docs/hamsa-ws.md §4) — far off means the rate is not what the
  header or the bytes' encoding (at its default rate) says, and the line names the formats that
  would fit. The rate is never derived from the characters here (no ``audio_seconds_hint``), so
  this line stays independent evidence.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bridge.hamsa_trace import HEAD_BYTES, DetectedFormat, detect_format
from bridge.probe.recorder import RequestTrace

EXPECTED_MS_PER_CHAR: Final = (80.0, 100.0)
"""Audio per character of the logged Hamsa replies (docs/hamsa-ws.md §4)."""
TOLERANCE: Final = 0.2
"""How far outside :data:`EXPECTED_MS_PER_CHAR` still counts as a match (speech varies)."""
CANDIDATES: Final[tuple[tuple[str, int], ...]] = (
    ("μ-law 8 kHz", 8000),
    ("PCM16 8 kHz or μ-law 16 kHz", 16000),
    ("PCM16 11.025 kHz", 22050),
    ("PCM16 16 kHz", 32000),
    ("PCM16 22.05 kHz", 44100),
    ("PCM16 24 kHz", 48000),
)
"""Byte rates a headerless reply might have, for the "what would fit" hint."""
REQUESTED: Final = "μ-law 8 kHz mono"
"""What the probe asks for (``mulaw: true``, docs/hamsa-ws.md §5.2–5.4): the bridge plays only
that."""

_ENCODING_NAMES: Final = {"mulaw": "μ-law", "alaw": "A-law", "pcm16": "PCM16"}
_BYTES_PER_SAMPLE: Final = {"mulaw": 1, "alaw": 1, "pcm16": 2}
_CHANNELS: Final = {1: "mono", 2: "stereo"}


def _khz(rate: int) -> str:
    return f"{rate / 1000:g} kHz"


@dataclass(frozen=True, slots=True)
class _Reading:
    """How the report reads one reply's :class:`DetectedFormat`."""

    found: DetectedFormat
    description: str
    """The format and, for a RIFF header, its size; equal for equal formats."""
    byte_rate: int | None
    """Audio bytes per second, if the format says (a header, or the bytes' encoding)."""
    header_size: int
    """Bytes before the audio (0 without a header; a lower bound if the header is cut)."""
    mismatch: str | None
    """How the reply differs from :data:`REQUESTED`, if it does (as far as known)."""


def _read_format(head: bytes, total_bytes: int) -> _Reading:
    """The report's reading of a reply from its first bytes (``head``) and its size."""
    found = detect_format(head, total_bytes, None)
    encoding = _ENCODING_NAMES.get(found.encoding)
    rate = found.sample_rate
    channels = found.channels or 1
    what = byte_rate = None
    if encoding is not None and rate:
        what = f"{encoding} {_khz(rate)} {_CHANNELS.get(channels, f'{channels} channels')}"
        byte_rate = rate * channels * _BYTES_PER_SAMPLE[found.encoding]
    if not found.riff:
        looks = what or "unknown"
        mismatch = None if found.mulaw else f"the bytes look like {looks}"
        return _Reading(
            found, f"no RIFF header; the bytes look like {looks}", byte_rate, 0, mismatch
        )
    if found.header_bytes is not None:
        size, header = found.header_bytes, f"RIFF/WAVE header ({found.header_bytes} bytes)"
    elif len(head) >= HEAD_BYTES:
        size, header = len(head), f"RIFF/WAVE header longer than the {HEAD_BYTES} bytes recorded"
    else:
        size, header = len(head), f"RIFF/WAVE header cut short after {len(head)} bytes"
    if found.encoding == "unknown":
        return _Reading(found, f"{header}: format unknown (no fmt chunk within)", None, size, None)
    if what is None:
        tag = f"fmt tag {found.format_tag}"
        return _Reading(
            found, f"{header}: unsupported ({tag})", None, size, f"its RIFF header says {tag}"
        )
    mismatch = None if what == REQUESTED else f"its RIFF header says {what}"
    return _Reading(found, f"{header}: {what}", byte_rate, size, mismatch)


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pace(audio_s: float | None, start: float | None, end: float | None) -> float | None:
    if audio_s is None or start is None or end is None or end - start <= 0:
        return None
    return audio_s / (end - start)


def _outcome(r: RequestTrace) -> str:
    if r.close is not None:
        code, reason = r.close
        what = f"closed {code}" + (f" {reason}" if reason else "")
        return f"error {r.error!r}, then {what}" if r.error else what
    if r.error is not None:
        return f"error {r.error!r}" + (", then end" if r.end_s is not None else ", no end")
    if r.end_s is None:
        return "no end (timed out)"
    return "ok" if r.frames else "end without audio"


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):g} / {statistics.median(values):g} / {max(values):g}"


def report_lines(records: Sequence[RequestTrace]) -> list[str]:
    """The probe's findings, one line each (no trailing newlines)."""
    if not records:
        return ["no request was sent"]
    formats = {r.n: _read_format(r.head, r.audio_bytes) for r in records if r.frames}
    lines = _format_lines(formats)

    columns = (
        f"{'n':>3} {'chars':>5} {'connect':>8} {'ack':>7} {'1st byte':>8} {'end':>7} "
        f"{'frames':>6} {'bytes':>8} {'audio s':>8} {'×RT req':>7} {'×RT 1st':>7} "
        f"{'ms/char':>7}  outcome"
    )
    lines += ["", columns]
    audio: dict[int, float] = {}
    for r in records:
        fmt = formats.get(r.n)
        audio_s = None
        if fmt is not None and fmt.byte_rate:
            audio_s = audio[r.n] = max(0, r.audio_bytes - fmt.header_size) / fmt.byte_rate
        per_char = None if audio_s is None else audio_s * 1000 / r.chars
        lines.append(
            f"{r.n:>3} {r.chars:>5} {_num(r.connect_s):>8} {_num(r.ack_s):>7} "
            f"{_num(r.first_byte_s):>8} {_num(r.end_s):>7} {len(r.frames):>6} "
            f"{r.audio_bytes:>8} {_num(audio_s, 2):>8} "
            f"{_num(_pace(audio_s, 0.0, r.end_s), 1):>7} "
            f"{_num(_pace(audio_s, r.first_byte_s, r.end_s), 1):>7} "
            f"{_num(per_char, 0):>7}  {_outcome(r)}"
        )
    lines.append("(times in seconds after the request was sent; ×RT = audio seconds per second)")

    good = [r for r in records if r.succeeded]
    lines.append("")
    lines.append(f"successful replies: {len(good)} of {len(records)}")
    if not good:
        return lines
    first = [r.first_byte_s for r in good if r.first_byte_s is not None]
    lines.append(
        f"first-byte latency: p50 {statistics.median(first):.3f} s "
        f"(min {min(first):.3f}, max {max(first):.3f})"
    )
    timed = [r for r in good if r.n in audio]
    from_request = [p for r in timed if (p := _pace(audio[r.n], 0.0, r.end_s)) is not None]
    from_first = [p for r in timed if (p := _pace(audio[r.n], r.first_byte_s, r.end_s)) is not None]
    if from_request:
        tail = f", {statistics.median(from_first):.1f}× from the first byte" if from_first else ""
        lines.append(
            f"pace: median {statistics.median(from_request):.1f}× real time from the request{tail}"
        )
    counts = [len(r.frames) for r in good]
    sizes = [size for r in good for _, size in r.frames]
    lines.append(f"frames per reply (min / median / max): {_spread(counts)}")
    lines.append(f"frame bytes (min / median / max): {_spread(sizes)}")
    lines.append("first frame bytes: " + ", ".join(str(r.frames[0][1]) for r in good))
    lines.extend(_per_char_lines(good, formats))
    return lines


def _format_lines(formats: dict[int, _Reading]) -> list[str]:
    """What was requested, what came back (with the evidence of a headerless guess), and a
    warning when the two differ."""
    lines = [f"requested: {REQUESTED} (mulaw: true)"]
    seen = {f.description for f in formats.values()}
    if not seen:
        return [*lines, "format: unknown (no reply carried audio)"]
    if len(seen) == 1:
        (description,) = seen
        lines.append(f"format: {description}")
    else:
        lines.append("format: differs between replies:")
        lines.extend(f"  request {n}: {f.description}" for n, f in formats.items())
    guesses = [(n, f.found.basis) for n, f in formats.items() if not f.found.riff]
    if guesses:
        lines.append("evidence (no header: the encoding is a guess from the bytes):")
        lines.extend(f"  request {n}: {basis}" for n, basis in guesses)
    mismatches: dict[str, list[int]] = {}
    for n, f in formats.items():
        if f.mismatch is not None:
            mismatches.setdefault(f.mismatch, []).append(n)
    for mismatch, numbers in mismatches.items():
        which = ", ".join(map(str, numbers))
        lines.append(
            f"WARNING: not what was requested: {REQUESTED} was asked for, but {mismatch} "
            f"(request{'s' if len(numbers) > 1 else ''} {which})"
        )
    return lines


def _per_char_lines(good: Sequence[RequestTrace], formats: dict[int, _Reading]) -> list[str]:
    """Bytes per character, and whether the detected rate makes them 80–100 ms of audio."""
    rates = {formats[r.n].byte_rate for r in good}
    chars = sum(r.chars for r in good)
    payload = sum(max(0, r.audio_bytes - formats[r.n].header_size) for r in good)
    per_char = payload / chars
    low, high = EXPECTED_MS_PER_CHAR
    low_ok, high_ok = low * (1 - TOLERANCE), high * (1 + TOLERANCE)
    lines = [f"bytes per character: {per_char:.0f} ({payload} bytes, {chars} characters)"]
    fits = [name for name, rate in CANDIDATES if low <= per_char / rate * 1000 <= high]
    hint = (
        f"{low:g}–{high:g} ms per character would mean {per_char * 1000 / high:.0f}–"
        f"{per_char * 1000 / low:.0f} bytes/s" + (f": {' or '.join(fits)}" if fits else "")
    )
    if len(rates) != 1 or None in rates:
        return [*lines, f"audio per character: rate unknown; {hint}"]
    (rate,) = rates
    assert rate is not None
    ms = per_char / rate * 1000
    head = f"audio per character: {ms:.0f} ms at {rate} bytes/s"
    if low_ok <= ms <= high_ok:
        return [*lines, f"{head} — matches the expected {low:g}–{high:g} ms"]
    return [
        *lines,
        f"{head} — NOT the expected {low:g}–{high:g} ms: the rate looks wrong; {hint}",
    ]
