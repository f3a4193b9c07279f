"""Recorded Hamsa timing traces (JSONL, version 1): the reader, its validator, format detection.

``hamsa-bridge hamsa probe`` records how the real realtime API answered a series of ``tts``
requests; ``hamsa-bridge emulate-hamsa --replay FILE`` replays that timing. This module is the
one definition of the format both sides follow: it reads and validates a trace (pure apart from
reading the file) and never writes one.

Trace format, version 1
-----------------------

::

    {"type": "probe", "version": 1, "started": "2026-12-07T09:00:00Z", "url": "wss://…/v1/realtime/ws", "voice": {"speaker": "Majd", "dialect": "ksa", "language": "ar"}, "mulaw": true}
    {"type": "request", "n": 1, "text": "…", "chars": 51, "connect_s": 1.21, "ack_s": 0.05, "frames": [[0.31, 7398], [0.52, 32000]], "head_hex": "52494646…", "end_s": 2.90, "error": null, "close": null}

- Line 1 is the header; then one ``request`` line per request, ``n`` = 1, 2, 3… in order. All
  ``*_s`` and frame times are seconds after that request was sent (floats ≥ 0, frame times
  non-decreasing, each ≤ end_s when end_s is not null); ``connect_s`` is the time to open the
  socket for that request (null if it reused an open socket); ``frames`` = ``[time_s,
  size_bytes]`` per binary frame (size ≥ 1 int); ``head_hex`` = hex of the first 64 bytes of the
  reply (all frames concatenated, at most 64 bytes = 128 hex chars, may be empty); ``error`` = the
  error frame's message or null; ``close`` = ``[code, reason]`` if the socket closed during the
  request, else null.

Reading rules (this reader's, on top of the format)
---------------------------------------------------

- UTF-8; every line ends with ``\\n`` (the last may lack it if it is complete JSON); no blank
  lines; unknown keys are ignored (a later writer may add some without a version bump). JSON
  ``NaN``/``Infinity`` and booleans are never numbers.
- ``ack_s`` may be null (no ``ack`` came: the request failed first); ``end_s`` may be null (no
  ``end`` came). ``head_hex`` must be exactly the first ``min(64, total frame bytes)`` bytes.
- A request is *successful* (replayable) when it has an ``ack_s``, at least one frame, an
  ``end_s``, and neither ``error`` nor ``close``. A trace needs at least one.
- The audio must be μ-law (the bridge asks Hamsa for ``mulaw: true``; Twilio plays 8 kHz
  μ-law): a header with ``"mulaw": false`` is refused, and so is a request whose ``head_hex``
  is a RIFF/WAVE header whose ``fmt `` tag is not 7 (μ-law; ``WAVE_FORMAT_EXTENSIBLE``'s
  SubFormat tag counts, RFC 2361 https://www.rfc-editor.org/rfc/rfc2361). Headerless audio is not
  second-guessed here: :func:`detect_format` is for reports, and its guess is not proof.

Every problem raises :class:`bridge.errors.TraceError`, whose message starts ``FILE:LINE:``
(``FILE:`` alone when the file cannot be read at all).

Format detection
----------------

:func:`detect_format` says what a reply's first bytes look like, for the probe's report. With a
RIFF/WAVE header (docs/hamsa-ws.md §5.3–5.4) it reads the ``fmt `` chunk:
tag, channels, rate, bits, and where the audio starts — exact, as far as the header lies within
``head``. Without one it guesses, and says so (``basis``):

- *Encoding* from byte statistics: in little-endian PCM16 the odd (high) bytes follow the
  waveform, so consecutive ones differ little, while the even (low) bytes look random; in G.711
  μ-law both byte parities are samples of the same waveform and alike. So the mean step between
  consecutive even bytes versus odd bytes (read as signed 8-bit, "roughness"): even at least
  :data:`PCM16_ROUGHNESS` × odd + :data:`PCM16_ROUGHNESS_MARGIN` means PCM16, else μ-law.
  All-0x00 bytes are PCM16 silence; bytes only 0xFF/0x7F are μ-law silence. Noise-like or
  clipped PCM16 (no smooth waveform), very quiet PCM16 dither, big-endian PCM and A-law defeat
  it, and 64 bytes (32 sample pairs) is a small sample: a guess, never proof.
- *Rate* from bytes per second, ``total_bytes / audio_seconds_hint``, when a hint is given (for
  example the characters × the ~80 ms/char of docs/hamsa-ws.md §4, or the reply's duration as
  heard): the nearest of the common rates (8, 11.025, 16, 22.05, 24, 44.1, 48 kHz) within 20 %;
  otherwise the defaults of §5.4 (μ-law 8 kHz, PCM16 16 kHz). The hint is only as good as the
  ms/char assumption: a voice speaking 25 % faster moves 16 kHz towards 11.025 kHz.
- When the bytes are undecided, bytes per second picks the encoding too (8,000 B/s → μ-law
  8 kHz; 32,000 B/s → PCM16 16 kHz; 16,000 B/s is ambiguous — μ-law 16 kHz or PCM16 8 kHz —
  and reads as PCM16 8 kHz); with neither, μ-law 8 kHz (what was requested).
"""  # noqa: E501 (the format's two example lines are quoted verbatim)

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from bridge.errors import TraceError

