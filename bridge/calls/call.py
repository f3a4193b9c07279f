"""One phone call: a Twilio Media Stream, its Hamsa socket, its playback, and what it says.

Life of a call (``CallPhase``)::

    AWAITING_START --start, admitted--> ACTIVE --script done / stop / hang-up--> ENDED
          |                                \\--Hamsa key rejected--------------> ENDED
          \\--no start, refused at admission--> REJECTED  (no Hamsa socket is ever opened)

What a call does is not known here: at ``start`` the app's admission hooks (``CallDeps.admission``:
the announcements', then the inbound calls' running the greeting or the IVR) say whether the
stream is authentic and which script it runs; the call then applies its own checks (single-use
token, capacity, one stream per CallSid) and the hook's ``claim``. The seam, and what each side
does, is documented in ``bridge.calls.context``.

While ACTIVE, an ``asyncio.TaskGroup`` supervises one reader of the Twilio socket, the playback
writer (the only writer of that socket), the Hamsa socket's reader, and the script the
admission named (e.g. ``greeting_script``: speak the greeting; a key pressed during it skips it).
A script that ``Listens`` (and says so at ``start``) also gets a ``Listener``: the caller's audio
is decoded from then on and cut into utterances, whose transcripts are asked for in tasks of the
same group; every other call counts the caller's audio without decoding it.
When the script ends the bridge closes the stream; with nothing after ``</Connect>`` in the
TwiML, Twilio then hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from bridge.calls.context import (
    Admission,
    AdmissionHook,
    CallContext,
    CallScript,
    KnowsItsFirstWords,
    Listens,
    Rejection,
)
from bridge.calls.hamsa_session import Connector, HamsaSession
from bridge.calls.listener import Listener, detector_for
from bridge.calls.playback import Playback
from bridge.calls.prompt_cache import PromptCache
from bridge.calls.registry import CallRegistry
from bridge.calls.speech import Speaker
from bridge.calls.start_policy import HamsaPace
from bridge.errors import HamsaError, InvalidState
from bridge.metrics import Metrics
from bridge.protocols.twilio_stream_server import (
    DtmfReceived,
    Event,
    MarkReceived,
    MediaReceived,
    Started,
    Stopped,
    TwilioMediaStream,
    Violation,
)
from bridge.settings import Settings
from bridge.stream_transport import EXTENSION, SEND_BATCH, TEXT_HANDLER

log = structlog.get_logger("bridge.call")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009


class CallPhase(enum.Enum):
    AWAITING_START = "awaiting_start"
    ACTIVE = "active"
    REJECTED = "rejected"
    ENDED = "ended"


class _SocketGone(Exception):
    """The Twilio socket can no longer be written."""


@dataclass(slots=True)
class CallSummary:
    call_sid: str | None = None
    stream_sid: str | None = None
    outcome: str = "unknown"
    reason: str = ""
    started_at: float = 0.0
    duration: float = 0.0
    hamsa_connections: int = 0
    hamsa_requests: int = 0
    frames_sent: int = 0
    clears: int = 0
    underruns: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)


def opens_hamsa_at_start(script: CallScript, ctx: CallContext) -> bool:
    """Whether the call opens its Hamsa socket when the stream starts (see
    ``KnowsItsFirstWords``); any doubt, including a failing check, says yes."""
    if not isinstance(script, KnowsItsFirstWords):
        return True
    try:
        return script.needs_synthesis_at_start(ctx)
    except Exception:  # a bug in a check must cost latency, not the call
        log.exception("first_words_check_failed")
        return True


def takes_speech(script: CallScript, ctx: CallContext) -> bool:
    """Whether the call decodes the caller's audio for its script (see ``Listens``); any doubt,
    including a failing check, says no: a call that cannot listen still takes keys."""
    if not isinstance(script, Listens):
        return False
    try:
        return bool(script.takes_speech(ctx))
    except Exception:  # a bug in a check must cost speech input, not the call
        log.exception("takes_speech_check_failed")
        return False


@dataclass(slots=True)
class CallDeps:
    """What a call needs from the app (built once, in ``create_app``)."""

    settings: Settings
    registry: CallRegistry
    hamsa_connector: Connector
    admission: Sequence[AdmissionHook]
    """The features' admission hooks, asked in order at ``start`` (``bridge.calls.context``)."""
    prompt_cache: PromptCache | None = None
    hamsa_pace: HamsaPace = field(default_factory=HamsaPace)
    """Hamsa's delivery as this process has seen it (the start policy's estimate): one per
    process, shared by its calls."""
    wall_clock: Callable[[], float] = time.time
    clock: Callable[[], float] = time.monotonic
    metrics: Metrics = field(kw_only=True)


