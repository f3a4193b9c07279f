"""Calls-per-second pacing of ``calls.create``: never more than ``rate`` creations in any
one-second window, even when the process restarts (seed it with the store's recent attempts).

Creations are spaced evenly, ``1/rate`` apart plus a small margin, rather than sent in bursts:
Twilio counts CPS on arrival, and evenly spaced requests keep a margin against network jitter.
Sans-I/O: :meth:`reserve` takes the current time and says how long to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final

__all__ = ["CallRateLimiter"]

MARGIN: Final = 0.02
"""Spacing is ``(1 + MARGIN) / rate`` plus ``JITTER`` seconds."""
JITTER: Final = 0.03
"""Network and event-loop jitter allowance: six creations at 5/s span >= 1.17 s, so they
arrive at least 170 ms more than a second apart."""


class CallRateLimiter:
    def __init__(self, rate: float, *, clock: Callable[[], float]) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.interval = (1 + MARGIN) / rate + JITTER
        self._clock = clock
        self._next = float("-inf")
        self._lock = asyncio.Lock()

    def seed(self, times: Iterable[float]) -> None:
        """Creations made before (by an earlier process), on this limiter's clock."""
        for at in times:
            self._next = max(self._next, at + self.interval)

    def reserve(self, now: float) -> float:
        """Book the next slot; seconds to wait before creating the call."""
        at = max(now, self._next)
        self._next = at + self.interval
        return at - now

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
