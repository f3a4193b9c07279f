"""uvicorn's sans-I/O WebSocket protocol, plus the ``hamsa.stream`` ASGI extension.

:class:`StreamProtocol` is uvicorn's ``WebSocketsSansIOProtocol`` (``ws="websockets-sansio"``,
https://www.uvicorn.org/settings/#implementation) with two additions for the media stream's hot
path, advertised in ``scope["extensions"]["hamsa.stream"]`` (ASGI extensions:
https://asgi.readthedocs.io/en/latest/extensions.html). Everything else is uvicorn's, unchanged.

``{"type": "hamsa.websocket.send_batch", "texts": [...]}`` (:data:`SEND_BATCH`)
    Sends each string as its own text message, in order, with **one** ``transport.write``: a
    playback wake's 3-5 frames cost one syscall instead of one each. The connection state is
    checked exactly as uvicorn's ``websocket.send`` checks it: it waits while the transport is
    paused (flow control); a lost connection, or one whose peer has begun the closing handshake,
    raises uvicorn's ``ClientDisconnected`` (an ``OSError``); before ``websocket.accept`` or after
    ``websocket.close`` it raises ``RuntimeError``. With no WebSocket extension negotiated (the
    bridge turns per-message-deflate off) the frames are built here: a server's frames are
    unmasked (RFC 6455 §5.1, https://datatracker.ietf.org/doc/html/rfc6455#section-5.1), so a
    frame is a 2-4 byte header (§5.2) and the UTF-8 text, byte for byte what websockets' own
    ``send_text`` writes; otherwise websockets frames them.

``{"type": "hamsa.websocket.text_handler", "handler": callable | None}`` (:data:`TEXT_HANDLER`)
    From then on, each complete text message is passed to ``handler(text)`` synchronously, from
    the protocol's ``data_received``, instead of being queued for ``receive()``: no queue, no
    pause/resume of the socket's reads, no task wake per message. Order is kept: a message that
    arrives while earlier ones still wait in the queue is queued behind them (the app drains them
    with ``receive()``), and the disconnect always arrives through ``receive()``, after every
    message the handler was given. Binary messages, and anything after ``websocket.close``, take
    uvicorn's path. The handler must be cheap and must not raise: it runs inside the socket's
    read callback, in the server's context (not the app task's), so it must carry its own
    context (for example ``contextvars.Context.run``) where it logs. If it raises anyway, the
    error is logged and the connection failed with 1011 (the app then receives that disconnect).
    ``None`` unregisters it.

Inbound frames skip websockets' parser where they can (``data_received``): once the opening
handshake's request has gone to websockets, a :class:`~bridge.protocols.client_frames.
ClientFrameReader` splits the client's bytes into frames. A complete, masked, unfragmented text
frame that the handler may take now (registered, nothing queued before it, the connection open,
no fragmented message open) is unmasked and handed over here. Every other frame goes to
websockets, a text candidate whole and any other frame as its bytes arrive, so its parser stands
at a frame boundary whenever a candidate begins and judges the others as before, from their
header on (control frames, fragments, a bad opcode or mask, a frame over ``ws_max_size``).
Twilio's 50 inbound messages a second per call cost ~0.7 µs each to split and unmask instead of
~2.5 µs in websockets' generator-based parser (``bench/inbound_frames.py``, ``BENCHMARKS.md``).

A connection the protocol **fails** (a message over ``ws_max_size``: 1009; invalid UTF-8: 1007;
a failing handler: 1011) closes by lingering, not at once: the close frame and the TCP FIN are
sent, then whatever the peer still sends is read and discarded until it closes, or for at most
:data:`LINGER_SECONDS`. uvicorn closes the socket at once, with the rest of the refused message
still unread; the kernel then answers with a reset, and a peer that is still writing loses the
close frame it had not yet read and sees 1006 instead of the code (RFC 6455 §7.1.1 wants the
server to close the TCP connection after the closing handshake, not before).

Where the extension is absent (another server, Starlette's ``TestClient``), an app falls back to
``websocket.send`` per message and ``receive()`` per message; the bridge does (``bridge.calls``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from bridge.protocols.client_frames import ClientFrameReader, unmasked
from bridge.protocols.websockets_cycle import release_parser

__all__ = [
    "EXTENSION",
    "LINGER_SECONDS",
    "SEND_BATCH",
    "TEXT_HANDLER",
    "StreamProtocol",
    "text_frame_header",
]

EXTENSION: Final = "hamsa.stream"
"""The key in ``scope["extensions"]`` that says the server takes the two messages below."""
SEND_BATCH: Final = "hamsa.websocket.send_batch"
TEXT_HANDLER: Final = "hamsa.websocket.text_handler"

LINGER_SECONDS: Final = 2.0
"""How long a failed connection keeps reading (and discarding) the peer's data, waiting for it
to close, before the socket is closed anyway."""

_SHORT: Final = struct.Struct("!BB").pack
_MEDIUM: Final = struct.Struct("!BBH").pack
_LONG: Final = struct.Struct("!BBQ").pack
_FIN_TEXT: Final = 0x81
"""FIN set, opcode 1 (text): RFC 6455 §5.2."""
_END_OF_HEAD: Final = b"\r\n\r\n"
_MAX_HEAD: Final = 256 * 1024
"""Past this many bytes without the end of the opening handshake's request, the frame reader is
not used: websockets refuses a request that long anyway (its line and header limits)."""


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, unfragmented text frame of ``length`` payload bytes (RFC 6455
    §5.2: a 7-bit length, or 126 and 16 bits, or 127 and 64 bits)."""
    if length < 126:
        return _SHORT(_FIN_TEXT, length)
    if length < 65536:
        return _MEDIUM(_FIN_TEXT, 126, length)
    return _LONG(_FIN_TEXT, 127, length)


class StreamProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with the ``hamsa.stream`` extension (see the
    module docstring). Pass the class itself as uvicorn's ``ws`` setting."""

    _text_handler: Callable[[str], None] | None = None
    _lingering: bool = False
    _frames: ClientFrameReader | None = None
    """Set once the opening handshake's request has been passed to websockets: from then on
    every byte goes through it (``data_received``)."""
    _head_seen: int = 0
    """Bytes of the opening handshake read so far (``_frames`` is None until its end)."""
    _head_tail: bytes = b""
    """Its last 3 bytes, so that an end split across two reads is found."""

    def data_received(self, data: bytes) -> None:
        """A complete text frame the handler can take skips websockets' parser; every other
        frame reaches it in order, a text frame whole (``bridge.protocols.client_frames``): the
        same messages, in the same order, with the same failures.

        Before that, the opening handshake's request goes to websockets alone, up to and
        including its empty line, so the parser then stands at the first frame's first byte.
        uvicorn hands over exactly the request; anything a client sends before the 101 is kept
        for the frame reader.
        """
        frames = self._frames
        if frames is None:
            if self._head_seen < 0:  # the reader is not used on this connection
                super().data_received(data)
                return
            found = (self._head_tail + data).find(_END_OF_HEAD)
            if found < 0:
                self._head_seen += len(data)
                self._head_tail = (self._head_tail + data)[-3:]
                if self._head_seen > _MAX_HEAD:
                    self._head_seen = -1
                super().data_received(data)
                return
            cut = found + len(_END_OF_HEAD) - len(self._head_tail)
            super().data_received(data[:cut])
            conn = self.conn
            if conn.extensions or conn.handshake_exc is not None or self.transport.is_closing():
                self._head_seen = -1  # leave the rest to uvicorn, which refuses or closes
                if len(data) > cut:
                    super().data_received(data[cut:])
                return
            limits = [s for s in (conn.max_message_size, conn.max_fragment_size) if s is not None]
            frames = self._frames = ClientFrameReader(min(limits) if limits else None)
            data = data[cut:]
            if not data:
                return
        for header, raw in frames.split(data):
            if header and self._direct():
                self._hand_over(unmasked(raw, header))
            else:
                super().data_received(raw)  # after a failure: read and discarded, as before

    def _direct(self) -> bool:
        """May a complete text frame skip the parser and go to the handler now?"""
        conn = self.conn
        return (
            self._text_handler is not None
            and conn.state is State.OPEN
            and conn.current_size is None  # no fragmented message open: then it is an error
            and not conn.extensions
            and not self.close_sent
            and self.queue.empty()  # earlier messages wait for receive(): keep the order
            and not self._lingering
        )

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:
            # The app task was created but has not run yet: it sees the extension.
            extensions = self.scope.get("extensions")
            if extensions is not None:
                extensions[EXTENSION] = {}

    def handle_parser_exception(self) -> None:
        """uvicorn's, with a lingering close (see the module docstring). websockets has already
        queued the close frame (``Protocol.fail``; ``send_close`` for 1007), and after ``fail``
        discards what it is given; each later ``data_received`` lands here again and returns."""
        if self._lingering:
            return
        self._lingering = True
        self.stop_keepalive()
        close = self.conn.close_sent
        assert close is not None
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._text_handler = None  # the handler (the app's call) holds this protocol: let go
        super().connection_lost(exc)
        release_parser(self.conn)  # else websockets' parser keeps it in a cycle (its module)

    async def send(self, message: ASGISendEvent) -> None:
        ours = cast(Mapping[str, Any], message)  # uvicorn's types list only ASGI's own messages
        kind = ours["type"]
        if kind == SEND_BATCH:
            await self._send_batch(ours["texts"])
        elif kind == TEXT_HANDLER:
            self._set_text_handler(ours["handler"])
        else:
            await super().send(message)

    async def _send_batch(self, texts: list[str]) -> None:
        """uvicorn's checks for ``websocket.send``, in its order, then one write for all."""
        if not self.writable.is_set():
            await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if not self.handshake_complete or self.initial_response is not None:
            raise RuntimeError(f"Expected 'websocket.accept' before '{SEND_BATCH}'.")
        if self.close_sent:
            raise RuntimeError(
                f"Unexpected ASGI message '{SEND_BATCH}', after sending 'websocket.close'."
            )
        conn = self.conn
        if conn.state is not State.OPEN:
            raise ClientDisconnected()  # uvicorn: websockets' InvalidState → ClientDisconnected
        if not texts:
            return
        if conn.extensions:
            for text in texts:
                conn.send_text(text.encode())
            self.transport.write(b"".join(conn.data_to_send()))
            return
        chunks = conn.data_to_send()  # empty: uvicorn writes what it queues at once
        header = text_frame_header
        for text in texts:
            data = text.encode()
            chunks.append(header(len(data)))
            chunks.append(data)
        self.transport.write(b"".join(chunks))

    def _set_text_handler(self, handler: Callable[[str], None] | None) -> None:
        if self.disconnected:
            raise ClientDisconnected()
        self._text_handler = handler

    def send_receive_event_to_app(self) -> None:
        handler = self._text_handler
        if (
            handler is None
            or self.curr_msg_data_type != "text"
            or self.close_sent
            or not self.queue.empty()  # earlier messages wait for receive(): keep the order
        ):
            super().send_receive_event_to_app()
            return
        frames = self.frames
        self.frames = []
        self._hand_over(frames[0] if len(frames) == 1 else b"".join(frames))

    def _hand_over(self, data: bytes) -> None:
        """One whole text message to the handler, as uvicorn's ``send_receive_event_to_app``
        would queue it: invalid UTF-8 fails the connection with 1007, a failing handler with
        1011."""
        handler = self._text_handler
        assert handler is not None
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.logger.exception("Invalid UTF-8 sequence received from client.")
            # ``fail``, not uvicorn's ``send_close``: the parser then discards what follows, so
            # a later ping cannot make it answer after the lingering close's ``write_eof``.
            self.conn.fail(1007)
            self.handle_parser_exception()
            return
        try:
            handler(text)
        except Exception:
            self.logger.exception("Exception in the hamsa.stream text handler")
            self._text_handler = None
            self.conn.fail(1011, "internal error")
            self.handle_parser_exception()