__all__ = [
    "HEAD_BYTES",
    "PCM16_ROUGHNESS",
    "PCM16_ROUGHNESS_MARGIN",
    "TRACE_VERSION",
    "DetectedFormat",
    "Trace",
    "TraceHeader",
    "TraceRequest",
    "TraceVoice",
    "detect_format",
    "parse_trace",
    "read_trace",
]

TRACE_VERSION: Final = 1
"""The trace format version this module reads (and the probe writes)."""
HEAD_BYTES: Final = 64
"""``head_hex`` holds the first this-many bytes of a reply (fewer if the reply is shorter)."""
PCM16_ROUGHNESS: Final = 2.0
PCM16_ROUGHNESS_MARGIN: Final = 8.0
"""Headerless guess: PCM16 when the even bytes' roughness is at least ``PCM16_ROUGHNESS`` × the
odd bytes' plus ``PCM16_ROUGHNESS_MARGIN`` (see the module docstring)."""

_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_ALAW: Final = 0x0006
_WAVE_FORMAT_MULAW: Final = 0x0007
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_COMMON_RATES: Final = (8000, 11025, 16000, 22050, 24000, 44100, 48000)


# --- the trace -----------------------------------------------------------------------------------


def replayable(
    ack_s: float | None, frames: int, end_s: float | None, error: str | None, close: object
) -> bool:
    """A request whose reply can be replayed: ``ack``, audio and ``end``, with no ``error`` and
    no close. The one definition of a successful request, for the probe and the reader."""
    return ack_s is not None and frames > 0 and end_s is not None and error is None and not close


@dataclass(frozen=True)
class TraceVoice:
    speaker: str
    dialect: str
    language: str


@dataclass(frozen=True)
class TraceHeader:
    """Line 1: what was probed."""

    version: int
    started: str
    url: str
    voice: TraceVoice
    mulaw: bool


@dataclass(frozen=True)
class TraceRequest:
    """One ``request`` line; times in seconds after the request was sent."""

    n: int
    text: str
    chars: int
    connect_s: float | None
    ack_s: float | None
    frames: tuple[tuple[float, int], ...]
    """``(time_s, size_bytes)`` per binary frame, times non-decreasing."""
    head: bytes
    """The first ``min(64, total_bytes)`` bytes of the reply."""
    end_s: float | None
    error: str | None
    close: tuple[int, str] | None
    line: int
    """Its line number in the file (1-based)."""

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.frames)

    @property
    def successful(self) -> bool:
        """``ack``, audio and ``end``, with no ``error`` and no close: replayable."""
        return replayable(self.ack_s, len(self.frames), self.end_s, self.error, self.close)


@dataclass(frozen=True)
class Trace:
    path: str
    header: TraceHeader
    requests: tuple[TraceRequest, ...]

    @property
    def successful(self) -> tuple[TraceRequest, ...]:
        """The replayable requests, in order (at least one: the reader guarantees it)."""
        return tuple(r for r in self.requests if r.successful)

    @property
    def connect_delays(self) -> tuple[float, ...]:
        """Every non-null ``connect_s``, in order (the sockets the probe opened)."""
        return tuple(r.connect_s for r in self.requests if r.connect_s is not None)


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate the trace at ``path``; raise :class:`TraceError` naming file and line."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read: {exc.strerror or exc}", path=name) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TraceError("not UTF-8 text", path=name, line=line) from exc
    return parse_trace(text, name)


