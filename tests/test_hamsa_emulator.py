"""The Hamsa emulator over real loopback sockets, driven by the sans-I/O core (tests both).

Each test runs a uvicorn server on 127.0.0.1 port 0 in the test's event loop and talks to it with
the ``websockets`` asyncio client. Synchronisation waits on events (the emulator's records, or
frames) under timeouts; the only fixed windows assert that something does *not* arrive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.dev import tone
from bridge.dev.hamsa_emulator import (
    ACK_FRAME,
    END_FRAME,
    INFO_FRAME,
    EmulatorConfig,
    EmulatorServer,
    EmulatorState,
    Fault,
    canonical_pcm16_header,
    reply_schedule,
    serve_emulator,
    streaming_mulaw_header,
)
from bridge.errors import HamsaAuthError, HamsaConnectError, HamsaReplyError
from bridge.protocols.hamsa_client import (
    UNEXPECTED_TRAILING_END,
    Ack,
    Audio,
    Closed,
    End,
    Event,
    HamsaProtocol,
    HamsaState,
    Info,
    ReplyError,
    Unexpected,
    classify_close,
)
from bridge.voice import Voice
from tests.timing import LATE

pytestmark = pytest.mark.anyio

KEY = "test-key"
VOICE = Voice("Majd", "ksa", "ar")
SENTENCE = "مرحبا بك في خدمة همسة، كيف يمكنني مساعدتك اليوم؟"  # 48 characters
OTHER = "شكرا لاتصالك، نتمنى لك يوما سعيدا."
TIMEOUT = 5.0

EXACT_INFO = '{"type": "info", "payload": {"message": "Connected to realtime WebSocket server"}}'
EXACT_ACK = (
    '{"type": "ack", "payload": {"message": "Real time text to speach connection establesh"}}'
)
EXACT_END = '{"type": "end", "payload": {"message": "End of TTS stream"}}'


# --- helpers -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def emulator(**overrides: Any) -> AsyncIterator[EmulatorServer]:
    overrides.setdefault("api_keys", frozenset({KEY}))
    async with EmulatorServer(EmulatorConfig(**overrides)) as emu:
        yield emu


def connect_to(
    emu: EmulatorServer, *, key: str | None = KEY, via: str = "header", **kwargs: Any
) -> connect:
    url = emu.ws_url
    headers: dict[str, str] = {}
    if key is not None:
        if via == "header":
            headers["X-Api-Key"] = key
        elif via == "query":
            url += f"?api_key={key}"
        else:
            headers["Authorization"] = f"Token {key}"
    return connect(url, additional_headers=headers, open_timeout=TIMEOUT, **kwargs)


@dataclass
class Reply:
    """Everything received for one request, in order."""

    events: list[Event] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(self.frames)

    @property
    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]


class Client:
    """A Hamsa client as the bridge would write one: websockets for I/O, HamsaProtocol for sense."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.proto = HamsaProtocol()

    async def next(self, reply: Reply) -> list[Event]:
        try:
            async with asyncio.timeout(TIMEOUT):
                message = await self.ws.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            events = self.proto.receive_close(
                rcvd.code if rcvd else None, rcvd.reason if rcvd else ""
            )
        else:
            if isinstance(message, bytes):
                reply.frames.append(message)
                reply.arrivals.append(time.monotonic())
                events = self.proto.receive_bytes(message)
            else:
                reply.texts.append(message)
                events = self.proto.receive_text(message)
        reply.events.extend(events)
        return events

    async def greet(self) -> None:
        reply = Reply()
        assert await self.next(reply) == [Info("Connected to realtime WebSocket server")]
        assert reply.texts == [EXACT_INFO]

    async def until(
        self, done: Callable[[Event], bool] = lambda e: isinstance(e, End | ReplyError | Closed)
    ) -> Reply:
        reply = Reply()
        while not any(done(e) for e in await self.next(reply)):
            pass
        return reply

    async def speak(self, text: str, *, mulaw: bool = True) -> Reply:
        await self.ws.send(self.proto.request(text, VOICE, mulaw=mulaw))
        return await self.until()


@contextlib.asynccontextmanager
async def client(emu: EmulatorServer, **kwargs: Any) -> AsyncIterator[Client]:
    async with connect_to(emu, **kwargs) as ws:
        c = Client(ws)
        await c.greet()
        yield c


