"""Hamsa sockets opened ahead of the calls: a call's first request skips the ~1.2 s connect.

``WarmHamsaPool`` is a ``Connector`` (``bridge.calls.hamsa_session``): ``HamsaSession`` calls it
as it would call ``websockets.connect``. It hands over an already open, already authenticated
socket when it has one (``hamsa_warm_socket_taken``), else it connects directly, exactly as
without the pool (``hamsa_warm_pool_miss``).

- **One socket, one call.** A socket handed over belongs to that call until it ends (the product
  rule "one Hamsa socket per call, reused" is unchanged); it never comes back to the pool.
- **A fixed number of slots** (``HAMSA_WARM_CONNECTIONS``, 0 disables). Each slot is one task that
  connects, offers its socket, and connects again once the socket was taken or closed while idle.
  The pool therefore opens sockets only at startup and as refills of its own slots, never because
  a stream arrived: a stream reaches the pool only once authenticated (``HamsaSession`` is built in
  the call's active phase), and even then it can only take, not open, pool sockets.
- **Closed while idle.** Hamsa closes idle sockets (60 minutes, docs/hamsa-ws.md §2); a socket
  that is not OPEN is never handed over: its slot discards it and opens a replacement.
- **Failures back off.** A failed connect, or a socket that closed soon after opening, is retried
  after an exponential, jittered delay (1 s doubling to 60 s). A refused key (HTTP 401/403, close
  4001/4003) backs off from 30 s to 10 minutes: Hamsa being down or the key being wrong never turns
  into a connect storm.
- **Lifecycle.** Built by ``create_app``; ``start()`` when the app starts serving; ``aclose()`` on
  drain and on shutdown (slot tasks cancelled, idle sockets closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.protocol import State

from bridge.calls.hamsa_session import Connector, connect_options
from bridge.metrics import Metrics
from bridge.protocols.hamsa_client import ConnectRefusal, classify_connect_error
from bridge.protocols.websockets_cycle import drop_tracebacks
from bridge.settings import Settings

log = structlog.get_logger("bridge.warm_pool")


def _refused(code: int | None) -> bool:
    """Hamsa refused the key or the balance (close 4001/4003, HTTP 401/403): back off long."""
    return classify_connect_error(code) is not ConnectRefusal.OTHER


@dataclass(eq=False, slots=True)
class _Warm:
    """One idle socket of a slot."""

    ws: ClientConnection
    slot: int
    opened_at: float
    taken: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between a slot's attempts: ``min(cap, base * 2**(n-1))`` times a jitter in
    [0.5, 1.5) for the n-th failure in a row."""

    base: float = 1.0
    cap: float = 60.0
    auth_base: float = 30.0
    auth_cap: float = 600.0
    healthy_after: float = 10.0
    """A socket that closed while idle sooner than this after opening counts as a failure."""

    def delay(self, failures: int, *, auth: bool, rng: random.Random) -> float:
        base, cap = (self.auth_base, self.auth_cap) if auth else (self.base, self.cap)
        growth: float = 2.0 ** min(failures - 1, 30)
        return min(cap, base * growth) * (0.5 + rng.random())


