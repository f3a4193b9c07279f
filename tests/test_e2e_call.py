"""End to end on loopback: simulated Twilio caller ↔ bridge (uvicorn) ↔ Hamsa emulator.

Every peer is real and talks over real sockets; the Twilio side is ``TwilioMediaLeg`` (its own
implementation of Twilio's protocol and playout model) and the Hamsa side records the exact audio
it sent, so what the caller heard is compared byte for byte with what Hamsa produced.
"""

from __future__ import annotations

import asyncio
import json
import statistics

import pytest

from bridge.calls.context import CallContext
from bridge.calls.speech import SpeechOutcome
from bridge.dev.caller import CallResult
from bridge.dev.hamsa_emulator import EmulatorConfig, Fault, RequestRecord
from bridge.dev.loopback import Loopback, loopback
from tests.timing import HANG, LATE, assert_gapless, stall_watch

pytestmark = pytest.mark.anyio

# ~1 s of audio at the emulator's 80 ms per character
SHORT = "مرحبا بك."
SENTENCES = "مرحبا بك في همسة. هذه جملة ثانية للتجربة. وهذه جملة ثالثة أطول قليلا من غيرها."
FAST_RETRY = {"hamsa_retry_delays": (0.05, 0.1, 0.2)}
# Tests that need several sentences but not their duration: 25 ms of audio per character.
QUICK = {"hamsa_truncation_ms_per_char": 3.0}


def quick(**fields: object) -> EmulatorConfig:
    return EmulatorConfig(ms_per_char=25, **fields)  # type: ignore[arg-type]


def padded(audio: bytes) -> bytes:
    """Hamsa's audio as the caller must receive it: padded with 0xFF to whole 20 ms frames."""
    return audio + b"\xff" * (-len(audio) % 160)


def played_requests(rig: Loopback) -> list[RequestRecord]:
    """Requests whose reply was complete (not a failure injected by the test)."""
    return [r for r in rig.hamsa.requests if r.fault is None or r.fault.name.startswith("RIFF")]


def assert_clean_twilio_traffic(result: CallResult) -> None:
    leg = result.leg
    assert leg is not None
    # every message: JSON text, documented event, right streamSid, 160-byte payloads
    assert leg.warnings == []
    assert leg.timeline.frames_received * 160 == len(leg.received)


async def test_inbound_call_hears_hamsa_audio_byte_for_byte() -> None:
    async with loopback(quick(), bridge_greeting=SENTENCES, **QUICK) as rig, stall_watch() as watch:
        result = await rig.call()
        requests = played_requests(rig)
    assert_clean_twilio_traffic(result)
    assert result.close_code == 1000
    assert len(requests) >= 2  # split at sentence boundaries
    hamsa_audio = b"".join(r.audio for r in requests)
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(hamsa_audio)
    assert bytes(result.leg.played) == padded(hamsa_audio)
    marks = result.leg.timeline.marks
    assert [m.cleared for m in marks] == [False]
    assert_gapless(result, watch)


async def test_riff_headers_never_reach_the_caller() -> None:
    faults = {1: Fault.RIFF_MULAW_SPLIT, 2: Fault.RIFF_MULAW}
    async with loopback(quick(faults=faults), bridge_greeting=SENTENCES, **QUICK) as rig:
        result = await rig.call()
        requests = list(rig.hamsa.requests)
    assert_clean_twilio_traffic(result)
    assert requests[0].header
    assert requests[1].header
    assert requests[0].frames[0] < len(requests[0].header)  # header split across two frames
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(b"".join(r.audio for r in requests))
    assert b"RIFF" not in result.leg.received
    assert b"WAVE" not in result.leg.received


async def test_pcm16_reply_with_header_is_resampled_to_8k_mulaw() -> None:
    async with loopback(EmulatorConfig(faults={1: Fault.RIFF_PCM16}), bridge_greeting=SHORT) as rig:
        result = await rig.call()
        request = rig.hamsa.requests[0]
    assert_clean_twilio_traffic(result)
    assert result.leg is not None
    pcm_seconds = len(request.audio) / 32000
    assert abs(len(result.leg.received) / 8000 - pcm_seconds) < 0.03


