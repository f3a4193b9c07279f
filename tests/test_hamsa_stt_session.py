"""``HamsaSession.transcribe`` over real sockets against the real emulator (port 0): STT on the
call's one socket, in order with TTS, and every outcome of docs/speech-input.md's contract.

Waits are on events (``asyncio.timeout(HANG)`` guards); the time limits under test are short only
where the emulator never answers (so no machine is too slow for them) and generous elsewhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import soxr
import structlog
import websockets

from bridge.audio.codec import ulaw_to_lin16
from bridge.calls.hamsa_session import HamsaSession, SttOutcome, SttResult
from bridge.dev import tone
from bridge.dev.hamsa_emulator import (
    INFO_FRAME,
    UNSUPPORTED_AUDIO_MESSAGE,
    EmulatorConfig,
    EmulatorServer,
    SttFault,
)
from bridge.errors import HamsaAuthError, InvalidState
from bridge.metrics import Metrics
from bridge.protocols.hamsa_client import MAX_STT_WAV_BYTES, MAX_TRANSCRIPT_CHARS
from bridge.settings import Settings
from tests.timing import HANG

pytestmark = pytest.mark.anyio

KEY = "stt-key"
MS_PER_CHAR = 30.0
"""TTS replies here: 30 ms of tone per character (short audio, quick tests)."""
GENEROUS = 30.0
"""HAMSA_STT_TIMEOUT where the emulator does answer: no machine is that slow."""
SHORT = 0.5
"""HAMSA_STT_TIMEOUT where the emulator never answers (the outcome does not depend on speed)."""
THINKING_LIMIT = 3.0
"""HAMSA_STT_TIMEOUT where ``[THINKING]`` must arrive first (sent at once: generous)."""
CLINIC = "واحد اثنين ثلاثة اربعة خمسة ستة"


def wav(pcm16: bytes, rate: int = tone.PCM_RATE, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return out.getvalue()


def spoken(text: str, *, pad: int = 4800) -> bytes:
    """``text`` said by the simulated caller (80 ms tones), as the bridge sends it to Hamsa: 8 kHz
    μ-law decoded, resampled once to 16 kHz with soxr, silence around, in a 16 kHz WAV."""
    pcm8 = np.frombuffer(ulaw_to_lin16(tone.synthesize(text, mulaw=True)), dtype="<i2")
    pcm16 = soxr.resample(pcm8, 8000, tone.PCM_RATE).astype(np.int16).tobytes()
    silence = b"\0\0" * pad
    return wav(silence + pcm16 + silence[: len(silence) // 3 * 2])


SILENCE = wav(b"\0\0" * tone.PCM_RATE)


def emulator(**fields: Any) -> EmulatorConfig:
    fields = {"stt_delay": 0.0, **fields}
    return EmulatorConfig(api_keys=frozenset({KEY}), ms_per_char=MS_PER_CHAR, **fields)


@contextlib.asynccontextmanager
async def session(
    config: EmulatorConfig, **values: Any
) -> AsyncIterator[tuple[EmulatorServer, HamsaSession]]:
    fields: dict[str, Any] = {
        "hamsa_api_key": KEY,
        "hamsa_stt_timeout": GENEROUS,
        "hamsa_drain_timeout": 0.2,
        "hamsa_connect_attempts": 1,
        **values,
    }
    async with EmulatorServer(config) as emu, asyncio.TaskGroup() as tasks:
        hamsa = HamsaSession(Settings(hamsa_ws_url=emu.ws_url, **fields), tasks, metrics=Metrics())
        try:
            async with asyncio.timeout(HANG):
                yield emu, hamsa
        finally:
            await hamsa.close()


async def say(hamsa: HamsaSession, text: str) -> bytes:
    """One TTS request, its whole reply."""
    async with hamsa.reply(text, Settings().voice) as reply:
        return b"".join([chunk async for chunk in reply])


def tones(text: str) -> bytes:
    return tone.synthesize(text, mulaw=True, ms_per_char=MS_PER_CHAR)


async def test_tts_stt_tts_leave_in_the_order_asked_on_one_socket() -> None:
    async with session(emulator()) as (emu, hamsa):
        # Asked for at once, in this order: the lock keeps it (FIFO), one in flight.
        first, heard, second = await asyncio.gather(
            say(hamsa, "مرحبا"),
            hamsa.transcribe(spoken("المواعيد"), language="ar"),
            say(hamsa, "شكرا"),
        )
        assert first == tones("مرحبا")
        assert second == tones("شكرا")
        assert heard.outcome is SttOutcome.TEXT
        assert (heard.text, heard.via) == ("المواعيد", "text")
        state = emu.state
        order = sorted(
            [(r.number, "tts", r.connection_id) for r in state.requests]
            + [(r.number, "stt", r.connection_id) for r in state.stt_requests]
        )
        assert order == [(1, "tts", 1), (2, "stt", 1), (3, "tts", 1)]
        [stt] = state.stt_requests
        assert (stt.language, stt.eos, stt.recognized, stt.answered_via) == (
            "ar",
            False,
            "المواعيد",
            "text",
        )
        assert stt.audio_seconds is not None
        assert stt.audio_seconds > 0.64
        # Each request left only after the previous one had been answered.
        assert state.requests[0].end_at is not None
        assert stt.answered_at is not None
        assert state.requests[0].end_at <= stt.received_at <= stt.answered_at
        assert stt.answered_at <= state.requests[1].received_at
        assert (hamsa.connections_opened, hamsa.requests_sent) == (1, 3)


async def test_the_clinic_digits_in_json_form() -> None:
    async with session(emulator(stt_answer="json")) as (emu, hamsa):
        result = await hamsa.transcribe(spoken(CLINIC), language="ar")
        assert result == SttResult(SttOutcome.TEXT, CLINIC, "json", result.seconds)
        assert result.seconds >= 0


async def test_the_language_setting_travels_as_is() -> None:
    async with session(emulator()) as (emu, hamsa):
        await hamsa.transcribe(spoken("one two three"), language="en")
        assert emu.state.stt_requests[0].language == "en"
        assert emu.state.stt_requests[0].recognized == "one two three"


async def test_an_error_frame_is_an_outcome_and_the_call_keeps_its_socket() -> None:
    # Unlike a TTS error (more audio of the failed reply may follow: the socket is replaced), an
    # STT error leaves nothing behind it: the next request goes over the same socket.
    async with session(emulator(stt_faults={1: SttFault.ERROR})) as (emu, hamsa):
        assert (await hamsa.transcribe(spoken("abc"), language="ar")).outcome is SttOutcome.ERROR
        assert await say(hamsa, "نعم") == tones("نعم")
        assert hamsa.connections_opened == 1
        assert [r.connection_id for r in emu.state.requests] == [1]


async def test_audio_hamsa_cannot_read_is_an_error() -> None:
    eight_bit = wav(b"\x80" * 8000, rate=8000, width=1)
    async with session(emulator()) as (emu, hamsa):
        result = await hamsa.transcribe(eight_bit, language="ar")
        assert result.outcome is SttOutcome.ERROR
        assert emu.state.stt_requests[0].error == UNSUPPORTED_AUDIO_MESSAGE


async def test_thinking_past_the_limit() -> None:
    # [THINKING] goes at once (no delay, nothing recognised); the limit only has to outlast that.
    config = emulator(stt_faults={1: SttFault.THINKING})
    async with session(config, hamsa_stt_timeout=THINKING_LIMIT) as (emu, hamsa):
        result = await hamsa.transcribe(spoken("abc"), language="ar")
        assert result.outcome is SttOutcome.THINKING
        assert result.seconds >= THINKING_LIMIT
        assert emu.state.stt_requests[0].answered_via == "thinking"


async def test_no_answer_times_out_and_the_next_tts_gets_a_fresh_socket() -> None:
    config = emulator(stt_faults={1: SttFault.SILENT})
    async with session(config, hamsa_stt_timeout=SHORT) as (emu, hamsa):
        result = await hamsa.transcribe(spoken("abc"), language="ar")
        assert (result.outcome, result.text, result.via) == (SttOutcome.TIMEOUT, "", None)
        assert result.seconds >= SHORT
        # Nothing will ever drain it: after HAMSA_DRAIN_TIMEOUT the socket is swapped.
        assert await say(hamsa, "نعم") == tones("نعم")
        assert hamsa.connections_opened == 2


async def test_a_late_transcript_drains_and_the_socket_is_kept() -> None:
    # The answer comes 1 s after the request, past the 0.3 s limit; the next request waits for
    # it (the drain allowance is a guard here, never reached) and reuses the socket.
    config = emulator(stt_delay=1.0)
    async with session(config, hamsa_stt_timeout=0.3, hamsa_drain_timeout=HANG) as (
        emu,
        hamsa,
    ):
        result = await hamsa.transcribe(spoken("abc"), language="ar")
        assert result.outcome is SttOutcome.TIMEOUT
        assert await say(hamsa, "نعم") == tones("نعم")
        assert hamsa.connections_opened == 1
        [stt] = emu.state.stt_requests
        assert stt.answered_at is not None
        assert stt.answered_at <= emu.state.requests[0].received_at


async def test_a_100_kb_transcript_is_cut() -> None:
    async with session(emulator(stt_faults={1: SttFault.OVERSIZED})) as (emu, hamsa):
        result = await hamsa.transcribe(spoken("abc"), language="ar")
        answer = emu.state.stt_requests[0].answer
        assert answer is not None
        assert len(answer.encode()) >= 100_000
        assert result.outcome is SttOutcome.TEXT
        assert 0 < len(result.text) <= MAX_TRANSCRIPT_CHARS
        assert answer.startswith(result.text)
        # the socket is fine: the next request goes on it
        assert await say(hamsa, "نعم") == tones("نعم")
        assert hamsa.connections_opened == 1


async def test_binary_where_text_was_expected_is_not_an_answer() -> None:
    config = emulator(stt_faults={1: SttFault.BINARY})
    # the binary answer must come before the timeout for this to test anything: the emulator
    # sends it at once, yet on a loaded machine it once came after SHORT (0.5 s)
    async with session(config, hamsa_stt_timeout=4 * SHORT) as (emu, hamsa):
        result = await hamsa.transcribe(spoken("abc"), language="ar")
        assert result.outcome is SttOutcome.TIMEOUT
        assert emu.state.stt_requests[0].answered_via == "binary"
        assert await say(hamsa, "نعم") == tones("نعم")


async def test_a_trailing_end_never_ends_the_next_reply() -> None:
    async with session(emulator(stt_faults={1: SttFault.TRAILING_END})) as (emu, hamsa):
        result = await hamsa.transcribe(spoken("abc"), language="ar")
        assert (result.outcome, result.text) == (SttOutcome.TEXT, "abc")
        long_text = "مرحبا بك في خدمة همسة"
        assert await say(hamsa, long_text) == tones(long_text)
        assert hamsa.connections_opened == 1


async def test_another_script_passes_through() -> None:
    config = emulator(stt_fixed_transcript="  привет мир ")
    async with session(config) as (emu, hamsa):
        result = await hamsa.transcribe(SILENCE, language="ar")
        assert (result.outcome, result.text, result.via) == (SttOutcome.TEXT, "привет мир", "text")
        assert emu.state.stt_requests[0].recognized == ""


@pytest.mark.parametrize("form", ["text", "json"])
async def test_no_speech_is_an_empty_transcript(form: str) -> None:
    async with session(emulator(stt_answer=form)) as (emu, hamsa):
        result = await hamsa.transcribe(SILENCE, language="ar")
        assert (result.outcome, result.text, result.via) == (SttOutcome.EMPTY, "", form)


async def test_a_refused_key_raises_like_reply() -> None:
    config = emulator()
    async with session(config, hamsa_api_key="wrong") as (emu, hamsa):
        with pytest.raises(HamsaAuthError):
            await hamsa.transcribe(SILENCE, language="ar")
        with pytest.raises(HamsaAuthError):
            await hamsa.transcribe(SILENCE, language="ar")


async def test_no_socket_at_all_is_an_error_outcome() -> None:
    async with session(emulator(refuse_connections=10)) as (emu, hamsa):
        result = await hamsa.transcribe(SILENCE, language="ar")
        assert result.outcome is SttOutcome.ERROR
        assert emu.state.stt_requests == []


async def test_audio_the_protocol_refuses_is_our_bug() -> None:
    async with session(emulator()) as (emu, hamsa):
        for bad in (b"", b"not a wav at all", b"RIFF\0\0\0\0WAVE" + b"\0" * MAX_STT_WAV_BYTES):
            with pytest.raises(InvalidState):
                await hamsa.transcribe(bad, language="ar")


async def test_the_transcript_is_logged_only_at_debug() -> None:
    async with session(emulator(stt_answer="json")) as (emu, hamsa):
        with structlog.testing.capture_logs() as logs:
            await hamsa.transcribe(spoken("abc"), language="ar")
    [answer] = [e for e in logs if e["event"] == "stt_answer"]
    assert answer["log_level"] == "info"
    assert (answer["via"], answer["chars"], answer["outcome"]) == ("json", 3, "text")
    assert answer["seconds"] >= 0
    assert "abc" not in json.dumps(answer, default=str)
    [text] = [e for e in logs if e["event"] == "stt_transcript"]
    assert (text["log_level"], text["text"]) == ("debug", "abc")


async def test_the_emulator_refuses_what_is_not_base64_of_a_wav() -> None:
    async with EmulatorServer(emulator()) as emu, asyncio.timeout(HANG):
        headers = {"X-Api-Key": KEY}
        async with websockets.connect(emu.ws_url, additional_headers=headers) as ws:
            assert await ws.recv() == INFO_FRAME
            for audio in ("!!!", base64.b64encode(b"just bytes").decode(), None, ""):
                await ws.send(json.dumps({"type": "stt", "payload": {"audioBase64": audio}}))
                frame = json.loads(await ws.recv())
                assert frame == {"type": "error", "payload": {"message": UNSUPPORTED_AUDIO_MESSAGE}}
        assert [r.error for r in emu.state.stt_requests] == [UNSUPPORTED_AUDIO_MESSAGE] * 4
