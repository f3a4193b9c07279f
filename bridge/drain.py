"""Graceful drain: a deploy or a restart never cuts a call in progress.

uvicorn on its own closes every WebSocket with 1012 the moment it gets SIGTERM
(docs/design-notes.md §3). ``DrainingServer`` takes the first SIGTERM/SIGINT instead and hands it
to the ``DrainController``:

1. the phase turns ``DRAINING``: ``/readyz`` answers 503 (the load balancer stops sending new
   calls) and new stream handshakes get 503 (Twilio moves on to the TwiML after ``</Connect>``);
2. what only new calls would use is released at once (``on_drain``: the warm Hamsa sockets);
   calls in progress play to their normal end, for up to ``BRIDGE_DRAIN_TIMEOUT`` seconds;
3. calls still running then are ended deliberately (closed with 1001, counted in
   ``hamsa_bridge_calls_ended_by_drain_total`` and logged);
4. only then does uvicorn shut down (nothing left to cut) and the process exit.

A second signal exits at once (uvicorn's forced shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType

import structlog
import uvicorn

from bridge.calls.registry import OpenStreams
from bridge.metrics import Metrics
from bridge.uvicorn_setup import SignalledServer

log = structlog.get_logger("bridge.drain")

ENDED_CLOSE_WAIT = 5.0
"""Seconds to wait for calls ended at the drain timeout to close their sockets."""


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class DrainController:
    """This process's serving phase, and the drain itself."""

    def __init__(
        self,
        streams: OpenStreams,
        *,
        timeout: float,
        metrics: Metrics,
        on_drain: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self._streams = streams
        self._timeout = timeout
        self._metrics = metrics
        self._on_drain = tuple(on_drain)
        """Run as the drain starts: release what only new calls would use (the warm pool)."""
        self.phase = Phase.STARTING
        self.ended = 0
        """Calls ended at the drain timeout."""

    def serving(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.SERVING

    @property
    def accepting(self) -> bool:
        return self.phase is Phase.SERVING

    async def drain(self) -> int:
        """Refuse new calls, let the current ones finish (bounded), end the rest; how many were
        ended. Idempotent: a second call returns at once."""
        if self.phase in (Phase.DRAINING, Phase.STOPPED):
            return self.ended
        self.phase = Phase.DRAINING
        self._metrics.draining.set(1)
        streams = self._streams
        log.info("drain_started", open_streams=len(streams), timeout=self._timeout)
        for release in self._on_drain:
            try:
                await release()
            except Exception:
                log.exception("drain_release_failed")
        try:
            async with asyncio.timeout(self._timeout):
                await streams.wait_empty()
        except TimeoutError:
            remaining = streams.snapshot()
            self.ended = sum(call.end("bridge shutting down: drain timeout") for call in remaining)
            self._metrics.calls_ended_by_drain.inc(self.ended)
            log.warning(
                "drain_timeout_ending_calls",
                calls=self.ended,
                other_streams=len(remaining) - self.ended,
                timeout=self._timeout,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ENDED_CLOSE_WAIT):
                    await streams.wait_empty()
        self.phase = Phase.STOPPED
        log.info("drain_complete", calls_ended=self.ended, open_streams=len(streams))
        return self.ended


class DrainingServer(SignalledServer):
    """uvicorn's server, with the first shutdown signal draining calls before uvicorn stops."""

    def __init__(self, config: uvicorn.Config, drain: DrainController) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._signalled = False
        self.announce_listening = False
        """Log uvicorn's "running on" line for sockets passed in (one ``serve`` process)."""
        self.failed = False
        """Startup failed after the server started listening (a voice preload)."""

    def fail(self) -> None:
        """Stop serving at once: startup failed (no call was ever accepted)."""
        self.failed = True
        self.should_exit = True

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets is not None and self.started and self.announce_listening:
            # uvicorn says "Uvicorn running on …" only for sockets it bound itself; ``serve``
            # binds its own (listening before the app starts) and still says it, at the moment
            # uvicorn would
            self._log_started_message(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread, between any two bytecodes: only hand work to the loop.
        loop = self._loop
        self._captured_signals.append(sig)
        if loop is None or self._signalled or self.should_exit:
            # Second signal (or not serving yet): exit at once, no more waiting.
            self.should_exit = True
            self.force_exit = True
            return
        self._signalled = True
        loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        if self._drain_task is not None or self.should_exit:
            return
        log.info("shutdown_signal", signal=signal.Signals(sig).name)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain.drain()
        finally:
            self.should_exit = True
