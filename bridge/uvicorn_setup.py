"""The uvicorn settings the bridge runs with (the emulators in ``bridge/dev`` share them)."""

from __future__ import annotations

from typing import Any

import uvicorn

from bridge.stream_transport import StreamProtocol


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
        ws_max_size=1024 * 1024,
        ws_ping_interval=ws_ping_interval,
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=log_config,
        access_log=False,
        proxy_headers=False,
    )
