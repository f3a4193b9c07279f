"""``Playback`` hands each wake's messages to ``send`` as one list: frames, marks and ``clear``
keep their queue order, and per-frame accounting stays exact."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import pytest

from bridge.calls.playback import Playback
from bridge.dev.twilio_stream_client import TwilioMediaLeg
from bridge.metrics import Metrics
from bridge.protocols.twilio_stream_server import TwilioMediaStream
from tests.timing import HANG

pytestmark = pytest.mark.anyio

SID = "MZ" + "0" * 32
START = TwilioMediaLeg(SID, "CA" + "0" * 32, "AC" + "0" * 32).start()


def frame(n: int) -> bytes:
    return bytes([n]) * 160


def label(message: str) -> str:
    """``f<n>`` for a frame (its first byte), ``mark:<name>``, or ``clear``."""
    obj = json.loads(message)
    assert obj["streamSid"] == SID
    if obj["event"] == "media":
        return f"f{base64.b64decode(obj['media']['payload'])[0]}"
    if obj["event"] == "mark":
        return "mark:" + obj["mark"]["name"]
    return str(obj["event"])


def playback(
    on_batch: Callable[[Playback, list[str]], None] | None = None,
) -> tuple[Playback, list[list[str]]]:
    stream = TwilioMediaStream()
    stream.receive(START)
    batches: list[list[str]] = []
    holder: list[Playback] = []

    async def send(texts: list[str]) -> None:
        batches.append([label(text) for text in texts])
        if on_batch is not None:
            on_batch(holder[0], texts)

    holder.append(Playback(stream, send, lead=0.2, refill=0.06, metrics=Metrics()))
    return holder[0], batches


async def test_a_wake_sends_its_frames_and_marks_in_one_batch_in_queue_order() -> None:
    player, batches = playback()
    player.push_frames([frame(i) for i in range(1, 13)])
    played = player.push_mark("m1")
    player.push_frames([frame(i) for i in range(13, 16)])
    writer = asyncio.create_task(player.run())
    try:
        await asyncio.wait_for(player.flush(), HANG)
    finally:
        writer.cancel()
    flat = [entry for batch in batches for entry in batch]
    assert flat == [*(f"f{i}" for i in range(1, 13)), "mark:m1", *(f"f{i}" for i in range(13, 16))]
    assert batches[0] == [f"f{i}" for i in range(1, 11)]  # the lead: 10 frames in one send
    assert all(batches)
    assert len(batches) < len(flat) // 2  # batched, not one send per message
    assert player.stats.frames_sent == 15
    assert player.stats.marks_sent == 1
    assert not played.done()  # not echoed yet


async def test_clear_goes_first_in_the_batch_after_a_barge_in() -> None:
    """A barge-in while a batch is being sent: the next batch starts with ``clear``, then the
    frames pushed after it; nothing queued before it is sent."""

    def barge_in(player: Playback, texts: list[str]) -> None:
        if len(texts) == 10:  # the first wake
            player.interrupt()
            player.push_frames([frame(100), frame(101)])

    player, batches = playback(barge_in)
    player.push_frames([frame(i) for i in range(1, 31)])
    writer = asyncio.create_task(player.run())
    try:
        await asyncio.wait_for(player.flush(), HANG)
    finally:
        writer.cancel()
    assert batches == [[f"f{i}" for i in range(1, 11)], ["clear", "f100", "f101"]]
    assert player.stats.frames_sent == 12
    assert player.stats.frames_dropped == 20
    assert player.stats.clears_sent == 1


async def test_audio_pushed_while_the_clock_holds_the_writer_back_does_not_wake_it() -> None:
    """Hamsa's chunks arrive while the writer waits for the pacing clock: they queue behind the
    frame it holds and wake nothing (a wake each cost as much as a paced one); a ``clear`` still
    wakes it at once."""
    sent = asyncio.Event()
    player, batches = playback(lambda _player, _texts: sent.set())
    player.push_frames([frame(1)] * 12)  # the lead is 10: two frames wait for the clock
    writer = asyncio.create_task(player.run())
    try:
        await asyncio.wait_for(sent.wait(), HANG)
        await asyncio.sleep(0)  # the writer is now in its pacing wait (about 80 ms)
        woken = player.stats.wakes
        for n in range(20):
            player.push_frames([frame(2 + n)])
            player.push_mark(f"m{n}")
            await asyncio.sleep(0)
        # 20 before this change; a few clock wakes only if the machine stalls ~80 ms each
        assert player.stats.wakes - woken < 10
        woken = player.stats.wakes
        player.interrupt()
        await asyncio.sleep(0)
        assert player.stats.wakes == woken + 1  # the clear woke it, without its clock
    finally:
        writer.cancel()
