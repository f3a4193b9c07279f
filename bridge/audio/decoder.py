"""Turn one Hamsa reply, chunk by chunk, into 8 kHz mono μ-law (sans-I/O).

``ReplyDecoder`` is created per reply with the format to assume when the reply has no RIFF
header (``MULAW_8K`` when the bridge asked for ``mulaw: true``, ``PCM16_16K`` otherwise). It
strips and honours a RIFF/WAVE header if one is present (``bridge.audio.wav``) and converts::

    μ-law 8 kHz mono ───────────────────────────────────────────────▶ same bytes (pass-through)
    μ-law / A-law ──▶ PCM16 ─┐
    PCM16 ───────────────────┴▶ downmix (stereo) ─▶ resample to 8 kHz ─▶ μ-law encode (once)
                                                    (only if rate ≠ 8000)

Rules (docs/hamsa-ws.md §5.4, docs/design-notes.md §2):

* 8 kHz mono μ-law is never decoded and re-encoded: the output *is* the input bytes (the μ-law
  round trip is not the identity: 0x7F becomes 0xFF). Without a header, or with a header whose
  ``data`` size is "to end of stream", ``feed()`` returns the very object it was given.
* Resampling uses one ``soxr.ResampleStream`` (HQ) per reply, so filter history spans chunk
  boundaries; never ``audioop.ratecv``, which has no anti-alias filter. ``finish()`` flushes
  its tail. The stream runs in float32 rather than int16: libsoxr TPDF-dithers int16 output and
  the dither then depends on how the input was chunked (up to ±2 LSB), whereas float32 output
  is identical for any chunking, so the decoder's output depends only on the reply's bytes.
* Chunk boundaries ignore sample boundaries: a trailing odd PCM16 byte, or an incomplete stereo
  sample frame, is carried to the next chunk; at ``finish()`` a dangling partial frame is dropped.
* A real ``data`` size bounds the audio: later bytes are dropped, not played.

All arithmetic assumes a little-endian host, like ``audioop`` (native byte order) and WAV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

from bridge.audio.codec import alaw_to_lin16, downmix16, lin16_to_ulaw, ulaw_to_lin16
from bridge.audio.formats import MULAW_8K, AudioFormat, Encoding
from bridge.audio.wav import WavHeaderParser
from bridge.errors import AudioFormatError, InvalidState

TARGET_RATE: Final = MULAW_8K.sample_rate
RESAMPLE_QUALITY: Final = "HQ"

_DECODERS: Final[dict[Encoding, Callable[[bytes], bytes] | None]] = {
    Encoding.MULAW: ulaw_to_lin16,
    Encoding.ALAW: alaw_to_lin16,
    Encoding.PCM16: None,
}


class _Resampler:
    """A streaming soxr resampler from ``in_rate`` to 8 kHz, mono PCM16 bytes in and out."""

    __slots__ = ("_stream",)

    def __init__(self, in_rate: int) -> None:
        self._stream = soxr.ResampleStream(
            in_rate, TARGET_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
        )

    def process(self, pcm: bytes, *, last: bool = False) -> bytes:
        """Resample the next PCM16 samples; ``last=True`` flushes the filter tail (once)."""
        x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        x *= 1.0 / 32768.0  # power of two: exact, so the int16 ↔ float32 mapping round-trips
        y: npt.NDArray[np.float32] = self._stream.resample_chunk(x, last=last)
        if not y.size:
            return b""
        y *= 32768.0
        np.rint(y, out=y)
        np.clip(y, -32768.0, 32767.0, out=y)
        return y.astype(np.int16).tobytes()


class ReplyDecoder:
    """Decode one reply into 8 kHz mono μ-law; see the module docstring for the rules.

    Call ``feed()`` with each binary frame of the reply, then ``finish()`` once at its end. Both
    return the μ-law bytes that became available (possibly empty). ``AudioFormatError`` from
    ``feed()`` means the reply's WAV header is unusable; the decoder is then spent: ``feed()``
    raises ``InvalidState`` and ``finish()`` returns ``b""`` (safe in a ``finally``). Calling
    ``feed()`` after ``finish()``, or ``finish()`` twice, raises ``InvalidState``.
    """

    __slots__ = (
        "_passthrough",
        "_parser",
        "_default",
        "_format",
        "_identity",
        "_remaining",
        "_frame_size",
        "_carry",
        "_decode",
        "_stereo",
        "_resampler",
        "_consumed",
        "_finished",
        "_failed",
    )

    def __init__(self, default_format: AudioFormat) -> None:
        self._default = default_format
        # Hot-path flag: known 8 kHz mono μ-law with no data size to enforce.
        self._passthrough = False
        self._parser: WavHeaderParser | None = WavHeaderParser()
        self._format: AudioFormat | None = None
        self._identity = False  # the source is 8 kHz mono μ-law (maybe with a data size)
        self._remaining: int | None = None  # audio bytes left per the data size; None: unbounded
        self._frame_size = 1
        self._carry = b""  # an incomplete sample frame awaiting its next byte(s)
        self._decode: Callable[[bytes], bytes] | None = None
        self._stereo = False
        self._resampler: _Resampler | None = None
        self._consumed = 0  # source audio bytes accepted (whole sample frames only)
        self._finished = False
        self._failed = False  # a format error ended the reply; finish() is then a no-op

    @property
    def source_format(self) -> AudioFormat | None:
        """The reply's audio format once known (from its header, or the default); else ``None``."""
        return self._format

    @property
    def audio_ms(self) -> float:
        """Milliseconds of source audio accepted so far, at the source format's byte rate.

        Counts whole sample frames after the header and within the ``data`` size, including
        audio the resampler still holds back; header bytes and dropped trailing bytes never count.
        """
        fmt = self._format
        if fmt is None:
            return 0.0
        return self._consumed * 1000.0 / fmt.bytes_per_second

    def feed(self, chunk: bytes) -> bytes:
        """Take the next bytes of the reply; return the newly available 8 kHz μ-law bytes."""
        if self._passthrough:
            self._consumed += len(chunk)
            return chunk
        parser = self._parser
        if parser is None:
            if self._finished:
                raise InvalidState("ReplyDecoder.feed() after finish() or a format error")
            return self._audio(chunk)
        try:
            result = parser.feed(chunk)
        except AudioFormatError:
            self._parser = None
            self._finished = self._failed = True
            raise
        if result is None:
            return b""
        self._parser = None
        if result.header is None:
            self._start(self._default, None)
        else:
            self._start(result.header.format, result.header.data_size)
        return self._audio(result.body)

    def finish(self) -> bytes:
        """End of reply: flush what is held back and return the last μ-law bytes.

        A reply shorter than a RIFF preamble (under 12 bytes, so still undecided) is audio in
        the default format. A reply that ended inside a RIFF header yields nothing. A dangling
        partial sample frame (an odd PCM16 byte) is dropped; the resampler's tail is flushed.
        """
        if self._failed:
            return b""
        if self._finished:
            raise InvalidState("ReplyDecoder.finish() called twice")
        self._finished = True
        self._passthrough = False
        out = b""
        parser = self._parser
        if parser is not None:
            self._parser = None
            leftover = parser.finish()
            if leftover:
                self._start(self._default, None)
                out = self._audio(leftover)
        self._carry = b""
        if self._resampler is not None:
            tail = self._resampler.process(b"", last=True)
            if tail:
                out += lin16_to_ulaw(tail)
        return out

    def _start(self, fmt: AudioFormat, data_size: int | None) -> None:
        """Fix the source format and build the conversion chain for it."""
        self._format = fmt
        self._remaining = data_size
        self._identity = fmt == MULAW_8K
        self._passthrough = self._identity and data_size is None
        self._frame_size = fmt.frame_size
        self._decode = _DECODERS[fmt.encoding]
        self._stereo = fmt.channels == 2
        if fmt.sample_rate != TARGET_RATE:
            self._resampler = _Resampler(fmt.sample_rate)

    def _audio(self, data: bytes) -> bytes:
        """Convert audio bytes of the known source format (the non-pass-through path)."""
        remaining = self._remaining
        if remaining is not None:
            if len(data) > remaining:
                data = data[:remaining]  # beyond the data chunk: not audio
            self._remaining = remaining - len(data)
        if self._identity:
            self._consumed += len(data)
            return data
        if self._carry:
            data = self._carry + data
        whole = len(data) - len(data) % self._frame_size
        if whole != len(data):
            self._carry = data[whole:]
            data = data[:whole]
        else:
            self._carry = b""
        if not data:
            return b""
        self._consumed += whole
        pcm = data if self._decode is None else self._decode(data)
        if self._stereo:
            pcm = downmix16(pcm, 2)
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
            if not pcm:
                return b""
        return lin16_to_ulaw(pcm)
