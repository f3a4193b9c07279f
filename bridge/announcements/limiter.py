"""Calls-per-second pacing of ``calls.create``: never more than ``rate`` creations in any
one-second window, even when the process restarts (seed it with the store's recent attempts).

Creations are spaced evenly, ``1/rate`` apart plus a small margin, rather than sent in bursts:
Twilio counts CPS on arrival, and evenly spaced requests keep a margin against network jitter.

The rule is one pure function, :func:`take` (a token bucket in its virtual-scheduling form);
:class:`CallRateLimiter` applies it to one process's callers (sans-I/O: :meth:`reserve` takes
the current time and says how long to wait), :class:`AccountRateLimiter` to every process placing
calls for one Twilio account, through a row of the store (``docs/cps-budget.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final

import structlog

from bridge.errors import StoreError

if TYPE_CHECKING:
    from bridge.settings import Settings
    from bridge.store import Store

__all__ = ["AccountRateLimiter", "CallRateLimiter", "spacing", "take"]

log = structlog.get_logger("bridge.announcements")

MARGIN: Final = 0.02
"""Spacing is ``(1 + MARGIN) / rate`` plus ``JITTER`` seconds."""
JITTER: Final = 0.03
"""Network and event-loop jitter allowance: six creations at 5/s span >= 1.17 s, so they
arrive at least 170 ms more than a second apart."""


def spacing(rate: float) -> float:
    """Seconds between two creations at ``rate`` per second (margin and jitter included)."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    return (1 + MARGIN) / rate + JITTER


def take(state: float, now: float, rate: float, burst: float) -> tuple[float, float]:
    """One token from a bucket of ``burst`` tokens refilled at ``rate`` per second: the seconds
    to wait for it (0: at once) and the bucket's new state.

    The state is the instant the bucket is full again (``-inf``, or any past instant: full now).
    A caller never refused: when the bucket is empty it is given the instant its token will be
    there, and that token is spent at once (a booking), so callers are served in the order they
    take. Whatever the callers' ``now`` (clocks of several hosts need not agree), the instants
    handed out never put more than ``rate * w + burst`` tokens in any window of ``w`` seconds.
    """
    interval = 1.0 / rate
    full_at = max(state, now)
    # tokens at ``now``: burst - (full_at - now) * rate; the caller's is there once one is
    slot = max(now, full_at - (burst - 1.0) * interval)
    return slot - now, full_at + interval


class CallRateLimiter:
    def __init__(self, rate: float, *, clock: Callable[[], float]) -> None:
        self.interval = spacing(rate)
        self._clock = clock
        self._next = float("-inf")
        self._lock = asyncio.Lock()

    def seed(self, times: Iterable[float]) -> None:
        """Creations made before (by an earlier process), on this limiter's clock."""
        for at in times:
            self._next = max(self._next, at + self.interval)

    def reserve(self, now: float) -> float:
        """Book the next slot; seconds to wait before creating the call."""
        delay, self._next = take(self._next, now, 1.0 / self.interval, 1.0)
        return delay

    def used(self, at: float) -> None:
        """A slot was used at ``at``, possibly later than booked (a busy event loop wakes
        late): the next slot is spaced from the real use, not from the booking."""
        self._next = max(self._next, at + self.interval)

    async def acquire(self) -> None:
        """Wait for this caller's slot (slots are handed out in call order)."""
        async with self._lock:
            delay = self.reserve(self._clock())
        if delay > 0:
            await asyncio.sleep(delay)
            self.used(self._clock())


class AccountRateLimiter:
    """The account's calls-per-second budget (``BRIDGE_CALLS_PER_SECOND``), shared by every
    process that places calls with its Twilio account (bridge replicas, ``announce``, campaign
    runners) through one row of the store, keyed by the account SID.

    :meth:`acquire` waits for this process's own pace first (:attr:`local`: ``pace`` per second,
    never more than the account's rate), then books the account's next free slot in the store
    (:meth:`Store.book_call_slot`, one atomic transaction) and waits until it. If the store
    cannot be reached the local pace alone applies: never faster than the account's rate from
    one process, the limit of each process before the budget was shared.

    Slots are wall-clock instants read by each booking process: the hosts sharing a PostgreSQL
    store must keep their clocks in step (NTP), as campaign leases already require; a clock
    ``d`` seconds ahead of the others can bring its creations up to ``d`` closer to theirs.
    """

    def __init__(
        self,
        settings: Settings,
        store: Callable[[], Awaitable[Store]],
        *,
        pace: float | None = None,
        clock: Callable[[], float],
    ) -> None:
        rate = settings.bridge_calls_per_second
        self.account = settings.twilio_account_sid
        self.rate = 1.0 / spacing(rate)
        """Bookings per second in the store (the spacing's margin and jitter included)."""
        self.local = CallRateLimiter(min(rate, pace or rate), clock=clock)
        self._store = store
        self._clock = clock
        self._shared = True
        """Did the last booking reach the store? (Logged when that changes.)"""

    async def acquire(self) -> None:
        """Wait for this caller's slot: the process's pace, then the account's budget."""
        await self.local.acquire()
        try:
            store = await self._store()
            slot = await store.book_call_slot(
                self.account, rate=self.rate, burst=1.0, clock=self._clock
            )
        except StoreError as exc:
            if self._shared:
                log.warning("cps_budget_unreachable", error=str(exc))
            self._shared = False
            return
        if not self._shared:
            log.info("cps_budget_reachable")
        self._shared = True
        delay = slot - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
            self.local.used(self._clock())