class Call:
    """Drives one accepted Twilio stream WebSocket from ``connected`` to close."""

    def __init__(
        self,
        websocket: WebSocket[Any],
        deps: CallDeps,
        *,
        handshake_signed: bool = False,
        asgi_send: Send | None = None,
    ) -> None:
        """``asgi_send``: the route's raw ASGI ``send``. With it, and the server's ``hamsa.stream``
        extension in the scope (``bridge.stream_transport``), a playback wake's frames leave in
        one write and Twilio's messages are handled as they are parsed; without either, one
        ``send_text`` per message and one ``receive()`` per message (any ASGI server)."""
        self._ws = websocket
        extensions = websocket.scope.get("extensions") or {}
        self._asgi_send = asgi_send if EXTENSION in extensions else None
        self._reading = True
        """False once ``stop`` was read: nothing Twilio sends after it is looked at."""
        self._deps = deps
        self._handshake_signed = handshake_signed
        self._started_clock: float | None = None
        self._end_reason: str | None = None
        self._script_done = False
        self._closer: asyncio.Task[None] | None = None
        self._stream = TwilioMediaStream(inbound_audio=False)  # on at start if the script listens
        self.phase = CallPhase.AWAITING_START
        self.summary = CallSummary(started_at=deps.clock())
        self._hangup = asyncio.Event()
        self._context: CallContext | None = None
        self._playback: Playback | None = None
        self._speaker: Speaker | None = None
        self._listener: Listener | None = None

    def end(self, reason: str) -> bool:
        """End the call now, deliberately (a drain timeout): the stream closes with 1001 and
        Twilio moves on to the TwiML after ``</Connect>``. True if a call in progress was cut;
        False for a stream still awaiting its ``start`` (closed too, never becomes a call) and
        for a call already ending on its own (left to finish)."""
        if self._end_reason is not None or self.phase in (CallPhase.ENDED, CallPhase.REJECTED):
            return False
        if self.phase is CallPhase.ACTIVE:
            if self._script_done:
                return False  # flushing its last frames and closing normally
            self._end_reason = reason
            self._hangup.set()  # the call's tasks stop; ``_active`` closes with 1001
            return True
        self._end_reason = reason
        self._closer = asyncio.get_running_loop().create_task(self._close(CLOSE_GOING_AWAY))
        return False

    async def run(self) -> CallSummary:
        try:
            started = await self._await_start()
            if started is not None and self._end_reason is not None:
                started = None  # ended while awaiting its start: it never becomes a call
            if started is None:
                if self._end_reason is not None:
                    self._reject(f"closed before start: {self._end_reason}", level="info")
                    self.summary.outcome = "ended_by_drain"
                return self.summary
            with structlog.contextvars.bound_contextvars(
                call_sid=started.call_sid, stream_sid=started.stream_sid
            ):
                admission = self._admit(started)
                if admission is None:
                    await self._close(CLOSE_POLICY)
                    return self.summary
                try:
                    if admission.claim is not None:
                        refusal = await admission.claim()
                        if refusal is not None:
                            self._reject(refusal.reason)
                            await self._close(CLOSE_POLICY)
                            return self.summary
                    await self._active(started, admission.script)
                finally:
                    self._deps.registry.remove(started.call_sid, self)
                    self._finish_summary()
                    log.info("call_summary", **_public(self.summary))
                    self._log_underruns()
                    # The playback holds this call's ``_send`` (a bound method): a cycle that only
                    # the cyclic GC's full collections would free, each scanning every live call
                    # (a loop stall of tens of ms at 200 calls; BENCHMARKS.md). Let go of it so
                    # the call is freed by reference counting when it ends.
                    self._playback = self._speaker = self._context = None
                    self._listener = None
        finally:
            if self.phase is CallPhase.ACTIVE:
                self.phase = CallPhase.ENDED
        return self.summary

    # --- before start: nothing is allocated ----------------------------------------------------

    async def _await_start(self) -> Started | None:
        try:
            async with asyncio.timeout(self._deps.settings.bridge_start_timeout):
                while True:
                    message = await self._ws.receive()
                    if message["type"] == "websocket.disconnect":
                        too_big = _too_big(message)
                        if too_big is not None:
                            self._reject(f"stream closed 1009 before start: {too_big}")
                        elif self._end_reason is None:
                            # health probes (``doctor``) do this: not worth a warning
                            self._reject("stream closed before start", level="info")
                        return None
                    for event in self._stream.receive(_payload(message)):
                        if isinstance(event, Started):
                            return event
                        if isinstance(event, Violation):
                            log.warning("twilio_violation", kind=event.kind, detail=event.detail)
        except TimeoutError:
            self._reject("no start message in time")
            await self._close(CLOSE_POLICY)
            return None

    def _admit(self, started: Started) -> Admission | None:
        """The first admission hook to take the stream says if it is authentic and what it runs;
        then the call's own checks. None (the stream rejected) or the admission, the call then
        registered and ACTIVE (its ``claim`` still to await)."""
        deps = self._deps
        self.summary.call_sid = started.call_sid
        self.summary.stream_sid = started.stream_sid
        verdict = _ask(deps.admission, started)
        if isinstance(verdict, Rejection):
            self._reject(verdict.reason)
            return None
        now = deps.wall_clock()
        if not deps.registry.claim_token(verdict.token, expires_at=verdict.expires_at, now=now):
            self._reject("stream token already used (replay)")
            return None
        if len(deps.registry) >= deps.settings.bridge_max_calls:
            # Streams accepted while calls were below the cap, authenticating together.
            deps.metrics.streams_refused.labels(reason="capacity").inc()
            self._reject(f"bridge at capacity ({deps.settings.bridge_max_calls} calls)")
            return None
        if not deps.registry.add(started.call_sid, self):
            self._reject("a stream for this call is already active")
            return None
        self.phase = CallPhase.ACTIVE
        self._started_clock = deps.clock()
        signature = "valid" if self._handshake_signed else "absent"
        log.info("call_started", **verdict.call_started, handshake_signature=signature)
        return verdict

    def _reject(self, reason: str, *, level: str = "warning") -> None:
        self.phase = CallPhase.REJECTED
        self.summary.outcome = "rejected"
        self.summary.reason = reason
        log.log(
            logging.getLevelName(level.upper()),
            "stream_rejected",
            reason=reason,
            handshake_signature="valid" if self._handshake_signed else "absent",
        )

    # --- active call ---------------------------------------------------------------------------

    async def _active(self, started: Started, call_script: CallScript) -> None:
        deps = self._deps
        settings = deps.settings
        try:
            async with asyncio.TaskGroup() as tasks:
                hamsa = HamsaSession(
                    settings, tasks, connector=deps.hamsa_connector, metrics=deps.metrics
                )
                playback = Playback(
                    self._stream,
                    self._send,
                    lead=settings.bridge_playback_lead_ms / 1000,
                    refill=settings.bridge_playback_refill_ms / 1000,
                    clock=deps.clock,
                    metrics=deps.metrics,
                )
                speaker = Speaker(
                    settings,
                    hamsa,
                    playback,
                    cache=deps.prompt_cache,
                    clock=deps.clock,
                    metrics=deps.metrics,
                    pace=deps.hamsa_pace,
                )
                self._playback = playback
                self._speaker = speaker
                self._context = context = CallContext(
                    settings,
                    started,
                    speaker,
                    self._hangup,
                    prompt_cache=deps.prompt_cache,
                    metrics=deps.metrics,
                )
                if takes_speech(call_script, context):
                    context.listens = True
                    self._listener = Listener(
                        context,
                        hamsa,
                        tasks,
                        detector=detector_for(settings),
                        metrics=deps.metrics,
                        language=settings.hamsa_stt_language,
                        clock=deps.clock,
                    )
                    self._stream.inbound_audio = True
                running: list[asyncio.Task[Any]] = [
                    tasks.create_task(self._guard(playback.run())),
                    tasks.create_task(self._read()),
                ]
                if opens_hamsa_at_start(call_script, context):
                    running.append(tasks.create_task(hamsa.open()))
                else:
                    context.details["hamsa_socket"] = "on_demand"
                script = tasks.create_task(self._script(context, call_script))
                hangup = tasks.create_task(self._hangup.wait())
                running += [script, hangup]
                try:
                    await asyncio.wait({script, hangup}, return_when=asyncio.FIRST_COMPLETED)
                    if script.done() and not self._hangup.is_set():
                        # Let the last frames/marks/clear leave before the stream closes.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(2.0):
                                await playback.flush()
                finally:
                    # Runs on every exit, a crashed task included: nothing outlives the call.
                    self._reading = False  # the direct text handler too (``_on_text``)
                    self._stream.inbound_audio = False
                    for task in running:
                        task.cancel()
                    if self._listener is not None:
                        self._listener.close()
                    playback.cancel_pending()
                    await hamsa.close()
                    self.summary.hamsa_connections = hamsa.connections_opened
                    self.summary.hamsa_requests = hamsa.requests_sent
        finally:
            await self._close(CLOSE_NORMAL if self._end_reason is None else CLOSE_GOING_AWAY)

    async def _script(self, context: CallContext, script: CallScript) -> None:
        try:
            await script(context)
            self.summary.outcome = context.outcome or "completed"
            self.summary.reason = context.reason
        except HamsaError as exc:
            self.summary.outcome = "failed"
            self.summary.reason = str(exc)
            log.error("call_failed", reason=str(exc), retryable=exc.retryable)
        except Exception as exc:  # a bug in a script must end this call, not the server
            self.summary.outcome = "failed"
            self.summary.reason = f"script error: {type(exc).__name__}"
            log.exception("call_script_crashed")
        finally:
            self._script_done = True

    async def _read(self) -> None:
        """The Twilio socket's one reader. With the server's extension, messages are handled in
        ``_on_text`` as they are parsed (no task wake per message) and only what was queued
        before, and the disconnect, come through ``receive()``."""
        try:
            if self._asgi_send is not None:
                context = contextvars.copy_context()  # the call's log bindings, for the handler
                handler = functools.partial(self._on_text, context)
                with contextlib.suppress(OSError):  # lost already: receive() says how
                    await self._asgi_send({"type": TEXT_HANDLER, "handler": handler})
            while True:
                try:
                    message = await self._ws.receive()
                except (WebSocketDisconnect, RuntimeError):
                    message = {"type": "websocket.disconnect"}
                if not self._reading:
                    return
                if message["type"] == "websocket.disconnect":
                    too_big = _too_big(message)
                    if too_big is not None:
                        self.summary.outcome = "failed"
                        self.summary.reason = f"stream closed 1009: {too_big}"
                        log.warning("twilio_message_too_big", reason=self.summary.reason)
                        return
                    if not self.summary.reason:
                        self.summary.reason = "Twilio closed the stream"
                    self.summary.outcome = (
                        self.summary.outcome if self.summary.outcome != "unknown" else "hung_up"
                    )
                    return
                events = self._stream.receive(_payload(message))
                if events:
                    self._on_events(events)
                    if not self._reading:
                        return
        finally:
            self._hangup.set()

    def _on_text(self, context: contextvars.Context, text: str) -> None:
        """One message from Twilio, handed over by the server as it was parsed (in the server's
        context: ``context`` is the call's, for what logs)."""
        if not self._reading:
            return
        events = self._stream.receive(text)
        if events:  # inbound media yields none unless the script listens (``Listener``)
            context.run(self._on_events, events)
            if not self._reading:
                self._hangup.set()

    def _on_events(self, events: list[Event]) -> None:
        """Act on Twilio's events; after ``stop``, stop reading (``_reading`` False)."""
        playback = self._playback
        assert playback is not None
        for event in events:
            match event:
                case MediaReceived(payload=payload):
                    if self._listener is not None:
                        self._listener.on_media(payload)
                case MarkReceived(name=name):
                    playback.on_mark(name)
                case DtmfReceived(digit=digit):
                    self._on_dtmf(digit)
                case Stopped():
                    if self.summary.outcome == "unknown":
                        self.summary.outcome = "hung_up"
                        self.summary.reason = "caller hung up (stop)"
                    self._reading = False
                    return
                case Violation(kind=kind, detail=detail):
                    log.warning("twilio_violation", kind=kind, detail=detail)
                case _:
                    pass

    def _on_dtmf(self, digit: str) -> None:
        log.info("dtmf", digit=digit)
        if self._context is not None:
            self._context.key_pressed(digit)

    async def _send(self, texts: list[str]) -> None:
        """Send Twilio messages in order: one write with the server's extension, else one
        ``send_text`` each."""
        try:
            asgi_send = self._asgi_send
            if asgi_send is not None:
                await asgi_send({"type": SEND_BATCH, "texts": texts})
            else:
                for text in texts:
                    await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise _SocketGone(str(exc)) from None

    async def _guard(self, coro: Awaitable[None]) -> None:
        """Run the writer; a socket that can't be written (or a stream already stopped) ends the
        call instead of crashing it."""
        try:
            await coro
        except (_SocketGone, InvalidState):
            self._hangup.set()

    async def _close(self, code: int) -> None:
        if self._ws.application_state is WebSocketState.CONNECTED and (
            self._ws.client_state is WebSocketState.CONNECTED
        ):
            with contextlib.suppress(Exception):
                await self._ws.close(code)

    def _log_underruns(self) -> None:
        """One warning per call that had underruns, saying what they mean and where to read on
        (the start policy exists to prevent them)."""
        if self._playback is None or not self._playback.stats.underruns:
            return
        stats = self._playback.stats
        log.warning(
            "playback_underruns",
            underruns=stats.underruns,
            gaps_ms=[round(gap * 1000) for gap in stats.gaps],
            meaning=UNDERRUN_MEANING,
            see=UNDERRUN_DOC,
        )

    def _finish_summary(self) -> None:
        s = self.summary
        context = self._context
        if context is not None:
            if context.outcome and s.outcome == "hung_up":
                s.outcome = context.outcome  # e.g. transferred: Twilio then stops the stream
                s.reason = context.reason or s.reason
            s.details = dict(context.details, keys="".join(context.keys_pressed))
            if self._listener is not None:
                s.details["speech"] = {
                    "utterances": self._listener.utterances,
                    "transcribed": self._listener.heard,
                }
        if self._end_reason is not None:
            s.outcome = "ended_by_drain"
            s.reason = self._end_reason
        s.duration = self._deps.clock() - s.started_at
        s.violations = dict(self._stream.violations)
        if self._speaker is not None and self._speaker.holds:
            s.details["start_holds"] = [
                {
                    "sentence": hold.sentence,
                    "held_ms": round(hold.held * 1000),
                    "predicted_ms": round(hold.predicted * 1000),
                    "reason": hold.reason,
                    "rebuffer": hold.rebuffer,
                }
                for hold in self._speaker.holds
            ]
        if self._playback is not None:
            stats = self._playback.stats
            s.frames_sent = stats.frames_sent
            s.clears = stats.clears_sent
            s.underruns = stats.underruns
            if stats.first_frame_at is not None and self._started_clock is not None:
                first_audio = stats.first_frame_at - self._started_clock
                s.details["first_audio_ms"] = round(first_audio * 1000)
                self._deps.metrics.first_audio.observe(first_audio)
        if self._started_clock is not None:
            self._deps.metrics.call_duration.observe(self._deps.clock() - self._started_clock)


