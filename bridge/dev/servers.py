"""Run an ASGI app under uvicorn inside the current event loop, on a port bound up front.

Used by ``hamsa-bridge demo`` and the loopback tests: bind port 0, learn the real port, serve,
and shut down cleanly on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    # IPPROTO_TCP matters: asyncio disables Nagle's algorithm only on sockets whose proto says
    # TCP (accepted sockets inherit it); with proto 0 small frames wait ~40 ms for delayed ACKs.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def uvicorn_config(app: Any, *, host: str, port: int, log_config: Any = None) -> uvicorn.Config:
    """The uvicorn settings the bridge and the emulators share."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_max_size=1024 * 1024,
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=log_config,
        access_log=False,
        proxy_headers=False,
    )


@contextlib.asynccontextmanager
async def serving(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Serve ``app`` until the block exits; yields its base URL ``http://host:port``.

    Pass ``sock`` (from ``bind``) when the app must know its own port before it is built.
    """
    sock = sock or bind(host, port)
    host, real_port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn_config(app, host=host, port=real_port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(0.005)
        yield f"http://{host}:{real_port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
