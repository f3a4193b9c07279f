"""The bridge's announcement service: record a request, place its call in the background, follow
it to its outcome; and, at startup, settle what a previous process left unfinished.

Owned by the app (``create_app`` builds it, the lifespan starts and closes it); it holds no
module-level state. Placing is paced by an ``AccountRateLimiter`` (``BRIDGE_CALLS_PER_SECOND``,
the account's budget, shared through the store with every process placing calls) and bounded by
a semaphore of ``BRIDGE_MAX_CONCURRENT_CALLS`` slots, each held from ``calls.create`` until the
call's outcome is known.

The database is opened lazily (:class:`LazyStore`), so a bridge that never announces never
creates the file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import structlog

from bridge.announcements.limiter import AccountRateLimiter
from bridge.announcements.outcomes import OutcomeWatcher
from bridge.announcements.placing import call_request, place_call
from bridge.announcements.presynth import job_for
from bridge.announcements.spec import AnnouncementSpec, AttemptState
from bridge.calls.presynth import Presynthesizer
from bridge.errors import StoreError, TwilioApiError
from bridge.settings import Settings
from bridge.store import AnnouncementRecord, Store
from bridge.twilio_rest_client import TwilioApi

__all__ = ["AnnouncementService", "LazyStore"]

log = structlog.get_logger("bridge.announcements")

_SIZING_ID: Final = "an_" + "0" * 24
"""An id shaped like the store's (``an_`` + 24 hex digits): the TwiML built with it is exactly
as long as the real one, so its length can be checked before anything is recorded."""


class LazyStore:
    """The store, opened on first need and closed by the app's lifespan."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Store | None = None
        self._lock = asyncio.Lock()

    @property
    def opened(self) -> bool:
        return self._store is not None

    async def get(self) -> Store:
        """The open store (``StoreError`` if it cannot be opened; the next call retries)."""
        if self._store is None:
            async with self._lock:
                if self._store is None:
                    self._store = await Store.open(self.url)
        return self._store

    async def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await store.close()


