"""The start policy in a real call: the bridge, the Hamsa emulator and the simulated Twilio
caller on loopback (real sockets, real timers). What the caller hears is the judge: gaps in its
playout, when its first frame came, what it heard after a key or a hang-up during a hold.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from bridge.dev.hamsa_emulator import EmulatorConfig, Fault
from bridge.dev.loopback import loopback
from tests.timing import HANG, assert_gapless, stall_watch

pytestmark = pytest.mark.anyio

LONG = "ع" * 70  # one sentence, 5.6 s of audio at the emulator's 80 ms a character
STEADY_125 = EmulatorConfig(
    first_byte_delay=0.3, first_chunk_seconds=0.25, chunk_seconds=1.0, synthesis_speed=1.25
)
"""Hamsa at 1.25x real time in ~1 s frames after a 0.25 s first frame: played from its first
byte, the caller hears the first word and then silence."""


def hold_counts(rig_metrics: bytes) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in rig_metrics.decode().splitlines():
        if line.startswith("hamsa_bridge_start_hold_seconds_count{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_at_1_25x_real_time_the_caller_never_runs_dry_and_starts_long_before_the_end() -> (
    None
):
    async with loopback(STEADY_125, bridge_greeting=LONG) as rig, stall_watch() as watch:
        results = [await rig.call() for _ in range(3)]
        requests = list(rig.hamsa.requests)
        metrics = rig.bridge.metrics.exposition()
    assert len(requests) == 3
    for result, request in zip(results, requests, strict=True):
        assert result.leg is not None
        timeline = result.leg.timeline
        assert_gapless(result, watch)  # the playout never ran dry inside the utterance
        assert bytes(result.leg.received[: len(request.audio)]) == request.audio
        assert timeline.first_media_at is not None
        assert request.end_at is not None
        # Hamsa's end comes ~4.4 s after its first byte; the first frame leaves long before it
        assert request.end_at - timeline.first_media_at >= 2.0
    # the first call was judged by the prior, the later ones by what the first taught
    assert sum(hold_counts(metrics).values()) == 3
    assert watch.stalled or b"hamsa_bridge_gap_seconds_count 0.0" in metrics


async def test_played_from_the_first_byte_the_same_delivery_gaps() -> None:
    """The control: without the start policy (hold 0) the same delivery is heard with gaps."""
    async with loopback(STEADY_125, bridge_greeting=LONG, bridge_start_hold_max_ms=0) as rig:
        result = await rig.call()
        metrics = rig.bridge.metrics.exposition()
    assert result.gaps(), "the policy's test above would prove nothing"
    assert b"hamsa_bridge_gap_seconds_count 0.0" not in metrics


async def test_a_stalled_hamsa_is_played_at_the_cap_not_waited_for() -> None:
    # a first frame, then nothing for 3 s: the 0.5 s cap lets the first frame go
    stalled = EmulatorConfig(first_byte_delay=0.1, first_chunk_seconds=0.3, chunk_interval=3.0)
    async with loopback(stalled, bridge_greeting=LONG, bridge_start_hold_max_ms=500) as rig:
        result = await rig.call()
        request = rig.hamsa.requests[0]
        metrics = rig.bridge.metrics.exposition()
    assert result.leg is not None
    first = result.leg.timeline.first_media_at
    assert first is not None
    assert request.first_audio_at is not None
    held = first - request.first_audio_at
    assert held >= 0.45  # held (the prediction asked for far more) ...
    assert held < 3.0  # ... but not until the next frame: the cap released it
    first_hold = rig.bridge.recent_calls[-1].details["start_holds"][0]  # type: ignore[index]
    assert first_hold["reason"] == "cap"
    assert first_hold["rebuffer"] is False
    assert hold_counts(metrics)["cap"] >= 1  # (the rest of the sentence may be held again)


async def test_a_key_during_a_hold_clears_and_nothing_held_is_ever_played() -> None:
    slow = EmulatorConfig(
        first_byte_delay=0.1, first_chunk_seconds=0.2, chunk_seconds=1.0, synthesis_speed=0.5
    )
    async with loopback(slow, bridge_greeting=LONG) as rig:
        result = await rig.call(keys=[(0.8, "5")])
        requests = list(rig.hamsa.requests)
    assert result.leg is not None
    timeline = result.leg.timeline
    assert timeline.first_media_at is None  # still held when the key came: nothing was heard
    assert len(timeline.clears) == 1
    assert result.leg.received == b""
    assert len(requests) == 1
    assert result.close_code == 1000  # the greeting was skipped and the call ended normally


async def test_a_hang_up_during_a_hold_plays_nothing_and_ends_the_call() -> None:
    slow = EmulatorConfig(
        first_byte_delay=0.1, first_chunk_seconds=0.2, chunk_seconds=1.0, synthesis_speed=0.5
    )
    async with loopback(slow, bridge_greeting=LONG) as rig:
        result = await rig.call(hangup_after=0.8)
        async with asyncio.timeout(HANG):
            await rig.hamsa.wait_until(lambda s: s.connections[0].closed_at is not None)
        connection = rig.hamsa.connections[0]
    assert result.leg is not None
    assert result.leg.received == b""
    assert connection.closed_by == "client"  # the bridge let go of its Hamsa socket


async def test_a_reply_that_failed_before_any_audio_is_held_again_on_its_retry() -> None:
    # Hamsa closes the socket as the first request arrives (no audio): the retry, on a new
    # socket, is held by the rule like a first reply, not played from its first byte
    faulty = dataclasses.replace(STEADY_125, faults={1: Fault.CLOSE_1001})
    async with loopback(faulty, bridge_greeting=LONG) as rig, stall_watch() as watch:
        result = await rig.call()
        requests = list(rig.hamsa.requests)
    summary = rig.bridge.recent_calls[-1]
    assert len(requests) == 2  # the failed request and its retry
    assert result.leg is not None
    assert_gapless(result, watch)
    assert bytes(result.leg.received[: len(requests[1].audio)]) == requests[1].audio
    holds = summary.details["start_holds"]
    assert isinstance(holds, list)
    assert [hold["sentence"] for hold in holds] == [1]
