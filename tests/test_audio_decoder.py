from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.audio.codec import alaw_to_lin16, downmix16, lin16_to_ulaw, ulaw_to_lin16
from bridge.audio.decoder import ReplyDecoder
from bridge.audio.formats import MULAW_8K, PCM16_16K, AudioFormat, Encoding
from bridge.errors import AudioFormatError, InvalidState
from tests.wavgen import (
    ALAW,
    EXTENSIBLE,
    MULAW,
    PCM,
    UNKNOWN,
    chunk,
    fmt_payload,
    split_at,
    tone,
    wav,
)

# μ-law body that starts like a RIFF preamble and contains 0x7F (which a decode/encode round
# trip would turn into 0xFF), so a re-encode or a wrongly stripped prefix shows up.
MULAW_BODY = b"RIFF" + bytes(range(256)) * 3 + b"\x7f\x7f"

MULAW_FMT = fmt_payload(MULAW, 1, 8000, 8, cb_extra=b"")
LIST_TRAILER = chunk(b"LIST", b"INFOISFT\x03\x00\x00\x00ab\x00")


def decode(chunks: list[bytes], default: AudioFormat = MULAW_8K) -> tuple[bytes, ReplyDecoder]:
    decoder = ReplyDecoder(default)
    out = b"".join([decoder.feed(c) for c in chunks])
    return out + decoder.finish(), decoder


def to_pcm(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(ulaw_to_lin16(ulaw), dtype="<i2").astype(np.float64)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- pass-through ----------------------------------------------------------------------------


def test_headerless_mulaw_8k_returns_the_same_objects() -> None:
    decoder = ReplyDecoder(MULAW_8K)
    pieces = chunks_of(MULAW_BODY[4:], 100)
    for piece in pieces:
        assert decoder.feed(piece) is piece
    assert decoder.finish() == b""
    assert decoder.source_format == MULAW_8K


def test_mulaw_8k_is_never_reencoded() -> None:
    out, _ = decode([MULAW_BODY])
    assert out == MULAW_BODY
    assert out.endswith(b"\x7f\x7f")  # 0x7F survives (a round trip would give 0xFF)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(
        [
            MULAW_BODY,
            wav(MULAW_BODY, fmt=MULAW_FMT, data_size=UNKNOWN, riff_size=UNKNOWN),
            wav(MULAW_BODY, fmt=MULAW_FMT, after_data=LIST_TRAILER),
            wav(MULAW_BODY, fmt=fmt_payload(EXTENSIBLE, 1, 8000, 8, sub_tag=MULAW)),
        ]
    ),
    st.lists(st.integers(min_value=0, max_value=len(MULAW_BODY) + 100), max_size=10),
)
def test_mulaw_8k_output_is_exactly_the_body_for_any_chunking(
    reply: bytes, cuts: list[int]
) -> None:
    out, decoder = decode(split_at(reply, cuts))
    assert out == MULAW_BODY  # no header byte, no trailer byte, nothing re-encoded
    assert decoder.audio_ms == len(MULAW_BODY) / 8


def test_mulaw_header_split_across_the_first_two_chunks() -> None:
    reply = wav(MULAW_BODY, fmt=MULAW_FMT, data_size=UNKNOWN)
    hlen = len(reply) - len(MULAW_BODY)
    for cut in range(1, hlen + 2):
        decoder = ReplyDecoder(PCM16_16K)
        body_cut = max(0, cut - hlen)
        assert decoder.feed(reply[:cut]) == MULAW_BODY[:body_cut]
        assert decoder.feed(reply[cut:]) == MULAW_BODY[body_cut:]
        assert decoder.finish() == b""


def test_real_data_size_drops_trailing_bytes() -> None:
    reply = wav(MULAW_BODY, fmt=MULAW_FMT, after_data=LIST_TRAILER + b"\x00" * 100)
    decoder = ReplyDecoder(MULAW_8K)
    out = decoder.feed(reply[:500]) + decoder.feed(reply[500:])
    assert out == MULAW_BODY
    assert decoder.feed(b"more after the data chunk") == b""
    assert decoder.audio_ms == len(MULAW_BODY) / 8


# --- conversions -----------------------------------------------------------------------------

PCM_BODY = tone(440, 8000, 0.05) + b"\x01"  # odd length: a dangling byte


def test_pcm16_8k_is_only_encoded() -> None:
    reply = wav(PCM_BODY, fmt=fmt_payload(PCM, 1, 8000, 16), data_size=UNKNOWN)
    out, decoder = decode(chunks_of(reply, 33))
    assert out == lin16_to_ulaw(PCM_BODY[:-1])
    assert decoder.source_format == AudioFormat(Encoding.PCM16, 8000, 1)