class AnnouncementService:
    """Places announcement calls requested through the HTTP API and follows their outcomes."""

    def __init__(
        self,
        settings: Settings,
        store: LazyStore,
        twilio_api: Callable[[], TwilioApi],
        *,
        wall_clock: Callable[[], float] = time.time,
        presynth: Presynthesizer | None = None,
    ) -> None:
        self._settings = settings
        self.presynth = presynth
        """Synthesises each placed call's audio while it rings (``None``: disabled)."""
        self._store = store
        self._api = twilio_api
        self._wall_clock = wall_clock
        self.limiter = AccountRateLimiter(settings, store.get, clock=time.time)
        self._slots = asyncio.Semaphore(settings.bridge_max_concurrent_calls)
        self._tasks: set[asyncio.Task[None]] = set()
        self._following: dict[str, asyncio.Task[None]] = {}
        """The background task of each announcement this process places or follows."""
        self._watcher: OutcomeWatcher | None = None

    async def watcher(self) -> OutcomeWatcher:
        """The outcome watcher (its ``polls`` count the Calls API requests made)."""
        if self._watcher is None:
            self._watcher = OutcomeWatcher(
                await self._store.get(), self._api, self._settings, wall_clock=self._wall_clock
            )
        return self._watcher

    @property
    def busy(self) -> int:
        """Announcements being placed or followed by this process."""
        return len(self._tasks)

    # --- requests ---------------------------------------------------------------------------

    def check(self, spec: AnnouncementSpec) -> None:
        """Raise ``TwimlTooLong`` if the call's TwiML would exceed Twilio's limit."""
        call_request(self._settings, _SIZING_ID, spec, now=self._wall_clock())

    async def submit(
        self, spec: AnnouncementSpec, *, idempotency_key: str | None = None
    ) -> tuple[AnnouncementRecord, bool]:
        """Record the announcement and place it in the background. With an
        ``idempotency_key`` used before, the earlier record and ``False``; nothing is placed."""
        self.check(spec)
        store = await self._store.get()
        record, created = await store.create_announcement(
            spec, now=self._wall_clock(), idempotency_key=idempotency_key
        )
        if created:
            log.info("announcement_accepted", announcement=record.id)
            self._spawn(self._place(record), record.id)
        return record, created

    async def get(self, announcement_id: str) -> AnnouncementRecord | None:
        store = await self._store.get()
        return await store.get_announcement(announcement_id)

    async def settled(self, announcement_id: str) -> AnnouncementRecord | None:
        """The record once this process is done placing and following it (at once if it is
        not doing so). Bound it with ``asyncio.timeout``."""
        task = self._following.get(announcement_id)
        if task is not None:
            await asyncio.wait({task})
        return await self.get(announcement_id)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume this database's unfinished standalone announcements: listed now (before the
        app takes requests, so none of its own is mistaken for a leftover), settled and followed
        in the background. A database that cannot be opened is logged, not fatal: inbound calls
        do not need it, and the API answers 503 until it can be opened."""
        try:
            store = await self._store.get()
            # Calls an earlier process created in the last second count against this process's
            # own pace (what applies alone if the store's budget cannot be reached).
            self.limiter.local.seed(await store.recent_attempt_times(self._wall_clock() - 1.0))
            unfinished = await store.unfinished_announcements(standalone=True)
        except StoreError as exc:
            log.error("announcements_resume_failed", error=str(exc))
            return
        if unfinished:
            log.info("announcements_resumed", count=len(unfinished))
        for record in unfinished:
            self._spawn(self._resume_one(record), record.id)

    async def aclose(self) -> None:
        """Cancel placing and watching (a record left ``PLANNED`` is reconciled next start)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None], announcement_id: str | None) -> None:
        task = asyncio.create_task(self._guarded(work, announcement_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if announcement_id is not None:
            following = self._following
            following[announcement_id] = task

            def forget(done: asyncio.Task[None]) -> None:
                if following.get(announcement_id) is done:
                    del following[announcement_id]

            task.add_done_callback(forget)

    async def _guarded(self, work: Coroutine[Any, Any, None], announcement_id: str | None) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # a background task must log, never vanish silently
            log.exception("announcement_task_failed", announcement=announcement_id)

    # --- placing and following --------------------------------------------------------------

    async def _place(self, record: AnnouncementRecord) -> None:
        settings = self._settings
        async with self._slots:
            await self.limiter.acquire()
            store = await self._store.get()
            if not await store.begin_placing(record.id, now=self._wall_clock()):
                return  # another process (a replica resuming it) is placing it
            try:
                call = await asyncio.to_thread(
                    place_call,
                    self._api(),
                    settings,
                    record.id,
                    record.spec,
                    now=self._wall_clock(),
                )
            except TwilioApiError as exc:
                if exc.status is not None and exc.status < 500:  # Twilio refused: no call
                    log.warning(
                        "announcement_not_placed", announcement=record.id, error=exc.message
                    )
                    await store.mark_not_placed(record.id, exc.message, now=self._wall_clock())
                    return
                # No answer, or a 5xx (timeout, network, proxy): the call may exist; Twilio's
                # Calls list says.
                log.warning("announcement_placing_uncertain", announcement=record.id)
                record = await (await self.watcher()).reconcile(record)
                if record.state is not AttemptState.PLACED:
                    return
            else:
                # Twilio accepted it: synthesise while it rings (never for a call not placed).
                if self.presynth is not None:
                    self.presynth.start(
                        job_for(record.id, record.spec, settings, now=self._wall_clock())
                    )
                record = await store.mark_placed(
                    record.id, call.sid, now=self._wall_clock(), status=call.status
                )
            log.info("announcement_placed", announcement=record.id, call_sid=record.call_sid)
            try:
                await self._follow(record)
            finally:
                if self.presynth is not None:
                    await self.presynth.release(record.id)

    async def _follow(self, record: AnnouncementRecord) -> None:
        final = await (await self.watcher()).wait(record.id)
        log.info(
            "announcement_finished",
            announcement=final.id,
            call_sid=final.call_sid,
            outcome=final.outcome.value if final.outcome else None,
            reason=final.reason.value if final.reason else None,
            answered_by=final.answered_by,
            plays=final.plays,
            plays_unconfirmed=final.plays_unconfirmed,
            confirmation=final.confirmation,
            duration=final.duration,
        )

    async def _resume_one(self, record: AnnouncementRecord) -> None:
        if record.state is AttemptState.PLANNED and record.sent_at is None:
            # Accepted (202) but never sent: place it now; begin_placing makes sure only one
            # process (this one, a sibling replica, or the one that queued it) sends it.
            await self._place(record)
            return
        async with self._slots:
            if record.state is AttemptState.PLANNED:
                record = await (await self.watcher()).reconcile(record)
            if record.state is AttemptState.PLACED:
                await self._follow(record)
