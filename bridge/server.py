"""``hamsa-bridge serve``: the bridge under uvicorn, draining calls on SIGTERM.

One process, one event loop (uvloop where installed); scale with more processes or replicas,
never ``--workers`` (a drain and the metrics are per process).
"""

from __future__ import annotations

import gc
import importlib.util

import structlog
from prometheus_client import start_http_server

from bridge.app import BridgeState, create_app
from bridge.drain import DrainingServer
from bridge.exit_codes import ExitCode
from bridge.settings import Settings
from bridge.uvicorn_setup import uvicorn_config

log = structlog.get_logger("bridge.server")


def serve(settings: Settings, *, host: str, port: int) -> int:
    """Run until stopped (0); 1 when startup fails (for example a voice preload). Missing
    settings raise ``ConfigError`` before anything listens (the CLI exits 2)."""
    app = create_app(settings)
    state: BridgeState = app.state.bridge_state
    config = uvicorn_config(app, host=host, port=port)
    config.loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    # The drain, not uvicorn, bounds how long shutdown waits for calls; after it nothing is left.
    config.timeout_graceful_shutdown = 10
    if settings.bridge_metrics_port:
        # Its own (internal) port: scraped by Prometheus, never routed by the public ingress.
        start_http_server(settings.bridge_metrics_port, addr=host, registry=state.metrics.registry)
        log.info("metrics_listening", port=settings.bridge_metrics_port)
    server = DrainingServer(config, state.drain)
    state.on_startup_failure = server.fail
    # The start-up heap lives as long as the process: keep it out of the full collections that
    # paused the event loop for ~88 ms at 130 calls (bench/capacity.py; BENCHMARKS.md)
    gc.collect()
    gc.freeze()
    server.run()
    if not server.started or server.failed:
        log.error("startup_failed", hint="see the error above")
        return ExitCode.FAILURE
    return ExitCode.OK
