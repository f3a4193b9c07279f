"""Run an ASGI app under uvicorn inside the running event loop (the demo, emulators and tests).

``AppServer`` binds (port 0 by default), serves, and stops promptly: uvicorn's own ``Server``
polls for exit every 100 ms and sleeps 100 ms more on shutdown, which adds up over a test suite
that starts a server per test. Signal handlers are installed only when asked (command-line use),
so embedding a server never steals Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from typing import Any

import uvicorn

from bridge.uvicorn_setup import SignalledServer, uvicorn_config


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket (pass it to ``AppServer`` when the app must know its port)."""
    # IPPROTO_TCP matters: asyncio disables Nagle's algorithm only on sockets whose proto says
    # TCP (accepted sockets inherit it); with proto 0 small frames wait ~40 ms for delayed ACKs.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` can't be listened on (checked before printing "listening"), or None."""
    try:
        bind(host, port).close()
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


class _PromptServer(SignalledServer):
    """uvicorn's server with a prompt exit (no 100 ms poll) and optional signal handling."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals
        self.ready = asyncio.Event()
        self.wake = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self.handle_signals:
            with super().capture_signals():
                yield
        else:
            yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.ready.set()

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):  # signals only set should_exit: keep ticking
                    await self.wake.wait()
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn 0.54's sequence (stop listening, shut every connection down — WebSockets get
        # 1012 —, wait for connections and tasks, lifespan shutdown) without its fixed sleeps.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while self._draining():  # noqa: ASYNC110 (uvicorn offers no event to wait on)
                    await asyncio.sleep(0.005)
        except TimeoutError:
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()

    def _draining(self) -> bool:
        state = self.server_state
        return bool(state.connections or state.tasks) and not self.force_exit

    def request_exit(self) -> None:
        self.should_exit = True
        self.wake.set()


class AppServer:
    """An ASGI app under uvicorn in the running loop, as an async context manager."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        handle_signals: bool = False,
        log_config: Any = None,
        ws_ping_interval: float | None = 20.0,
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._sock = sock
        self._handle_signals = handle_signals
        self._log_config = log_config
        self._ws_ping_interval = ws_ping_interval
        self._server: _PromptServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the server is not started")
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def http_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind (unless given a socket), start serving, return once uvicorn is listening."""
        if self._sock is None:
            self._sock = bind(self.host, self._port)
        config = uvicorn_config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=self._log_config,
            ws_ping_interval=self._ws_ping_interval,
        )
        self._server = server = _PromptServer(config, handle_signals=self._handle_signals)
        self._task = task = asyncio.create_task(server.serve(sockets=[self._sock]))
        ready = asyncio.create_task(server.ready.wait())
        try:
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if task.done():
            self._sock.close()
            task.result()  # re-raise a crash
            raise RuntimeError("application startup failed (see the log above)")

    async def stop(self) -> None:
        """Close every connection (1012, as uvicorn does) and stop serving."""
        if self._server is not None and self._task is not None:
            self._server.request_exit()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()

    @property
    def stop_signal(self) -> signal.Signals | None:
        """The shutdown signal the server stopped on (``handle_signals``), else None."""
        return None if self._server is None else self._server.stop_signal

    async def wait_closed(self) -> None:
        """Wait until the server stops (a signal, or ``stop`` from elsewhere)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def __aenter__(self) -> AppServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def serving(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Serve ``app`` until the block exits; yields its base URL ``http://host:port``."""
    async with AppServer(app, host=host, port=port, sock=sock) as server:
        yield server.http_url


def reachable_url(server: AppServer) -> str:
    """``server.http_url`` as a client on this machine reaches it: a wildcard bind address
    (``0.0.0.0``, ``::``) is shown as loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)  # noqa: S104
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{server.port}"


def quiet_uvicorn() -> None:
    """Keep uvicorn's own lines (started, waiting for startup, running on, shutting down) out of
    a command's output; its warnings and errors still go to the log."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


async def serve_until_stopped(
    server: AppServer,
    *,
    banner: Callable[[AppServer], Iterable[str]],
    ready: asyncio.Event | None = None,
) -> signal.Signals | None:
    """Serve until a signal (or cancellation); the signal it stopped on (for
    :func:`~bridge.uvicorn_setup.exit_as_signalled`), None if stopped otherwise. Once listening,
    print ``banner(server)``'s lines
    on stdout (plain words, flushed: the first says where it listens, so a script reading it can
    connect at once) and set ``ready``. The command-line runner of the emulators."""
    async with server:
        for line in banner(server):
            print(line, flush=True)
        if ready is not None:
            ready.set()
        await server.wait_closed()
    return server.stop_signal
