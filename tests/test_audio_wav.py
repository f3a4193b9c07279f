from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.audio.formats import MULAW_8K, PCM16_16K, AudioFormat, Encoding
from bridge.audio.wav import MAX_HEADER_BYTES, WavHeader, WavHeaderParser, parse_fmt
from bridge.errors import AudioFormatError, InvalidState
from tests.wavgen import (
    ALAW,
    EXTENSIBLE,
    FLOAT,
    MULAW,
    PCM,
    UNKNOWN,
    chunk,
    fmt_payload,
    split_at,
    wav,
)

BODY = bytes(range(256)) * 4


def parse(chunks: list[bytes]) -> tuple[bool, WavHeader | None, bytes]:
    """Feed chunks; return (decided before the end, header, every audio byte in order)."""
    parser = WavHeaderParser()
    for i, c in enumerate(chunks):
        result = parser.feed(c)
        if result is not None:
            assert parser.done
            return True, result.header, result.body + b"".join(chunks[i + 1 :])
    return False, None, parser.finish()


def test_canonical_44_byte_pcm16_16k_header() -> None:
    data = wav(BODY)
    assert len(data) - len(BODY) == 44
    decided, header, body = parse([data])
    assert decided
    assert header == WavHeader(PCM16_16K, len(BODY), 44)
    assert body == BODY


def test_streaming_sizes_mean_to_end_of_stream() -> None:
    data = wav(BODY, data_size=UNKNOWN, riff_size=UNKNOWN)
    _, header, body = parse([data])
    assert header is not None
    assert header.data_size is None
    assert body == BODY


def test_real_data_size_is_reported_and_trailing_chunk_left_to_the_consumer() -> None:
    trailer = chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00Lavf\x00")
    _, header, body = parse([wav(BODY, after_data=trailer)])
    assert header is not None
    assert header.data_size == len(BODY)
    assert body == BODY + trailer  # clipping to data_size is ReplyDecoder's job


def test_mulaw_fmt_with_cbsize_and_fact_chunk() -> None:
    fmt = fmt_payload(MULAW, 1, 8000, 8, cb_extra=b"")
    assert len(fmt) == 18
    fact = chunk(b"fact", struct.pack("<I", len(BODY)))
    data = wav(BODY, fmt=fmt, before_data=[fact])
    _, header, body = parse([data])
    assert header == WavHeader(MULAW_8K, len(BODY), 12 + 26 + 12 + 8)
    assert body == BODY


def test_mulaw_fmt_of_50_bytes() -> None:
    fmt = fmt_payload(MULAW, 1, 8000, 8, cb_extra=bytes(range(32)))
    assert len(fmt) == 50
    _, header, body = parse([wav(BODY, fmt=fmt)])
    assert header == WavHeader(MULAW_8K, len(BODY), 12 + 58 + 8)
    assert body == BODY


def test_alaw() -> None:
    _, header, _ = parse([wav(BODY, fmt=fmt_payload(ALAW, 1, 8000, 8, cb_extra=b""))])
    assert header is not None
    assert header.format == AudioFormat(Encoding.ALAW, 8000, 1)


@pytest.mark.parametrize(
    ("sub_tag", "channels", "rate", "bits", "expected"),
    [
        (PCM, 2, 24000, 16, AudioFormat(Encoding.PCM16, 24000, 2)),
        (PCM, 1, 16000, 16, PCM16_16K),
        (MULAW, 1, 8000, 8, MULAW_8K),
    ],
)
def test_extensible_fmt_uses_subformat_tag(
    sub_tag: int, channels: int, rate: int, bits: int, expected: AudioFormat
) -> None:
    fmt = fmt_payload(EXTENSIBLE, channels, rate, bits, sub_tag=sub_tag)
    assert len(fmt) == 40
    _, header, body = parse([wav(BODY, fmt=fmt)])
    assert header is not None
    assert header.format == expected
    assert header.header_size == 12 + 48 + 8
    assert body == BODY


def test_fact_list_and_unknown_chunks_are_skipped() -> None:
    extra = [
        chunk(b"fact", struct.pack("<I", 1234)),
        chunk(b"LIST", b"INFOINAM\x06\x00\x00\x00hello\x00"),
        chunk(b"zzzz", b"\x00" * 10),
    ]
    data = wav(BODY, before_data=extra)
    _, header, body = parse([data])
    assert header is not None
    assert header.header_size == len(data) - len(BODY)
    assert body == BODY


