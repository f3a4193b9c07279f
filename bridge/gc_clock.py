"""The cyclic GC's young collections on a clock, not on allocation counts (``BRIDGE_GC_TICK_MS``).

**Why.** CPython starts a generation-0 collection when its count passes threshold 0 (700). The
count is tracked allocations *minus deallocations*, and the death of an *old* object counts too
(``Modules/gcmodule.c``, ``_PyObject_GC_Alloc`` and ``PyObject_GC_Del``, 3.11–3.13). Under a
steady stream of calls, the objects of ended calls (old, in generation 2) die about as fast as
those of new calls are born, so the count hovers under 700 while the young list keeps every
newborn that is still alive. Collections then come rarely and late, and each scans the whole
backlog: in the 10-minute soak at 200 calls (calls ending and starting all the time) generation-1
collections took up to 31 ms of CPU and found nothing, and every call's frames waited behind them
(``BENCHMARKS.md``, issue 16). A capacity step, whose calls all start together, never showed it.

**What.** :func:`collect_on_a_clock` collects generation 0 every ``tick`` (100 ms by default) and
generation 1 every :data:`OLDER_EVERY` ticks instead (CPython's own ratio, threshold 1 = 10). A
young collection then scans one tick's survivors, whatever the count says. The automatic
collections stay on: a burst that allocates faster than the clock still triggers them, and
their lists are short too.

**Full collections** are counted in generation-1 collections (``GC_FULL_EVERY`` in
``bridge/server.py``); on this clock that is one full collection every ``tick × OLDER_EVERY ×
GC_FULL_EVERY`` seconds whatever the load: 50 minutes by default.

**Cost.** One ``gc.collect`` call per tick (a few µs when the young list is short) plus the scan
of what survived the tick, which the automatic collections scanned anyway, only later and all at
once. ``BENCHMARKS.md`` gives the measured figures.

The rule is :func:`generation_at` (pure); :func:`collect_on_a_clock` is the coroutine that runs
it on the event loop (started by the app's lifespan when ``BRIDGE_GC_TICK_MS`` is not 0).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

OLDER_EVERY = 10
"""Every this many ticks, generation 1 is collected (with generation 0) instead of 0 alone."""


def generation_at(tick: int) -> int:
    """The generation to collect at tick ``tick`` (1, 2, …): 1 on every :data:`OLDER_EVERY`-th
    tick, else 0. Collecting generation 1 collects generation 0 with it."""
    return 1 if tick % OLDER_EVERY == 0 else 0


async def collect_on_a_clock(
    tick: float, *, ticked: Callable[[int, int | None], None] | None = None
) -> None:
    """Collect young generations every ``tick`` seconds until cancelled.

    ``ticked(tick_number, generation)`` is called after each tick (tests wait on it); the
    generation is ``None`` when the process had turned the cyclic GC off, which the clock then
    leaves off. The caller cancels the task at shutdown; nothing else ends it.
    """
    number = 0
    while True:
        await asyncio.sleep(tick)
        number += 1
        if gc.isenabled():
            generation = generation_at(number)
            gc.collect(generation)
            if ticked is not None:
                ticked(number, generation)
        elif ticked is not None:
            ticked(number, None)
