"""One runner per campaign: a lease in the store, renewed by a heartbeat.

The owner is ``host:pid:random``. A lease outlives a killed runner by at most its TTL, so
``resume`` waits for it to lapse; when the holder is a process of this host that no longer
exists (``kill -9``), there is nothing to wait for and the lease is taken over at once. A lease
that keeps being renewed belongs to a live runner: ``resume`` gives up with ``CampaignBusy``.

Each renewal reads the campaign back: that is how ``campaign pause``/``cancel`` (which only
change its state in the store, from any process or machine) reach its runner, within a
heartbeat.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable
from typing import Final

import structlog

from bridge.errors import CampaignBusy, LeaseLost
from bridge.store import CampaignRecord, Store

__all__ = ["HEARTBEAT", "TTL", "Lease", "new_owner", "owner_is_dead"]

log = structlog.get_logger("bridge.campaigns")

TTL: Final = 6.0
"""Seconds a lease lasts without renewal."""
HEARTBEAT: Final = 2.0
"""Seconds between renewals (three renewals fit in a TTL)."""
POLL: Final = 0.5


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str) -> bool:
    """Is ``owner`` a process of this host that has exited? (Unknown: ``False``.)"""
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False


class Lease:
    def __init__(
        self,
        store: Store,
        campaign_id: str,
        *,
        owner: str | None = None,
        wall_clock: Callable[[], float],
        ttl: float = TTL,
        heartbeat: float = HEARTBEAT,
        patience: float | None = None,
    ) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.owner = owner or new_owner()
        self._wall_clock = wall_clock
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.patience = patience if patience is not None else ttl + heartbeat + 1.0
        """How long to wait for a held lease before deciding its holder is alive."""

    async def take(self, on_wait: Callable[[str, float], None] | None = None) -> CampaignRecord:
        """Acquire the lease, waiting for a lapsed runner's lease to expire; the campaign as it
        was when taken.

        ``on_wait(holder, until)`` is told once when waiting starts. Raises ``CampaignBusy``
        when the holder keeps renewing it for longer than ``patience``.
        """
        deadline: float | None = None
        taken_from: str | None = None
        while True:
            now = self._wall_clock()
            record = await self.store.acquire_lease(
                self.campaign_id, self.owner, now=now, ttl=self.ttl, take_from=taken_from
            )
            holder = record.lease_owner
            if holder == self.owner:
                if taken_from:
                    log.info("lease_taken_over", campaign=self.campaign_id, dead_owner=taken_from)
                return record
            assert holder is not None
            if owner_is_dead(holder):
                taken_from = holder
                continue
            if deadline is None:
                deadline = now + self.patience
                if on_wait is not None:
                    on_wait(holder, record.lease_until)
            elif now >= deadline:
                raise CampaignBusy(
                    f"campaign {self.campaign_id} is being run by {holder} (its lease keeps "
                    "being renewed): stop that runner first, or let it finish"
                )
            await asyncio.sleep(min(POLL, max(0.05, record.lease_until - now)))

    async def keep(self, on_renewed: Callable[[CampaignRecord], None] | None = None) -> None:
        """Renew every ``heartbeat`` seconds until cancelled; ``LeaseLost`` if taken over.
        ``on_renewed`` is given the campaign as each renewal read it (its state included)."""
        while True:
            await asyncio.sleep(self.heartbeat)
            record = await self.store.acquire_lease(
                self.campaign_id, self.owner, now=self._wall_clock(), ttl=self.ttl
            )
            if record.lease_owner != self.owner:
                raise LeaseLost(
                    f"campaign {self.campaign_id}: the lease was taken over by "
                    f"{record.lease_owner} (this runner stalled longer than {self.ttl:g} s); "
                    "stopping so that no number is dialled by two runners"
                )
            if on_renewed is not None:
                on_renewed(record)

    async def release(self) -> None:
        await self.store.release_lease(self.campaign_id, self.owner)
