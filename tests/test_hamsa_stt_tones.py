"""``bridge.dev.stt_tones.recognize``: the emulator's tones back to text, after the trip a caller's
speech takes to Hamsa (8 kHz μ-law → PCM16 → 16 kHz with soxr → silence of unknown length around
it), for random phrases over the whole alphabet and for the clinic's phrases."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.audio.codec import ulaw_to_lin16
from bridge.dev.espeak import EspeakError, render
from bridge.dev.stt_tones import ALPHABET, recognize
from bridge.dev.tone import PCM_RATE, frequency_of, synthesize

CLINIC = ["المواعيد", "واحد اثنين ثلاثة اربعة خمسة ستة", "one two three"]

PHRASES = st.text(alphabet=st.sampled_from(ALPHABET + " "), min_size=1, max_size=40)


def heard(text: str) -> str:
    """What recognition must give back: the words, one space between them."""
    return " ".join(text.split())


def over_the_phone(text: str, lead: int, tail: int) -> bytes:
    """``text``'s tones as Hamsa receives them from the bridge: μ-law at 8 kHz (what Twilio
    carries), decoded, resampled once to 16 kHz with soxr, ``lead``/``tail`` samples of silence
    around (the utterance detector's padding, of a length recognition cannot know)."""
    pcm8 = np.frombuffer(ulaw_to_lin16(synthesize(text, mulaw=True)), dtype="<i2")
    pcm16 = soxr.resample(pcm8, 8000, PCM_RATE)
    silence = np.zeros
    return np.concatenate(
        [silence(lead, np.int16), pcm16.astype(np.int16), silence(tail, np.int16)]
    ).tobytes()


def test_the_alphabet_is_letters_and_digits_with_distinct_tones() -> None:
    assert all(ch.isalnum() for ch in ALPHABET)
    assert len({frequency_of(ch) for ch in ALPHABET}) == len(ALPHABET) == len(set(ALPHABET))
    gaps = np.diff(sorted(frequency_of(ch) for ch in ALPHABET))
    assert gaps.min() < 12  # closer than an 80 ms FFT's bins: the reason for the templates


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(text=PHRASES, lead=st.integers(0, 16000), tail=st.integers(0, 16000))
def test_random_phrases_survive_the_phone_and_unknown_padding(
    text: str, lead: int, tail: int
) -> None:
    assert recognize(over_the_phone(text, lead, tail), PCM_RATE) == heard(text)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(text=PHRASES, lead=st.integers(0, 8000))
def test_plain_tones_at_both_rates(text: str, lead: int) -> None:
    pcm16 = synthesize(text, mulaw=False)
    assert recognize(b"\0" * 2 * lead + pcm16, PCM_RATE) == heard(text)
    pcm8 = ulaw_to_lin16(synthesize(text, mulaw=True))
    assert recognize(b"\0" * 2 * lead + pcm8, 8000) == heard(text)


@pytest.mark.parametrize("text", CLINIC)
@pytest.mark.parametrize(("lead", "tail"), [(0, 0), (4800, 11200), (4801, 3), (1279, 1281)])
def test_the_clinic_phrases(text: str, lead: int, tail: int) -> None:
    assert recognize(over_the_phone(text, lead, tail), PCM_RATE) == text


def test_nothing_loud_is_nothing_heard() -> None:
    assert recognize(b"", PCM_RATE) == ""
    assert recognize(b"\0" * 64000, PCM_RATE) == ""
    assert recognize(over_the_phone("   ", 100, 100), PCM_RATE) == ""
    assert recognize(b"\x01", PCM_RATE) == ""


def test_noise_is_not_tones() -> None:
    noise = np.random.default_rng(7).normal(0, 3000, 3 * PCM_RATE).astype(np.int16)
    assert recognize(noise.tobytes(), PCM_RATE) == ""


def test_speech_is_not_tones() -> None:
    try:
        mulaw = asyncio.run(render("واحد اثنين ثلاثة", mulaw=True))
    except EspeakError as exc:
        pytest.skip(f"espeak-ng: {exc}")
    pcm8 = np.frombuffer(ulaw_to_lin16(mulaw), dtype="<i2")
    pcm16 = soxr.resample(pcm8, 8000, PCM_RATE).astype(np.int16).tobytes()
    assert recognize(pcm16, PCM_RATE) == ""


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        recognize(b"", 0)
    with pytest.raises(ValueError, match="positive"):
        recognize(b"", PCM_RATE, ms_per_char=0)
