"""``bridge.stream_transport.StreamProtocol`` over real sockets: uvicorn on port 0 (the bridge's
settings, ``uvicorn_config``), a websockets client, a raw ASGI app using the extension; and the
bridge's calls with the extension absent (uvicorn's own protocol: the per-message path)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from unittest.mock import ANY

import pytest
import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import bridge.dev.servers as servers
from bridge.dev.servers import AppServer
from bridge.stream_transport import EXTENSION, SEND_BATCH, TEXT_HANDLER, text_frame_header
from bridge.uvicorn_setup import WS_MAX_SIZE
from tests import test_e2e_call as e2e
from tests.timing import HANG

pytestmark = pytest.mark.anyio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def asgi(session: Callable[[Scope, Receive, Send], Awaitable[None]]) -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        assert scope["type"] == "websocket"
        await session(scope, receive, send)

    return app


def test_text_frame_header_is_rfc6455_5_2() -> None:
    assert text_frame_header(0) == b"\x81\x00"
    assert text_frame_header(125) == b"\x81\x7d"
    assert text_frame_header(126) == b"\x81\x7e\x00\x7e"
    assert text_frame_header(65535) == b"\x81\x7e\xff\xff"
    assert text_frame_header(65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")


async def test_a_batch_arrives_as_separate_messages_in_order() -> None:
    texts = ["a", "", "x" * 125, "y" * 126, "ز" * 200, "z" * 70_000, '{"event":"media"}']
    seen: dict[str, Any] = {}

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        seen["extension"] = scope["extensions"].get(EXTENSION)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": SEND_BATCH, "texts": texts[:3]})
        await send({"type": "websocket.send", "text": "single"})
        await send({"type": SEND_BATCH, "texts": []})
        await send({"type": SEND_BATCH, "texts": texts[3:]})
        await send({"type": "websocket.close", "code": 1000})

    async with (
        AppServer(asgi(session)) as server,
        connect(f"ws://127.0.0.1:{server.port}/s") as ws,
    ):
        received = [message async for message in ws]
        assert ws.close_code == 1000
    assert seen["extension"] == {}
    assert received == [*texts[:3], "single", *texts[3:]]


async def _errors_of_sends(send: Send) -> tuple[type[BaseException] | None, ...]:
    """What a single ``websocket.send`` and a batch each raise now."""
    result: list[type[BaseException] | None] = []
    for message in (
        {"type": "websocket.send", "text": "late"},
        {"type": SEND_BATCH, "texts": ["late", "later"]},
    ):
        try:
            await send(message)
        except BaseException as exc:  # noqa: BLE001 - the type is the point
            result.append(type(exc))
        else:
            result.append(None)
    return tuple(result)


async def test_a_batch_after_the_peer_closed_raises_as_a_single_send_does() -> None:
    outcome: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message["type"] == "websocket.disconnect"
        outcome.set_result(await _errors_of_sends(send))

    async with AppServer(asgi(session)) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/s"):
            pass  # closes 1000 at once
        errors = await asyncio.wait_for(outcome, HANG)
    assert errors == (ClientDisconnected, ClientDisconnected)


async def test_a_batch_while_the_peer_is_closing_raises_as_a_single_send_does() -> None:
    """The peer's close frame parsed but the connection not yet lost: websockets' state is
    CLOSING, and uvicorn's send raises ClientDisconnected (from websockets' InvalidState)."""
    outcome: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        text = await receive()  # reads pause while it waits; the close frame follows it
        assert text.get("text") == "bye"
        while not outcome.done():
            errors = await _errors_of_sends(send)
            if errors != (None, None):
                outcome.set_result(errors)
            await asyncio.sleep(0.001)

    async with AppServer(asgi(session)) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/s") as ws:
            await ws.send("bye")
        errors = await asyncio.wait_for(outcome, HANG)
    assert errors == (ClientDisconnected, ClientDisconnected)


async def test_a_batch_after_the_app_closed_raises_as_a_single_send_does() -> None:
    outcome: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        outcome.set_result(await _errors_of_sends(send))

    async with AppServer(asgi(session)) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/s") as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        errors = await asyncio.wait_for(outcome, HANG)
    assert errors == (RuntimeError, RuntimeError)


def _recording_session(
    log: list[str], done: asyncio.Future[None], *, register_after: float = 0.0
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Accept, (optionally wait while messages queue), register a handler that logs each text,
    then log what ``receive()`` returns until the disconnect."""

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if register_after:
            await asyncio.sleep(register_after)
        await send({"type": TEXT_HANDLER, "handler": lambda text: log.append("direct:" + text)})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                log.append("disconnect")
                break
            log.append("queued:" + message["text"])
        done.set_result(None)

    return session


