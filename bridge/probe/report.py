"""What a probe found, as plain aligned text (pure: records in, lines out).

* the format of the reply: a RIFF/WAVE header and its ``fmt `` (encoding, rate), or none — then
  the request's assumption (``mulaw: true`` → 8 kHz μ-law mono, hamsa-api.md §5.2–5.4);
* per request: connect, ``ack``, first byte and ``end`` times, frames, bytes, audio seconds and
  the pace in × real time (audio seconds / seconds from the request to ``end``, and from the first
  byte to ``end``);
* over all replies: first-byte latency p50, the median pace, frames per reply and frame sizes
  (min/median/max, first frames), and the audio per character at the detected rate against the
  80–100 ms the logged replies carry (hamsa-api.md §4) — far off means the rate is not what the
  header or the assumption says, and the line names the formats that would fit.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bridge.audio.formats import Encoding
from bridge.audio.wav import WavHeaderParser
from bridge.errors import AudioFormatError
from bridge.probe.recorder import HEAD_BYTES, RequestTrace

EXPECTED_MS_PER_CHAR: Final = (80.0, 100.0)
"""Audio per character of the logged Hamsa replies (hamsa-api.md §4)."""
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

_ENCODING_NAMES: Final = {Encoding.MULAW: "μ-law", Encoding.ALAW: "A-law", Encoding.PCM16: "PCM16"}


@dataclass(frozen=True, slots=True)
class DetectedFormat:
    """What the first bytes of a reply say about its format."""

    riff: bool
    description: str
    byte_rate: int | None
    """Audio bytes per second, if known (from the header, or the request's assumption)."""
    header_size: int
    assumed: bool
    """No header: the format is what the request asked for, not something the bytes said."""


def _khz(rate: int) -> str:
    return f"{rate / 1000:g} kHz"


def detect_format(head: bytes, *, mulaw: bool) -> DetectedFormat:
    """The format of a reply from its first bytes (``head_hex`` of a trace).

    Private stand-in for ``bridge.hamsa_trace.detect_format`` (written in a parallel branch):
    swap it in when that module lands.
    """
    parser = WavHeaderParser()
    try:
        verdict = parser.feed(head) if head else None
    except AudioFormatError as exc:
        return DetectedFormat(True, f"RIFF/WAVE header, unsupported: {exc.message}", None, 0, False)
    if verdict is None and head.startswith(b"RIFF"):
        what = (
            f"longer than the {HEAD_BYTES} bytes recorded"
            if len(head) >= HEAD_BYTES
            else f"cut short after {len(head)} bytes"
        )
        return DetectedFormat(True, f"RIFF/WAVE header {what}", None, 0, False)
    if verdict is None or verdict.header is None:
        if mulaw:
            return DetectedFormat(False, "μ-law 8 kHz mono", 8000, 0, True)
        return DetectedFormat(False, "PCM16 16 kHz mono", 32000, 0, True)
    fmt = verdict.header.format
    channels = {1: "mono", 2: "stereo"}[fmt.channels]
    name = _ENCODING_NAMES[fmt.encoding]
    return DetectedFormat(
        True,
        f"{name} {_khz(fmt.sample_rate)} {channels}",
        fmt.bytes_per_second,
        verdict.header.header_size,
        False,
    )


def _describe(fmt: DetectedFormat, mulaw: bool) -> str:
    if fmt.riff:
        size = f" ({fmt.header_size} bytes)" if fmt.header_size else ""
        return f"RIFF/WAVE header{size}: {fmt.description}"
    asked = "mulaw: true" if mulaw else "mulaw: false"
    return f"no RIFF header; {fmt.description} assumed ({asked})"


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


def report_lines(records: Sequence[RequestTrace], *, mulaw: bool = True) -> list[str]:
    """The probe's findings, one line each (no trailing newlines)."""
    if not records:
        return ["no request was sent"]
    lines: list[str] = []
    formats = {r.n: detect_format(r.head, mulaw=mulaw) for r in records if r.frames}
    seen = sorted({_describe(f, mulaw) for f in formats.values()})
    if not seen:
        lines.append("format: unknown (no reply carried audio)")
    elif len(seen) == 1:
        lines.append(f"format: {seen[0]}")
    else:
        lines.append("format: differs between replies:")
        lines.extend(f"  request {n}: {_describe(f, mulaw)}" for n, f in formats.items())

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


def _per_char_lines(good: Sequence[RequestTrace], formats: dict[int, DetectedFormat]) -> list[str]:
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