UNDERRUN_MEANING = (
    "the caller heard silence inside speech: Hamsa's audio arrived later than playback needed "
    "it, and Twilio's buffer ran dry mid-utterance (silence between prompts, such as a wait for "
    "a key, is not counted)"
)
UNDERRUN_DOC = "docs/start-policy.md"


def _ask(hooks: Sequence[AdmissionHook], started: Started) -> Admission | Rejection:
    """The verdict of the first hook that takes the stream; refused if none does."""
    for hook in hooks:
        verdict = hook.admit(started)
        if verdict is not None:
            return verdict
    return Rejection.token("no feature of this bridge takes it")


def _too_big(message: Any) -> str | None:
    """For a disconnect with close code 1009 (the transport refused a message over the
    WebSocket size limit, ``ws_max_size``): its reason; None for any other disconnect."""
    if message.get("code") != CLOSE_TOO_BIG:
        return None
    return str(message.get("reason") or "message over the size limit")


def _payload(message: Any) -> str | bytes:
    text = message.get("text")
    if text is not None:
        return str(text)
    data = message.get("bytes")
    return bytes(data) if data is not None else b""


def _public(summary: CallSummary) -> dict[str, Any]:
    """The summary's fields, minus the ids already bound to every log line of the call."""
    return {
        f.name: getattr(summary, f.name)
        for f in dataclasses.fields(summary)
        if f.name not in ("call_sid", "stream_sid", "started_at")
    }