@pytest.mark.parametrize("register_after", [0.0, 0.2])
async def test_direct_delivery_never_reorders_messages_or_the_disconnect(
    register_after: float,
) -> None:
    """Messages sent before the handler exists are queued and come first through ``receive()``;
    later ones reach the handler; the disconnect comes last, after every message."""
    log: list[str] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    session = _recording_session(log, done, register_after=register_after)
    sent = [f"m{i}" for i in range(300)]
    async with AppServer(asgi(session)) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/s") as ws:
            for i, text in enumerate(sent):
                await ws.send(text)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
        await asyncio.wait_for(done, HANG)
    assert log[-1] == "disconnect"
    assert [entry.split(":", 1)[1] for entry in log[:-1]] == sent
    assert any(entry.startswith("direct:") for entry in log)
    if register_after:
        assert log[0].startswith("queued:")  # the first messages waited in uvicorn's queue


async def test_a_failing_handler_fails_the_connection_with_1011() -> None:
    outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def handler(text: str) -> None:
        raise ValueError(text)

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": TEXT_HANDLER, "handler": handler})
        outcome.set_result(await receive())

    async with AppServer(asgi(session)) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/s") as ws:
            await ws.send("boom")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1011
        message = await asyncio.wait_for(outcome, HANG)
    assert message["type"] == "websocket.disconnect"
    assert message["code"] == 1011


def _oversize_then_keep_writing(port: int, limit: int) -> tuple[bytes, str]:
    """A raw client: the opening handshake, one text frame of ``limit + 1`` bytes, then 2 MB
    more (a peer still writing when the server refuses), then its reading until the server's
    EOF. What it read after the handshake, and how its socket ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            b"GET /s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            + f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        read = head.split(b"\r\n\r\n", 1)[1]
        size = limit + 1
        frame = b"\x81\xff" + struct.pack("!Q", size) + b"\0\0\0\0" + b"x" * size
        try:
            sock.sendall(frame + b"y" * 2_000_000)
            while chunk := sock.recv(65536):
                read += chunk
        except OSError as exc:
            return read, type(exc).__name__
        return read, "eof"


async def test_a_message_over_the_limit_closes_1009_without_a_reset() -> None:
    """The refused message's rest, and what the peer writes after it, are read and discarded:
    the peer reads the close frame and then the end of the stream, never a reset."""
    outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome.set_result(await receive())

    async with AppServer(asgi(session)) as server:
        read, end = await asyncio.to_thread(_oversize_then_keep_writing, server.port, WS_MAX_SIZE)
        message = await asyncio.wait_for(outcome, HANG)
    assert end == "eof"
    assert read[:1] == b"\x88"  # FIN + close, then a 7-bit length: RFC 6455 §5.2
    assert struct.unpack("!H", read[2:4]) == (1009,)
    assert len(read) == 2 + read[1]
    assert message == {"type": "websocket.disconnect", "code": 1009, "reason": ANY}


# --- the bridge's calls without the extension (uvicorn's own protocol) ----------------------


@pytest.fixture
def uvicorns_own_protocol(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every server a test starts runs uvicorn's ``websockets-sansio`` protocol: no
    ``hamsa.stream`` extension, so calls take the per-message path."""
    real = servers.uvicorn_config
    made: list[uvicorn.Config] = []

    def plain(*args: Any, **kwargs: Any) -> uvicorn.Config:
        config = real(*args, **kwargs)
        config.ws = "websockets-sansio"
        made.append(config)
        return config

    monkeypatch.setattr(servers, "uvicorn_config", plain)
    yield
    assert made
    assert all(
        config.ws_protocol_class is not None
        and config.ws_protocol_class.__name__ == "WebSocketsSansIOProtocol"
        for config in made
    )


@pytest.mark.parametrize(
    "scenario",
    [
        e2e.test_inbound_call_hears_hamsa_audio_byte_for_byte,
        e2e.test_key_during_greeting_clears_at_once_and_stops_the_audio,
        e2e.test_barge_in_drains_the_reply_so_it_cannot_leak_into_the_next,
        e2e.test_caller_hanging_up_ends_the_call_and_the_hamsa_socket,
        e2e.test_malformed_frames_mid_call_do_not_break_the_call_or_the_server,
    ],
    ids=lambda scenario: scenario.__name__.removeprefix("test_"),
)
async def test_a_call_without_the_extension(
    uvicorns_own_protocol: None, scenario: Callable[[], Awaitable[None]]
) -> None:
    await scenario()


