"""Audio format values shared by the WAV parser, the reply decoder and the framer.

Twilio Media Streams carry 8 kHz mono G.711 μ-law in 20 ms frames of 160 bytes
(``MULAW_8K``, ``FRAME_BYTES``). Hamsa replies arrive as μ-law 8 kHz (``mulaw: true``), as
headerless 16 kHz PCM16 (``mulaw: false``) or, possibly, behind a RIFF/WAVE header that names
any of the encodings below (docs/hamsa-ws.md §5).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.errors import AudioFormatError


class Encoding(enum.Enum):
    """Sample encodings the bridge can decode. Everything else is an ``AudioFormatError``."""

    MULAW = "mulaw"
    """G.711 μ-law, 8 bits per sample (WAVE format tag 7)."""
    ALAW = "alaw"
    """G.711 A-law, 8 bits per sample (WAVE format tag 6)."""
    PCM16 = "pcm16"
    """Signed 16-bit little-endian linear PCM (WAVE format tag 1, 16 bits)."""

    @property
    def sample_width(self) -> int:
        """Bytes per sample of one channel: 1 for G.711, 2 for PCM16."""
        return 2 if self is Encoding.PCM16 else 1


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Encoding, sample rate (Hz) and channel count of a byte stream of interleaved samples.

    Only mono and stereo are representable (the bridge downmixes stereo); a rate must be positive.
    Violations raise ``AudioFormatError`` so that an unsupported WAV ``fmt `` can never produce a
    format the decoder would have to reject later.
    """

    encoding: Encoding
    sample_rate: int
    channels: int

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise AudioFormatError(f"unsupported sample rate {self.sample_rate} Hz")
        if self.channels not in (1, 2):
            raise AudioFormatError(f"unsupported channel count {self.channels} (1 or 2 only)")

    @property
    def frame_size(self) -> int:
        """Bytes per sample frame (one sample of every channel); the unit the decoder aligns on."""
        return self.encoding.sample_width * self.channels

    @property
    def bytes_per_second(self) -> int:
        """Byte rate of the stream: ``sample_rate * channels * sample_width``."""
        return self.sample_rate * self.frame_size


MULAW_8K = AudioFormat(Encoding.MULAW, 8000, 1)
"""What Twilio plays: 8 kHz mono μ-law, 8000 bytes per second."""

PCM16_16K = AudioFormat(Encoding.PCM16, 16000, 1)
"""Hamsa's headerless default when ``mulaw: false`` (docs/hamsa-ws.md §5.1)."""

FRAME_BYTES = 160
"""One Twilio media frame: 20 ms of 8 kHz μ-law."""
