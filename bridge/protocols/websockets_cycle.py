"""websockets' sans-I/O parser keeps its protocol alive after the connection ends: let go of it.

websockets' ``Protocol`` parses with a generator (``self.parser = self.parse()``) whose frame
holds ``self``. The generator never returns: ``parse()`` and ``discard()`` end at a bare
``yield`` (``src/websockets/protocol.py`` in https://github.com/python-websockets/websockets,
13.x–17.x). So protocol → generator → frame → protocol is a reference cycle for the object's
whole life, and an ended connection is freed only by the cyclic GC. A call lives for seconds to
minutes, so its two protocols (the Twilio stream's ``ServerProtocol`` under uvicorn, the Hamsa
socket's ``ClientProtocol``) are old by then, and only a full collection frees them: about once
an hour in production (``bridge/gc_clock.py``). Until then each ended call left ~3.6 KB behind
(the protocols, their stream readers, close frames, ids and URIs): the RSS that grew by 5 MB
every 3 minutes in the soak at 200 calls (``BENCHMARKS.md``, issue 16), and a heavier full
collection when it came.

:func:`release_parser` closes the generator once the connection is over. ``close()`` raises
``GeneratorExit`` where it is suspended; the parser catches only ``Exception``, so it finishes,
drops its frame, and reference counting frees the protocol with its connection. Call it only
when no more bytes will be fed to the protocol (``receive_data``/``receive_eof`` would then raise
``StopIteration``): from ``connection_lost``. A connection that ended abnormally (no close frame,
a protocol error) keeps its error in ``parser_exc``, and a failed opening handshake in
``handshake_exc``; their tracebacks hold the parser's frame and so the protocol again: they are
dropped too (:func:`drop_tracebacks`).

* The server side: ``bridge.stream_transport.StreamProtocol.connection_lost`` (every uvicorn
  server here uses it: the bridge and both emulators).
* The client side: :class:`ReleasingClientConnection`, passed to websockets' asyncio
  ``connect(create_connection=...)`` (``bridge.calls.hamsa_session.connect_options``).
"""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection
from websockets.protocol import Protocol


def release_parser(protocol: Protocol) -> None:
    """Close ``protocol``'s parser generator (idempotent), and drop the traceback of the error
    that ended it, if any. The connection must be over."""
    protocol.parser.close()
    # An abnormal end (EOF without a close frame, a protocol error) keeps its exception in
    # ``parser_exc``, a failed handshake in ``handshake_exc``; their tracebacks hold the parser's
    # frame, whose locals hold the protocol. The exceptions stay (``ConnectionClosed.__cause__``,
    # what ``connect()`` raises), without their tracebacks.
    for error in (protocol.parser_exc, getattr(protocol, "handshake_exc", None)):
        if error is not None:
            drop_tracebacks(error)


class ReleasingClientConnection(ClientConnection):
    """websockets' asyncio client connection, whose protocol is freed by reference counting
    once the connection is lost (see the module docstring)."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # steps the parser to EOF (receive_eof), state CLOSED
        release_parser(self.protocol)


def drop_tracebacks(exc: BaseException) -> None:
    """Forget the tracebacks of a failed connect's exception and of every exception it chains
    (call it once the error was logged, if its traceback is wanted at all).

    websockets keeps a failed opening handshake's error on the connection's protocol
    (``ClientProtocol.handshake_exc``: an ``InvalidStatus`` for a refused upgrade, an
    ``InvalidMessage`` for a server that closed or answered garbage), then raises that very
    object. Raised, it holds in its traceback the frames of ``ClientConnection.handshake()`` and
    of ``connect()``, whose locals are the connection: connection → protocol → ``handshake_exc``
    → traceback → frame → connection. Such a cycle, and the transport, socket and buffers it
    keeps, is freed only by a full collection, which production runs rarely
    (``bridge/gc_clock.py``); without the tracebacks, reference counting frees the connection
    once the error is dropped.
    """
    pending = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        error.__traceback__ = None
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
