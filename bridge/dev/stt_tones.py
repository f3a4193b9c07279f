"""Speech-to-text for the emulator's own "speech": the tones of :mod:`bridge.dev.tone` back to text.

:func:`bridge.dev.tone.synthesize` says each character as one tone of ``ms_per_char`` (80 ms),
frequency :func:`~bridge.dev.tone.frequency_of`, starting at phase 0 and faded in and out over
5 ms; anything that is not a letter or digit is silence of the same length. :func:`recognize`
undoes that on audio that has been through a telephone call and the bridge: 8 kHz μ-law, back to
PCM16, resampled to 16 kHz, with silence of unknown length before and after (so the 80 ms grid
starts anywhere).

How, and why not simpler:

1. **The grid's phase.** The fades make the energy dip at every character boundary. The signal's
   energy, folded modulo one character (``n`` samples) and correlated circularly with the
   envelope's square, peaks at the phase of the grid (within a sample or two). Silence adds
   nothing to the fold, so padding of any length does not move it.
2. **Refinement.** Around that phase, a few offsets are tried; the one whose windows match the
   alphabet's tones best (the sum of each window's best score) wins.
3. **One window, one character.** Neighbouring characters' tones can be 2 Hz apart, far below an
   80 ms FFT's 12.5 Hz bins, so peak picking cannot tell them apart. Each window is correlated
   with every candidate's exact template (the faded complex exponential at its frequency: the
   magnitude, so the phase does not matter) and the best wins; two tones 2 Hz apart still differ
   by about 4 % in that score, and the μ-law noise in it is a hundred times smaller.
4. **Silence and not-tones.** A window with under a tenth of the loudest window's energy is a
   space (runs collapse to one, the ends are stripped). A loud window whose best template
   explains under 60 % of its energy is not a tone; if more than a fifth of the loud windows are
   not tones (speech, noise), the audio is not this module's speech and the answer is ``""``.

Pure numpy: no I/O, deterministic; a few milliseconds per second of 16 kHz audio.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from bridge.dev.tone import _FADE_S, frequency_of

__all__ = ["ALPHABET", "recognize"]

ALPHABET: Final = (
    "".join(chr(c) for c in range(0x0621, 0x064B))  # Arabic letters, hamza to yeh
    + "".join(chr(c) for c in range(0x0660, 0x066A))  # Arabic-Indic digits
    + "0123456789"
    + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
"""The characters :func:`recognize` can hear (every one a letter or digit, each its own tone)."""

_SILENT: Final = 0.1
"""A window below this fraction of the loudest window's energy is a space."""
_FIT: Final = 0.6
"""The least fraction of a loud window's energy its best tone must explain to be that tone."""
_TONES: Final = 0.8
"""The least fraction of loud windows that must be tones for the audio to be tones at all."""
_REFINE: Final = 3
"""Samples tried either side of the grid phase the energy fold found."""
_MIN_RMS: Final = 30.0
"""Loud windows must also be louder than this (PCM16 units): μ-law's own noise is ~8."""

_FloatArray = npt.NDArray[np.float64]
_ComplexArray = npt.NDArray[np.complex128]


def _envelope(n: int, rate: int) -> _FloatArray:
    """The fade envelope of one character, exactly as :func:`bridge.dev.tone.synthesize` makes
    it."""
    fade = min(max(1, round(rate * _FADE_S)), n // 2 or 1)
    envelope = np.ones(n, dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False) + 1.0 / fade
    envelope[:fade] = ramp
    envelope[n - fade :] = np.minimum(envelope[n - fade :], ramp[::-1])
    return envelope


def _templates(envelope: _FloatArray, rate: int) -> _ComplexArray:
    """One row per character of :data:`ALPHABET`: its faded complex exponential (conjugated)."""
    t = np.arange(len(envelope), dtype=np.float64) / rate
    freqs = np.array([frequency_of(ch) for ch in ALPHABET], dtype=np.float64)
    result: _ComplexArray = envelope[None, :] * np.exp(-2j * np.pi * freqs[:, None] * t[None, :])
    return result


def _grid_phase(x: _FloatArray, envelope: _FloatArray) -> int:
    """Where, modulo one character, the characters start (step 1 of the module docstring)."""
    n = len(envelope)
    energy = x * x
    folded = np.concatenate([energy, np.zeros(-len(energy) % n)]).reshape(-1, n).sum(axis=0)
    weight = envelope * envelope
    corr = np.fft.irfft(np.fft.rfft(folded) * np.conj(np.fft.rfft(weight)), n)
    return int(np.argmax(corr))


def _windows(x: _FloatArray, start: int, n: int) -> _FloatArray:
    """``x`` cut into windows of ``n`` samples on a grid through ``start`` (zeros outside)."""
    start %= n
    lead = (n - start) % n  # zeros before x so that a window starts at ``start``
    padded = np.concatenate([np.zeros(lead), x])
    padded = np.concatenate([padded, np.zeros(-len(padded) % n)])
    return padded.reshape(-1, n)


def recognize(pcm16: bytes, rate: int, *, ms_per_char: float = 80.0) -> str:
    """The text whose :func:`bridge.dev.tone.synthesize` audio ``pcm16`` holds (mono, signed 16-bit
    little-endian, ``rate`` Hz), as well as it can be heard (see the module docstring).

    Only :data:`ALPHABET`'s characters can be heard; everything else in the original text was
    silence and comes back as a space (runs of spaces collapsed, both ends stripped). Audio that
    is not such tones (speech, noise) or holds nothing loud gives ``""``. Raises ``ValueError``
    for a rate or ``ms_per_char`` that is not positive.
    """
    if rate <= 0 or not ms_per_char > 0:
        raise ValueError(f"rate and ms_per_char must be positive, got {rate}, {ms_per_char}")
    n = round(rate * ms_per_char / 1000.0)
    x = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2").astype(np.float64)
    if n < 2 or len(x) < n:
        return ""
    envelope = _envelope(n, rate)
    templates = _templates(envelope, rate).T
    phase = _grid_phase(x, envelope)

    best_score = -1.0
    windows = _windows(x, phase, n)
    scores = np.abs(windows @ templates)
    for offset in range(-_REFINE, _REFINE + 1):
        trial = _windows(x, phase + offset, n)
        trial_scores = np.abs(trial @ templates)
        score = float(trial_scores.max(axis=1).sum())
        if score > best_score:
            best_score, windows, scores = score, trial, trial_scores

    energy = (windows * windows).sum(axis=1)
    loudest = float(energy.max())
    floor = max(_SILENT * loudest, _MIN_RMS * _MIN_RMS * n)
    norm = float((envelope * envelope).sum())
    chars: list[str] = []
    loud = tones = 0
    for k in range(len(windows)):
        if energy[k] < floor:
            chars.append(" ")
            continue
        loud += 1
        best = int(np.argmax(scores[k]))
        fit = 2.0 * float(scores[k, best]) ** 2 / (float(energy[k]) * norm)
        if fit >= _FIT:
            tones += 1
            chars.append(ALPHABET[best])
    if loud == 0 or tones < _TONES * loud:
        return ""
    return " ".join("".join(chars).split())