def parse_trace(text: str, path: str = "<trace>") -> Trace:
    """Validate the text of a trace file (``path`` only names it in errors)."""
    if not text.strip():
        raise TraceError("empty file: expected the probe header", path=path, line=1)
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()  # what follows the final newline: nothing
    objects: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines)
        if not raw.strip():
            raise TraceError("blank line", path=path, line=number)
        try:
            value = json.loads(raw, parse_constant=_no_constant)
        except ValueError as exc:
            if last and not complete:
                raise TraceError(
                    "truncated last line (no newline at the end and not valid JSON: "
                    "was the probe interrupted?)",
                    path=path,
                    line=number,
                ) from exc
            detail = (
                f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
            )
            raise TraceError(f"invalid JSON: {detail}", path=path, line=number) from exc
        if not isinstance(value, dict):
            raise TraceError("expected a JSON object", path=path, line=number)
        objects.append(value)

    header = _header(objects[0], _Where(path, 1))
    requests = tuple(
        _request(obj, _Where(path, number), expected_n=number - 1)
        for number, obj in enumerate(objects[1:], start=2)
    )
    if not any(r.successful for r in requests):
        raise TraceError(
            f"no successful request (ack, audio and end, no error or close) among "
            f"{len(requests)}: nothing to replay",
            path=path,
            line=len(objects),
        )
    return Trace(path, header, requests)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in a trace")


@dataclass(frozen=True)
class _Where:
    path: str
    line: int

    def error(self, message: str) -> TraceError:
        return TraceError(message, path=self.path, line=self.line)


def _field(obj: dict[str, Any], key: str, where: _Where) -> Any:
    if key not in obj:
        raise where.error(f"missing field {key!r}")
    return obj[key]


def _string(obj: dict[str, Any], key: str, where: _Where) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise where.error(f"{key!r} must be a string, not {_kind(value)}")
    return value