async def test_long_greeting_uses_one_hamsa_connection() -> None:
    greeting = (SENTENCES + " ") * 30  # > 2000 characters
    assert len(greeting) > 2000
    emulator = EmulatorConfig(ms_per_char=1.5)
    truncation = {"hamsa_truncation_ms_per_char": 0.5, "hamsa_truncation_min_ms": 20.0}
    async with (
        loopback(emulator, bridge_greeting=greeting, **truncation) as rig,
        stall_watch() as watch,
    ):
        result = await rig.call()
        connections = len(rig.hamsa.connections)
        requests = played_requests(rig)
    assert_clean_twilio_traffic(result)
    assert connections == 1
    assert len(requests) == len(rig.hamsa.requests) >= 2
    assert all(len(r.text or "") <= 2000 for r in requests)
    assert_gapless(result, watch)
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(b"".join(r.audio for r in requests))


async def test_hamsa_dropping_the_socket_between_utterances_reconnects() -> None:
    emulator = quick(faults={1: Fault.CLOSE_AFTER_END})
    async with loopback(emulator, bridge_greeting=SENTENCES, **QUICK) as rig:
        result = await rig.call()
        connections = len(rig.hamsa.connections)
        requests = list(rig.hamsa.requests)
    assert_clean_twilio_traffic(result)
    assert connections == 2
    # every sentence played completely, the one after the drop on the new socket
    texts = [r.text for r in requests]
    assert len(set(texts)) == len(texts)
    assert requests[-1].connection_id == 2
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(b"".join(r.audio for r in requests))


async def test_truncated_reply_is_never_heard_and_its_retry_is() -> None:
    async with loopback(
        EmulatorConfig(faults={1: Fault.TRUNCATE_640}), bridge_greeting=SHORT
    ) as rig:
        result = await rig.call()
        requests = list(rig.hamsa.requests)
        connections = len(rig.hamsa.connections)
    assert_clean_twilio_traffic(result)
    assert [r.fault for r in requests] == [Fault.TRUNCATE_640, None]
    assert len(requests[0].audio) == 640
    assert connections == 2  # retried on a fresh connection
    assert requests[1].received_at - requests[0].end_at >= 1.0  # default backoff: 1 s
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(requests[1].audio)


async def test_repeated_truncation_gives_up_and_ends_the_call_cleanly() -> None:
    faults = dict.fromkeys(range(1, 10), Fault.TRUNCATE_640)
    async with loopback(EmulatorConfig(faults=faults), bridge_greeting=SHORT, **FAST_RETRY) as rig:
        result = await rig.call()
        requests = len(rig.hamsa.requests)
    assert requests == 4  # the first try and three retries
    assert result.leg is not None
    assert result.leg.received == b""  # nothing of a truncated reply is ever played
    assert result.close_code == 1000


async def test_without_a_start_hold_the_first_frame_follows_hamsa_first_byte() -> None:
    # BRIDGE_START_HOLD_MAX_MS=0 switches the start policy off: play from the first bytes.
    # The decision is the start policy's: every sentence released at once ("immediate"), none
    # held. When the first frame then reaches the caller is the machine's (about a millisecond
    # on a quiet one: bench/first_audio.py measures it); here it must come before Hamsa's
    # second chunk could have released it (0.15 s after the first) in most calls.
    interval = 0.15
    emulator = EmulatorConfig(chunk_interval=interval)
    latencies, before_end, reasons = [], [], set()
    async with loopback(emulator, bridge_greeting=SHORT, bridge_start_hold_max_ms=0) as rig:
        for _ in range(7):
            result = await rig.call()
            request = rig.hamsa.requests[-1]
            assert result.leg is not None
            assert result.leg.timeline.first_media_at is not None
            assert request.first_audio_at is not None
            assert request.end_at is not None
            latencies.append(result.leg.timeline.first_media_at - request.first_audio_at)
            before_end.append(result.leg.timeline.first_media_at < request.end_at)
            holds = rig.bridge.recent_calls[-1].details["start_holds"]
            assert isinstance(holds, list)
            reasons |= {hold["reason"] for hold in holds}
    assert reasons == {"immediate"}
    assert all(before_end)
    assert statistics.median(latencies) < interval, latencies