async def wait_for(emu: EmulatorServer, predicate: Callable[[EmulatorState], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        await emu.state.wait_until(predicate)


async def closed_code(emu: EmulatorServer, *, key: str | None = KEY, via: str = "header") -> Closed:
    """Connect and return how the server closed the socket (without any info)."""
    async with connect_to(emu, key=key, via=via) as ws:
        c = Client(ws)
        reply = await c.until()
    assert reply.texts == []
    [event] = reply.events
    assert isinstance(event, Closed)
    return event


# --- tone ----------------------------------------------------------------------------------------


class TestTone:
    def test_deterministic_and_sized(self) -> None:
        a = tone.synthesize(SENTENCE, mulaw=True)
        assert a == tone.synthesize(SENTENCE, mulaw=True)
        assert len(a) == len(SENTENCE) * 640  # 80 ms at 8 kHz, one byte per sample
        pcm = tone.synthesize(SENTENCE, mulaw=False)
        assert len(pcm) == len(SENTENCE) * 1280 * 2  # 80 ms at 16 kHz, two bytes per sample
        assert tone.synthesize("ab", mulaw=True, ms_per_char=20) != tone.synthesize(
            "ba", mulaw=True, ms_per_char=20
        )
        assert tone.synthesize("", mulaw=True) == b""

    def test_gaps_are_silent_and_tones_fade(self) -> None:
        pcm = np.frombuffer(tone.synthesize("a b", mulaw=False), dtype="<i2")
        per_char = 1280
        assert np.all(pcm[per_char : 2 * per_char] == 0)  # the space
        assert abs(int(pcm[0])) < 200
        assert abs(int(pcm[per_char - 1])) < 200
        assert np.abs(pcm[:per_char]).max() > 5000
        ulaw = tone.synthesize(" ", mulaw=True)
        assert set(ulaw) == {0xFF}  # μ-law silence

    def test_frequency_range(self) -> None:
        freqs = {tone.frequency_of(chr(cp)) for cp in range(0x20, 0x2000)}
        assert min(freqs) >= 250
        assert max(freqs) <= 1500

    def test_fast(self) -> None:
        # CPU time, not wall time: the work synthesis costs, not how busy the machine is
        text = (SENTENCE * 50)[:2000]
        start = time.process_time()
        tone.synthesize(text, mulaw=False)
        tone.synthesize(text, mulaw=True)
        assert time.process_time() - start < 0.25  # ~10 ms on a laptop; generous for CI


# --- connection and the normal reply -------------------------------------------------------------


class TestConnect:
    async def test_info_on_connect_exact(self) -> None:
        async with emulator() as emu, connect_to(emu) as ws:
            assert await ws.recv() == EXACT_INFO
        assert INFO_FRAME == EXACT_INFO

    @pytest.mark.parametrize("via", ["header", "query", "authorization"])
    async def test_auth_ok(self, via: str) -> None:
        async with emulator() as emu:
            async with client(emu, via=via) as c:
                assert c.proto.state is HamsaState.IDLE
            await wait_for(emu, lambda s: s.connections[0].closed_at is not None)
            record = emu.state.connections[0]
            assert record.auth_ok
            assert record.auth_via == via
            assert record.close_code == 1000
            assert record.closed_by == "client"

    @pytest.mark.parametrize(("key", "via"), [("wrong", "header"), ("wrong", "query"), (None, "-")])
    async def test_bad_key_closes_4001(self, key: str | None, via: str) -> None:
        async with emulator() as emu:
            event = await closed_code(emu, key=key, via=via)
            assert event == Closed(4001, event.reason, False, False)
            err = classify_close(event.code, event.reason)
            assert isinstance(err, HamsaAuthError)
            assert not err.retryable
            assert emu.state.connections[0].auth_ok is False

    async def test_bad_key_http_401(self) -> None:
        async with emulator(auth_failure="http") as emu:
            with pytest.raises(InvalidStatus) as info:
                async with connect_to(emu, key="wrong"):
                    pass
            assert info.value.response.status_code == 401
            assert emu.state.connections[0].refused_status == 401

    async def test_no_balance_closes_4003(self) -> None:
        async with emulator(balance_ok=False) as emu:
            event = await closed_code(emu)
            assert event.code == 4003
            err = classify_close(event.code, event.reason)
            assert isinstance(err, HamsaAuthError)
            assert "insufficient balance" in str(err)

    async def test_refuse_connections_503(self) -> None:
        async with emulator(refuse_connections=2) as emu:
            for _ in range(2):
                with pytest.raises(InvalidStatus) as info:
                    async with connect_to(emu):
                        pass
                assert info.value.response.status_code == 503
            async with client(emu) as c:
                reply = await c.speak("hello there")
                assert reply.kinds[-1] == "End"
            assert [c.refused_status for c in emu.state.connections] == [503, 503, None]

    async def test_server_pings(self) -> None:
        seen = asyncio.Event()

        class PingSpy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage().startswith("< PING"):
                    seen.set()

        log = logging.getLogger("test_hamsa_emulator.client")
        log.setLevel(logging.DEBUG)
        log.propagate = False
        spy = PingSpy()
        log.addHandler(spy)
        try:
            async with emulator(ping_interval=0.05) as emu, connect_to(emu, logger=log):
                async with asyncio.timeout(TIMEOUT):
                    await seen.wait()
        finally:
            log.removeHandler(spy)

    async def test_idle_close(self) -> None:
        async with emulator(idle_close_after=0.2) as emu, client(emu) as c:
            started = time.monotonic()
            reply = await c.speak("hello")
            assert reply.kinds[-1] == "End"
            [event] = (await c.until()).events
            assert isinstance(event, Closed)
            assert (event.code, event.in_flight) == (1000, False)
            assert event.reason == "Connection closed due to inactivity"
            assert time.monotonic() - started >= 0.2
            assert emu.state.connections[0].closed_by == "server"


class TestReply:
    async def test_sequence_exact_strings_and_audio(self) -> None:
        async with emulator() as emu, client(emu) as c:
            sent_at = time.monotonic()
            reply = await c.speak(SENTENCE)
            assert reply.texts == [EXACT_ACK, EXACT_END]
            assert (ACK_FRAME, END_FRAME) == (EXACT_ACK, EXACT_END)
            assert reply.kinds == ["Ack"] + ["Audio"] * len(reply.frames) + ["End"]
            expected = tone.synthesize(SENTENCE, mulaw=True)
            assert reply.audio == expected
            assert c.proto.bytes_received == len(expected)
            assert 4 <= len(reply.frames) <= 7
            assert 1600 <= len(reply.frames[0]) <= 4000  # 200–500 ms of 8 kHz μ-law
            assert len(set(map(len, reply.frames))) > 1  # irregular
            record = emu.state.requests[0]
            assert record.number == 1
            assert record.connection_id == 1
            assert record.text == SENTENCE
            assert record.mulaw
            assert record.fault is None
            assert record.payload == {
                "text": SENTENCE,
                "speaker": "Majd",
                "dialect": "ksa",
                "languageId": "ar",
                "mulaw": True,
            }
            assert record.audio == expected
            assert record.header == b""
            assert record.frames == [len(f) for f in reply.frames]
            assert record.first_audio_at is not None
            assert record.end_at is not None
            assert sent_at <= record.first_audio_at <= reply.arrivals[0]
            assert record.first_audio_at <= record.end_at

    async def test_pcm_when_mulaw_false(self) -> None:
        async with emulator() as emu, client(emu) as c:
            reply = await c.speak(SENTENCE, mulaw=False)
            assert reply.audio == tone.synthesize(SENTENCE, mulaw=False)
            assert 6400 <= len(reply.frames[0]) <= 16000  # 200–500 ms of 16 kHz PCM16
            assert emu.state.requests[0].mulaw is False

    async def test_socket_reused_and_bytes_deterministic(self) -> None:
        async with emulator() as emu, client(emu) as c:
            first = await c.speak(SENTENCE)
            other = await c.speak(OTHER)
            again = await c.speak(SENTENCE)
            assert first.audio == again.audio == tone.synthesize(SENTENCE, mulaw=True)
            assert other.audio == tone.synthesize(OTHER, mulaw=True)
            assert [r.number for r in emu.state.requests] == [1, 2, 3]
            # Chunking is seeded by text and request number: same text, new number, new cuts.
            assert [len(f) for f in first.frames] != [len(f) for f in again.frames]

    async def test_chunking_reproducible_across_instances(self) -> None:
        sizes = []
        for _ in range(2):
            async with emulator(seed=7) as emu, client(emu) as c:
                replies = [await c.speak(text, mulaw=False) for text in (SENTENCE, OTHER)]
                sizes.append([len(f) for reply in replies for f in reply.frames[:-1]])
        assert sizes[0] == sizes[1]
        assert any(n % 2 for n in sizes[0])  # cuts at odd offsets split PCM samples

    async def test_long_text_frames_stay_small(self) -> None:
        text = ("ش" * 9 + " ") * 200  # 2000 characters, 4000 UTF-8 bytes
        async with emulator() as emu, client(emu) as c:
            reply = await c.speak(text)
            assert reply.audio == tone.synthesize(text, mulaw=True)
            assert max(map(len, reply.frames)) <= 65536
            assert emu.state.requests[0].text == text

    async def test_fifo_when_pipelined(self) -> None:
        """Two tts frames back to back (bypassing the one-in-flight rule): answered in order."""
        async with emulator() as emu, connect_to(emu) as ws:
            assert await ws.recv() == EXACT_INFO
            texts = ["first sentence here", "second one"]
            for text in texts:
                await ws.send(HamsaProtocol().request(text, VOICE))
            for text in texts:
                assert await ws.recv() == EXACT_ACK
                audio = b""
                while isinstance(message := await ws.recv(), bytes):
                    audio += message
                assert message == EXACT_END
                assert audio == tone.synthesize(text, mulaw=True)
            assert [r.text for r in emu.state.requests] == texts

    async def test_request_numbers_are_global(self) -> None:
        async with emulator(faults={2: Fault.TRUNCATE_640}) as emu:
            async with client(emu) as a:
                assert len((await a.speak(SENTENCE)).audio) > 640
            async with client(emu) as b:
                assert len((await b.speak(SENTENCE)).audio) == 640
            assert [(r.number, r.connection_id) for r in emu.state.requests] == [(1, 1), (2, 2)]


class TestValidation:
    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ({"speaker": "Majd"}, "text must be between 1 and 2000 characters"),
            ({"text": "", "speaker": "Majd"}, "text must be between 1 and 2000 characters"),
            ({"text": "x" * 2001, "speaker": "Majd"}, "text must be between 1 and 2000"),
            ({"text": "hello"}, "speaker is required"),
            ({"text": "hello", "speaker": ""}, "speaker is required"),
            ("text", "payload must be an object"),
        ],
    )
    async def test_invalid_tts_gets_error_without_ack(self, payload: Any, message: str) -> None:
        async with emulator() as emu, connect_to(emu) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "tts", "payload": payload}))
            reply = await ws.recv()
            assert isinstance(reply, str)
            assert json.loads(reply)["type"] == "error"
            assert message in json.loads(reply)["payload"]["message"]
            # The socket survives: a valid request right after works.
            await ws.send(HamsaProtocol().request("ok", VOICE))
            assert await ws.recv() == EXACT_ACK
            await wait_for(emu, lambda s: len(s.requests) == 2)
            assert emu.state.requests[0].error is not None

    async def test_unknown_fields_ignored_and_2000_chars_counted_as_characters(self) -> None:
        text = "ه" * 2000
        async with emulator() as emu, connect_to(emu) as ws:
            await ws.recv()
            payload = {"text": text, "speaker": "Majd", "mulaw": True, "expressiveness": 2}
            await ws.send(json.dumps({"type": "tts", "payload": payload, "dialect": "ksa"}))
            assert await ws.recv() == EXACT_ACK
            audio = b""
            while isinstance(message := await ws.recv(), bytes):
                audio += message
            assert message == EXACT_END
            assert audio == tone.synthesize(text, mulaw=True)
            assert emu.state.requests[0].payload["expressiveness"] == 2

    @pytest.mark.parametrize(
        ("frame", "message"),
        [
            ("not json", "Invalid message format"),
            (b"\x00\x01", "Invalid message format"),
            ('{"type": "stt", "payload": {}}', "Error generating transcription"),
            ('{"type": "bogus"}', "Unsupported message type: bogus"),
        ],
    )
    async def test_other_messages(self, frame: str | bytes, message: str) -> None:
        async with emulator() as emu, client(emu) as c:
            await c.ws.send(frame)
            reply = Reply()
            [event] = await c.next(reply)
            assert isinstance(event, Unexpected)  # an error frame with nothing in flight
            assert message in event.detail
            assert emu.state.requests == []

    async def test_unknown_speaker_aborts(self) -> None:
        async with emulator(speakers=frozenset({"Majd"})) as emu, client(emu) as c:
            await c.ws.send(c.proto.request("hello", Voice("Nobody", "ksa", "ar")))
            reply = await c.until()
            assert reply.events == [ReplyError("TTS stream error: aborted")]
            assert (await c.speak("hello")).kinds[-1] == "End"
            assert emu.state.requests[0].error == "TTS stream error: aborted"


