"""The uvicorn settings the bridge runs with (the emulators in ``bridge/dev`` share them)."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import Any, Final

import uvicorn

from bridge.stream_transport import StreamProtocol

WS_MAX_SIZE: Final = 1024 * 1024
"""The largest WebSocket message the bridge and the emulators take: a larger one fails the
connection with 1009 (``bridge.stream_transport``: a lingering close)."""


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    log_config: Any = None,
    ws_ping_interval: float | None = 20.0,
) -> uvicorn.Config:
    """The uvicorn settings the bridge and the emulators share.

    WebSockets are uvicorn's ``websockets-sansio`` protocol plus the bridge's ``hamsa.stream``
    extension (``bridge.stream_transport.StreamProtocol``: batched sends, direct text delivery);
    an app that does not use the extension sees uvicorn's behaviour unchanged."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=StreamProtocol,
        ws_max_size=WS_MAX_SIZE,
        ws_ping_interval=ws_ping_interval,
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=log_config,
        access_log=False,
        proxy_headers=False,
    )


class SignalledServer(uvicorn.Server):
    """uvicorn's server that records the shutdown signal instead of re-raising it itself.

    uvicorn re-raises a captured SIGINT/SIGTERM as it leaves ``serve()``. Inside
    ``asyncio.run`` that re-raise reaches the runner's own SIGINT handler, which only asks for
    the main task to be cancelled; the exit status then depends on where that task is when the
    request lands, and a loaded machine was seen exiting 0 after Ctrl-C. Here the signal is
    kept in :attr:`stop_signal`, and whoever ran the server calls :func:`exit_as_signalled`
    once the event loop is gone: the status no longer depends on the loop.
    """

    stop_signal: signal.Signals | None = None
    """The first shutdown signal received while serving (None: stopped otherwise)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                captured = self._captured_signals
                if captured and self.stop_signal is None:
                    self.stop_signal = signal.Signals(captured[0])
                captured.clear()  # uvicorn re-raises what is left here: nothing


def exit_as_signalled(stop_signal: signal.Signals | None) -> None:
    """After a server stopped on ``stop_signal``, leave as that signal means: Ctrl-C raises
    ``KeyboardInterrupt`` (the command line's exit status 130), SIGTERM ends the process by that
    signal with its default action (status 143, which systemd and Kubernetes count as a clean
    stop). Returns only when there was no signal."""
    if stop_signal is None:
        return
    if stop_signal == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(stop_signal, signal.SIG_DFL)
    signal.raise_signal(stop_signal)


LISTEN_BACKLOG = 2048
"""Connections the kernel queues before the server accepts them (uvicorn's default)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening, for ``uvicorn.Server.serve(sockets)``.

    Bound before the app starts, so that once the app says it is ready the port takes
    connections (queued until the loop accepts them) rather than refusing them until uvicorn
    binds after startup. ``IPPROTO_TCP`` is explicit: the asyncio loop disables Nagle's
    algorithm only on sockets whose protocol says TCP (accepted sockets inherit it), and a small
    frame would otherwise wait ~40 ms for a delayed ACK. ``OSError`` if it cannot listen.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
