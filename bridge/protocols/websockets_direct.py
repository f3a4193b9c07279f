"""A websockets asyncio client connection that hands each message to a callback as it is parsed.

websockets' asyncio connection queues every data frame for ``recv()`` (its ``Assembler``), so a
reader task must wake, await ``recv()`` and pass each message on. For the Hamsa socket, whose
replies arrive as a stream of audio chunks, that is a task wake and a queue round trip per chunk
before the reply's consumer wakes in its turn. :class:`DirectClientConnection` removes that hop:
after :meth:`~DirectClientConnection.deliver_to`, each complete, unfragmented message (text
decoded, binary as ``bytes``) goes to the handler synchronously from ``data_received``, in order.

What is not taken directly falls back to websockets' own path, for good:

- a fragmented message (a data frame without FIN, or a continuation);
- a text frame that is not valid UTF-8 (``recv()`` then fails the connection with 1007, as
  websockets always did);
- a handler that raises: the error is logged with its traceback and the frame's message is
  lost, like one a reader task dropped on an exception; later messages are queued.

From then on every message is queued for ``recv()``, and :attr:`delivery_ended` is resolved so
the reader goes back to ``recv()``. It is resolved too when the connection is lost. Control
frames (ping, pong, close) are websockets' as before.

What the caller must do: call ``deliver_to(handler)`` from the reader task. If it returns False,
messages are already queued (a pooled socket that received something while idle): read with
``recv()`` as usual. If True, await :attr:`delivery_ended`, then read what ``recv()`` still
gives until ``ConnectionClosed``; if the reader stops before (cancelled), it calls
:meth:`~DirectClientConnection.stop_delivery` first. The handler runs in the transport's
context, not the reader task's: it must carry its own (``contextvars.Context.run``) where it
logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from bridge.protocols.websockets_cycle import ReleasingClientConnection

__all__ = ["DirectClientConnection"]

log = logging.getLogger("bridge.hamsa")


class DirectClientConnection(ReleasingClientConnection):
    """websockets' asyncio client connection (freed by reference counting once closed, see
    ``websockets_cycle``) with direct delivery of messages (the module docstring)."""

    _handler: Callable[[str | bytes], None] | None = None
    delivery_ended: asyncio.Future[None] | None = None
    """Resolved when direct delivery stops: the connection was lost, or a message fell back to
    ``recv()`` (``None`` before ``deliver_to``)."""

    def deliver_to(self, handler: Callable[[str | bytes], None]) -> bool:
        """Hand each later message to ``handler``; False (and nothing changes) if messages wait
        for ``recv()`` already or the connection is lost."""
        if len(self.recv_messages.frames) or self.recv_messages.closed:
            return False
        self.delivery_ended = self.loop.create_future()
        self._handler = handler
        return True

    def process_event(self, event: Event) -> None:
        handler = self._handler
        if handler is None:  # and always during the opening handshake
            super().process_event(event)
            return
        assert isinstance(event, Frame)
        opcode = event.opcode
        if opcode is Opcode.BINARY and event.fin:
            message: str | bytes = bytes(event.data)
        elif opcode is Opcode.TEXT and event.fin:
            try:
                message = bytes(event.data).decode()
            except UnicodeDecodeError:
                self._fall_back()
                super().process_event(event)  # recv() fails the connection with 1007
                return
        elif opcode is Opcode.CONT or opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._fall_back()  # fragmented: websockets assembles it
            super().process_event(event)
            return
        else:
            super().process_event(event)  # ping, pong, close: websockets' own
            return
        try:
            handler(message)
        except Exception:
            log.exception("hamsa message handler failed; later messages go through recv()")
            self._fall_back()

    def stop_delivery(self) -> None:
        """No more direct delivery: later messages wait for ``recv()`` (a reader that stops
        early, cancelled, calls this so that its handler is not called after it)."""
        self._fall_back()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._fall_back()

    def _fall_back(self) -> None:
        self._handler = None
        ended = self.delivery_ended
        if ended is not None and not ended.done():
            ended.set_result(None)