def test_odd_sized_chunks_are_padded() -> None:
    odd = [chunk(b"LIST", b"INFOabc"), chunk(b"junk", b"\x01")]
    assert [len(c) for c in odd] == [16, 10]  # 8 + 7 + pad, 8 + 1 + pad
    data = wav(BODY, before_data=odd)
    _, header, body = parse([data])
    assert header is not None
    assert header.header_size == 44 + 26
    assert body == BODY


def test_fmt_after_other_chunks() -> None:
    fmt = chunk(b"fmt ", fmt_payload(PCM, 1, 16000, 16))
    data = b"RIFF\xff\xff\xff\xffWAVE" + chunk(b"JUNK", b"\x00" * 28) + fmt
    data += b"data\xff\xff\xff\xff" + BODY
    _, header, body = parse([data])
    assert header == WavHeader(PCM16_16K, None, 12 + 36 + 24 + 8)
    assert body == BODY


def test_header_fed_one_byte_at_a_time() -> None:
    data = wav(BODY, fmt=fmt_payload(MULAW, 1, 8000, 8, cb_extra=b""))
    hlen = len(data) - len(BODY)
    parser = WavHeaderParser()
    for i in range(hlen - 1):
        assert parser.feed(data[i : i + 1]) is None
    result = parser.feed(data[hlen - 1 : hlen])
    assert result is not None
    assert result.body == b""
    assert result.header == WavHeader(MULAW_8K, len(BODY), hlen)


HEADERED = [
    wav(BODY),
    wav(BODY, data_size=UNKNOWN, riff_size=UNKNOWN),
    wav(BODY, fmt=fmt_payload(EXTENSIBLE, 2, 22050, 16, sub_tag=PCM)),
    wav(
        BODY,
        fmt=fmt_payload(MULAW, 1, 8000, 8, cb_extra=b""),
        before_data=[chunk(b"fact", b"\x00" * 4), chunk(b"LIST", b"INFOabc")],
        after_data=chunk(b"LIST", b"x"),
    ),
]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(HEADERED),
    st.lists(st.integers(min_value=0, max_value=120), max_size=8),
)
def test_any_split_of_a_header_gives_the_same_verdict(data: bytes, cuts: list[int]) -> None:
    assert parse(split_at(data, cuts)) == parse([data])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=40), st.lists(st.integers(min_value=0, max_value=40), max_size=5))
def test_headerless_bytes_come_back_unchanged(data: bytes, cuts: list[int]) -> None:
    decided, header, body = parse(split_at(data, cuts))
    assert header is None
    assert body == data
    if len(data) >= 12:
        assert decided


def test_non_r_first_byte_decides_at_once_without_copying() -> None:
    data = b"\xff\x7f\x00" * 100
    result = WavHeaderParser().feed(data)
    assert result is not None
    assert result.header is None
    assert result.body is data


@pytest.mark.parametrize(
    ("prefix", "decided_at"),
    [
        (b"R\x01", 2),
        (b"RIFX", 4),
        (b"RIFF\x00\x00\x00\x00WAVX", 12),
        (b"RIFF\x00\x00\x00\x00AVI ", 9),
    ],
)
def test_riff_lookalike_is_audio(prefix: bytes, decided_at: int) -> None:
    parser = WavHeaderParser()
    for i in range(decided_at - 1):
        assert parser.feed(prefix[i : i + 1]) is None
    result = parser.feed(prefix[decided_at - 1 : decided_at])
    assert result is not None
    assert result.header is None
    assert result.body == prefix[:decided_at]


@pytest.mark.parametrize("short", [b"R", b"RI", b"RIFF", b"RIFF\x10\x00\x00\x00WA"])
def test_finish_while_deciding_returns_the_bytes_as_audio(short: bytes) -> None:
    parser = WavHeaderParser()
    assert parser.feed(short) is None
    assert parser.buffered == len(short)
    assert parser.finish() == short


def test_finish_inside_a_confirmed_header_yields_no_audio() -> None:
    parser = WavHeaderParser()
    assert parser.feed(wav(b"")[:30]) is None
    assert parser.finish() == b""