def _integer(obj: dict[str, Any], key: str, where: _Where, minimum: int) -> int:
    value = _field(obj, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise where.error(f"{key!r} must be an integer, not {_kind(value)}")
    if value < minimum:
        raise where.error(f"{key!r} must be ≥ {minimum}, got {value}")
    return value


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _seconds(obj: dict[str, Any], key: str, where: _Where) -> float | None:
    value = _field(obj, key, where)
    if value is None:
        return None
    if not _is_seconds(value):
        raise where.error(f"{key!r} must be seconds (a number ≥ 0) or null, not {value!r}")
    return float(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "an object"
    )


def _header(obj: dict[str, Any], where: _Where) -> TraceHeader:
    kind = obj.get("type")
    if kind != "probe":
        found = "no 'type'" if kind is None else f"type {kind!r}"
        raise where.error(
            f"missing or unknown header: line 1 must be the probe header, found {found}"
        )
    version = _field(obj, "version", where)
    if not isinstance(version, int) or isinstance(version, bool):
        raise where.error(f"'version' must be an integer, not {_kind(version)}")
    if version != TRACE_VERSION:
        raise where.error(
            f"unsupported trace version {version} (this reader knows {TRACE_VERSION})"
        )
    voice = _field(obj, "voice", where)
    if not isinstance(voice, dict):
        raise where.error(f"'voice' must be an object, not {_kind(voice)}")
    mulaw = _field(obj, "mulaw", where)
    if not isinstance(mulaw, bool):
        raise where.error(f"'mulaw' must be true or false, not {_kind(mulaw)}")
    if not mulaw:
        raise where.error(
            'not μ-law: the probe asked for PCM ("mulaw": false); the bridge plays μ-law '
            "replies only, so this trace cannot stand for them: probe again with mulaw"
        )
    return TraceHeader(
        version=version,
        started=_string(obj, "started", where),
        url=_string(obj, "url", where),
        voice=TraceVoice(
            speaker=_string(voice, "speaker", where),
            dialect=_string(voice, "dialect", where),
            language=_string(voice, "language", where),
        ),
        mulaw=mulaw,
    )


def _request(obj: dict[str, Any], where: _Where, expected_n: int) -> TraceRequest:
    kind = obj.get("type")
    if kind != "request":
        raise where.error(f"expected a 'request' line, found type {kind!r}")
    n = _integer(obj, "n", where, 1)
    if n != expected_n:
        raise where.error(
            f"'n' must be {expected_n} (requests numbered 1, 2, 3… in order), got {n}"
        )
    end_s = _seconds(obj, "end_s", where)
    frames = _frames(_field(obj, "frames", where), end_s, where)
    total = sum(size for _, size in frames)
    head = _head(_string(obj, "head_hex", where), total, where)
    error = _field(obj, "error", where)
    if error is not None and not isinstance(error, str):
        raise where.error(f"'error' must be a string or null, not {_kind(error)}")
    close = _field(obj, "close", where)
    if close is not None and not (
        isinstance(close, list)
        and len(close) == 2
        and isinstance(close[0], int)
        and not isinstance(close[0], bool)
        and isinstance(close[1], str)
    ):
        raise where.error(f"'close' must be [code, reason] or null, not {close!r}")
    request = TraceRequest(
        n=n,
        text=_string(obj, "text", where),
        chars=_integer(obj, "chars", where, 0),
        connect_s=_seconds(obj, "connect_s", where),
        ack_s=_seconds(obj, "ack_s", where),
        frames=frames,
        head=head,
        end_s=end_s,
        error=error,
        close=None if close is None else (close[0], close[1]),
        line=where.line,
    )
    found = detect_format(head, total, None)
    if found.riff and found.format_tag is not None and found.format_tag != _WAVE_FORMAT_MULAW:
        raise where.error(
            f"not μ-law: the reply starts with a RIFF/WAVE header whose fmt tag is "
            f"{found.format_tag} ({found.encoding}), not 7 (μ-law)"
        )
    return request


def _frames(value: Any, end_s: float | None, where: _Where) -> tuple[tuple[float, int], ...]:
    if not isinstance(value, list):
        raise where.error(f"'frames' must be a list of [time_s, size_bytes], not {_kind(value)}")
    frames: list[tuple[float, int]] = []
    previous = 0.0
    for i, item in enumerate(value, start=1):
        if not (isinstance(item, list) and len(item) == 2):
            raise where.error(f"frame {i} must be [time_s, size_bytes], not {item!r}")
        at, size = item
        if not _is_seconds(at):
            raise where.error(f"frame {i}: time must be seconds (a number ≥ 0), not {at!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise where.error(f"frame {i}: size must be an integer ≥ 1, not {size!r}")
        if at < previous:
            raise where.error(
                f"frame times must be non-decreasing: frame {i} at {at} s comes after {previous} s"
            )
        if end_s is not None and at > end_s:
            raise where.error(f"frame {i} at {at} s comes after end_s {end_s} s")
        previous = float(at)
        frames.append((float(at), size))
    return tuple(frames)


def _head(value: str, total: int, where: _Where) -> bytes:
    try:
        head = bytes.fromhex(value)
    except ValueError as exc:
        raise where.error(f"'head_hex' is not hex: {value[:20]!r}…") from exc
    expected = min(HEAD_BYTES, total)
    if len(head) != expected:
        raise where.error(
            f"'head_hex' must hold the first {expected} bytes of the reply "
            f"(min(64, {total} frame bytes)), holds {len(head)}"
        )
    return head


# --- format detection ----------------------------------------------------------------------------

Encoding = Literal["mulaw", "pcm16", "alaw", "other", "unknown"]


@dataclass(frozen=True)
class DetectedFormat:
    """What a reply's first bytes say about its format (see the module docstring)."""

    riff: bool
    """The bytes start with a RIFF/WAVE preamble."""
    encoding: Encoding
    """``"other"``: a RIFF header naming anything but 16-bit PCM, 8-bit μ-law or A-law;
    ``"unknown"``: a RIFF header whose ``fmt `` chunk is not within the bytes given."""
    sample_rate: int | None
    channels: int | None
    format_tag: int | None
    """The RIFF ``fmt `` tag (the SubFormat's for ``WAVE_FORMAT_EXTENSIBLE``), if read."""
    header_bytes: int | None
    """Where the audio starts (after the ``data`` chunk header), if within the bytes given."""
    bytes_per_second: float | None
    """``total_bytes / audio_seconds_hint`` when a hint was given."""
    basis: str
    """How it was decided: ``"riff header"``, or the headerless heuristic's evidence."""

    @property
    def mulaw(self) -> bool:
        return self.encoding == "mulaw"


def detect_format(
    head: bytes, total_bytes: int, audio_seconds_hint: float | None
) -> DetectedFormat:
    """Detect a reply's format from its first bytes (``head``), its size and, optionally, the
    duration its text should have (see the module docstring for the heuristic and its limits)."""
    bps = (
        total_bytes / audio_seconds_hint
        if audio_seconds_hint is not None and audio_seconds_hint > 0 and total_bytes > 0
        else None
    )
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _riff(head, bps)
    return _headerless(head, bps)


def _riff(head: bytes, bps: float | None) -> DetectedFormat:
    pos = 12
    tag = channels = rate = bits = None
    data_at = None
    while pos + 8 <= len(head):
        chunk_id = head[pos : pos + 4]
        (size,) = struct.unpack_from("<I", head, pos + 4)
        payload = pos + 8
        if chunk_id == b"data":
            data_at = payload
            break
        if chunk_id == b"fmt " and payload + 16 <= len(head):
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, payload)
            if tag == _WAVE_FORMAT_EXTENSIBLE:
                tag = (
                    int.from_bytes(head[payload + 24 : payload + 26], "little")
                    if size >= 40 and payload + 26 <= len(head)
                    else None
                )
        pos = payload + size + (size & 1)
    encoding: Encoding
    if tag is None:
        encoding = "unknown"
    elif tag == _WAVE_FORMAT_MULAW and bits == 8:
        encoding = "mulaw"
    elif tag == _WAVE_FORMAT_ALAW and bits == 8:
        encoding = "alaw"
    elif tag == _WAVE_FORMAT_PCM and bits == 16:
        encoding = "pcm16"
    else:
        encoding = "other"
    return DetectedFormat(True, encoding, rate, channels, tag, data_at, bps, "riff header")


def _roughness(values: bytes) -> float:
    """Mean absolute step between consecutive bytes read as signed 8-bit values."""
    signed = [b - 256 if b > 127 else b for b in values]
    return sum(abs(b - a) for a, b in zip(signed, signed[1:], strict=False)) / (len(signed) - 1)


def _headerless(head: bytes, bps: float | None) -> DetectedFormat:
    guess: Literal["mulaw", "pcm16"] | None = None
    evidence = "too few bytes"
    if head and all(b == 0 for b in head):
        guess, evidence = "pcm16", "all bytes 0x00 (PCM16 silence)"
    elif head and all(b in (0xFF, 0x7F) for b in head):
        guess, evidence = "mulaw", "all bytes 0xFF/0x7F (μ-law silence)"
    elif len(head) >= 16:
        pairs = len(head) // 2
        low, high = _roughness(head[0 : 2 * pairs : 2]), _roughness(head[1 : 2 * pairs : 2])
        guess = "pcm16" if low >= PCM16_ROUGHNESS * high + PCM16_ROUGHNESS_MARGIN else "mulaw"
        evidence = f"even/odd byte roughness {low:.0f}/{high:.0f} over {pairs} pairs"
    basis = f"headerless; bytes: {evidence}"
    if guess is None and bps is not None:
        candidates = [
            ("mulaw", 8000, 8000.0),
            ("pcm16", 8000, 16000.0),
            ("pcm16", 16000, 32000.0),
            ("pcm16", 22050, 44100.0),
            ("pcm16", 24000, 48000.0),
        ]
        name, rate, _ = min(candidates, key=lambda c: abs(math.log(bps / c[2])))
        encoding: Literal["mulaw", "pcm16"] = "mulaw" if name == "mulaw" else "pcm16"
        return DetectedFormat(
            False,
            encoding,
            rate,
            1,
            None,
            None,
            bps,
            f"{basis}; encoding and rate from {bps:.0f} B/s",
        )
    encoding = guess or "mulaw"
    width = 1 if encoding == "mulaw" else 2
    snapped = _snap(bps / width) if bps is not None else None
    if snapped is None:
        basis += "; rate: the default for the encoding (docs/hamsa-ws.md §5.4)"
    else:
        basis += f"; rate from {bps:.0f} B/s"
    if guess is None:
        basis += "; encoding: the requested μ-law (no evidence)"
    rate = snapped or (8000 if encoding == "mulaw" else 16000)
    return DetectedFormat(False, encoding, rate, 1, None, None, bps, basis)


def _snap(rate: float) -> int | None:
    best = min(_COMMON_RATES, key=lambda r: abs(math.log(rate / r)))
    return best if abs(rate / best - 1) <= 0.2 else None
