"""Time in the suite's assertions: what the code decides, and the slack a busy machine needs.

Tests assert what the code controls: bytes, order, states, counts, and the schedule it chose (a
frame's due time, a limiter's slot, a backoff delay). A busy machine runs every scheduled event
late, never early, so "not before its time" is exact; "not long after" needs slack, and gets
:data:`LATE` only where a real-time bound is the behaviour itself (a clear "at once", a frame
played at its time). How fast things go is a figure for ``bench/``, not a test.

Gapless playout is such a bound: the bridge keeps the caller's buffer 120-200 ms ahead, which
absorbs a late wake-up but not a stall of the whole process. In a loopback test the bridge, the
emulators and the simulated caller share one event loop; :func:`stall_watch` times that loop
while a call plays, and a gap is only judged when nothing stalled it for :data:`STALL` or more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from bridge.dev.caller import CallResult

__all__ = [
    "ANSWER_WAIT",
    "HANG",
    "LATE",
    "STALL",
    "StallWatch",
    "assert_gapless",
    "most_within",
    "stall_watch",
]

HANG: Final = 60.0
"""How long a test waits for something that must happen before calling it a hang. It is a guard,
never an assertion of speed: a run beside a CPU hog per core is ten times slower than a quiet
one, and a bug that never finishes still fails the test in a minute."""
LATE: Final = 0.75
"""How late a busy machine may run an event the code scheduled (a frame at its time, a reply
"at once"): the suite runs beside other jobs on two cores, and a stall of a few hundred
milliseconds is ordinary there."""
ANSWER_WAIT: Final = 0.3 + LATE
"""How long the bridge must wait for a key after a prompt (``BRIDGE_CONFIRM_WAIT``) when the
simulated callee answers it: it presses 300 ms after the prompt ended
(``CallerBehaviour.answers``), and its key can reach the bridge ``LATE`` after that."""


def most_within(spans: Iterable[tuple[float, float]], seconds: float = 1.0) -> int:
    """The most ``(planned, arrived)`` spans that fit inside one window of ``seconds``.

    A rate limiter books each ``calls.create`` a slot, the slots at least ``s`` apart; a slot
    comes after its attempt was planned and before its request arrived at Twilio. So whatever
    the machine's speed, at most ``1 + seconds / s`` spans fit in any window of ``seconds``:
    a late hand-off or a slow request only stretches its own span. (Counting arrivals alone
    would judge the machine: two requests sent a slot apart can arrive closer together.)
    """
    ordered = sorted(spans)
    return max(
        (
            sum(1 for planned, arrived in ordered[i:] if arrived <= start + seconds)
            for i, (start, _) in enumerate(ordered)
        ),
        default=0,
    )


STALL: Final = 0.1
"""A stall of the test's event loop this long can empty the caller's playout buffer: the
bridge's plan tops it up when 120 ms remain."""
TICK: Final = 0.01
"""The stall watch's timer (a sampling interval, not synchronisation)."""


@dataclass
class StallWatch:
    longest: float = 0.0
    """The longest this process's event loop ran a :data:`TICK` timer late while watched."""

    @property
    def stalled(self) -> bool:
        """Did the machine stall every peer of a loopback call long enough to cause a gap?"""
        return self.longest >= STALL


@contextlib.asynccontextmanager
async def stall_watch() -> AsyncIterator[StallWatch]:
    """Time this event loop until the block ends."""
    watch = StallWatch()
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            watch.longest = max(watch.longest, loop.time() - due)

    task = asyncio.create_task(tick())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_gapless(result: CallResult, watch: StallWatch, *, allowed: int = 0) -> None:
    """At most ``allowed`` gaps inside speech, as the bridge's plan keeps it while the machine
    runs the call in real time. When the process stalled for :data:`STALL` or more, its gaps
    are the machine's: printed, not judged (the rest of the test still is)."""
    gaps = result.gaps()
    if watch.stalled:
        print(f"\nevent loop stalled {watch.longest * 1000:.0f} ms: gaps not judged: {gaps}")
        return
    assert len(gaps) <= allowed, (gaps, f"longest stall {watch.longest * 1000:.0f} ms")
