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

from bridge.announcements import evidence
from bridge.announcements.evidence import RECONCILE_SETTLE, VerdictKind
from bridge.announcements.spec import AttemptState, outcome_of_status
from bridge.errors import TwilioApiError
from bridge.settings import Settings
from bridge.store import AnnouncementRecord, Store
from bridge.twilio_rest_client import CallSnapshot, TwilioApi

__all__ = ["OutcomeWatcher", "STREAM_END_WAIT", "facts_of"]

log = structlog.get_logger("bridge.outcomes")

STORE_TICK: Final = 0.2
"""Seconds between reads of the store while waiting."""
STREAM_END_WAIT: Final = 5.0
"""After the call's final status, how long to wait for the bridge to record the stream's end
(the confirmation is written just before the bridge hangs up), or, for an answered call whose
stream no bridge recorded yet, its start (a call can end just after its stream started)."""


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

        The rule is :func:`bridge.announcements.evidence.reconcile`: a CallSid in the row, a
        stream the bridge saw, or a call in Twilio's Calls list (To and From) created in the
        attempt's window and not attributed to another attempt means the call exists, and its
        outcome is learnt; only without any evidence is the attempt ``NOT_PLACED`` (it never
        reached Twilio) and may be made again.
        """
        if record.state is not AttemptState.PLANNED:
            return record
        wait = record.created_at + RECONCILE_SETTLE - self._wall_clock()
        if wait > 0 and not record.call_sid:
            await asyncio.sleep(wait)
        while True:
            record = await self._store.get_announcement(record.id) or record  # fresh evidence
            if record.state is not AttemptState.PLANNED:
                return record
            calls: list[CallSnapshot] = []
            taken: frozenset[str] = frozenset()
            if not record.call_sid:
                spec = record.spec
                calls = await asyncio.to_thread(
                    self._api().list_calls, to=spec.to, from_=spec.from_
                )
                taken = frozenset(await self._store.call_sids())
            verdict = evidence.reconcile(
                facts_of(record),
                [evidence.ListedCall(c.sid, _timestamp(c)) for c in calls],
                taken=taken,
                now=self._wall_clock(),
            )
            log.info(
                "attempt_reconciled",
                announcement=record.id,
                verdict=verdict.kind.value,
                reason=verdict.reason,
                call_sid=verdict.call_sid,
            )
            if verdict.kind is VerdictKind.WAIT:
                assert verdict.until is not None
                await asyncio.sleep(max(0.0, verdict.until - self._wall_clock()))
                continue
            if verdict.kind is VerdictKind.NOT_PLACED:
                updated = await self._store.mark_not_placed(
                    record.id,
                    "not placed: the process stopped before Twilio created the call",
                    now=self._wall_clock(),
                )
                if updated.state is AttemptState.PLANNED:
                    continue  # evidence arrived meanwhile (the store refused): judge again
                return updated
            if verdict.call_sid is None:
                return await self._store.mark_lost(
                    record.id,
                    "the call reached Twilio (the bridge saw its stream) but its CallSid is "
                    "unknown",
                    now=self._wall_clock(),
                )
            placed = await self._store.mark_placed(
                record.id, verdict.call_sid, now=self._wall_clock()
            )
            listed = next((c for c in calls if c.sid == placed.call_sid), None)
            return await self._record(placed, listed) if listed is not None else placed


def facts_of(record: AnnouncementRecord) -> evidence.AttemptFacts:
    """The evidence the store holds that the attempt's call exists."""
    return evidence.AttemptFacts(
        created_at=record.created_at,
        call_sid=record.call_sid,
        stream_started=record.stream_started_at is not None,
        plays=record.plays,
    )


def _timestamp(call: CallSnapshot) -> float | None:
    return call.date_created.timestamp() if call.date_created else None
