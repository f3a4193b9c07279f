"""The utterance detector (``bridge.audio.utterances``) and the WAV sent to speech-to-text.

The frames pushed are the detector's clock, so every boundary is asserted in stream time, from
audio the test builds: tone "speech" from ``bridge.dev.tone`` (webrtcvad calls it voiced, as it
does speech), μ-law silence (0xFF) and seeded white noise.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.audio.codec import lin16_to_ulaw, ulaw_to_lin16
from bridge.audio.utterances import (
    FRAME_MS,
    START_WINDOW,
    SpeechStarted,
    UtteranceDetector,
    UtteranceEnded,
)
from bridge.audio.wav import STT_RATE, WavHeaderParser, stt_wav
from bridge.dev.tone import synthesize

FRAME = 160
SILENCE = b"\xff" * FRAME
PAD_MS, END_MS, MAX_MS = 300, 700, 10_000
TOLERANCE_MS = 2 * FRAME_MS
"""A tone's fade may move a boundary by a frame or two."""
HANGOVER_MS = 100
"""webrtcvad flags ~5 frames voiced after a sound stops: the end silence is counted from there."""
LETTERS = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"


def detector(**overrides: int) -> UtteranceDetector:
    options = {"start_pad_ms": PAD_MS, "end_silence_ms": END_MS, "max_ms": MAX_MS, "mode": 2}
    options.update(overrides)
    return UtteranceDetector(**options)


def silence(ms: int) -> bytes:
    return b"\xff" * (ms * 8)


def frames(audio: bytes) -> list[bytes]:
    """160-byte frames, the last padded with μ-law silence (as Twilio's would be whole)."""
    return [audio[i : i + FRAME].ljust(FRAME, b"\xff") for i in range(0, len(audio), FRAME)]


def run(det: UtteranceDetector, audio: bytes) -> list[SpeechStarted | UtteranceEnded]:
    events: list[SpeechStarted | UtteranceEnded] = []
    for frame in frames(audio):
        events += det.push(frame)
    return events


def ended(events: list[SpeechStarted | UtteranceEnded]) -> list[UtteranceEnded]:
    return [e for e in events if isinstance(e, UtteranceEnded)]


