"""``hamsa-bridge serve``: the bridge under uvicorn, draining calls on SIGTERM.

One process, one event loop (uvloop where installed). ``--workers N`` (``BRIDGE_WORKERS``; 0, one
per usable CPU) runs N such processes behind one port under a small supervisor
(``bridge.workers``): each worker is the bridge below, with what it must share with its siblings
(the metrics, the stream tokens already used); ``--workers 1`` is one process, no supervisor.
"""

from __future__ import annotations

import gc
import importlib.util
import socket

import structlog
import uvicorn
from prometheus_client import start_http_server
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.app import BridgeState, create_app
from bridge.calls.registry import SharedUsedTokens
from bridge.drain import DrainingServer
from bridge.exit_codes import ExitCode
from bridge.gc_clock import full_collection_threshold
from bridge.metrics import CONTENT_TYPE_LATEST, Metrics
from bridge.settings import Settings
from bridge.uvicorn_setup import exit_as_signalled, listening_socket, uvicorn_config
from bridge.workers import WorkerSlot, supervise

log = structlog.get_logger("bridge.server")

GC_FULL_EVERY = 1000
"""Generation-1 collections between two full collections when the young collections' clock is
off (``BRIDGE_GC_TICK_MS=0``; CPython's default: 10): about 45 min at 200 speaking calls (~0.37
a second), longer when less busy. On the clock, ``bridge.gc_clock.full_collection_threshold``
makes it about an hour whatever the load. Cyclic garbage from rarer paths (errors, IVR,
announcements) still gets collected; a call's normal end makes none."""


def serve(settings: Settings, *, host: str, port: int, workers: int = 1) -> int:
    """Run until stopped (0, or the stopping signal raised again); 1 when startup fails (for
    example a voice preload). Missing settings raise ``ConfigError`` before anything listens (the
    CLI exits 2). ``workers`` > 1: that many processes (``bridge.workers``)."""
    if workers > 1:
        # Built once here only for its checks (a ConfigError before anything listens, reported
        # once), then dropped: each worker builds its own after the fork.
        create_app(settings)
        return supervise(settings, host=host, port=port, workers=workers, worker_main=serve_worker)
    app = create_app(settings)
    state: BridgeState = app.state.bridge_state
    config = _config(app, host, port)
    try:
        # Listening before the app's startup: once it logs ``bridge_ready`` a call connects.
        sock = listening_socket(host, port)
    except OSError as exc:
        log.error("startup_failed", reason=f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return ExitCode.FAILURE
    if settings.bridge_metrics_port:
        # Its own (internal) port: scraped by Prometheus, never routed by the public ingress.
        start_http_server(settings.bridge_metrics_port, addr=host, registry=state.metrics.exposed)
        log.info("metrics_listening", port=settings.bridge_metrics_port)
    try:
        return _run(config, state, [sock], announce_listening=True)
    finally:
        sock.close()


def serve_worker(settings: Settings, slot: WorkerSlot) -> int:
    """One worker of ``serve --workers N``, in its own process, on the supervisor's sockets."""
    metrics = Metrics(multiprocess_dir=slot.metrics_dir)
    app = create_app(
        settings,
        metrics=metrics,
        used_tokens=SharedUsedTokens(slot.used_tokens),
        worker=(slot.index, slot.count),
    )
    state: BridgeState = app.state.bridge_state
    served: ASGIApp = app
    if settings.bridge_metrics_port:
        # Every worker accepts on the metrics socket too; what arrives there gets /metrics only.
        served = _metrics_port_apart(app, metrics, settings.bridge_metrics_port)
    return _run(_config(served, slot.host, slot.port), state, list(slot.sockets))


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    config = uvicorn_config(app, host=host, port=port)
    config.loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    # The drain, not uvicorn, bounds how long shutdown waits for calls; after it nothing is left.
    config.timeout_graceful_shutdown = 10
    return config


def _run(
    config: uvicorn.Config,
    state: BridgeState,
    sockets: list[socket.socket] | None,
    *,
    announce_listening: bool = False,
) -> int:
    server = DrainingServer(config, state.drain)
    server.announce_listening = announce_listening
    state.on_startup_failure = server.fail
    # The start-up heap lives as long as the process: keep it out of the full collections that
    # paused the event loop for ~88 ms at 130 calls (bench/capacity.py; BENCHMARKS.md)
    gc.collect()
    gc.freeze()
    # A full collection still scans every live call (~300 objects each: 20-30 ms at 200 calls,
    # found by BRIDGE_STALL_REPORT_MS), and with the default threshold one ran every ~50 calls
    # ended. An ended call is freed by reference counting (``Call.run`` breaks its one cycle),
    # so those collections found nothing: make them rare (https://docs.python.org/3/library/
    # gc.html#gc.set_threshold). Young collections run on a clock (app lifespan, gc_clock.py),
    # which sets how often generation-1 collections come.
    young, middle, _ = gc.get_threshold()
    tick = state.settings.bridge_gc_tick_ms / 1000
    gc.set_threshold(young, middle, full_collection_threshold(tick) if tick else GC_FULL_EVERY)
    server.run(sockets)
    exit_as_signalled(server.stop_signal)
    if not server.started or server.failed:
        log.error("startup_failed", hint="see the error above")
        return ExitCode.FAILURE
    return ExitCode.OK


def _metrics_port_apart(app: ASGIApp, metrics: Metrics, metrics_port: int) -> ASGIApp:
    """``app``, except that a request to ``metrics_port`` (the local port it arrived on) reaches
    only ``GET /metrics`` (404 for anything else), as ``start_http_server`` serves it alone."""

    async def scrape(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    metrics_only = Router(routes=[Route("/metrics", scrape, methods=["GET"])])

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server is not None and server[1] == metrics_port:
            await metrics_only(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch
