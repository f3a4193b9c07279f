"""What a process holds: asyncio tasks, open file descriptors, sockets and threads, counted before
and after a batch of calls, so a fault test can assert that nothing was left behind.

    before = Holdings.now()
    ... 100 faulty calls, each awaited to its end ...
    await settle(before)          # waits (bounded) until the counts are back, else fails

Counts, not identities: servers and pools that legitimately live on (the loopback's listening
sockets, a database connection) are part of ``before``. Each process counts only itself: in a
loopback test the bridge, both emulators and the callers share this process and its event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Holdings", "settle"]


@dataclass(frozen=True, slots=True)
class Holdings:
    tasks: int
    fds: int
    sockets: int
    threads: int

    @classmethod
    def now(cls) -> Holdings:
        """This process's counts (the calling task is counted among the tasks)."""
        fds = sockets = 0
        for entry in Path("/proc/self/fd").iterdir():
            try:
                target = os.readlink(entry)
            except OSError:  # closed between listing and reading
                continue
            fds += 1
            sockets += target.startswith("socket:")
        return cls(
            tasks=len(asyncio.all_tasks()),
            fds=fds,
            sockets=sockets,
            threads=threading.active_count(),
        )

    def excess_over(self, before: Holdings) -> dict[str, int]:
        """What this holds beyond ``before`` (empty when nothing leaked)."""
        excess = {
            name: getattr(self, name) - getattr(before, name)
            for name in ("tasks", "fds", "sockets", "threads")
        }
        return {name: n for name, n in excess.items() if n > 0}


async def settle(before: Holdings, *, within: float = 5.0) -> Holdings:
    """Wait until nothing beyond ``before`` is held (closing handshakes and task cancellations
    take a few loop turns after the last call returned); ``AssertionError`` naming the excess
    after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        current = Holdings.now()
        excess = current.excess_over(before)
        if not excess:
            return current
        if loop.time() >= deadline:
            leaked = sorted(
                repr(task.get_coro()) for task in asyncio.all_tasks() if not task.done()
            )
            raise AssertionError(
                f"left behind after the calls: {excess} (before {before}, now {current}); "
                f"tasks alive: {leaked[:20]}"
            )
        await asyncio.sleep(0.05)  # polling a count: nothing to wait on
