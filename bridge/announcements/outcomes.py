"""Learning how announcement calls ended, and reconciling attempts a killed process left behind.

Outcomes arrive two ways. When the bridge is publicly reachable, Twilio's signed status callbacks
(``/twilio/status?announcement=<id>``) are written to the store by whichever bridge replica
receives them, and a waiter only reads the store. When no news has arrived for
``BRIDGE_CALLBACK_GRACE`` seconds (callbacks not reaching a bridge that shares the database), the
waiter polls the Calls API every ``BRIDGE_OUTCOME_POLL_INTERVAL`` seconds instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import structlog

from bridge.announcements.spec import AttemptState, outcome_of_status
from bridge.settings import Settings
from bridge.store import AnnouncementRecord, Store
from bridge.twilio_api import CallSnapshot, TwilioApi, TwilioApiError

__all__ = ["OutcomeWatcher", "STREAM_END_WAIT"]

log = structlog.get_logger("bridge.outcomes")

STORE_TICK: Final = 0.2
"""Seconds between reads of the store while waiting."""
STREAM_END_WAIT: Final = 5.0
"""After the call's final status, how long to wait for the bridge to record the stream's end
(the confirmation is written just before the bridge hangs up), or, for an answered call whose
stream no bridge recorded yet, its start (a call can end just after its stream started)."""
RECONCILE_SETTLE: Final = 3.0
"""An uncertain attempt younger than this is left to settle before Twilio's Calls list is read:
a request sent just before the process died may still be being processed."""
CLOCK_SKEW: Final = 120.0
"""Seconds of disagreement allowed between our clock and Twilio's ``date_created``."""


class OutcomeWatcher:
    """Waits for announcements' final outcomes; polls Twilio only when callbacks are silent."""

    def __init__(
        self,
        store: Store,
        api: Callable[[], TwilioApi],
        settings: Settings,
        *,
        wall_clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._api = api
        self._settings = settings
        self._wall_clock = wall_clock
        self.polls = 0
        """Calls API requests made (0 while callbacks flow)."""

    async def wait(self, announcement_id: str) -> AnnouncementRecord:
        """Return the record once its call has ended (and the bridge recorded its stream)."""
        settings = self._settings
        last_poll = float("-inf")
        while True:
            record = await self._store.get_announcement(announcement_id)
            if record is None:
                raise LookupError(f"no announcement {announcement_id}")
            now = self._wall_clock()
            if record.final:
                return await self._after_final(record)
            heard = record.status_at or record.placed_at or record.created_at
            silent = now - heard >= settings.bridge_callback_grace
            due = now - last_poll >= settings.bridge_outcome_poll_interval
            if record.call_sid and silent and due:
                last_poll = now
                await self.poll(record)
            await asyncio.sleep(STORE_TICK)

    async def poll(self, record: AnnouncementRecord) -> AnnouncementRecord:
        """Ask Twilio for the call's status and record it."""
        assert record.call_sid is not None
        self.polls += 1
        try:
            call = await asyncio.to_thread(self._api().fetch_call, record.call_sid)
        except TwilioApiError as exc:
            if exc.status == 404 or exc.code == 20404:
                # Twilio does not know the call: it will never end by itself
                log.error("outcome_call_unknown", announcement=record.id)
                updated = await self._store.record_status(
                    record.id,
                    "failed",
                    now=self._wall_clock(),
                    error="Twilio does not know this call (404)",
                )
                return updated or record
            log.warning("outcome_poll_failed", announcement=record.id, error=exc.message)
            return record
        return await self._record(record, call)

    async def _record(self, record: AnnouncementRecord, call: CallSnapshot) -> AnnouncementRecord:
        updated = await self._store.record_status(
            record.id,
            call.status,
            now=self._wall_clock(),
            call_sid=call.sid,
            duration=call.duration if outcome_of_status(call.status) else None,
            answered_by=call.answered_by,
        )
        return updated or record

    async def _after_final(self, record: AnnouncementRecord) -> AnnouncementRecord:
        deadline = self._wall_clock() + STREAM_END_WAIT
        while (
            record.stream_ended_at is None
            and (record.stream_started_at is not None or record.status == "completed")
            and self._wall_clock() < deadline
        ):
            await asyncio.sleep(STORE_TICK)
            record = await self._store.get_announcement(record.id) or record
        if record.duration is None and record.call_sid and record.status == "completed":
            record = await self.poll(record)  # a final callback without CallDuration
        return record

    async def reconcile(self, record: AnnouncementRecord) -> AnnouncementRecord:
        """Settle an attempt a previous process left ``PLANNED`` (recorded, maybe placed).

        Twilio's Calls list (To and From) is read; a call created after the attempt was
        recorded and not attributed to another attempt is this attempt's call. Without one, the
        attempt is ``NOT_PLACED`` (it never reached Twilio) and may be made again.
        """
        if record.state is not AttemptState.PLANNED:
            return record
        wait = record.created_at + RECONCILE_SETTLE - self._wall_clock()
        if wait > 0:
            await asyncio.sleep(wait)
        spec = record.spec
        calls = await asyncio.to_thread(self._api().list_calls, to=spec.to, from_=spec.from_)
        taken = await self._store.call_sids()
        for call in sorted(
            calls, key=lambda c: c.date_created.timestamp() if c.date_created else 0
        ):
            created = call.date_created.timestamp() if call.date_created else None
            if call.sid in taken or created is None or created < record.created_at - CLOCK_SKEW:
                continue
            log.info("attempt_reconciled", announcement=record.id, call_sid=call.sid)
            placed = await self._store.mark_placed(record.id, call.sid, now=self._wall_clock())
            return await self._record(placed, call)
        log.info("attempt_not_placed", announcement=record.id)
        return await self._store.mark_not_placed(
            record.id,
            "not placed: the process stopped before Twilio created the call",
            now=self._wall_clock(),
        )
