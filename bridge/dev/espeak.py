"""Arabic speech for the Hamsa emulator, from espeak-ng when it is installed.

The emulator's default "speech" is one tone per character (:mod:`bridge.dev.tone`):
deterministic, which the tests need, but a newcomer listening to the demo hears beeps. With
``espeak-ng`` on the PATH (Debian/Ubuntu: ``apt-get install espeak-ng``) the emulator can speak
the requested text instead (:attr:`bridge.dev.hamsa_emulator.EmulatorConfig.speech`): robotic,
but Arabic words at a speaking pace, so the demo's WAV sounds like a call.

* :func:`find_espeak` — the installed espeak-ng and its version, or ``None``.
* :func:`resolve_speech` — ``auto``/``espeak``/``tones`` to what will be used, and the line
  that tells the user (``speech: espeak-ng 1.51, voice ar``).
* :func:`render` — the audio of one text in the emulator's formats (8 kHz μ-law or 16 kHz
  PCM16, Hamsa's two), espeak-ng running as a subprocess in a worker thread (the event loop
  never blocks on it) under a timeout. The text goes in on stdin, never as an argument.

espeak-ng writes 22.05 kHz mono PCM16 behind a WAV header whose sizes mean "to the end"; it is
parsed with the bridge's own :class:`~bridge.audio.wav.WavHeaderParser`, resampled with soxr
(HQ, in float32, as :mod:`bridge.audio.decoder` does; never ``audioop.ratecv``) and encoded with
:func:`bridge.audio.codec.lin16_to_ulaw`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess  # noqa: S404 - espeak-ng, found on the PATH, with fixed arguments
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soxr

from bridge.audio.codec import lin16_to_ulaw
from bridge.audio.formats import Encoding
from bridge.audio.wav import WavHeaderParser
from bridge.dev.tone import MULAW_RATE, PCM_RATE
from bridge.errors import AudioFormatError

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_VOICE",
    "SPEECH_CHOICES",
    "TONES_HINT",
    "EspeakError",
    "EspeakInfo",
    "Speech",
    "find_espeak",
    "render",
    "resolve_speech",
    "wav_to_audio",
]

Speech = Literal["tones", "espeak"]
"""What the emulator's audio says (:attr:`~bridge.dev.hamsa_emulator.EmulatorConfig.speech`)."""
SPEECH_CHOICES: Final = ("auto", "espeak", "tones")
"""What a user may ask for: ``auto`` is espeak-ng when it is installed, else tones."""
DEFAULT_VOICE: Final = "ar"
"""espeak-ng's Arabic voice."""
DEFAULT_TIMEOUT: Final = 10.0
"""Seconds one rendering may take (a 2000-character text takes well under one)."""

_EXECUTABLE: Final = "espeak-ng"
_VERSION: Final = re.compile(r"text-to-speech:\s*(\S+)")
TONES_HINT: Final = "install espeak-ng to hear Arabic speech"
"""What the user is told when the tones stand in for speech."""


class EspeakError(Exception):
    """espeak-ng failed, timed out or wrote something that is not a WAV of PCM16."""


@dataclass(frozen=True, slots=True)
class EspeakInfo:
    path: str
    version: str
    """As ``espeak-ng --version`` prints it (``1.51``), or ``"?"``."""


def find_espeak() -> EspeakInfo | None:
    """The espeak-ng on the PATH, or ``None`` if there is none (or it does not run)."""
    path = shutil.which(_EXECUTABLE)
    if path is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argument
            [path, "--version"], capture_output=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(done.stdout.decode(errors="replace"))
    return EspeakInfo(path, found.group(1) if found else "?")


def resolve_speech(
    requested: str, *, voice: str = DEFAULT_VOICE, found: EspeakInfo | None = None
) -> tuple[Speech, str]:
    """What ``requested`` (one of :data:`SPEECH_CHOICES`) means here: the speech to use and the
    line that says so (``speech: espeak-ng 1.51, voice ar``).

    ``found``: the espeak-ng to use (default: :func:`find_espeak`). Raises ``ValueError`` for
    ``espeak`` without espeak-ng, or an unknown choice.
    """
    if requested not in SPEECH_CHOICES:
        raise ValueError(f"speech must be one of {', '.join(SPEECH_CHOICES)}, not {requested!r}")
    if requested == "tones":
        return "tones", "speech: tones (one per character, as asked)"
    info = found or find_espeak()
    if info is not None:
        return "espeak", f"speech: espeak-ng {info.version}, voice {voice}"
    if requested == "espeak":
        raise ValueError(f"espeak-ng is not installed (it is not on the PATH): {TONES_HINT}")
    return "tones", f"speech: tones (one per character; {TONES_HINT})"


async def render(
    text: str, *, mulaw: bool, voice: str = DEFAULT_VOICE, time_limit: float = DEFAULT_TIMEOUT
) -> bytes:
    """``text`` spoken by espeak-ng: 8 kHz μ-law (``mulaw=True``) or 16 kHz PCM16.

    Runs in a worker thread; raises :class:`EspeakError` if espeak-ng is missing, fails, takes
    longer than ``time_limit`` seconds (it is then killed) or produces no audio (an unknown
    voice).
    """
    path = shutil.which(_EXECUTABLE)
    if path is None:
        raise EspeakError("espeak-ng is not installed")
    wav = await asyncio.to_thread(_run, path, text, voice, time_limit)
    return wav_to_audio(wav, mulaw=mulaw)


def _run(path: str, text: str, voice: str, timeout: float) -> bytes:
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments; the text goes in on stdin
            [path, "-v", voice, "--stdout"],
            input=text.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EspeakError(f"espeak-ng took longer than {timeout:g} s") from None
    except OSError as exc:
        raise EspeakError(f"espeak-ng could not run: {exc}") from None
    if done.returncode != 0:
        problem = done.stderr.decode(errors="replace").strip()
        raise EspeakError(f"espeak-ng exited {done.returncode}: {problem}")
    return done.stdout


def wav_to_audio(wav: bytes, *, mulaw: bool) -> bytes:
    """A mono PCM16 WAV (any rate) as 8 kHz μ-law (``mulaw=True``) or 16 kHz PCM16."""
    parser = WavHeaderParser()
    try:
        verdict = parser.feed(wav)
    except AudioFormatError as exc:
        raise EspeakError(f"espeak-ng wrote an unusable WAV: {exc.message}") from None
    if verdict is None or verdict.header is None:
        raise EspeakError("espeak-ng wrote no WAV (is the voice installed?)")
    header = verdict.header
    fmt = header.format
    if fmt.encoding is not Encoding.PCM16 or fmt.channels != 1:
        raise EspeakError(f"espeak-ng wrote {fmt}, not mono PCM16")
    body = verdict.body
    if header.data_size is not None:
        body = body[: header.data_size]
    body = body[: len(body) - len(body) % 2]
    if not body:
        raise EspeakError("espeak-ng wrote no audio (is the voice installed?)")
    rate = MULAW_RATE if mulaw else PCM_RATE
    x = np.frombuffer(body, dtype="<i2").astype(np.float32)
    x *= 1.0 / 32768.0
    y: npt.NDArray[np.float32] = soxr.resample(x, fmt.sample_rate, rate, quality="HQ")
    y = np.asarray(y, dtype=np.float32) * 32768.0
    np.rint(y, out=y)
    np.clip(y, -32768.0, 32767.0, out=y)
    pcm = y.astype("<i2").tobytes()
    return lin16_to_ulaw(pcm) if mulaw else pcm