# --- faults --------------------------------------------------------------------------------------


class TestFaults:
    async def test_truncate_640(self) -> None:
        async with emulator(faults={1: Fault.TRUNCATE_640}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE)
            assert reply.texts == [EXACT_ACK, EXACT_END]
            assert [len(f) for f in reply.frames] == [640]
            assert reply.audio == tone.synthesize(SENTENCE, mulaw=True)[:640]
            assert emu.state.requests[0].fault is Fault.TRUNCATE_640
            assert emu.state.requests[0].audio == reply.audio
            # The same socket keeps working.
            assert len((await c.speak(SENTENCE)).audio) == len(SENTENCE) * 640

    async def test_error_without_end(self) -> None:
        async with emulator(faults={1: Fault.ERROR}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE)
            assert reply.kinds == ["Ack", "ReplyError"]
            assert reply.events[-1] == ReplyError("TTS stream error: aborted")
            # No end follows: the next frame is the next request's ack.
            nxt = await c.speak("again")
            assert nxt.kinds[0] == "Ack"
            assert nxt.kinds[-1] == "End"
            assert emu.state.requests[0].end_at is None

    async def test_error_then_end(self) -> None:
        async with emulator(faults={1: Fault.ERROR_THEN_END}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE)
            assert reply.kinds == ["Ack", "ReplyError"]
            # Send the next request at once, as a bridge would; the trailing end is recognised.
            await c.ws.send(c.proto.request("again", VOICE))
            nxt = await c.until()
            assert nxt.events[0] == Unexpected(UNEXPECTED_TRAILING_END, "End of TTS stream")
            assert nxt.kinds[1] == "Ack"
            assert nxt.kinds[-1] == "End"
            assert nxt.audio == tone.synthesize("again", mulaw=True)
            assert emu.state.requests[0].error == "TTS stream error: aborted"

    async def test_close_mid_reply(self) -> None:
        async with emulator(faults={1: Fault.CLOSE_MID_REPLY}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE)
            closed = reply.events[-1]
            assert isinstance(closed, Closed)
            assert (closed.code, closed.in_flight, closed.audio_received) == (1011, True, True)
            assert 0 < len(reply.audio) < len(tone.synthesize(SENTENCE, mulaw=True))
            err = classify_close(closed.code, closed.reason, in_flight=True, audio_received=True)
            assert isinstance(err, HamsaReplyError)
            assert err.retryable
            assert emu.state.requests[0].audio == reply.audio
            assert emu.state.connections[0].close_code == 1011

    async def test_close_after_end(self) -> None:
        async with emulator(faults={1: Fault.CLOSE_AFTER_END}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE)
            assert reply.kinds[-1] == "End"
            assert reply.audio == tone.synthesize(SENTENCE, mulaw=True)
            after = await c.until()
            assert [(e.code, e.in_flight) for e in after.events if isinstance(e, Closed)] == [
                (1000, False)
            ]
            assert emu.state.connections[0].closed_by == "server"

    @pytest.mark.parametrize(
        ("fault", "code", "error"),
        [
            (Fault.CLOSE_4001, 4001, HamsaAuthError),
            (Fault.CLOSE_4003, 4003, HamsaAuthError),
            (Fault.CLOSE_4500, 4500, HamsaReplyError),
            (Fault.CLOSE_1001, 1001, HamsaReplyError),
        ],
    )
    async def test_close_codes_mid_session(self, fault: Fault, code: int, error: type) -> None:
        async with emulator(faults={2: fault}) as emu, client(emu) as c:
            assert (await c.speak("one")).kinds[-1] == "End"
            [event] = (await c.speak("two")).events
            assert isinstance(event, Closed)
            assert (event.code, event.in_flight, event.audio_received) == (code, True, False)
            err = classify_close(code, event.reason, in_flight=True)
            assert type(err) is error
            assert emu.state.connections[0].close_code == code

    async def test_close_4500_at_connect_is_retryable(self) -> None:
        assert type(classify_close(4500)) is HamsaConnectError

    async def test_never_end(self) -> None:
        async with emulator(faults={1: Fault.NEVER_END}) as emu, client(emu) as c:
            await c.ws.send(c.proto.request(SENTENCE, VOICE))
            expected = tone.synthesize(SENTENCE, mulaw=True)
            reply = Reply()
            while len(reply.audio) < len(expected):
                await c.next(reply)
            assert reply.audio == expected
            assert c.proto.state is HamsaState.STREAMING
            pong = await c.ws.ping()  # the connection is alive ...
            async with asyncio.timeout(TIMEOUT):
                await pong
            with pytest.raises(TimeoutError):  # ... but no end comes
                async with asyncio.timeout(0.2):
                    await c.ws.recv()
            assert emu.state.requests[0].end_at is None

    async def test_endless_reply_keeps_streaming_the_same_audio_without_end(self) -> None:
        text = "بب"  # 160 ms of audio a pass: a few passes in well under a second
        async with emulator(faults={1: Fault.ENDLESS}, ms_per_char=80) as emu:
            async with client(emu) as c:
                await c.ws.send(c.proto.request(text, VOICE))
                expected = tone.synthesize(text, mulaw=True)
                reply = Reply()
                while len(reply.audio) < 3 * len(expected):
                    await c.next(reply)
                assert reply.texts == [EXACT_ACK]
                assert reply.audio[: 3 * len(expected)] == expected * 3
                assert c.proto.state is HamsaState.STREAMING
                # after the first pass, frames come no faster than real time
                pass_two = len(expected)
                i = next(
                    i
                    for i, size in enumerate(itertools.accumulate(map(len, reply.frames)))
                    if size > pass_two
                )
                span = reply.arrivals[-1] - reply.arrivals[i]
                heard = sum(map(len, reply.frames[i + 1 :])) / 8000
                assert span >= heard * 0.9
            # the client went away: the emulator stops streaming and records the close
            await wait_for(emu, lambda s: s.connections[0].closed_at is not None)
            request = emu.state.requests[0]
            assert request.fault is Fault.ENDLESS
            assert request.end_at is None
            assert len(request.audio) >= 3 * len(expected)
            assert (
                request.audio
                == (expected * (len(request.audio) // len(expected) + 1))[: len(request.audio)]
            )

    async def test_slow_first_byte(self) -> None:
        # the slow reply's first byte never before its delay; the fast one's is due at once
        # (how soon it comes is the machine's: the delay is LATE, the slack)
        config = {"faults": {2: Fault.SLOW_FIRST_BYTE}, "slow_first_byte_delay": LATE}
        async with emulator(**config) as emu, client(emu) as c:
            await c.speak("fast")
            await c.speak("slow")
            fast, slow = emu.state.requests
            assert fast.acked_at is not None
            assert fast.first_audio_at is not None
            assert slow.acked_at is not None
            assert slow.first_audio_at is not None
            assert fast.first_audio_at - fast.acked_at < LATE
            assert slow.first_audio_at - slow.acked_at >= LATE

    async def test_riff_mulaw(self) -> None:
        async with emulator(faults={1: Fault.RIFF_MULAW}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE, mulaw=False)  # the header tells the truth: μ-law
            header = streaming_mulaw_header()
            assert reply.frames[0].startswith(header)
            assert reply.audio == header + tone.synthesize(SENTENCE, mulaw=True)
            fields = parse_wav_header(header)
            assert fields == {
                "riff_size": 0xFFFFFFFF,
                "tag": 7,
                "channels": 1,
                "rate": 8000,
                "bits": 8,
                "data_size": 0xFFFFFFFF,
                "data_offset": 46,
            }
            record = emu.state.requests[0]
            assert record.header == header
            assert record.audio == tone.synthesize(SENTENCE, mulaw=True)

    async def test_riff_mulaw_split(self) -> None:
        async with emulator(faults={1: Fault.RIFF_MULAW_SPLIT}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE)
            header = streaming_mulaw_header()
            assert 0 < len(reply.frames[0]) < len(header)
            assert header.startswith(reply.frames[0])  # header bytes only
            assert reply.audio == header + tone.synthesize(SENTENCE, mulaw=True)
            record = emu.state.requests[0]
            assert record.first_audio_at is not None
            assert reply.arrivals[0] <= reply.arrivals[1]
            assert record.first_audio_at <= reply.arrivals[1]
            assert record.frames[0] == len(reply.frames[0])

    async def test_riff_pcm16_despite_mulaw(self) -> None:
        async with emulator(faults={1: Fault.RIFF_PCM16}) as emu, client(emu) as c:
            reply = await c.speak(SENTENCE, mulaw=True)
            pcm = tone.synthesize(SENTENCE, mulaw=False)
            assert reply.audio == canonical_pcm16_header(len(pcm)) + pcm
            fields = parse_wav_header(reply.audio[:44])
            assert fields["tag"] == 1
            assert fields["rate"] == 16000
            assert fields["bits"] == 16
            assert fields["data_size"] == len(pcm)
            assert fields["riff_size"] == 36 + len(pcm)
            assert fields["data_offset"] == 44
            assert emu.state.requests[0].audio == pcm

    async def test_truncate_rate_is_seeded(self) -> None:
        patterns = []
        for _ in range(2):
            async with emulator(truncate_rate=0.5, seed=3) as emu, client(emu) as c:
                for i in range(8):
                    await c.speak(f"sentence number {i}")
                patterns.append([r.fault for r in emu.state.requests])
        assert patterns[0] == patterns[1]
        assert set(patterns[0]) == {None, Fault.TRUNCATE_640}

    async def test_truncate_rate_one_and_explicit_fault_wins(self) -> None:
        async with emulator(truncate_rate=1.0, faults={2: Fault.ERROR}) as emu, client(emu) as c:
            assert len((await c.speak(SENTENCE)).audio) == 640
            assert (await c.speak(SENTENCE)).kinds == ["Ack", "ReplyError"]
            assert [r.fault for r in emu.state.requests] == [Fault.TRUNCATE_640, Fault.ERROR]

    async def test_faults_can_change_while_running(self) -> None:
        async with emulator() as emu, client(emu) as c:
            emu.state.faults[2] = Fault.TRUNCATE_640
            assert len((await c.speak(SENTENCE)).audio) > 640
            assert len((await c.speak(SENTENCE)).audio) == 640


def parse_wav_header(data: bytes) -> dict[str, int]:
    """Walk RIFF chunks to ``data`` (what a client must do, docs/hamsa-ws.md §5.4)."""
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WAVE"
    (riff_size,) = struct.unpack("<I", data[4:8])
    pos, fields = 12, {"riff_size": riff_size}
    while True:
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
            fields.update(tag=tag, channels=channels, rate=rate, bits=bits)
        elif chunk_id == b"data":
            fields.update(data_size=size, data_offset=pos + 8)
            return fields
        pos += 8 + size + (size & 1)


# --- latency -------------------------------------------------------------------------------------


class TestLatency:
    def test_realistic_defaults(self) -> None:
        config = EmulatorConfig.realistic(seed=5)
        assert config.connect_delay == pytest.approx(1.2)
        assert config.first_byte_delay == (0.3, 1.7)
        assert config.synthesis_speed == (2.0, 4.0)
        assert config.seed == 5

    async def test_scaled_down_realistic_timing(self) -> None:
        config = {"connect_delay": 0.1, "first_byte_delay": (0.1, 0.15), "synthesis_speed": 20.0}
        realistic = EmulatorConfig.realistic(api_keys=frozenset({KEY}), **config)
        async with EmulatorServer(realistic) as emu:
            started = time.monotonic()
            async with connect_to(emu) as ws:
                assert time.monotonic() - started >= 0.1
                c = Client(ws)
                await c.greet()
                reply = await c.speak(SENTENCE)
            record = emu.state.requests[0]
            assert record.acked_at is not None
            assert record.first_audio_at is not None
            assert record.end_at is not None
            assert record.first_audio_at - record.acked_at >= 0.1
            rest = len(reply.audio) - len(reply.frames[0])
            # Frames go at absolute times from the ack: a late first frame (a busy machine) is
            # followed by a catch-up, so measure the schedule from the ack, which lateness can
            # only lengthen: the first byte's delay, then the rest at 20× real time.
            assert record.end_at - record.acked_at >= 0.1 + rest / 8000 / 20 * 0.9

    async def test_draws_per_text_ignore_arrival_order_and_connections(self) -> None:
        """The n-th request for a text is cut the same way whatever came before it and whichever
        connection sent it; its latency draws are the same too."""
        seen: list[dict[str, list[list[int]]]] = []
        for order, fresh in (
            ((SENTENCE, OTHER, SENTENCE), False),
            ((OTHER, SENTENCE, SENTENCE), True),
        ):
            sizes: dict[str, list[list[int]]] = {}
            async with (
                emulator(seed=3, draws_per_text=True) as emu,
                contextlib.AsyncExitStack() as stack,
            ):
                c = await stack.enter_async_context(client(emu))
                for text in order:
                    if fresh:  # a new connection per request
                        c = await stack.enter_async_context(client(emu))
                    reply = await c.speak(text)
                    assert reply.audio == tone.synthesize(text, mulaw=True)
                    sizes.setdefault(text, []).append([len(f) for f in reply.frames])
            seen.append(sizes)
        assert seen[0] == seen[1]
        assert seen[0][SENTENCE][0] != seen[0][SENTENCE][1]  # the second request: new cuts

        config = EmulatorConfig(draws_per_text=True, first_byte_delay=(0.3, 1.7), seed=3)
        a, b = EmulatorState(config), EmulatorState(config)

        def first_delays(state: EmulatorState, texts: tuple[str, ...]) -> list[float]:
            delays = []
            for n, text in enumerate(texts, start=1):
                cuts, timing = state.reply_rngs(n, text)
                delays.append(reply_schedule(text, config, cuts, timing_rng=timing)[0][0])
            return delays

        a_draws = first_delays(a, (SENTENCE, OTHER, SENTENCE))
        b_draws = first_delays(b, (OTHER, SENTENCE, SENTENCE))
        assert (a_draws[0], a_draws[1], a_draws[2]) == (b_draws[1], b_draws[0], b_draws[2])
        assert a_draws[0] != a_draws[2]
        assert all(0.3 <= d <= 1.7 for d in a_draws)
        # the default: cuts keyed by the request number, timing one sequence in arrival order
        plain = EmulatorConfig(first_byte_delay=(0.3, 1.7), seed=3)
        p1, p2 = EmulatorState(plain), EmulatorState(plain)
        cuts1, timing1 = p1.reply_rngs(2, SENTENCE)
        cuts2, timing2 = p2.reply_rngs(2, SENTENCE)
        assert cuts1.random() == cuts2.random()
        assert p1.reply_rngs(3, SENTENCE)[0].random() != p2.reply_rngs(2, SENTENCE)[0].random()
        assert timing1 is p1.reply_rngs(7, OTHER)[1]

    def test_invalid_config_rejected(self) -> None:
        with pytest.raises(ValueError):
            EmulatorConfig(first_byte_delay=(2.0, 1.0))
        with pytest.raises(ValueError):
            EmulatorConfig(truncate_rate=1.5)
        with pytest.raises(ValueError):
            EmulatorConfig(faults={0: Fault.ERROR})

    async def test_unpreloaded_custom_voice_is_slow(self) -> None:
        voice_id = str(uuid.uuid4())
        # cold: never sooner than the delay; warm: due at once (the delay, LATE, is its slack)
        config = {"custom_voices": frozenset({voice_id}), "unpreloaded_voice_delay": LATE}
        async with emulator(**config) as emu, client(emu) as c:
            custom = Voice(voice_id, "ksa", "ar")
            await c.ws.send(c.proto.request("hello", custom))
            await c.until()
            async with preload_client(emu) as http:
                token = {"Authorization": f"Token {KEY}"}
                response = await http.post(PRELOAD, json={"voiceId": voice_id}, headers=token)
                assert response.status_code == 200
            await c.ws.send(c.proto.request("hello", custom))
            await c.until()
            cold, warm = emu.state.requests
            assert cold.first_audio_at is not None
            assert cold.acked_at is not None
            assert warm.first_audio_at is not None
            assert warm.acked_at is not None
            assert cold.first_audio_at - cold.acked_at >= LATE
            assert warm.first_audio_at - warm.acked_at < LATE


# --- preload and log -----------------------------------------------------------------------------

PRELOAD = "/v2/tts/voices/custom/preload"


def preload_client(emu: EmulatorServer) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=emu.http_url, timeout=TIMEOUT)


class TestPreload:
    async def test_statuses(self) -> None:
        known, broken, unknown = (str(uuid.uuid4()) for _ in range(3))
        config = {"custom_voices": frozenset({known, broken}), "preload_failures": {broken}}
        async with emulator(**config) as emu, preload_client(emu) as http:
            token = {"Authorization": f"Token {KEY}"}
            ok = await http.post(PRELOAD, json={"voiceId": known}, headers=token)
            assert ok.status_code == 200
            assert ok.json() == {
                "success": True,
                "message": "Custom voice have been preloaded successfully",
                "data": [],
            }
            bearer = await http.post(
                PRELOAD, json={"voiceId": known.upper()}, headers={"Authorization": f"Bearer {KEY}"}
            )
            assert bearer.status_code == 200
            cases = [
                ({}, {"voiceId": known}, 401),
                ({"Authorization": "Token wrong"}, {"voiceId": known}, 401),
                ({"X-Api-Key": KEY}, {"voiceId": known}, 401),
                (token, {"voiceId": "Majd"}, 400),
                (token, {"voice_id": known}, 400),
                (token, {"voiceId": unknown}, 404),
                (token, {"voiceId": broken}, 500),
            ]
            for headers, body, status in cases:
                response = await http.post(PRELOAD, json=body, headers=headers)
                assert response.status_code == status, (headers, body)
                assert response.json()["success"] is False
            assert (await http.post(PRELOAD, content=b"{", headers=token)).status_code == 400
            assert (await http.post(PRELOAD, json={"voiceId": known})).json() == {
                "success": False,
                "message": "Unauthorized",
            }
            records = [(p.auth, p.status) for p in emu.state.preloads]
            assert records[:5] == [
                ("token", 200),
                ("bearer", 200),
                ("missing", 401),
                ("token", 401),
                ("missing", 401),
            ]
            assert emu.state.preloads[0].voice_id == known
            assert [p.status for p in emu.state.preloads][5:] == [400, 400, 404, 500, 400, 401]
            assert emu.state.preloaded == {known}


class TestLog:
    async def test_log_endpoint(self) -> None:
        async with emulator(faults={1: Fault.RIFF_MULAW}) as emu:
            async with client(emu) as c:
                await c.speak(SENTENCE)
            await wait_for(emu, lambda s: s.connections[0].closed_at is not None)
            async with preload_client(emu) as http:
                log = (await http.get("/_emulator/log")).json()
                with_audio = (await http.get("/_emulator/log", params={"audio": "base64"})).json()
        expected = tone.synthesize(SENTENCE, mulaw=True)
        [request] = log["requests"]
        assert request["number"] == 1
        assert request["text"] == SENTENCE
        assert request["fault"] == "riff_mulaw"
        assert request["audio"] is None
        assert request["audio_bytes"] == len(expected)
        assert request["audio_sha256"] == hashlib.sha256(expected).hexdigest()
        assert base64.b64decode(request["header"]) == streaming_mulaw_header()
        assert isinstance(request["first_audio_at"], float)
        assert base64.b64decode(with_audio["requests"][0]["audio"]) == expected
        [conn] = log["connections"]
        assert conn["auth_ok"] is True
        assert conn["close_code"] == 1000
        assert log["upgrades"] == 1
        assert log["request_count"] == 1


# --- running it ----------------------------------------------------------------------------------


class TestServing:
    async def test_serve_emulator_on_a_bound_socket(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        ready = asyncio.Event()
        config = EmulatorConfig(api_keys=None)  # any key
        task = asyncio.create_task(
            serve_emulator(config, sock=sock, ready=ready, handle_signals=False)
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                await ready.wait()
            url = f"ws://127.0.0.1:{port}/v1/realtime/ws?api_key=anything"
            async with connect(url) as ws:
                assert await ws.recv() == EXACT_INFO
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert sock.fileno() == -1  # closed on the way out

    async def test_stop_closes_open_sockets_1012(self) -> None:
        emu = EmulatorServer(EmulatorConfig(api_keys=frozenset({KEY})))
        await emu.start()
        try:
            async with connect_to(emu) as ws:
                c = Client(ws)
                await c.greet()
                await emu.stop()
                closed = await c.until()
                assert [e.code for e in closed.events if isinstance(e, Closed)] == [1012]
        finally:
            await emu.stop()

    async def test_apps_are_independent(self) -> None:
        async with emulator() as a, emulator() as b:
            assert a.port != b.port
            assert a.state is not b.state
            async with client(a) as c:
                await c.speak("hello")
            assert len(a.state.requests) == 1
            assert b.state.requests == []

    async def test_audio_event_type(self) -> None:
        async with emulator() as emu, client(emu) as c:
            reply = await c.speak("hi")
            assert all(isinstance(e, Audio) for e in reply.events[1:-1])
            assert isinstance(reply.events[0], Ack)
            assert isinstance(reply.events[-1], End)
