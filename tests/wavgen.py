"""Build RIFF/WAVE headers byte by byte for the audio tests (independent of bridge.audio.wav)."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

PCM = 0x0001
FLOAT = 0x0003
ALAW = 0x0006
MULAW = 0x0007
EXTENSIBLE = 0xFFFE
UNKNOWN = 0xFFFFFFFF

# KSDATAFORMAT_SUBTYPE_* GUID tail, as stored after the two tag bytes.
KS_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def chunk(chunk_id: bytes, payload: bytes, *, size: int | None = None) -> bytes:
    """One RIFF chunk, padded to an even length. ``size`` overrides the declared size."""
    declared = len(payload) if size is None else size
    pad = b"\x00" if len(payload) % 2 else b""
    return chunk_id + struct.pack("<I", declared) + payload + pad


def fmt_payload(
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    *,
    cb_extra: bytes | None = None,
    sub_tag: int | None = None,
    guid: bytes | None = None,
) -> bytes:
    """A ``fmt `` payload: 16 bytes, + cbSize and ``cb_extra`` if given, or extensible if
    ``sub_tag``/``guid`` is given (then ``tag`` should be ``EXTENSIBLE``)."""
    block_align = channels * bits // 8
    base = struct.pack("<HHIIHH", tag, channels, rate, rate * block_align, block_align, bits)
    if sub_tag is not None or guid is not None:
        sub = guid if guid is not None else struct.pack("<H", sub_tag) + KS_TAIL
        mask = 0x4 if channels == 1 else 0x3
        return base + struct.pack("<HHI", 22, bits, mask) + sub
    if cb_extra is not None:
        return base + struct.pack("<H", len(cb_extra)) + cb_extra
    return base


def wav(
    body: bytes,
    *,
    fmt: bytes | None = None,
    before_data: Iterable[bytes] = (),
    after_data: bytes = b"",
    data_size: int | None = None,
    riff_size: int | None = None,
) -> bytes:
    """A whole WAV: preamble, ``fmt `` chunk (default: PCM16 16 kHz mono), extra chunks, data.

    ``data_size``/``riff_size`` default to the true sizes; pass ``UNKNOWN`` for streaming.
    ``after_data`` is appended after the (unpadded) body.
    """
    fmt_chunk = chunk(b"fmt ", fmt if fmt is not None else fmt_payload(PCM, 1, 16000, 16))
    chunks = fmt_chunk + b"".join(before_data)
    size = len(body) if data_size is None else data_size
    data_header = b"data" + struct.pack("<I", size)
    total = 4 + len(chunks) + len(data_header) + len(body) + len(after_data)
    riff = total if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", riff) + b"WAVE" + chunks + data_header + body + after_data


def header_len(whole: bytes, body: bytes, after_data: bytes = b"") -> int:
    """Length of the header in a ``wav()`` result."""
    return len(whole) - len(body) - len(after_data)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 12000.0) -> bytes:
    """A mono PCM16 sine tone."""
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype("<i2").tobytes()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (clamped, sorted, duplicates allowed -> empty chunks)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]