def test_header_only_reply() -> None:
    decided, header, body = parse([wav(b"")])
    assert decided
    assert header == WavHeader(PCM16_16K, None, 44)  # size 0 = unknown (streaming writers)
    assert body == b""


def test_use_after_verdict_is_invalid_state() -> None:
    parser = WavHeaderParser()
    assert parser.feed(b"\x00") is not None
    with pytest.raises(InvalidState):
        parser.feed(b"\x00")
    with pytest.raises(InvalidState):
        parser.finish()
    finished = WavHeaderParser()
    finished.finish()
    with pytest.raises(InvalidState):
        finished.feed(b"R")


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (fmt_payload(PCM, 1, 16000, 24), "PCM bit depth 24"),
        (fmt_payload(PCM, 1, 16000, 8), "PCM bit depth 8"),
        (fmt_payload(FLOAT, 1, 16000, 32), "float"),
        (fmt_payload(EXTENSIBLE, 1, 16000, 32, sub_tag=FLOAT), "float"),
        (fmt_payload(EXTENSIBLE, 1, 16000, 24, sub_tag=PCM), "PCM bit depth 24"),
        (fmt_payload(0x0055, 1, 16000, 0), "format tag 0x0055"),
        (fmt_payload(PCM, 3, 16000, 16), "channel count 3"),
        (fmt_payload(PCM, 0, 16000, 16), "channel count 0"),
        (fmt_payload(EXTENSIBLE, 6, 48000, 16, sub_tag=PCM), "channel count 6"),
        (fmt_payload(PCM, 1, 0, 16), "0 Hz"),
        (fmt_payload(MULAW, 1, 8000, 16), "mu-law bit depth 16"),
        (fmt_payload(ALAW, 1, 8000, 4), "A-law bit depth 4"),
        (fmt_payload(PCM, 1, 16000, 16)[:14], "too short"),
        (fmt_payload(EXTENSIBLE, 1, 16000, 16, sub_tag=PCM)[:30], "too short"),
        (fmt_payload(EXTENSIBLE, 1, 16000, 16, guid=b"\x01\x00" + b"\x11" * 14), "GUID"),
    ],
)
def test_unsupported_fmt_is_rejected(fmt: bytes, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        parse([wav(BODY, fmt=fmt)])
    with pytest.raises(AudioFormatError, match=message):
        parse_fmt(fmt)


def test_data_before_fmt_is_rejected() -> None:
    data = b"RIFF\xff\xff\xff\xffWAVE" + b"data\xff\xff\xff\xff" + BODY
    with pytest.raises(AudioFormatError, match="before any fmt"):
        parse([data])


def test_header_of_exactly_the_cap_is_accepted() -> None:
    pad = MAX_HEADER_BYTES - 44 - 8
    data = wav(BODY, before_data=[chunk(b"JUNK", b"\x00" * pad)])
    _, header, body = parse([data])
    assert header is not None
    assert header.header_size == MAX_HEADER_BYTES
    assert body == BODY


def test_oversized_chunk_is_rejected_as_soon_as_its_size_is_read() -> None:
    pad = MAX_HEADER_BYTES - 44 - 8 + 2
    data = wav(BODY, before_data=[chunk(b"LIST", b"\x00" * pad)])
    parser = WavHeaderParser()
    assert parser.feed(data[:36]) is None
    with pytest.raises(AudioFormatError, match="longer than 4096"):
        parser.feed(data[36:44])  # only the LIST chunk header


def test_many_small_chunks_beyond_the_cap_are_rejected() -> None:
    junk = [chunk(b"junk", b"\x00" * 8)] * 300
    data = wav(BODY, before_data=junk)
    parser = WavHeaderParser()

    def feed_in_7_byte_chunks() -> None:
        for i in range(0, len(data), 7):
            parser.feed(data[i : i + 7])

    with pytest.raises(AudioFormatError, match="4096"):
        feed_in_7_byte_chunks()
    assert parser.buffered <= MAX_HEADER_BYTES + 7


def test_bogus_fmt_size_is_rejected() -> None:
    data = b"RIFF\xff\xff\xff\xffWAVEfmt \xff\xff\xff\xff" + b"\x00" * 16
    with pytest.raises(AudioFormatError):
        parse([data])
