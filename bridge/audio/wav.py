"""Streaming RIFF/WAVE header detection and parsing (sans-I/O).

A Hamsa reply may or may not start with a WAV header, and a header may be split across any
number of WebSocket frames (docs/hamsa-ws.md §5.3–5.4). ``WavHeaderParser`` is fed the first
bytes of a reply until it can say, once, either "no header: these bytes are audio" or "header:
this is the format, this many audio bytes follow, and here are the first of them".

Detection. A header starts with ``RIFF`` (bytes 0–3) and ``WAVE`` (bytes 8–11). A μ-law reply
may legitimately start with 0x52 (``R``), so the parser buffers at most 12 bytes, and only while
what it has seen is still a prefix of ``RIFF????WAVE``; the first byte that disagrees settles
"no header" (usually on byte 0, so headerless audio is never delayed).

Chunk walk. After the 12-byte RIFF preamble come chunks: a 4-byte id, a 4-byte little-endian
payload size, the payload, and one pad byte when the size is odd (RIFF word alignment). The
walk parses ``fmt ``, skips everything else (``fact``, ``LIST``, ``JUNK``, unknown ids), and
stops at the ``data`` chunk header: what follows it is audio. The header is never assumed to be
44 bytes: non-PCM ``fmt `` chunks are 18 or 40 bytes and are followed by ``fact``
(http://www-mmsp.ece.mcgill.ca/Documents/AudioFormats/WAVE/WAVE.html).

Sizes. A size of ``0xFFFFFFFF`` (or 0, which some streaming writers put there) on ``data``
means "to the end of the stream" (streaming writers cannot know it in advance; ``data_size`` is
then ``None``). A real ``data`` size bounds
the audio: bytes beyond it (a trailing ``LIST``, say) are not audio, and the consumer must drop
them. The RIFF size is not used: the ``data`` size alone bounds the audio.

``fmt ``. Format tag 1 (PCM, 16-bit only), 7 (μ-law, 8-bit), 6 (A-law, 8-bit), and 0xFFFE
(``WAVE_FORMAT_EXTENSIBLE``: the real tag is the first two bytes of the SubFormat GUID, whose
other 14 bytes must be the ``KSDATAFORMAT`` base, RFC 2361); mono or stereo; any positive rate.
Anything else (24-bit PCM, IEEE float, MP3, more than two channels, ``data`` before ``fmt ``, a
header not complete within ``MAX_HEADER_BYTES``) raises ``AudioFormatError``.

Writing: :func:`stt_wav` wraps one caller utterance (8 kHz PCM16) as the 16 kHz PCM16 mono WAV
Hamsa's speech-to-text takes, resampled once, whole, with soxr (never ``audioop.ratecv``, which
has no anti-alias filter).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

from bridge.audio.formats import AudioFormat, Encoding
from bridge.errors import AudioFormatError, InvalidState

MAX_HEADER_BYTES = 4096
"""Sanity cap: the first audio byte must come at most this far into the reply."""

UNKNOWN_SIZE = 0xFFFFFFFF
"""A RIFF or ``data`` size meaning "to the end of the stream"."""

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_RIFF = b"RIFF"
_WAVE = b"WAVE"
_PREAMBLE = 12  # "RIFF" + u32 size + "WAVE"
_CHUNK_HEADER = 8  # id + u32 size
_FMT_MIN = 16  # PCMWAVEFORMAT
_FMT_EXTENSIBLE_MIN = 40  # WAVEFORMATEXTENSIBLE: 18 + 22 bytes of extension

# SubFormat GUID {0000xxxx-0000-0010-8000-00AA00389B71} as stored (Data1..3 little-endian):
# two bytes of format tag, then this fixed tail (RFC 2361 §4, KSDATAFORMAT_SUBTYPE_*).
_KSDATAFORMAT_TAIL = bytes.fromhex("0000" + "0000" + "1000" + "800000aa00389b71")

_U32 = struct.Struct("<I")
_FMT = struct.Struct("<HHIIHH")  # tag, channels, rate, byte rate, block align, bits per sample


@dataclass(frozen=True, slots=True)
class WavHeader:
    """What a complete RIFF/WAVE header says about the audio after it.

    ``format``: the ``fmt `` chunk, already checked to be decodable. ``data_size``: byte length of
    the audio, or ``None`` for "to the end of the stream" (size ``0xFFFFFFFF``). ``header_size``:
    offset of the first audio byte in the reply, i.e. how many bytes the header took.
    """

    format: AudioFormat
    data_size: int | None
    header_size: int


@dataclass(frozen=True, slots=True)
class WavHeaderResult:
    """The parser's one verdict.

    ``header`` is ``None`` when the reply has no RIFF header; ``body`` is then every byte fed so
    far (all of it audio in the caller's default format). Otherwise ``body`` holds the bytes fed
    after the header, *not yet clipped* to ``header.data_size``: clipping is the consumer's job,
    since later chunks need it too.
    """

    header: WavHeader | None
    body: bytes


class _State(enum.Enum):
    DETECT = enum.auto()  # fewer than 12 bytes, all consistent with "RIFF????WAVE"
    CHUNKS = enum.auto()  # RIFF/WAVE confirmed, walking chunks towards "data"
    DONE = enum.auto()  # verdict given (or finish() called); the parser is spent


class WavHeaderParser:
    """Decide whether a reply starts with a RIFF/WAVE header and, if so, parse it.

    Feed the reply's first chunks to ``feed()`` until it returns a ``WavHeaderResult``; from then
    on, pass the reply's bytes straight to the audio path. Any split of the header across chunks
    (down to one byte per chunk) gives the same verdict and the same bytes. If the reply ends
    before a verdict, call ``finish()``. Calling either after the verdict raises ``InvalidState``.
    """

    __slots__ = ("_buf", "_state", "_pos", "_format")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _State.DETECT
        self._pos = _PREAMBLE  # offset of the next chunk header while walking
        self._format: AudioFormat | None = None

    @property
    def done(self) -> bool:
        """True once a verdict was returned or ``finish()`` was called."""
        return self._state is _State.DONE

    @property
    def buffered(self) -> int:
        """Bytes held back so far while deciding (0 once done)."""
        return len(self._buf)

    def feed(self, data: bytes) -> WavHeaderResult | None:
        """Take the next bytes of the reply; return the verdict once it is known, else ``None``.

        Raises ``AudioFormatError`` for a header the bridge cannot decode or one longer than
        ``MAX_HEADER_BYTES``, and ``InvalidState`` if the verdict was already given.
        """
        state = self._state
        if state is _State.DETECT:
            if not self._buf and len(data) >= _PREAMBLE:
                # First chunk holds the whole preamble: decide without copying it.
                if data[:4] != _RIFF or data[8:12] != _WAVE:
                    self._state = _State.DONE
                    return WavHeaderResult(None, data)
                self._buf += data
            else:
                self._buf += data
                verdict = _detect(self._buf)
                if verdict is None:
                    return None
                if not verdict:
                    body = bytes(self._buf)
                    self._buf.clear()
                    self._state = _State.DONE
                    return WavHeaderResult(None, body)
            self._state = _State.CHUNKS
        elif state is _State.CHUNKS:
            self._buf += data
        else:
            raise InvalidState("WavHeaderParser.feed() after its verdict")
        return self._walk()

    def finish(self) -> bytes:
        """The reply ended before a verdict: return the bytes that are audio, if any.

        Fewer than 12 bytes that merely *looked* like a RIFF preamble (``b"RI"``, say) are audio of
        the default format and are returned. A reply that ended inside a confirmed RIFF header
        carries no audio: ``b""`` (the caller's truncation guard will see zero audio).
        """
        if self._state is _State.DONE:
            raise InvalidState("WavHeaderParser.finish() after its verdict")
        body = bytes(self._buf) if self._state is _State.DETECT else b""
        self._buf.clear()
        self._state = _State.DONE
        return body

    def _walk(self) -> WavHeaderResult | None:
        """Advance over every chunk now complete in the buffer; stop at ``data`` or a short read."""
        buf = self._buf
        while True:
            pos = self._pos
            if pos + _CHUNK_HEADER > MAX_HEADER_BYTES:
                raise AudioFormatError(
                    f"WAV header has no data chunk within its first {MAX_HEADER_BYTES} bytes"
                )
            if len(buf) < pos + _CHUNK_HEADER:
                return None
            chunk_id = bytes(buf[pos : pos + 4])
            (size,) = _U32.unpack_from(buf, pos + 4)
            payload = pos + _CHUNK_HEADER
            if chunk_id == b"data":
                if self._format is None:
                    raise AudioFormatError("WAV data chunk comes before any fmt chunk")
                header = WavHeader(
                    self._format, None if size in (UNKNOWN_SIZE, 0) else size, header_size=payload
                )
                body = bytes(buf[payload:])
                buf.clear()
                self._state = _State.DONE
                return WavHeaderResult(header, body)
            end = payload + size + (size & 1)  # odd sizes carry one pad byte
            if end + _CHUNK_HEADER > MAX_HEADER_BYTES:
                raise AudioFormatError(
                    f"WAV header longer than {MAX_HEADER_BYTES} bytes: chunk {chunk_id!r} of "
                    f"{size} bytes at offset {pos} comes before the data chunk"
                )
            if len(buf) < end:
                return None
            if chunk_id == b"fmt ":
                self._format = parse_fmt(bytes(buf[payload : payload + size]))
            self._pos = end


def _detect(prefix: bytearray) -> bool | None:
    """``True``/``False`` once ``prefix`` is/isn't a RIFF/WAVE preamble; ``None`` if undecided."""
    n = len(prefix)
    if prefix[:4] != _RIFF[:n]:
        return False
    if n > 8 and prefix[8:12] != _WAVE[: n - 8]:
        return False
    return True if n >= _PREAMBLE else None


_MIN_RATE: Final = 4000
_MAX_RATE: Final = 192000


def parse_fmt(payload: bytes) -> AudioFormat:
    """Parse a ``fmt `` chunk payload into an ``AudioFormat`` or raise ``AudioFormatError``.

    Byte rate and block align are not trusted: both follow from the encoding, rate and channels.
    For ``WAVE_FORMAT_EXTENSIBLE`` the SubFormat GUID's first two bytes are the real format tag;
    ``wValidBitsPerSample`` and the channel mask are ignored (mono or stereo only anyway).
    """
    if len(payload) < _FMT_MIN:
        raise AudioFormatError(f"WAV fmt chunk too short: {len(payload)} bytes, need {_FMT_MIN}")
    tag, channels, rate, _byte_rate, _block_align, bits = _FMT.unpack_from(payload)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(payload) < _FMT_EXTENSIBLE_MIN:
            raise AudioFormatError(
                f"WAV extensible fmt chunk too short: {len(payload)} bytes, "
                f"need {_FMT_EXTENSIBLE_MIN}"
            )
        guid = payload[24:40]
        if guid[2:] != _KSDATAFORMAT_TAIL:
            raise AudioFormatError(f"unsupported WAV extensible SubFormat GUID {guid.hex()}")
        tag = int.from_bytes(guid[:2], "little")
    encoding = _encoding(tag, bits)
    if channels not in (1, 2):
        raise AudioFormatError(f"unsupported WAV channel count {channels} (mono or stereo only)")
    if not _MIN_RATE <= rate <= _MAX_RATE:
        # a header may claim any rate: 1 Hz would turn 200 bytes into 100 s of telephone audio
        raise AudioFormatError(f"WAV sample rate {rate} Hz is outside {_MIN_RATE}–{_MAX_RATE} Hz")
    return AudioFormat(encoding, rate, channels)


def _encoding(tag: int, bits: int) -> Encoding:
    """Map a WAVE format tag and bit depth to an ``Encoding`` or raise ``AudioFormatError``."""
    if tag == WAVE_FORMAT_PCM:
        if bits == 16:
            return Encoding.PCM16
        raise AudioFormatError(f"unsupported WAV PCM bit depth {bits} (16-bit only)")
    if tag in (WAVE_FORMAT_MULAW, WAVE_FORMAT_ALAW):
        name = "mu-law" if tag == WAVE_FORMAT_MULAW else "A-law"
        if bits == 8:
            return Encoding.MULAW if tag == WAVE_FORMAT_MULAW else Encoding.ALAW
        raise AudioFormatError(f"unsupported WAV {name} bit depth {bits} (8-bit only)")
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        raise AudioFormatError(f"unsupported WAV IEEE float audio ({bits}-bit)")
    raise AudioFormatError(f"unsupported WAV format tag 0x{tag:04X}")


STT_RATE: Final = 16000
"""The sample rate of the WAV sent to Hamsa's speech-to-text (docs/speech-input.md)."""
_CALLER_RATE: Final = 8000
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def stt_wav(pcm8k: bytes) -> bytes:
    """8 kHz PCM16 mono (a caller's utterance) as a 16 kHz PCM16 mono WAV file: a 44-byte
    canonical header, then ``2 × len(pcm8k)`` bytes of audio (a trailing odd byte is dropped).

    Resampled in one call (the whole utterance is known: no stream state, no tail to flush) with
    soxr HQ in float32, like the reply decoder, so the output depends only on the input.
    Cost: about 10 s of audio in a few milliseconds, once per utterance sent to Hamsa.
    """
    samples = len(pcm8k) // 2
    x = np.frombuffer(pcm8k, dtype="<i2", count=samples).astype(np.float32)
    x *= 1.0 / 32768.0
    y: npt.NDArray[np.float32] = soxr.resample(x, _CALLER_RATE, STT_RATE, quality="HQ")
    y *= 32768.0
    np.rint(y, out=y)
    np.clip(y, -32768.0, 32767.0, out=y)
    audio = y.astype("<i2").tobytes()
    audio = audio[: 4 * samples].ljust(4 * samples, b"\x00")
    header = _WAV_HEADER.pack(
        _RIFF,
        36 + len(audio),
        _WAVE,
        b"fmt ",
        _FMT_MIN,
        WAVE_FORMAT_PCM,
        1,
        STT_RATE,
        STT_RATE * 2,
        2,
        16,
        b"data",
        len(audio),
    )
    return header + audio