class WarmHamsaPool:
    """Pre-opened Hamsa sockets, each handed to exactly one call (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        connector: Connector = connect,
        size: int | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        metrics: Metrics,
    ) -> None:
        self.size = settings.hamsa_warm_connections if size is None else size
        self._connector = connector
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._metrics = metrics
        self._metrics.track_warm_pool(lambda: self.idle)
        self._url = settings.hamsa_ws_url
        self._options = connect_options(settings)
        self._headers = self._options["additional_headers"]
        self._idle: deque[_Warm] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._first_attempts = 0
        self._changed = asyncio.Event()
        self.attempts = 0
        """Connects the pool started (each slot's attempts, failed ones included)."""
        self.opened = 0
        self.taken = 0
        self.misses = 0
        self.discarded = 0
        """Idle sockets that closed before a call took them."""

    # --- state -------------------------------------------------------------------------------

    @property
    def idle(self) -> int:
        """Open sockets waiting for a call."""
        return sum(w.ws.state is State.OPEN for w in self._idle)

    @property
    def closed(self) -> bool:
        return self._closed

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[WarmHamsaPool], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checked after every change (bound it with
        ``asyncio.timeout()``)."""
        while not predicate(self):
            await self._changed.wait()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the slots (idempotent; nothing with size 0 or once closed)."""
        if self._runner is not None or self._closed or self.size <= 0:
            return
        self._runner = asyncio.create_task(self._run(), name="hamsa-warm-pool")

    async def wait_filled(self) -> None:
        """Return once every slot finished its first attempt, opened or failed (bound it with
        ``asyncio.timeout()``): the first calls then find warm sockets if Hamsa answered."""
        if self._runner is None:
            return
        await self.wait_until(lambda p: p._first_attempts >= p.size or p._closed)

    async def aclose(self) -> None:
        """Stop refilling and close every idle socket (idempotent). Calls keep the sockets they
        took; later connects go straight to Hamsa."""
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            # Waited for, not awaited: awaiting would raise its CancelledError through this
            # frame, whose traceback asyncio keeps in a reference cycle (with the frame's locals:
            # the sockets below). See ``_slot``.
            await asyncio.wait([runner])
            runner = None
        idle = list(self._idle)
        self._idle.clear()
        if idle:
            await asyncio.gather(*(self._close(w.ws) for w in idle))
            log.info("hamsa_warm_pool_closed", sockets_closed=len(idle))
        del idle
        self._notify()

    # --- the connector -----------------------------------------------------------------------

    async def __call__(self, uri: str, **options: Any) -> ClientConnection:
        """A warm socket if one is open (and the request is for the pool's URL and key), else a
        direct connect with the caller's options."""
        if (
            not self._closed
            and uri == self._url
            and options.get("additional_headers") == self._headers
        ):
            while self._idle:
                warm = self._idle.popleft()
                if warm.ws.state is State.OPEN:
                    warm.taken.set()
                    self.taken += 1
                    self._metrics.hamsa_warm_takes.labels(result="hit").inc()
                    self._notify()
                    log.debug("hamsa_warm_socket_taken", slot=warm.slot, idle=self.idle)
                    return warm.ws
                # Closed while idle: its slot sees it close and opens a replacement.
                self.discarded += 1
                log.info("hamsa_warm_socket_discarded", slot=warm.slot, state=warm.ws.state.name)
        self.misses += 1
        self._metrics.hamsa_warm_takes.labels(result="miss").inc()
        log.info("hamsa_warm_pool_miss", pool_size=self.size, closed=self._closed)
        ws: ClientConnection = await self._connector(uri, **options)
        return ws

    # --- the slots ---------------------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as slots:
            for slot in range(self.size):
                slots.create_task(self._slot(slot), name=f"hamsa-warm-slot-{slot}")

    async def _slot(self, slot: int) -> None:
        """Keep one warm socket: connect, offer it, and start over once it is gone."""
        loop = asyncio.get_running_loop()
        failures = 0
        auth = False
        first = True
        ws: ClientConnection | None = None
        warm: _Warm | None = None
        try:
            while True:
                if failures:
                    delay = self._backoff.delay(failures, auth=auth, rng=self._rng)
                    log.info(
                        "hamsa_warm_retry_scheduled",
                        slot=slot,
                        failures=failures,
                        delay=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
                try:
                    ws = await self._open(slot)
                except Exception as exc:  # noqa: BLE001 - any failure only delays this slot
                    drop_tracebacks(exc)  # logged by _open; kept, it would hold a cycle
                    failures += 1
                    auth = isinstance(exc, InvalidStatus) and _refused(exc.response.status_code)
                    ws = None
                if first:
                    first = False
                    self._first_attempts += 1
                    self._notify()
                if ws is None:
                    continue
                warm = _Warm(ws, slot, loop.time())
                self._idle.append(warm)
                self.opened += 1
                self._notify()
                log.debug("hamsa_warm_socket_ready", slot=slot, idle=self.idle)
                if await self._held_until_taken(warm):
                    failures, auth = 0, False
                    continue
                # Closed while idle (Hamsa's idle timeout, a restart, or a key refused after
                # accept).
                with contextlib.suppress(ValueError):
                    self._idle.remove(warm)
                self._notify()
                code = ws.close_code
                lived = loop.time() - warm.opened_at
                log.info("hamsa_warm_socket_closed", slot=slot, code=code, lived=round(lived, 1))
                if _refused(code):
                    failures, auth = failures + 1, True
                elif lived < self._backoff.healthy_after:
                    failures, auth = failures + 1, False
                else:
                    failures, auth = 1, False  # a normal idle close: replace it after ~1 s
        finally:
            # Cancelled by ``aclose``: the CancelledError's traceback holds this frame, and
            # asyncio keeps that in a reference cycle; a socket a local still named would then
            # outlive the pool until a full collection (tests/test_hamsa_cycles.py).
            ws = warm = None

    async def _open(self, slot: int) -> ClientConnection:
        self.attempts += 1
        try:
            ws: ClientConnection = await self._connector(self._url, **self._options)
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.warning("hamsa_warm_connect_failed", slot=slot, http_status=status)
            raise
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.warning("hamsa_warm_connect_failed", slot=slot, error=type(exc).__name__)
            raise
        except Exception:
            log.exception("hamsa_warm_connect_crashed", slot=slot)
            raise
        return ws

    async def _held_until_taken(self, warm: _Warm) -> bool:
        """Wait until a call takes the socket (True) or it closes while idle (False)."""
        event = warm.taken
        taken = asyncio.ensure_future(event.wait())
        closed = asyncio.ensure_future(warm.ws.wait_closed())
        del warm  # no socket named in this frame (see ``_slot``)
        try:
            await asyncio.wait({taken, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (taken, closed):
                waiter.cancel()
            await asyncio.gather(taken, closed, return_exceptions=True)
            del taken, closed  # each holds its coroutine's exception, and so the socket
        return event.is_set()

    @staticmethod
    async def _close(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await ws.close()


__all__ = ["Backoff", "WarmHamsaPool"]
