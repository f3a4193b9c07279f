"""``hamsa-bridge demo`` you can listen to: with espeak-ng installed the emulated Hamsa speaks
Arabic, and the WAV's spectrum shows speech, not the one-tone-per-character pattern; without it
the demo says it plays tones and how to hear speech instead.

The criterion, per 20 ms window (160 samples at 8 kHz, Hann, zero-padded to 512 points) of the
WAV's loud part: the share of the window's energy within ±94 Hz of its strongest frequency (the
main lobe of the window). A tone puts nearly all of it there (measured: median 0.999, every
window over 0.8); speech is voiced harmonics and noise spread over the band (espeak-ng:
median about 0.5, under 1 % of windows over 0.8).
"""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.cli_support import run_cli

pytestmark = pytest.mark.anyio

TEXT = "مرحبا بك في همسة. نحن هنا لخدمتك."
WINDOW = 160
FFT = 512
LOBE = 6  # bins of 15.6 Hz each side: ±94 Hz, a 160-sample Hann window's main lobe
SINGLE_PEAK = 0.8


def peak_shares(path: Path) -> np.ndarray:
    """Per 20 ms window of the loud part of the WAV: the share of its energy in one peak."""
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (8000, 2, 1)
        x = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(float)
    windows = x[: len(x) // WINDOW * WINDOW].reshape(-1, WINDOW)
    rms = np.sqrt((windows**2).mean(axis=1))
    loud = windows[rms >= 0.1 * np.percentile(rms, 95)]  # speech, not the silences around it
    power = np.abs(np.fft.rfft(loud * np.hanning(WINDOW), FFT, axis=1)) ** 2
    peak = power.argmax(axis=1)
    shares = [
        p[max(0, k - LOBE) : k + LOBE + 1].sum() / p.sum() for p, k in zip(power, peak, strict=True)
    ]
    assert len(shares) >= 50, "too little audio to judge"
    return np.array(shares)


async def test_without_espeak_the_demo_says_it_plays_tones(tmp_path: Path) -> None:
    out = tmp_path / "heard.wav"
    # a PATH with nothing on it: espeak-ng is not found, whether installed or not
    env = {"PATH": str(tmp_path)}
    code, output = await run_cli("demo", "--fast", "--text", TEXT, "--out", str(out), env=env)
    assert code == 0, output
    assert "speech: tones (one per character; install espeak-ng to hear Arabic speech)" in output
    shares = peak_shares(out)
    assert np.mean(shares > SINGLE_PEAK) > 0.8  # the tone pattern: one peak per window
    code, output = await run_cli("demo", "--speech", "espeak", env=env)
    assert code == 2
    assert "espeak-ng is not installed" in output


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)",
)
async def test_with_espeak_the_demo_speaks_arabic(tmp_path: Path) -> None:
    out = tmp_path / "heard.wav"
    code, output = await run_cli("demo", "--fast", "--text", TEXT, "--out", str(out))
    assert code == 0, output
    assert "speech: espeak-ng " in output
    assert ", voice ar" in output
    shares = peak_shares(out)
    assert np.mean(shares > SINGLE_PEAK) < 0.2  # broadband: not one tone per window
    assert np.median(shares) < 0.7