async def test_pacing_holds_real_time_with_a_small_lead() -> None:
    text = "ب" * 75  # 6 s of audio, delivered by the emulator as fast as it can
    async with loopback(bridge_greeting=text) as rig, stall_watch() as watch:
        result = await rig.call()
    assert result.leg is not None
    timeline = result.leg.timeline
    # The plan tops the lead up to 220 ms (a frame over at most). The caller measures it from
    # its own reading of a run's first frame: a stall between the bridge's send and that
    # reading adds to what it measures, never more than the longest stall.
    assert timeline.max_lead_ms <= 270 + 1000 * watch.longest
    assert len(result.leg.received) == 6 * 8000
    # never faster than real time less the lead (the plan); later only by the machine
    sending = timeline.media_arrivals[-1] - timeline.media_arrivals[0]
    assert sending >= 5.6, sending
    assert sending <= 6.0 + LATE or watch.stalled, sending
    assert_gapless(result, watch)


async def test_key_during_greeting_clears_at_once_and_stops_the_audio() -> None:
    text = "ب" * 40  # 3.2 s
    async with loopback(bridge_greeting=text) as rig:
        result = await rig.call(keys=[(1.0, "5")])
    assert result.leg is not None
    timeline = result.leg.timeline
    assert len(timeline.clears) == 1
    clear_at = timeline.clears[0].at
    pressed_at = result.keys_sent[0][0]
    # at once: the clear answers the key, not the sentence's end 2 s later (how soon is the
    # machine's), and no frame of the greeting follows it
    assert pressed_at < clear_at <= pressed_at + LATE
    assert not [t for t in timeline.media_arrivals if t > clear_at]  # no stale frames
    assert len(result.leg.played) < 2 * 8000
    assert result.close_code == 1000


async def test_barge_in_drains_the_reply_so_it_cannot_leak_into_the_next() -> None:
    first, second = "ب" * 60, "ت" * 12
    heard: list[SpeechOutcome] = []

    async def script(ctx: CallContext) -> None:
        heard.append(await ctx.say(first))
        heard.append(await ctx.say(second))

    # the first reply is still streaming from Hamsa when the key is pressed
    emulator = EmulatorConfig(chunk_interval=0.4)
    async with loopback(emulator, script=script) as rig:
        result = await rig.call(keys=[(0.6, "1")])
        requests = list(rig.hamsa.requests)
    assert heard == [SpeechOutcome.INTERRUPTED, SpeechOutcome.PLAYED]
    assert [r.text for r in requests] == [first, second]
    assert requests[0].end_at is not None
    assert requests[1].received_at >= requests[0].end_at  # one request in flight
    assert result.leg is not None
    clear_at = result.leg.timeline.clears[0].at
    after = [i for i, t in enumerate(result.leg.timeline.media_arrivals) if t > clear_at]
    tail = bytes(result.leg.received[after[0] * 160 :]) if after else b""
    assert tail == padded(requests[1].audio)


async def test_caller_hanging_up_ends_the_call_and_the_hamsa_socket() -> None:
    async with loopback(bridge_greeting="ب" * 60) as rig:
        result = await rig.call(hangup_after=0.5)
        async with asyncio.timeout(HANG):
            await rig.hamsa.wait_until(lambda s: all(c.closed_at for c in s.connections))
            await rig.bridge.registry.wait_empty()
    assert result.hung_up