def noise(seconds: float, level: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pcm = (rng.standard_normal(int(8000 * seconds)) * level).clip(-32768, 32767).astype("<i2")
    return lin16_to_ulaw(pcm.tobytes())


def test_phrases_between_silences_are_cut_into_exactly_those_utterances() -> None:
    phrases = ["المواعيد", "نعم", "اريد موعدا غدا", "١٢٣"]  # 640, 240, 1120, 240 ms of tones
    audio = bytearray()
    expected: list[tuple[int, int]] = []  # (onset, end of speech) in ms
    for number, phrase in enumerate(phrases):
        audio += silence(1000 + 400 * number)
        onset = len(audio) // 8
        audio += synthesize(phrase, mulaw=True)
        expected.append((onset, len(audio) // 8))
    audio += silence(1500)
    events = run(detector(), bytes(audio))

    starts = [e for e in events if isinstance(e, SpeechStarted)]
    utterances = ended(events)
    assert len(starts) == len(utterances) == len(phrases)
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded] * len(phrases)
    for start, utterance, (onset, speech_end) in zip(starts, utterances, expected, strict=True):
        assert start.at_ms == utterance.started_ms
        assert abs(utterance.started_ms - onset) <= TOLERANCE_MS
        # ended by END_MS of silence, that silence kept as end padding
        assert not utterance.cut
        late = utterance.ended_ms - (speech_end + END_MS)
        assert -TOLERANCE_MS <= late <= HANGOVER_MS + TOLERANCE_MS
        # the audio: start padding, the speech, the end padding (8 kHz PCM16: 16 bytes a ms)
        assert len(utterance.pcm) == 16 * (utterance.ended_ms - utterance.started_ms + PAD_MS)
        pcm = np.frombuffer(utterance.pcm, dtype="<i2")
        assert not pcm[: 16 * PAD_MS // 2 // 2].any(), "the start padding is the silence before"
        assert np.abs(pcm).max() > 5000, "the speech is in it"


def test_the_start_padding_is_what_came_before_the_onset_even_at_the_stream_start() -> None:
    tone = synthesize("موعد", mulaw=True)
    (first,) = ended(run(detector(), silence(100) + tone + silence(1000)))
    # only 100 ms existed before the onset: the padding is what there was
    assert len(first.pcm) == 16 * (first.ended_ms - first.started_ms + first.started_ms)
    assert first.started_ms <= 100 + TOLERANCE_MS
    assert ulaw_to_lin16(tone)[:320] in first.pcm


def test_clicks_in_a_silence_start_nothing() -> None:
    """A click of 20 or 40 ms is flagged ~100 ms long by webrtcvad (its hangover): still under
    the start rule."""
    click = synthesize("ب", mulaw=True)[:FRAME]
    audio = silence(500) + click + silence(500) + click * 2 + silence(500)
    assert run(detector(), audio) == []


def test_a_minute_of_talk_without_a_pause_is_cut_at_the_maximum_and_nothing_is_lost() -> None:
    talk = synthesize(LETTERS * 27, mulaw=True)[: 58 * 8000]  # a minute, not a pause in it
    events = run(detector(), silence(500) + talk + silence(1500))
    utterances = ended(events)
    assert len(utterances) == 6
    assert [u.cut for u in utterances] == [True] * 5 + [False]
    for utterance in utterances[:5]:
        assert utterance.ended_ms - utterance.started_ms == MAX_MS
    for before, after in zip(utterances, utterances[1:], strict=False):
        assert after.started_ms == before.ended_ms, "the next one starts at the cut"
        assert len(after.pcm) == 16 * (after.ended_ms - after.started_ms), "no start padding"
    starts = [e.at_ms for e in events if isinstance(e, SpeechStarted)]
    assert starts == [u.started_ms for u in utterances]
    late = utterances[-1].ended_ms - (500 + 58_000 + END_MS)
    assert -TOLERANCE_MS <= late <= HANGOVER_MS + TOLERANCE_MS


@pytest.mark.parametrize("level", [30.0, 100.0])
def test_a_quiet_line_hiss_is_never_speech(level: float) -> None:
    assert run(detector(), noise(30, level, seed=7)) == []


@pytest.mark.parametrize("level", [2000.0, 4000.0, 16000.0])
def test_loud_noise_is_speech_to_webrtcvad_so_it_is_cut_at_the_maximum(level: float) -> None:
    """What happens on a loud noisy line: webrtcvad calls white noise voiced from σ≈1000 up
    (in every mode; around 1000 most frames, from 1500 all), so the detector sees a caller who
    never stops. Every utterance is then cut at the maximum and, if one started while the script
    listened, sent: the speech-to-text answers nothing useful (``NotUnderstood``, or a
    transcript matching nothing) and the node retries or falls back to keys; the call goes on
    (``test_speech_listener``)."""
    utterances = ended(run(detector(max_ms=2000), noise(21, level, seed=11)))
    assert [(u.started_ms, u.ended_ms, u.cut) for u in utterances] == [
        (start, start + 2000, True) for start in range(0, 20_000, 2000)
    ]


def test_borderline_noise_gives_utterances_that_never_overlap() -> None:
    """Noise at σ=1000 is voiced in most frames, not all: cuts and ends mix, and an utterance
    never starts before the previous one ended."""
    utterances = ended(run(detector(max_ms=2000), noise(21, 1000.0, seed=11)))
    assert len(utterances) >= 8
    for before, after in zip(utterances, utterances[1:], strict=False):
        assert after.started_ms >= before.ended_ms


def test_frames_of_the_wrong_length_are_one_frame_of_the_clock_each() -> None:
    det = detector()
    assert det.push(b"") == []
    assert det.push(b"\xff" * 10) == []
    assert det.push(b"\xff" * 4000) == []
    assert det.odd_frames == 3
    assert det.now_ms == 3 * FRAME_MS


def test_reset_drops_the_utterance_in_progress_and_the_clock_keeps_counting() -> None:
    det = detector()
    events = run(det, synthesize("مواعيد", mulaw=True))
    assert [type(e) for e in events] == [SpeechStarted]
    assert det.speaking
    assert det.held_bytes
    det.reset()
    assert not det.speaking
    assert det.held_bytes == 0
    assert run(det, silence(2000)) == []
    assert det.now_ms == 480 + 2000


@pytest.mark.parametrize(
    "options",
    [{"mode": 4}, {"mode": -1}, {"start_pad_ms": -20}, {"end_silence_ms": 0}, {"max_ms": 100}],
)
def test_a_configuration_out_of_range_is_refused(options: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        detector(**options)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=400), max_size=300),
    st.integers(0, 3),
    st.sampled_from([0, 100, 300]),
)
def test_any_frames_never_raise_and_memory_stays_bounded(
    pushed: list[bytes], mode: int, pad_ms: int
) -> None:
    """Arbitrary bytes of arbitrary lengths (random μ-law is loud noise: mostly "speech"): no
    exception, events in a valid order, and never more held than the padding, the maximum and
    the start rule's window."""
    max_ms = 1000
    det = detector(mode=mode, start_pad_ms=pad_ms, max_ms=max_ms, end_silence_ms=200)
    bound = 320 * ((pad_ms + max_ms) // FRAME_MS + START_WINDOW)
    speaking = False
    last_end = 0
    for frame in pushed:
        for event in det.push(frame):
            if isinstance(event, SpeechStarted):
                assert not speaking
                assert last_end <= event.at_ms <= det.now_ms
                speaking = True
            else:
                assert speaking
                speaking = False
                last_end = event.ended_ms
                assert len(event.pcm) <= bound
                assert event.ended_ms - event.started_ms <= max_ms
        assert det.speaking == speaking
        assert det.held_bytes <= bound
    assert det.now_ms == len(pushed) * FRAME_MS


def test_stt_wav_is_16_khz_pcm16_mono_twice_the_samples() -> None:
    pcm = ulaw_to_lin16(synthesize("المواعيد", mulaw=True))  # 640 ms at 8 kHz
    wav = stt_wav(pcm)
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", wav[:44])
    assert fields == (
        b"RIFF",
        36 + 2 * len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        16000,
        32000,
        2,
        16,
        b"data",
        2 * len(pcm),
    )
    assert len(wav) == 44 + 2 * len(pcm)
    verdict = WavHeaderParser().feed(wav)
    assert verdict is not None
    assert verdict.header is not None
    assert verdict.header.format.sample_rate == STT_RATE
    assert verdict.header.data_size == len(verdict.body) == 2 * len(pcm)
    assert stt_wav(b"") == stt_wav(b"\x01")[:44]
    assert len(stt_wav(b"")) == 44


def test_stt_wav_resamples_the_tone_to_the_same_pitch() -> None:
    """Resampled, not sample-doubled: a 1 kHz tone at 8 kHz is a 1 kHz tone at 16 kHz, with no
    image at 7 kHz (what repeating samples would put there)."""
    t = np.arange(8000) / 8000
    pcm = (np.sin(2 * np.pi * 1000 * t) * 10000).astype("<i2").tobytes()
    out = np.frombuffer(stt_wav(pcm)[44:], dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(len(out), 1 / 16000)
    assert abs(freqs[spectrum.argmax()] - 1000) < 2
    image = spectrum[(freqs > 6900) & (freqs < 7100)].max()
    assert image < spectrum.max() / 1000
