"""Capacity, in process over real sockets: what ``BRIDGE_MAX_CALLS`` and
``BRIDGE_MAX_PENDING_STREAMS`` count, and what Twilio's side of a refused stream sees
(docs/operations.md, Capacity).

- A stream awaiting its ``start`` is not a call: handshakes are accepted past ``BRIDGE_MAX_CALLS``.
- A ``start`` that would make call N+1 is closed with 1008: no audio, no Hamsa socket.
- Streams awaiting their ``start`` are bounded by ``BRIDGE_MAX_PENDING_STREAMS`` (503 at the
  handshake); a stream that became a call frees its place.

(503 at the handshake while ``BRIDGE_MAX_CALLS`` calls are in progress:
``test_operations_app.test_a_third_call_over_max_calls_is_refused_and_the_first_two_play_whole``.)
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field

import httpx2
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.dev.caller import parse_connect_stream
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import Loopback, loopback
from bridge.dev.twilio_stream_client import TwilioMediaLeg
from bridge.signatures import TwilioSignatures
from tests.test_operations_app import LONG_GREETING, get_metrics
from tests.timing import HANG

pytestmark = pytest.mark.anyio


@dataclass(slots=True)
class HeldStream:
    """Twilio's side of one stream, step by step: the handshake now, ``start`` when told."""

    ws: ClientConnection
    leg: TwilioMediaLeg
    events: list[str] = field(default_factory=list)

    async def start(self) -> None:
        await self.ws.send(self.leg.connected())
        await self.ws.send(self.leg.start())

    async def first_audio_or_close(self) -> int | None:
        """Read until the first ``media`` (returns None: a call) or the bridge's close (its
        code); every event name read is kept in ``events``."""
        try:
            async for message in self.ws:
                event = json.loads(message)["event"]
                self.events.append(event)
                if event == "media":
                    return None
        except ConnectionClosed:
            pass
        return self.ws.close_code

    async def hang_up(self) -> None:
        await self.ws.send(self.leg.stop())
        await self.ws.close()


async def answer(lb: Loopback) -> tuple[str, dict[str, str], str]:
    """Twilio's webhook for a new inbound call: the stream URL, its parameters, the CallSid."""
    call_sid = "CA" + secrets.token_hex(16)
    url = lb.public_url + "/twiml/inbound"
    form = {"CallSid": call_sid, "AccountSid": "AC" + secrets.token_hex(16), "From": "+9665"}
    signature = TwilioSignatures(lb.auth_token).sign(url, form)
    async with httpx2.AsyncClient() as http:
        response = await http.post(url, data=form, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    found = parse_connect_stream(response.text)
    assert found is not None
    return found[0], found[1], call_sid


async def open_stream(lb: Loopback) -> HeldStream:
    """Answer a call and open its stream as Twilio does (signed handshake); no ``start`` yet."""
    stream_url, parameters, call_sid = await answer(lb)
    signature = TwilioSignatures(lb.auth_token).sign(stream_url, {})
    # Twilio never stops reading a stream: an unbounded receive queue, so that the bridge's
    # close is read behind however many frames a busy machine let pile up (a full queue pauses
    # reading, and the close handshake would wait out its timeout behind it)
    ws = await connect(
        stream_url, additional_headers={"X-Twilio-Signature": signature}, max_queue=None
    )
    leg = TwilioMediaLeg("MZ" + secrets.token_hex(16), call_sid, "AC" + "0" * 32, parameters)
    return HeldStream(ws, leg)


async def readyz(lb: Loopback) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.get(lb.public_url + "/readyz")


async def test_streams_awaiting_start_are_not_calls_and_a_start_over_max_calls_gets_1008() -> None:
    async with loopback(
        EmulatorConfig(ms_per_char=25), bridge_max_calls=2, bridge_greeting=LONG_GREETING
    ) as lb:
        # four handshakes before any start: all accepted (none is a call yet)
        streams = [await open_stream(lb) for _ in range(4)]
        before = await readyz(lb)
        # all four send their start at once: two become calls, two are closed
        async with asyncio.timeout(HANG):
            await asyncio.gather(*(s.start() for s in streams))
            outcomes = await asyncio.gather(*(s.first_audio_or_close() for s in streams))
        during = await readyz(lb)
        m = await get_metrics(lb.public_url)
        async with asyncio.timeout(HANG):
            for stream, outcome in zip(streams, outcomes, strict=True):
                if outcome is None:
                    await stream.hang_up()
            await lb.bridge.streams.wait_empty()
        hamsa_connections = len(lb.hamsa.connections)
        after = await readyz(lb)

    assert before.status_code == 200
    assert before.json() == {
        "status": "ready",
        "active_calls": 0,
        "open_streams": 4,
        "max_calls": 2,
    }
    assert sorted(outcomes, key=str) == [1008, 1008, None, None]
    for stream, outcome in zip(streams, outcomes, strict=True):
        if outcome == 1008:
            # the caller hears nothing from the bridge: no media, no mark, just the close
            assert stream.events == []
    assert during.status_code == 503
    assert during.json()["status"] == "at_capacity"
    assert during.json()["active_calls"] == 2
    assert m['hamsa_bridge_streams_refused_total{reason="capacity"}'] == 2
    assert m['hamsa_bridge_calls_total{outcome="rejected"}'] == 2
    assert hamsa_connections == 2  # the closed streams never opened a Hamsa socket
    assert after.status_code == 200


async def test_only_streams_awaiting_start_count_against_max_pending_streams() -> None:
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        bridge_max_pending_streams=2,
        bridge_max_calls=10,
        bridge_greeting=LONG_GREETING,
    ) as lb:
        first, second = await open_stream(lb), await open_stream(lb)
        with pytest.raises(InvalidStatus) as refused:
            await open_stream(lb)
        m = await get_metrics(lb.public_url)
        # the first becomes a call: its place among the pending streams is free again
        await first.start()
        async with asyncio.timeout(HANG):
            assert await first.first_audio_or_close() is None
        third = await open_stream(lb)
        ready = await readyz(lb)
        async with asyncio.timeout(HANG):
            await first.hang_up()
            for held in (second, third):
                await held.ws.close()
            await lb.bridge.streams.wait_empty()

    assert refused.value.response.status_code == 503
    assert refused.value.response.body == b"busy"
    assert m['hamsa_bridge_streams_refused_total{reason="pending_limit"}'] == 1
    assert m['hamsa_bridge_streams_refused_total{reason="capacity"}'] == 0
    # readiness is about calls: pending streams at their limit do not make the bridge unready
    assert ready.status_code == 200
    assert ready.json()["active_calls"] == 1
    assert ready.json()["open_streams"] == 3


async def test_at_max_calls_twilio_sees_31920_and_the_call_ends() -> None:
    # what the Twilio emulator does with a refused handshake (docs/twilio-streams.md §5, §6)
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        bridge_max_calls=1,
        bridge_greeting=LONG_GREETING,
        twilio=True,
    ) as lb:
        call = await open_stream(lb)
        await call.start()
        async with asyncio.timeout(HANG):
            assert await call.first_audio_or_close() is None
        assert lb.twilio is not None
        async with asyncio.timeout(HANG):
            sid = await lb.call_in()
            record = lb.twilio.call(sid)
            [stream] = lb.twilio.streams_for(sid)
            await call.hang_up()
            await lb.bridge.streams.wait_empty()

    assert [code for code, _ in record.errors] == [31920]
    assert "HTTP 503" in record.errors[0][1]
    assert stream.ended_by == "error"
    assert stream.result.leg is None  # no stream ever ran: nothing was heard
    assert record.status.value == "completed"