async def test_malformed_frames_mid_call_do_not_break_the_call_or_the_server() -> None:
    garbage: list[tuple[float, str | bytes]] = [
        (0.1, "{not json"),
        (0.15, b"\x00\x01binary"),
        (0.2, json.dumps({"event": "media", "streamSid": "MZ0", "media": {"payload": "!!"}})),
        (0.25, json.dumps({"event": "nonsense"})),
        (0.3, json.dumps(["a", "list"])),
        (0.35, json.dumps({"event": "dtmf", "dtmf": {}})),
        (0.4, "x" * 200_000),
        (0.45, json.dumps({"event": "mark"})),
    ]
    async with loopback(bridge_greeting=SHORT) as rig:
        result = await rig.call(raw=garbage)
        again = await rig.call()
        requests = list(rig.hamsa.requests)
    assert result.close_code == 1000
    assert result.leg is not None
    assert again.leg is not None
    assert bytes(result.leg.received) == padded(requests[0].audio)
    assert bytes(again.leg.received) == padded(requests[1].audio)


async def test_hamsa_rejecting_the_key_ends_the_call_cleanly() -> None:
    async with loopback(EmulatorConfig(balance_ok=False), bridge_greeting=SHORT) as rig:
        result = await rig.call()
        connections = len(rig.hamsa.connections)
    assert result.close_code == 1000
    assert result.leg is not None
    assert result.leg.received == b""
    assert connections == 1  # 4003 is not retried


async def test_hamsa_error_frame_is_retried() -> None:
    emulator = EmulatorConfig(faults={1: Fault.ERROR})
    async with loopback(emulator, bridge_greeting=SHORT, **FAST_RETRY) as rig:
        result = await rig.call()
        requests = list(rig.hamsa.requests)
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(requests[-1].audio)
    assert requests[-1].connection_id == 2  # the socket is not trusted after an error


async def test_second_stream_for_the_same_call_is_refused() -> None:
    async with loopback(bridge_greeting="ب" * 30) as rig:
        plan = rig.plan()
        first = asyncio.create_task(rig.call(call_sid=plan.call_sid))
        async with asyncio.timeout(HANG):
            await rig.hamsa.wait_until(lambda s: len(s.requests) == 1)
        duplicate = await rig.call(call_sid=plan.call_sid)
        await first
        connections = len(rig.hamsa.connections)
    assert duplicate.close_code == 1008
    assert duplicate.leg is not None
    assert duplicate.leg.received == b""
    assert connections == 1


async def test_sentences_play_gapless_when_synthesis_is_faster_than_real_time() -> None:
    # first byte 0.3-0.6 s after each request, synthesis ~3x real time: the next sentence is
    # requested while the current one plays, so the caller hears no gap between sentences.
    emulator = quick(first_byte_delay=(0.3, 0.6), synthesis_speed=3.0)
    async with (
        loopback(emulator, bridge_greeting=SENTENCES * 2, **QUICK) as rig,
        stall_watch() as watch,
    ):
        result = await rig.call()
        requests = len(rig.hamsa.requests)
    assert requests >= 4
    assert_gapless(result, watch)
    assert_clean_twilio_traffic(result)


async def test_refused_connections_are_retried_with_backoff() -> None:
    async with loopback(EmulatorConfig(refuse_connections=2), bridge_greeting=SHORT) as rig:
        result = await rig.call()
        refused = [c for c in rig.hamsa.connections if c.refused_status]
        request = rig.hamsa.requests[0]
    assert len(refused) == 2
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(request.audio)


@pytest.mark.parametrize("failure", ["close", "http"])
async def test_a_rejected_key_is_not_retried_and_ends_the_call(failure: str) -> None:
    emulator = EmulatorConfig(auth_failure=failure)  # type: ignore[arg-type]
    async with loopback(emulator, bridge_greeting=SHORT, hamsa_api_key="wrong-key") as rig:
        result = await rig.call()
        connections = list(rig.hamsa.connections)
    assert len(connections) == 1  # 4001 / HTTP 401 is final: no retry, no reconnect
    assert connections[0].auth_ok is False
    assert result.close_code == 1000
    assert result.leg is not None
    assert result.leg.received == b""


