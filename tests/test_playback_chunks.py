"""``Playback`` queues audio as chunks of whole frames and slices them into 160-byte frames as it
sends them: the frames, their order and their accounting are those of one frame per item."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from bridge.calls.playback import Playback
from bridge.dev.twilio_stream_client import TwilioMediaLeg
from bridge.metrics import Metrics
from bridge.protocols.twilio_stream_server import TwilioMediaStream
from tests.timing import HANG

pytestmark = pytest.mark.anyio

SID = "MZ" + "0" * 32
START = TwilioMediaLeg(SID, "CA" + "0" * 32, "AC" + "0" * 32).start()


def frames(*numbers: int) -> bytes:
    """One chunk holding a 160-byte frame per number, each frame filled with its number."""
    return b"".join(bytes([n]) * 160 for n in numbers)


def playback(after_frames: int = 0) -> tuple[Playback, list[str]]:
    """A playback and what it sent; ``after_frames``: barge in (``interrupt``, then two new
    frames) as that many frames have been sent."""
    stream = TwilioMediaStream()
    stream.receive(START)
    sent: list[str] = []
    holder: list[Playback] = []

    async def send(texts: str | list[str]) -> None:
        # one message, or a list of them (a writer that batches a wake's messages)
        for text in [texts] if isinstance(texts, str) else texts:
            message = json.loads(text)
            if message["event"] == "media":
                payload = base64.b64decode(message["media"]["payload"])
                assert len(payload) == 160
                assert payload == payload[:1] * 160  # never a slice across two frames
                sent.append(f"f{payload[0]}")
                if len(sent) == after_frames:
                    holder[0].interrupt()
                    holder[0].push_frames([frames(100, 101)])
            else:
                sent.append(message["event"])

    holder.append(Playback(stream, send, lead=1.0, metrics=Metrics()))
    return holder[0], sent


async def test_chunks_are_sent_as_their_frames_in_order() -> None:
    player, sent = playback()
    player.push_frames([frames(1, 2, 3), frames(4)])
    player.push_frames([frames(5, 6)])
    assert player.buffered() == pytest.approx(6 * 0.020)
    player.push_mark("end")
    writer = asyncio.create_task(player.run())
    try:
        async with asyncio.timeout(HANG):
            await player.flush()
    finally:
        writer.cancel()
    assert sent == ["f1", "f2", "f3", "f4", "f5", "f6", "mark"]
    assert player.stats.frames_sent == 6


async def test_a_clear_in_the_middle_of_a_chunk_drops_its_rest() -> None:
    player, sent = playback(after_frames=3)
    player.push_frames([frames(*range(1, 60))])
    writer = asyncio.create_task(player.run())
    try:
        async with asyncio.timeout(HANG):
            await player.flush()
    finally:
        writer.cancel()
    # the barge-in came with the 3rd frame; a writer that batches may have sent more with it
    played = sent.index("clear")
    assert played >= 3
    assert sent == [f"f{n}" for n in range(1, played + 1)] + ["clear", "f100", "f101"]
    assert player.stats.frames_dropped == 59 - played
