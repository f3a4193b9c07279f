"""Deterministic stand-in "speech" for a text: one short tone per character.

Used by the Hamsa emulator (and demos) where real synthesis is unavailable. The same text always
gives the same bytes, so tests can compare what was sent with what was played.

* Each character lasts ``ms_per_char`` (80 ms by default: the logged Hamsa replies carry about
  80–100 ms of audio per character, ``docs/hamsa-ws.md`` §4).
* Letters and digits (``str.isalnum``) become a sine tone whose frequency, 250–1500 Hz, is derived
  from the code point; every tone fades in and out over a few milliseconds so the joins don't
  click. Anything else (spaces, punctuation, diacritics, symbols) is silence of the same length.
* ``mulaw=True`` → 8 kHz G.711 μ-law mono (what Twilio plays); ``mulaw=False`` → 16 kHz signed
  16-bit little-endian mono (Hamsa's headerless PCM).

Vectorised with numpy over the distinct characters, so a 2000-character text takes a few
milliseconds.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from bridge.audio.codec import lin16_to_ulaw

__all__ = ["MULAW_RATE", "PCM_RATE", "frequency_of", "synthesize"]

MULAW_RATE: Final = 8000
"""Sample rate of ``mulaw=True`` output (one byte per sample)."""
PCM_RATE: Final = 16000
"""Sample rate of ``mulaw=False`` output (two bytes per sample)."""

_F_MIN: Final = 250
_F_SPAN: Final = 1251  # frequencies 250..1500 Hz inclusive
_AMPLITUDE: Final = 0.3 * 32767
_FADE_S: Final = 0.005


def frequency_of(char: str) -> int:
    """The tone frequency (Hz, 250–1500) of one character, spread by a multiplicative hash so
    neighbouring letters sound different."""
    return _F_MIN + (ord(char) * 7919) % _F_SPAN


def synthesize(text: str, *, mulaw: bool, ms_per_char: float = 80.0) -> bytes:
    """Deterministic audio for ``text`` (see the module docstring for the format).

    Returns ``len(text) * round(rate * ms_per_char / 1000)`` samples; empty text gives ``b""``.
    Raises ``ValueError`` if ``ms_per_char`` is not positive.
    """
    if not ms_per_char > 0:
        raise ValueError(f"ms_per_char must be positive, got {ms_per_char}")
    if not text:
        return b""
    rate = MULAW_RATE if mulaw else PCM_RATE
    n = max(1, round(rate * ms_per_char / 1000.0))

    # One row per distinct character (a text uses a few dozen at most), indexed per position.
    distinct = sorted(set(text))
    index = {ch: i for i, ch in enumerate(distinct)}
    rows = np.fromiter((index[ch] for ch in text), dtype=np.intp, count=len(text))

    t = np.arange(n, dtype=np.float64) / rate
    fade = min(max(1, round(rate * _FADE_S)), n // 2 or 1)
    envelope = np.ones(n, dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False) + 1.0 / fade
    envelope[:fade] = ramp
    envelope[n - fade :] = np.minimum(envelope[n - fade :], ramp[::-1])

    freqs = np.array([frequency_of(ch) for ch in distinct], dtype=np.float64)
    voiced = np.array([ch.isalnum() for ch in distinct], dtype=np.float64)
    table = np.sin(2.0 * np.pi * freqs[:, None] * t[None, :]) * envelope[None, :]
    table *= (voiced * _AMPLITUDE)[:, None]
    samples = np.rint(table).astype("<i2")[rows].reshape(-1)

    pcm = samples.tobytes()
    return lin16_to_ulaw(pcm) if mulaw else pcm
