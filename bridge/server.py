"""``hamsa-bridge serve``: the bridge under uvicorn."""

from __future__ import annotations

import importlib.util

import structlog
import uvicorn

from bridge.app import create_app
from bridge.dev.servers import uvicorn_config
from bridge.settings import Settings

log = structlog.get_logger("bridge.server")


def serve(settings: Settings, *, host: str, port: int) -> int:
    """Run until stopped; exit status 3 when startup fails (for example a voice preload)."""
    app = create_app(settings)
    config = uvicorn_config(app, host=host, port=port)
    config.loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        log.error("startup_failed", hint="see the error above")
        return 3
    return 0
