"""``bridge.protocols.websockets_direct.DirectClientConnection`` against a real websockets server
on port 0: every message once, in order, handed over directly or, after a fall-back, through
``recv()``; websockets' own failures unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from bridge.protocols.websockets_direct import DirectClientConnection
from tests.timing import HANG

pytestmark = pytest.mark.anyio

Script = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def peer(script: Script) -> AsyncIterator[DirectClientConnection]:
    """A server that runs ``script`` once the client has registered (it sends ``go``), and the
    client's connection."""

    async def handler(ws: ServerConnection) -> None:
        assert await ws.recv() == "go"
        await script(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}", create_connection=DirectClientConnection
        ) as ws:
            assert isinstance(ws, DirectClientConnection)
            yield ws


async def read_all(ws: DirectClientConnection, *, fail_on: str | None = None) -> list[str]:
    """What the Hamsa session's reader does: direct delivery, then ``recv()`` until closed."""
    got: list[str] = []

    def handle(message: str | bytes) -> None:
        if message == fail_on:
            raise ValueError("a handler bug")
        got.append(f"direct:{message!r}")

    assert ws.deliver_to(handle)
    await ws.send("go")
    assert ws.delivery_ended is not None
    await asyncio.wait_for(ws.delivery_ended, HANG)
    try:
        async for message in ws:
            got.append(f"recv:{message!r}")
    except ConnectionClosed as exc:
        sent = exc.sent.code if exc.sent is not None else None
        got.append(f"failed:{sent}")  # only when the client closed first
    return got


async def test_messages_go_to_the_handler_in_order_and_the_end_is_announced() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send("نص")
        await ws.send(b"\x00\xff" * 800)
        await ws.ping()
        await ws.send("end")
        await ws.close()

    async with peer(script) as ws:
        got = await read_all(ws)
    binary = b"\x00\xff" * 800
    assert got == ["direct:'نص'", f"direct:{binary!r}", "direct:'end'"]


async def test_a_fragmented_message_and_all_after_it_come_through_recv_in_order() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send("one")
        await ws.send(["fr", "ag"])  # two frames: websockets assembles them
        await ws.send("three")
        await ws.close()

    async with peer(script) as ws:
        got = await read_all(ws)
    assert got == ["direct:'one'", "recv:'frag'", "recv:'three'"]


async def test_invalid_utf8_fails_the_connection_1007_as_websockets_does() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send("fine")
        ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        ws.send_data()
        await ws.wait_closed()

    async with peer(script) as ws:
        got = await read_all(ws)
    assert got == ["direct:'fine'", "failed:1007"]  # websockets' own client: the same


async def test_a_failing_handler_loses_its_message_only() -> None:
    async def script(ws: ServerConnection) -> None:
        for text in ("a", "bug", "c"):
            await ws.send(text)
        await ws.close()

    async with peer(script) as ws:
        got = await read_all(ws, fail_on="bug")
    assert got == ["direct:'a'", "recv:'c'"]


async def test_nothing_is_taken_directly_while_messages_wait_for_recv() -> None:
    """A pooled socket that received something while idle keeps websockets' path."""
    written = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        await ws.send("early")
        written.set()
        await ws.recv()  # the client's "taken"

    async with peer(script) as ws:
        await ws.send("go")
        await asyncio.wait_for(written.wait(), HANG)
        pong = await ws.ping()  # its pong follows "early" on the wire: then "early" is queued
        await asyncio.wait_for(pong, HANG)
        assert not ws.deliver_to(lambda message: None)
        assert ws.delivery_ended is None
        assert await ws.recv() == "early"
        await ws.send("taken")


async def test_a_reader_that_stops_early_gets_nothing_more() -> None:
    """After ``stop_delivery`` (the session's reader cancelled), messages wait for ``recv()``
    and the handler is not called."""
    written = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        await ws.recv()  # "stopped"
        await ws.send("later")
        written.set()
        await ws.recv()

    handled: list[str | bytes] = []
    async with peer(script) as ws:
        assert ws.deliver_to(handled.append)
        await ws.send("go")
        ws.stop_delivery()
        assert ws.delivery_ended is not None
        assert ws.delivery_ended.done()
        await ws.send("stopped")
        await asyncio.wait_for(written.wait(), HANG)
        assert await asyncio.wait_for(ws.recv(), HANG) == "later"
        await ws.send("bye")
    assert handled == []
