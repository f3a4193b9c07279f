"""The cyclic GC's young collections on a clock, not on allocation counts (``BRIDGE_GC_TICK_MS``).

**Why.** CPython starts a generation-0 collection when its count passes threshold 0 (700). The
count is tracked allocations *minus deallocations*, and the death of an *old* object counts too
(``_PyObject_GC_Link`` and ``PyObject_GC_Del`` in
https://github.com/python/cpython/blob/3.11/Modules/gcmodule.c, the same through 3.13). Under a
steady stream of calls, the objects of ended calls (old, in generation 2) die about as fast as
those of new calls are born, so the count hovers under 700 while the young list keeps every
newborn that is still alive. Collections then come rarely and late, and each scans the whole
backlog: in the 10-minute soak at 200 calls (calls ending and starting all the time)
generation-1 collections took up to 36 ms and found nothing, and every call's frames waited
behind them (``BENCHMARKS.md``, issue 16). A capacity step, whose calls all start together, never
showed it.

**What.** :func:`collect_on_a_clock` collects generations 0 and 1 together every ``tick``
(250 ms by default). Each collection scans what was born since the last tick and is still
alive: the calls' short-lived objects of the moment (futures, timer handles, coroutines: about
2 ms at 200 calls on the VM of ``BENCHMARKS.md``) and the tick's long-lived births (a burst of
new calls adds a few ms). What survives is old, and an old object is scanned again only by a
full collection. The cheaper-looking alternative, generation 0 every tick and generation 1 every
tenth, scans a survivor twice, and its generation-1 collections (a second of births) took up to
17 ms when calls started in a burst. The automatic collections stay on: a burst that allocates
faster than the clock still triggers them, and their lists are short too.

**Full collections** are counted in generation-1 collections, so on this clock
``bridge/server.py`` sets their threshold from the tick: one full collection about every hour
(``FULL_EVERY_SECONDS``), whatever the load. A normal call makes no cyclic garbage
(``tests/test_stall_report.py``, ``tests/test_hamsa_cycles.py``); what rarer paths make waits
for it.

**Cost.** One ``gc.collect(1)`` per tick; ``BENCHMARKS.md`` gives the measured figures with and
without the clock.

The app's lifespan runs :func:`collect_on_a_clock` when ``BRIDGE_GC_TICK_MS`` is not 0.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

GENERATION = 1
"""What each tick collects: generation 1, and generation 0 with it."""

FULL_EVERY_SECONDS = 3600.0
"""How often a full collection should come on the clock (``full_collection_threshold``)."""


def full_collection_threshold(tick: float) -> int:
    """CPython's threshold 2 (generation-1 collections between two full ones) that makes a full
    collection about every :data:`FULL_EVERY_SECONDS` when the clock collects every ``tick``
    seconds."""
    return max(1, round(FULL_EVERY_SECONDS / tick))


async def collect_on_a_clock(
    tick: float, *, ticked: Callable[[int, bool], None] | None = None
) -> None:
    """Collect the young generations every ``tick`` seconds until cancelled.

    ``ticked(tick_number, collected)`` is called after each tick (tests wait on it);
    ``collected`` is false when the process had turned the cyclic GC off, which the clock then
    leaves off. The caller cancels the task at shutdown; nothing else ends it.
    """
    number = 0
    while True:
        await asyncio.sleep(tick)
        number += 1
        enabled = gc.isenabled()
        if enabled:
            gc.collect(GENERATION)
        if ticked is not None:
            ticked(number, enabled)