@pytest.mark.parametrize("fault", [Fault.CLOSE_MID_REPLY, Fault.TRUNCATE_3X640, Fault.NEVER_END])
async def test_reply_failing_after_audio_played_resumes_and_is_heard_once_whole(
    fault: Fault,
) -> None:
    text = "ب" * 30  # 2.4 s, several chunks
    emulator = EmulatorConfig(faults={1: fault})
    overrides = {**FAST_RETRY, "hamsa_chunk_timeout": 0.5}
    async with loopback(emulator, bridge_greeting=text, **overrides) as rig, stall_watch() as watch:
        result = await rig.call()
        requests = list(rig.hamsa.requests)
    assert_clean_twilio_traffic(result)
    assert requests[0].fault is fault
    assert 0 < len(requests[0].audio) <= len(requests[1].audio)
    assert result.leg is not None
    # the sentence is heard exactly once, whole: the retry resumed where the failure cut it
    assert bytes(result.leg.received) == padded(requests[1].audio)
    assert_gapless(result, watch, allowed=1)  # at most one pause, while the retry came


async def test_fatal_hamsa_close_mid_greeting_lets_queued_audio_finish() -> None:
    emulator = quick(faults={2: Fault.CLOSE_4001})
    async with loopback(emulator, bridge_greeting=SENTENCES, **QUICK) as rig:
        result = await rig.call()
        first = rig.hamsa.requests[0]
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(first.audio)  # sentence 1 whole, not cut
    assert [m.cleared for m in result.leg.timeline.marks] == [False]
    assert result.close_code == 1000


async def test_call_ends_even_if_marks_never_come_back() -> None:
    async with loopback(bridge_greeting=SHORT) as rig:
        result = await rig.call(echo_marks=False)
        async with asyncio.timeout(HANG):
            await rig.bridge.registry.wait_empty()
    assert result.close_code == 1000
    assert result.leg is not None
    assert result.leg.timeline.marks  # the mark was sent, never echoed
    assert result.ended_at is not None
    assert result.started_at is not None
    assert result.ended_at - result.started_at < 1.0 + 3.0 + 1.0  # audio + margin + slack


async def test_a_used_stream_token_cannot_be_replayed() -> None:
    async with loopback(bridge_greeting=SHORT) as rig:
        first = await rig.call()
        token = first.parameters["token"]
        replay = await rig.call(
            call_sid=first.plan.call_sid, token_override=token, sign_handshake=False
        )
        connections = len(rig.hamsa.connections)
    assert first.leg is not None
    assert len(first.leg.received) > 0
    assert replay.close_code == 1008
    assert replay.leg is not None
    assert replay.leg.received == b""
    assert connections == 1


async def test_first_frame_waits_only_for_the_hold_when_first_chunks_are_tiny() -> None:
    # 640-byte chunks (80 ms each) every 200 ms: the first is held (it could be the 640-byte
    # failure), the second releases both (160 ms > the 100 ms hold): one chunk interval, never
    # sooner, and before a third chunk could come (how soon is the machine's).
    # (the start policy off, so only the truncation hold is measured)
    interval = 0.2
    emulator = EmulatorConfig(max_chunk_bytes=640, chunk_interval=interval)
    async with loopback(emulator, bridge_greeting="ب" * 12, bridge_start_hold_max_ms=0) as rig:
        result = await rig.call()
        request = rig.hamsa.requests[0]
    assert result.leg is not None
    assert result.leg.timeline.first_media_at is not None
    assert request.first_audio_at is not None
    delay = result.leg.timeline.first_media_at - request.first_audio_at
    assert interval <= delay < 2 * interval, delay
    assert bytes(result.leg.received) == padded(request.audio)
