"""G.711 codecs: the only module importing ``audioop`` (stdlib to 3.12, audioop-lts from 3.13)."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ULAW_SILENCE = 0xFF
"""μ-law code for silence: 0xFF (0x00 is a loud sample, not silence)."""


def lin16_to_ulaw(pcm: bytes) -> bytes:
    """Encode signed 16-bit little-endian PCM to μ-law (one byte per sample)."""
    return audioop.lin2ulaw(pcm, 2)


def ulaw_to_lin16(ulaw: bytes) -> bytes:
    """Decode μ-law to signed 16-bit little-endian PCM."""
    return audioop.ulaw2lin(ulaw, 2)


def alaw_to_lin16(alaw: bytes) -> bytes:
    """Decode A-law to signed 16-bit little-endian PCM."""
    return audioop.alaw2lin(alaw, 2)


def downmix16(pcm: bytes, channels: int) -> bytes:
    """Average interleaved 16-bit stereo to mono (only 1 or 2 channels are supported)."""
    if channels == 1:
        return pcm
    return audioop.tomono(pcm, 2, 0.5, 0.5)