def test_alaw_8k_is_decoded_and_encoded_without_resampling() -> None:
    alaw = bytes(range(256)) * 2
    out, _ = decode([wav(alaw, fmt=fmt_payload(ALAW, 1, 8000, 8, cb_extra=b""))])
    assert out == lin16_to_ulaw(alaw_to_lin16(alaw))


def test_stereo_pcm16_8k_is_downmixed_across_split_sample_frames() -> None:
    left = np.frombuffer(tone(300, 8000, 0.05), dtype="<i2")
    right = np.frombuffer(tone(700, 8000, 0.05, amplitude=5000), dtype="<i2")
    stereo = np.column_stack([left, right]).astype("<i2").tobytes()
    reply = wav(stereo, fmt=fmt_payload(PCM, 2, 8000, 16))
    expected = lin16_to_ulaw(downmix16(stereo, 2))
    for size in (1, 2, 3, 5, 401):
        out, _ = decode(chunks_of(reply, size))
        assert out == expected, size


def test_stereo_mulaw_8k_is_downmixed() -> None:
    stereo = bytes(range(256)) * 2
    out, decoder = decode([wav(stereo, fmt=fmt_payload(MULAW, 2, 8000, 8, cb_extra=b""))])
    assert out == lin16_to_ulaw(downmix16(ulaw_to_lin16(stereo), 2))
    assert decoder.audio_ms == 32.0


def test_headerless_pcm16_default() -> None:
    body = tone(1000, 16000, 0.1)
    out, decoder = decode(chunks_of(body, 641), default=PCM16_16K)
    assert decoder.source_format == PCM16_16K
    assert abs(len(out) - 800) <= 2