# --- whole frames past the parser (``bridge.protocols.client_frames``) ------------------------


async def _raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client speaking WebSocket by hand (TCP_NODELAY, so small writes leave as they are)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        b"GET /s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        + f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _client_frame(opcode: int, data: bytes, *, fin: bool = True) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode(opcode), data, fin).serialize(mask=True)


def _stream_protocols(server: AppServer) -> list[Any]:
    assert server._server is not None
    return [p for p in server._server.server_state.connections if hasattr(p, "_frames")]


async def test_frames_cut_anywhere_reach_the_handler_whole_and_in_order() -> None:
    """Texts (Arabic, 7- and 16-bit lengths) sent in pieces down to single bytes, with a ping, a
    fragmented message and a binary message among them: every text reaches the app once, in
    order, whichever way it took; the ping is answered; the close is echoed."""
    log: list[str] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    registered = asyncio.Event()

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": TEXT_HANDLER, "handler": log.append})
        registered.set()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            log.append(message.get("text") or f"bytes:{message['bytes'].hex()}")
        done.set_result(None)

    texts = [f"رسالة {i} " * (1 + i % 40) for i in range(60)]
    stream: list[bytes] = []
    expected: list[str] = []
    others: list[bytes] = []  # what websockets' parser must see: every frame but the texts
    for i, text in enumerate(texts):
        stream.append(_client_frame(1, text.encode()))
        expected.append(text)
        if i == 20:
            others.append(_client_frame(9, b"are you there"))
        if i == 30:
            others.append(_client_frame(1, b"frag", fin=False) + _client_frame(0, b"mented"))
            expected.append("fragmented")
        if i == 40:
            others.append(_client_frame(2, b"\x00\xff"))
            expected.append("bytes:00ff")
        if i in (20, 30, 40):
            stream.append(others[-1])
    close = _client_frame(8, struct.pack("!H", 1000))
    others.append(close)
    data = b"".join(stream)
    async with AppServer(asgi(session)) as server:
        reader, writer = await _raw_client(server.port)
        await asyncio.wait_for(registered.wait(), HANG)
        (protocol,) = _stream_protocols(server)
        parsed: list[bytes] = []
        receive_data = protocol.conn.receive_data

        def parser_saw(chunk: bytes) -> None:
            parsed.append(bytes(chunk))
            receive_data(chunk)

        protocol.conn.receive_data = parser_saw
        pos, size = 0, 1
        while pos < len(data):  # pieces of 1, 2, 3 … 1500 bytes, then again
            writer.write(data[pos : pos + size])
            await writer.drain()
            await asyncio.sleep(0)
            pos += size
            size = size % 1500 + 1 if size < 50 else size * 3 % 1500 + 1
        writer.write(close)
        answer = await asyncio.wait_for(reader.read(), HANG)  # to the server's EOF
        writer.close()
        await asyncio.wait_for(done, HANG)
    assert log == expected
    # The 41 texts before the binary message were taken past the parser; the binary message
    # waits in uvicorn's queue until the app takes it, and texts behind it queue too (order).
    seen = b"".join(parsed)
    assert seen.startswith(b"".join(others[:3]))
    assert seen.endswith(close)
    assert b"\x8a\x0dare you there" in answer  # the pong, unmasked from the server
    assert answer.endswith(b"\x88\x02" + struct.pack("!H", 1000))


async def test_invalid_utf8_in_a_whole_text_frame_closes_1007() -> None:
    outcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    seen: list[str] = []
    registered = asyncio.Event()

    async def session(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": TEXT_HANDLER, "handler": seen.append})
        registered.set()
        outcome.set_result(await receive())

    async with AppServer(asgi(session)) as server:
        reader, writer = await _raw_client(server.port)
        await asyncio.wait_for(registered.wait(), HANG)
        writer.write(_client_frame(1, b"fine") + _client_frame(1, b"\xff\xfe") + b"\x81")
        answer = await asyncio.wait_for(reader.read(), HANG)
        writer.close()
        message = await asyncio.wait_for(outcome, HANG)
    assert seen == ["fine"]
    assert answer[:2] == b"\x88\x02"
    assert struct.unpack("!H", answer[2:4]) == (1007,)
    assert message["type"] == "websocket.disconnect"
    assert message["code"] == 1007
