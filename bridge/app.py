"""The Starlette application: Twilio webhook, Media Streams WebSocket, health endpoints.

Public: ``POST /twiml/inbound`` and ``POST /twilio/status`` (signature-checked) and the stream
WebSocket (signature-checked when Twilio signs the handshake, token-checked always). With
``BRIDGE_API_TOKEN``: ``POST /v1/announcements`` and ``GET /v1/announcements/{id}`` (bearer
token). Internal: ``GET /livez``, ``GET /readyz``, ``GET /metrics`` (unless
``BRIDGE_METRICS_PORT`` moves it to its own port).

Capacity and drain (docs/operations.md, Capacity): a stream handshake is refused with 503 (before
``accept``, so no Hamsa socket; Twilio logs 31920 and moves on to the TwiML after ``</Connect>``)
while starting, while draining, when ``BRIDGE_MAX_CALLS`` calls are in progress, and when
``BRIDGE_MAX_PENDING_STREAMS`` streams are awaiting their ``start``; ``/readyz`` is 503 in the first
three cases. A stream awaiting its ``start`` is not a call: if its ``start`` would make call
``BRIDGE_MAX_CALLS`` + 1, the stream is closed with 1008 (``Call._admit``).

Features: what a call does is decided at its ``start`` by the admission hooks ``create_app``
composes (``bridge.calls.context``): any given by the caller, then the announcements'
(``v2`` tokens), then the inbound calls' (``v1`` tokens: the greeting, the IVR in
``BRIDGE_IVR_FLOW``, or the ``script`` given). Each gets what it needs (settings, the store,
the REST client, clocks) here, at construction; the call itself never sees them.

The announcements database is opened on first need (an announcement's stream or status
callback, or the API), so a bridge that only answers calls never creates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from bridge.announcements.admission import AnnouncementStreams
from bridge.announcements.api import AnnouncementApi
from bridge.announcements.retention import SWEEP_INTERVAL
from bridge.announcements.service import AnnouncementService, LazyStore
from bridge.announcements.spec import outcome_of_status
from bridge.calls.call import Call, CallDeps, CallSummary
from bridge.calls.context import AdmissionHook, CallScript, aclose
from bridge.calls.hamsa_session import Connector
from bridge.calls.inbound import InboundStreams, greeting_script
from bridge.calls.presynth import Presynthesizer
from bridge.calls.prompt_cache import PromptCache
from bridge.calls.registry import CallRegistry, OpenStreams, UsedTokens
from bridge.calls.start_policy import HamsaPace
from bridge.calls.warm_pool import WarmHamsaPool
from bridge.drain import DrainController, Phase
from bridge.errors import ConfigError, PreloadError, StoreError
from bridge.gc_clock import collect_on_a_clock
from bridge.logs import note_handshake_denied
from bridge.metrics import CONTENT_TYPE_LATEST, Metrics
from bridge.preload import preload_voices, voices_to_preload
from bridge.protocols.twilio_ids import CALL_SID as _CALL_SID
from bridge.settings import Settings
from bridge.signatures import TwilioSignatures
from bridge.stall_report import StallWatchdog
from bridge.store import check_database_url
from bridge.stream_token import issue_token
from bridge.twilio_rest_client import TwilioApi
from twiml.inbound import connect_stream

log = structlog.get_logger("bridge.app")

INBOUND_PATH = "/twiml/inbound"
STATUS_PATH = "/twilio/status"
_ANNOUNCEMENT_ID = re.compile(r"^an_[0-9a-f]{24}$")


@dataclass(slots=True)
class BridgeState:
    settings: Settings
    signatures: TwilioSignatures
    registry: CallRegistry
    deps: CallDeps
    wall_clock: Callable[[], float]
    store: LazyStore
    """The announcements database (opened on first need)."""
    metrics: Metrics
    streams: OpenStreams
    drain: DrainController
    announcements: AnnouncementService | None = None
    """The HTTP API's service (``None`` without ``BRIDGE_API_TOKEN``)."""
    recent_calls: deque[CallSummary] = field(default_factory=lambda: deque(maxlen=32))
    """The last calls' summaries (the demo's timeline reads the start policy's decisions)."""
    warm_pool: WarmHamsaPool | None = None
    """Hamsa sockets opened ahead of the calls (``None`` with ``HAMSA_WARM_CONNECTIONS=0``)."""
    startup: asyncio.Task[None] | None = None
    """Voice preload and the rest of startup, when it runs behind a listening server."""
    on_startup_failure: Callable[[], None] | None = None
    """Called if startup fails in the background (``serve`` then exits with status 1)."""
    worker: tuple[int, int] | None = None
    """``(this worker's number, how many)`` under ``serve --workers N``; None: one process."""

    async def wait_started(self) -> None:
        """Return once the bridge accepts calls; raises ``PreloadError`` if startup failed."""
        if self.startup is not None:
            await asyncio.shield(self.startup)

    @property
    def ready(self) -> bool:
        return self.drain.accepting

    @property
    def at_capacity(self) -> bool:
        """Calls in progress reached ``BRIDGE_MAX_CALLS`` (streams still awaiting their start
        are bounded separately, so strangers cannot use up call capacity)."""
        return len(self.registry) >= self.settings.bridge_max_calls


