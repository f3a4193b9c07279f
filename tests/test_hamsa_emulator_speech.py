"""The Hamsa emulator's speech: espeak-ng's Arabic when asked (``EmulatorConfig(speech=
"espeak")``), the tones otherwise; rendered off the event loop, cached per text, bounded in
time, and delivered through the same frame cuts, delivery models and faults as the tones.

Tests that need the real espeak-ng are skipped without it; the rest use a stand-in script on
the PATH (or none at all)."""

from __future__ import annotations

import logging
import math
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from bridge.audio.codec import ulaw_to_lin16
from bridge.dev import espeak, tone
from bridge.dev.espeak import EspeakError, EspeakInfo, find_espeak, render, resolve_speech
from bridge.dev.hamsa_emulator import EmulatorConfig, Fault
from tests.test_hamsa_emulator import SENTENCE, client, emulator, wait_for

pytestmark = pytest.mark.anyio

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)",
)


def fake_espeak(directory: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``espeak-ng`` on a PATH that holds nothing else."""
    path = directory / "espeak-ng"
    path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", str(directory))


def espeak_like_wav(samples: np.ndarray, rate: int = 22050) -> bytes:
    """PCM16 behind a header like espeak-ng's ``--stdout`` one (sizes meaning "to the end")."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0x7FFFF024)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", 0x7FFFF000)
        + samples.astype("<i2").tobytes()
    )


# --- choosing the speech -------------------------------------------------------------------------


def test_auto_is_espeak_when_installed_and_says_which() -> None:
    found = EspeakInfo("/usr/bin/espeak-ng", "1.51")
    assert resolve_speech("auto", found=found) == ("espeak", "speech: espeak-ng 1.51, voice ar")
    assert resolve_speech("espeak", found=found)[0] == "espeak"
    assert resolve_speech("tones", found=found) == (
        "tones",
        "speech: tones (one per character, as asked)",
    )


def test_without_espeak_auto_falls_back_to_tones_and_says_how_to_hear_speech(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert find_espeak() is None
    assert resolve_speech("auto") == (
        "tones",
        "speech: tones (one per character; install espeak-ng to hear Arabic speech)",
    )
    with pytest.raises(ValueError, match="espeak-ng is not installed"):
        resolve_speech("espeak")
    with pytest.raises(ValueError, match="one of auto, espeak, tones"):
        resolve_speech("festival")


def test_the_version_is_read_from_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_espeak(tmp_path, 'echo "eSpeak NG text-to-speech: 9.87  Data at: /x"\n', monkeypatch)
    info = find_espeak()
    assert info is not None
    assert info.version == "9.87"


def test_the_config_knows_only_tones_and_espeak() -> None:
    assert EmulatorConfig().speech == "tones"  # the default: deterministic for the tests
    with pytest.raises(ValueError, match="speech"):
        EmulatorConfig(speech="auto")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="espeak_timeout"):
        EmulatorConfig(speech="espeak", espeak_timeout=0)


# --- rendering -----------------------------------------------------------------------------------


def test_espeak_wav_is_resampled_to_hamsas_formats() -> None:
    t = np.arange(22050) / 22050
    wav = espeak_like_wav(np.rint(8000 * np.sin(2 * math.pi * 440 * t)))
    mulaw = espeak.wav_to_audio(wav, mulaw=True)
    assert abs(len(mulaw) - 8000) <= 2  # one second at 8 kHz, one byte a sample
    pcm = espeak.wav_to_audio(wav, mulaw=False)
    assert abs(len(pcm) - 32000) <= 4  # one second at 16 kHz, two bytes a sample
    heard = np.frombuffer(ulaw_to_lin16(mulaw), dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(heard[1000:7000]))
    assert np.argmax(spectrum) * 8000 / 6000 == pytest.approx(440, abs=3)  # still 440 Hz


async def test_a_slow_espeak_is_killed_at_its_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_espeak(tmp_path, "exec /bin/sleep 5\n", monkeypatch)
    started = time.monotonic()
    with pytest.raises(EspeakError, match="longer than 0.3 s"):
        await render("مرحبا", mulaw=True, time_limit=0.3)
    assert time.monotonic() - started < 3


async def test_no_audio_from_espeak_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what espeak-ng does for a voice it does not have: a message, no WAV, exit status 0
    fake_espeak(tmp_path, 'echo "Error: voice does not exist" >&2\n', monkeypatch)
    with pytest.raises(EspeakError, match="no WAV"):
        await render("مرحبا", mulaw=True)


async def test_the_emulator_falls_back_to_tones_when_espeak_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng at all
    caplog.set_level(logging.WARNING, logger="bridge.dev.hamsa_emulator")
    async with emulator(speech="espeak") as emu, client(emu) as c:
        reply = await c.speak(SENTENCE)
    assert reply.audio == tone.synthesize(SENTENCE, mulaw=True)
    assert "espeak-ng is not installed; tones instead" in caplog.text


@needs_espeak
async def test_the_emulator_speaks_with_espeak_through_the_same_delivery() -> None:
    expected = await render(SENTENCE, mulaw=True)
    seconds_per_char = len(expected) / 8000 / len(SENTENCE)
    # real speech length, and long enough for the bridge's truncation and prompt-cache rules
    assert 0.05 <= seconds_per_char <= 0.2
    faulty = {3: Fault.TRUNCATE_640}
    async with emulator(speech="espeak", synthesis_speed=4.0, faults=faulty) as emu:
        async with client(emu) as c:
            first = await c.speak(SENTENCE)
            second = await c.speak(SENTENCE)
            truncated = await c.speak(SENTENCE)
            pcm = await c.speak(SENTENCE, mulaw=False)
        await wait_for(emu, lambda s: len(s.requests) == 4)
        records = list(emu.state.requests)
    assert first.audio == expected != tone.synthesize(SENTENCE, mulaw=True)
    assert second.audio == expected  # rendered once, from the cache after
    assert len(first.frames) >= 4  # cut into frames as the tones are (first frame 0.2-0.5 s)
    assert 0.2 * 8000 <= len(first.frames[0]) <= 0.5 * 8000 + 1
    assert truncated.audio == expected[:640]  # the faults still apply
    assert pcm.audio == await render(SENTENCE, mulaw=False)
    assert [r.audio for r in records[:2]] == [expected, expected]