@pytest.mark.parametrize("rate", [16000, 22050, 24000])
def test_resampled_tone_survives_with_the_right_length(rate: int) -> None:
    body = tone(1000, rate, 1.0)
    reply = wav(body, fmt=fmt_payload(PCM, 1, rate, 16), data_size=UNKNOWN)
    out, decoder = decode(chunks_of(reply, rate // 25))  # 20 ms chunks (2-byte samples)
    assert abs(len(out) - 8000) <= 2
    assert decoder.audio_ms == pytest.approx(1000.0)
    pcm = to_pcm(out)[200:-200]
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    peak_hz = np.argmax(spectrum) * 8000 / len(pcm)
    assert abs(peak_hz - 1000) < 5
    assert rms(pcm) == pytest.approx(12000 / np.sqrt(2), rel=0.05)


@pytest.mark.parametrize(("rate", "freq"), [(16000, 6000), (24000, 5000), (22050, 6500)])
def test_out_of_band_tone_is_filtered_not_aliased(rate: int, freq: int) -> None:
    body = tone(freq, rate, 1.0)
    out, _ = decode(chunks_of(body, 640), default=AudioFormat(Encoding.PCM16, rate, 1))
    assert abs(len(out) - 8000) <= 2
    pcm = to_pcm(out)[200:-200]
    assert rms(pcm) < 0.01 * (12000 / np.sqrt(2))  # at least 40 dB down


def test_mulaw_16k_is_decoded_resampled_and_reencoded() -> None:
    pcm = tone(500, 16000, 0.5)
    ulaw16k = lin16_to_ulaw(pcm)
    reply = wav(ulaw16k, fmt=fmt_payload(MULAW, 1, 16000, 8, cb_extra=b""))
    out, decoder = decode(chunks_of(reply, 100))
    assert abs(len(out) - 4000) <= 2
    assert decoder.audio_ms == pytest.approx(500.0)
    assert rms(to_pcm(out)[200:-200]) == pytest.approx(12000 / np.sqrt(2), rel=0.05)


REPLIES = [
    (PCM16_16K, tone(1000, 16000, 0.05) + b"\x05"),
    (PCM16_16K, wav(tone(1000, 16000, 0.05), data_size=UNKNOWN)),
    (MULAW_8K, wav(tone(700, 22050, 0.04), fmt=fmt_payload(EXTENSIBLE, 2, 22050, 16, sub_tag=PCM))),
    (MULAW_8K, wav(bytes(range(256)), fmt=fmt_payload(ALAW, 2, 8000, 8, cb_extra=b""))),
    (MULAW_8K, wav(PCM_BODY, fmt=fmt_payload(PCM, 1, 8000, 16), after_data=LIST_TRAILER)),
    (PCM16_16K, wav(MULAW_BODY * 2, fmt=fmt_payload(MULAW, 1, 16000, 8, cb_extra=b""))),
]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(REPLIES),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_chunking_gives_the_same_output(
    case: tuple[AudioFormat, bytes], cuts: list[int]
) -> None:
    default, reply = case
    whole, whole_decoder = decode([reply], default)
    split, split_decoder = decode(split_at(reply, cuts), default)
    assert split == whole
    assert split_decoder.audio_ms == whole_decoder.audio_ms
    assert split_decoder.source_format == whole_decoder.source_format


@pytest.mark.parametrize(("default", "reply"), REPLIES[:3])
def test_one_byte_chunks_give_the_same_output(default: AudioFormat, reply: bytes) -> None:
    assert decode(list(chunks_of(reply, 1)), default)[0] == decode([reply], default)[0]


# --- audio_ms ----------------------------------------------------------------------------------


def test_audio_ms_mulaw_8k() -> None:
    decoder = ReplyDecoder(MULAW_8K)
    decoder.feed(b"\x00" * 640)
    assert decoder.audio_ms == 80.0


def test_audio_ms_counts_audio_held_back_by_the_resampler() -> None:
    decoder = ReplyDecoder(PCM16_16K)
    decoder.feed(tone(1000, 16000, 0.02))
    assert decoder.audio_ms == 20.0  # whatever the resampler has emitted yet
    assert len(decoder.finish()) > 0


def test_audio_ms_excludes_header_trailer_and_partial_samples() -> None:
    decoder = ReplyDecoder(MULAW_8K)
    reply = wav(b"\x00" * 640, after_data=LIST_TRAILER)  # PCM16 16 kHz, 20 ms
    assert decoder.audio_ms == 0.0
    decoder.feed(reply[:40])
    assert decoder.audio_ms == 0.0
    decoder.feed(reply[40:45])  # the header's last 4 bytes and one audio byte
    assert decoder.audio_ms == 0.0
    decoder.feed(reply[45:])
    assert decoder.audio_ms == 20.0


# --- short replies and end of reply ------------------------------------------------------------


@pytest.mark.parametrize("short", [b"R", b"RIF", b"RIFF\x00\x00\x00\x00WAV"])
def test_reply_shorter_than_a_preamble_is_default_audio(short: bytes) -> None:
    decoder = ReplyDecoder(MULAW_8K)
    assert decoder.feed(short) == b""
    assert decoder.source_format is None
    assert decoder.finish() == short
    assert decoder.source_format == MULAW_8K
    assert decoder.audio_ms == len(short) / 8


def test_short_pcm16_reply_drops_its_odd_byte() -> None:
    decoder = ReplyDecoder(AudioFormat(Encoding.PCM16, 8000, 1))
    assert decoder.feed(b"RIFF\x00") == b""
    assert decoder.finish() == lin16_to_ulaw(b"RIFF")
    assert decoder.audio_ms == 0.25


def test_dangling_odd_byte_is_dropped_at_finish() -> None:
    decoder = ReplyDecoder(AudioFormat(Encoding.PCM16, 8000, 1))
    assert decoder.feed(b"\x10\x00\x20") == lin16_to_ulaw(b"\x10\x00")
    assert decoder.finish() == b""
    assert decoder.audio_ms == 0.125  # one whole sample at 16,000 B/s


def test_header_only_reply_has_no_audio() -> None:
    out, decoder = decode([wav(b"", fmt=MULAW_FMT)])
    assert out == b""
    assert decoder.audio_ms == 0.0
    assert decoder.source_format == MULAW_8K


@pytest.mark.parametrize("length", [0, 12, 30])
def test_reply_ending_inside_a_header_has_no_audio(length: int) -> None:
    out, decoder = decode([wav(b"")[:length]])
    assert out == b""
    assert decoder.audio_ms == 0.0
    assert decoder.source_format is None


# --- errors and misuse -------------------------------------------------------------------------


def test_unsupported_format_raises_and_spends_the_decoder() -> None:
    decoder = ReplyDecoder(MULAW_8K)
    reply = wav(b"\x00" * 300, fmt=fmt_payload(PCM, 1, 16000, 24))
    assert decoder.feed(reply[:20]) == b""
    with pytest.raises(AudioFormatError, match="bit depth 24"):
        decoder.feed(reply[20:])
    with pytest.raises(InvalidState):
        decoder.feed(b"\x00")
    assert decoder.finish() == b""


@pytest.mark.parametrize(
    "reply",
    [
        b"RIFF\xff\xff\xff\xffWAVEdata\xff\xff\xff\xff" + b"\x00" * 10,
        wav(b"", before_data=[chunk(b"LIST", b"\x00" * 5000)]),
    ],
)
def test_missing_fmt_and_oversized_header_raise(reply: bytes) -> None:
    with pytest.raises(AudioFormatError):
        ReplyDecoder(MULAW_8K).feed(reply)


@pytest.mark.parametrize("default", [MULAW_8K, PCM16_16K])
def test_use_after_finish_is_invalid_state(default: AudioFormat) -> None:
    decoder = ReplyDecoder(default)
    decoder.feed(b"\x00" * 100)
    decoder.finish()
    with pytest.raises(InvalidState):
        decoder.feed(b"\x00")
    with pytest.raises(InvalidState):
        decoder.finish()