def check_serving_settings(settings: Settings) -> None:
    """Refuse to serve without what security and Hamsa need (raised before listening)."""
    missing = [
        name
        for name, value in (
            ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token.get_secret_value()),
            ("BRIDGE_PUBLIC_URL", settings.bridge_public_url),
            ("HAMSA_API_KEY", settings.hamsa_api_key.get_secret_value()),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"missing required settings: {', '.join(missing)} (see README, Configuration)"
        )


def check_api_settings(settings: Settings) -> None:
    """The announcements API places calls: it needs the Twilio account and a usable database."""
    if not settings.twilio_account_sid:
        raise ConfigError(
            "BRIDGE_API_TOKEN enables the announcements API, which places calls: set "
            "TWILIO_ACCOUNT_SID (and TWILIO_PHONE_NUMBER, the default caller ID)"
        )
    try:
        check_database_url(settings.bridge_database_url)
    except StoreError as exc:
        raise ConfigError(exc.message) from None


def create_app(
    settings: Settings,
    *,
    hamsa_connector: Connector = connect,
    script: CallScript = greeting_script,
    admission: Sequence[AdmissionHook] = (),
    wall_clock: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    metrics: Metrics | None = None,
    used_tokens: UsedTokens | None = None,
    worker: tuple[int, int] | None = None,
) -> Starlette:
    """The bridge app. ``script`` is what each inbound call does once authenticated (default:
    the greeting, or the flow in ``BRIDGE_IVR_FLOW``). ``admission``: hooks asked before the
    bridge's own (``bridge.calls.context``); the app closes them (``aclose``) at shutdown.

    A worker of ``serve --workers N`` passes what it shares with its siblings: ``metrics``
    (multiprocess), ``used_tokens`` (the stream tokens any worker accepted; closed at shutdown)
    and ``worker`` (its number, and how many), which ``/readyz`` names."""
    check_serving_settings(settings)
    if settings.bridge_ivr_flow and script is greeting_script:
        from bridge.ivr.feature import load_ivr_script

        script = load_ivr_script(settings)
    cache = PromptCache.from_settings(settings)
    registry = CallRegistry(used_tokens)
    streams = OpenStreams()
    metrics = metrics if metrics is not None else Metrics(process=True)
    metrics.track(lambda: len(registry), lambda: len(streams))
    metrics.max_calls.set(settings.bridge_max_calls)
    store = LazyStore(settings.bridge_database_url)
    # Warm Hamsa sockets: calls connect through the pool, which hands each one an already open
    # socket (or connects directly when it has none). Filled once the bridge starts serving.
    warm_pool: WarmHamsaPool | None = None
    if settings.hamsa_warm_connections > 0:
        warm_pool = WarmHamsaPool(settings, connector=hamsa_connector, metrics=metrics)
        hamsa_connector = warm_pool

    def twilio_api() -> TwilioApi:
        return TwilioApi(settings)

    service: AnnouncementService | None = None
    presynth: Presynthesizer | None = None
    api_routes: list[Route] = []
    if settings.bridge_api_token.get_secret_value():
        check_api_settings(settings)
        if settings.bridge_presynth_connections > 0:
            # Through the app's connector: a warm socket when the pool has one.
            presynth = Presynthesizer(settings, cache, connector=hamsa_connector, metrics=metrics)
        service = AnnouncementService(
            settings, store, twilio_api, wall_clock=wall_clock, presynth=presynth
        )
        api_routes = AnnouncementApi(settings, service).routes()
    # Announcement streams are served whether or not this process places calls (any replica
    # may receive one); the database is opened on the first.
    hooks: list[AdmissionHook] = [
        *admission,
        AnnouncementStreams(
            settings,
            store=store.get,
            twilio_api=twilio_api,
            wall_clock=wall_clock,
            metrics=metrics,
            presynth=presynth,
        ),
        InboundStreams(settings, script, wall_clock=wall_clock),
    ]
    state = BridgeState(
        settings=settings,
        signatures=TwilioSignatures(settings.twilio_auth_token.get_secret_value()),
        registry=registry,
        deps=CallDeps(
            settings,
            registry,
            hamsa_connector,
            hooks,
            prompt_cache=cache,
            hamsa_pace=HamsaPace(),
            wall_clock=wall_clock,
            clock=clock,
            metrics=metrics,
        ),
        wall_clock=wall_clock,
        store=store,
        announcements=service,
        metrics=metrics,
        streams=streams,
        drain=DrainController(
            streams,
            timeout=settings.bridge_drain_timeout,
            metrics=metrics,
            on_drain=[warm_pool.aclose] if warm_pool is not None else [],
        ),
        warm_pool=warm_pool,
        worker=worker,
    )

    async def start_serving() -> None:
        """Preload voices, resume announcements, then accept calls (``/readyz`` 200)."""
        try:
            await preload_voices(settings)
        except PreloadError as exc:
            log.error("startup_failed", reason=str(exc), voice_id=exc.voice_id)
            if state.on_startup_failure is not None:
                state.on_startup_failure()
            raise
        if warm_pool is not None:
            # Bounded: with Hamsa slow or down the bridge serves anyway (calls connect directly).
            warm_pool.start()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.hamsa_connect_timeout):
                    await warm_pool.wait_filled()
        if service is not None:
            await service.start()  # may place calls: only once their streams can be accepted
        state.drain.serving()
        log.info(
            "bridge_ready",
            stream_url=settings.stream_url,
            preloaded=len(settings.hamsa_preload_voices),
            announcements_api=service is not None,
            max_calls=settings.bridge_max_calls,
            warm_hamsa_sockets=warm_pool.idle if warm_pool is not None else 0,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        lag_monitor = asyncio.create_task(_watch_loop_lag(metrics))
        stall_watchdog = None
        if settings.bridge_stall_report_ms:
            stall_watchdog = StallWatchdog(settings.bridge_stall_report_ms / 1000)
            stall_watchdog.start()
        sweeper = asyncio.create_task(_sweep_held_audio(cache))
        gc_clock = None
        if settings.bridge_gc_tick_ms:
            gc_clock = asyncio.create_task(collect_on_a_clock(settings.bridge_gc_tick_ms / 1000))
        if voices_to_preload(settings):
            # Listen while preloading: /livez answers, /readyz and new streams say "starting".
            state.startup = asyncio.create_task(start_serving())
        else:
            await start_serving()
        try:
            yield {"bridge": state}
        finally:
            if state.startup is not None and not state.startup.done():
                state.startup.cancel()
            if state.startup is not None:
                with contextlib.suppress(asyncio.CancelledError, PreloadError):
                    await state.startup
            # Embedded servers (tests, demo) stop without a signal: drain is then a no-op or ends
            # what is left at once; under ``serve`` the DrainingServer drained before this.
            if state.drain.phase is Phase.SERVING:
                state.drain.phase = Phase.STOPPED
            for monitor in (lag_monitor, sweeper, gc_clock):
                if monitor is None:
                    continue
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
            if stall_watchdog is not None:
                stall_watchdog.stop()
            if warm_pool is not None:
                await warm_pool.aclose()
            if service is not None:
                await service.aclose()
                if service.presynth is not None:
                    await service.presynth.aclose()
            await store.close()
            for hook in hooks:
                await aclose(hook)
            if used_tokens is not None:
                used_tokens.close()

    app = Starlette(
        routes=[
            Route(INBOUND_PATH, inbound_webhook, methods=["POST"]),
            Route(STATUS_PATH, call_status, methods=["POST"]),
            WebSocketRoute(settings.bridge_stream_path, _MediaStreamRoute()),
            Route("/livez", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *(
                [Route("/metrics", metrics_endpoint, methods=["GET"])]
                if not settings.bridge_metrics_port
                else []
            ),
            *api_routes,
        ],
        lifespan=lifespan,
    )
    app.state.bridge_state = state
    return app


def _state(conn: Request | WebSocket[Any]) -> BridgeState:
    bridge: BridgeState = conn.state.bridge
    return bridge


async def _signed_form(request: Request) -> dict[str, str | list[str]] | None:
    """The posted form if ``X-Twilio-Signature`` is valid for the public URL, else None.

    The URL signed is ``BRIDGE_PUBLIC_URL`` + path (+ query), never the Host header; every posted
    field counts, repeated keys included (docs/twilio-streams.md §7.1).
    """
    state = _state(request)
    form = await request.form()
    params: dict[str, str | list[str]] = {}
    for key, value in form.multi_items():
        text = value if isinstance(value, str) else ""
        previous: str | list[str] | None = params.get(key)
        if previous is None:
            params[key] = text
        elif isinstance(previous, list):
            previous.append(text)
        else:
            params[key] = [previous, text]
    url = state.settings.webhook_url(request.url.path)
    if request.url.query:
        url += "?" + request.url.query
    if not state.signatures.webhook_ok(url, params, request.headers.get("x-twilio-signature")):
        log.warning("webhook_signature_invalid", path=request.url.path)
        return None
    return params


async def inbound_webhook(request: Request) -> Response:
    """Twilio's Voice webhook for an incoming call: TwiML that connects it to our stream."""
    state = _state(request)
    settings = state.settings
    params = await _signed_form(request)
    if params is None:
        return PlainTextResponse("invalid Twilio signature", status_code=403)
    call_sid = params.get("CallSid")
    if not isinstance(call_sid, str) or not _CALL_SID.match(call_sid):
        return PlainTextResponse("CallSid missing or malformed", status_code=400)
    token = issue_token(
        settings.twilio_auth_token.get_secret_value().encode(),
        call_sid,
        now=state.wall_clock(),
        ttl=settings.bridge_stream_token_ttl,
    )
    parameters = {"token": token, "direction": "inbound"}
    for name, field_name in (("from", "From"), ("to", "To")):
        number = params.get(field_name)
        if isinstance(number, str) and number:
            parameters[name] = number
    twiml = connect_stream(settings.stream_url, parameters)
    log.info("webhook_answered", call_sid=call_sid)
    return Response(twiml, media_type="application/xml")


async def call_status(request: Request) -> Response:
    """Twilio's call-status callback (signed): logged per call; 204.

    An announcement's calls carry ``?announcement=<id>`` (part of the signed URL): their status
    is recorded in the store, whichever replica receives it.
    """
    params = await _signed_form(request)
    if params is None:
        return PlainTextResponse("invalid Twilio signature", status_code=403)
    fields = {
        name: value
        for name in (
            "CallSid",
            "CallStatus",
            "CallDuration",
            "SequenceNumber",
            "Direction",
            "AnsweredBy",
        )
        if isinstance(value := params.get(name), str)
    }
    log.info("call_status", **{_snake(k): v for k, v in fields.items()})
    announcement = request.query_params.get("announcement")
    if announcement is not None:
        return await _announcement_status(_state(request), announcement, fields)
    return Response(status_code=204)


async def _announcement_status(
    state: BridgeState, announcement_id: str, fields: dict[str, str]
) -> Response:
    """Record an announcement call's status; 204 even for an unknown id (Twilio can do nothing
    about it), 503 if the database is unavailable (the outcome watcher then polls)."""
    status = fields.get("CallStatus")
    if not status:
        return PlainTextResponse("CallStatus missing", status_code=400)
    if not _ANNOUNCEMENT_ID.match(announcement_id):
        log.warning("announcement_status_unknown", announcement=announcement_id[:40])
        return Response(status_code=204)
    call_sid = fields.get("CallSid", "")
    sequence = fields.get("SequenceNumber", "")
    duration = fields.get("CallDuration", "")
    final = outcome_of_status(status) is not None
    try:
        store = await state.store.get()
        record = await store.record_status(
            announcement_id,
            status,
            now=state.wall_clock(),
            seq=int(sequence) if sequence.isdigit() else None,
            call_sid=call_sid if _CALL_SID.match(call_sid) else None,
            duration=int(duration) if final and duration.isdigit() else None,
            answered_by=fields.get("AnsweredBy") or None,
        )
    except StoreError as exc:
        log.error("announcement_status_not_recorded", announcement=announcement_id, error=str(exc))
        return PlainTextResponse("database unavailable", status_code=503)
    if record is None:
        log.warning("announcement_status_unknown", announcement=announcement_id)
    return Response(status_code=204)


class _MediaStreamRoute:
    """The stream route as a plain ASGI app, so the call gets the raw ASGI ``send``: Starlette's
    ``WebSocket.send`` refuses the ``hamsa.stream`` messages (bridge/stream_transport.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await media_stream(WebSocket(scope, receive=receive, send=send), asgi_send=send)


async def media_stream(websocket: WebSocket[Any], *, asgi_send: Send | None = None) -> None:
    """The Twilio Media Streams WebSocket of one call (``asgi_send``: see ``Call``)."""
    state = _state(websocket)
    signature = websocket.headers.get("x-twilio-signature")
    refusal = _refusal(state, signature)
    if refusal is not None:
        reason, status, body = refusal
        state.metrics.streams_refused.labels(reason=reason).inc()
        note_handshake_denied()
        await websocket.send_denial_response(PlainTextResponse(body, status_code=status))
        return
    # Twilio may not sign <Connect><Stream> handshakes; the per-call token decides either way.
    await websocket.accept()
    call = Call(websocket, state.deps, handshake_signed=signature is not None, asgi_send=asgi_send)
    state.streams.add(call)
    try:
        await call.run()
    except Exception:
        call.summary.outcome = "failed"
        log.exception(
            "call_crashed", call_sid=call.summary.call_sid, stream_sid=call.summary.stream_sid
        )
    finally:
        state.streams.discard(call)
        if call.summary.call_sid is not None:
            state.recent_calls.append(call.summary)
        state.metrics.call_ended(call.summary.outcome)


def _refusal(state: BridgeState, signature: str | None) -> tuple[str, int, str] | None:
    """Why a stream handshake must be refused (metric reason, HTTP status, body), or None.

    Each refusal is logged once, as ``stream_refused`` with its ``reason`` and ``status``
    (uvicorn's own lines for the denied handshake are dropped: ``bridge.logs``)."""
    settings = state.settings
    if signature is not None and not state.signatures.handshake_ok(settings.stream_url, signature):
        log.warning("stream_refused", reason="signature", status=403)
        return "signature", 403, "invalid Twilio signature"
    phase = state.drain.phase
    if phase is not Phase.SERVING:
        reason = "starting" if phase is Phase.STARTING else "draining"
        log.info("stream_refused", reason=reason, status=503)
        return reason, 503, f"bridge {phase.value}"
    if state.at_capacity:
        log.warning(
            "stream_refused", reason="capacity", status=503, max_calls=settings.bridge_max_calls
        )
        return "capacity", 503, "bridge at capacity"
    unauthenticated = len(state.streams) - len(state.registry)
    if unauthenticated >= settings.bridge_max_pending_streams:
        # Streams that have not yet proven a token hold a socket for up to the start timeout:
        # bound how many strangers can do that at once.
        log.warning(
            "stream_refused",
            reason="pending_limit",
            status=503,
            pending=unauthenticated,
            max_pending_streams=settings.bridge_max_pending_streams,
        )
        return "pending_limit", 503, "busy"
    return None


async def livez(request: Request) -> Response:
    """The process and its event loop answer (never depends on Hamsa or the database)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when a new call would be accepted; 503 while starting, draining, or at capacity.

    Under ``serve --workers N`` it answers for the worker that took the request (its calls, its
    ``BRIDGE_MAX_CALLS``): the body says so (``scope``, ``worker``, ``workers``)."""
    state = _state(request)
    phase = state.drain.phase
    body: dict[str, object] = {
        "active_calls": len(state.registry),
        "open_streams": len(state.streams),
        "max_calls": state.settings.bridge_max_calls,
    }
    if state.worker is not None:
        body |= {"scope": "worker", "worker": state.worker[0], "workers": state.worker[1]}
    if phase is not Phase.SERVING:
        return JSONResponse({"status": phase.value, **body}, status_code=503)
    if state.at_capacity:
        return JSONResponse({"status": "at_capacity", **body}, status_code=503)
    return JSONResponse({"status": "ready", **body})


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition (keep it internal: see README, Endpoints)."""
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


LOOP_LAG_INTERVAL = 0.5


async def _sweep_held_audio(cache: PromptCache) -> None:
    """Remove announcement audio whose hold expired (a placing process that died before it let
    go; see ``bridge.announcements.retention``), at startup and every ``SWEEP_INTERVAL``."""
    while True:
        removed = cache.sweep()
        if removed:
            log.info("held_audio_swept", entries=removed)
        await asyncio.sleep(SWEEP_INTERVAL)


async def _watch_loop_lag(metrics: Metrics) -> None:
    """Sample how late the event loop wakes a timer (time.monotonic: a real-time measure); a
    worker also writes its scrape-time gauges for whichever worker answers ``/metrics``."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LOOP_LAG_INTERVAL)
        metrics.event_loop_lag.observe(max(0.0, loop.time() - before - LOOP_LAG_INTERVAL))
        metrics.refresh()


def _snake(name: str) -> str:
    """``CallSid`` → ``call_sid`` (log keys)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
