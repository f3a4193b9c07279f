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
``StopIteration``): from ``connection_lost``.

* The server side: ``bridge.stream_transport.StreamProtocol.connection_lost`` (every uvicorn
  server here uses it: the bridge and both emulators).
* The client side: :class:`ReleasingClientConnection`, passed to websockets' asyncio
  ``connect(create_connection=...)`` (``bridge.calls.hamsa_session.connect_options``).
"""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection
from websockets.protocol import Protocol


def release_parser(protocol: Protocol) -> None:
    """Close ``protocol``'s parser generator (idempotent). The connection must be over."""
    protocol.parser.close()


class ReleasingClientConnection(ClientConnection):
    """websockets' asyncio client connection, whose protocol is freed by reference counting
    once the connection is lost (see the module docstring)."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # steps the parser to EOF (receive_eof), state CLOSED
        release_parser(self.protocol)
