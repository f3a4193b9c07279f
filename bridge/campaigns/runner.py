"""Running a campaign to its end: never a number dialled twice, never one skipped.

The order of operations is the whole design::

    take the lease (one runner per campaign; renewed by a heartbeat)
    recover:  every PLANNED attempt → the evidence decides PLACED or NOT_PLACED (its CallSid, its
              stream, a call in Twilio's Calls list in its window: bridge.announcements.evidence)
              every PLACED attempt  → watched until its call ends
              every ACTIVE contact  → settled from its attempt history (retry.decide)
    dispatch: a free concurrency slot → the next due contact inside its calling window
              (input order) → plan_attempt (committed: the attempt exists before the call)
              → the CPS limiter (the campaign's --cps, then the account's budget shared by
              every process) → calls.create → PLACED → watched to its end → settled

Ready at answer: each contact's text (rendered from the template, with its row's values, when
the campaign was created) becomes the attempt's spec just before dialling; once Twilio accepted
the call it is synthesised while the phone rings (``presynth``, through the shared
``BRIDGE_PROMPT_CACHE_DIR``: see ``bridge.announcements.presynth``) and released when the
attempt ends.

A process killed anywhere leaves at worst PLANNED or PLACED attempts, which the next run's
recovery settles before it dials anything. Concurrency counts attempts from plan to end, so the
number of calls live at Twilio never exceeds it.

Paused or cancelled (``campaign pause``/``cancel``, from any process: the campaign's state in
the store, read at every lease renewal, so within a heartbeat): nothing more is dialled (an
attempt planned but not yet sent is recorded not placed, which costs no retry), the calls in
progress are watched to their end and settled, then the run returns the campaign, unfinished.
A runner that takes the lease of a paused campaign (``campaign resume``) sets it running again;
one that finds it cancelled only settles what a previous run left in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import tzinfo
from typing import Final

import structlog

from bridge.announcements.limiter import AccountRateLimiter
from bridge.announcements.outcomes import OutcomeWatcher
from bridge.announcements.placing import place_call
from bridge.announcements.presynth import job_for
from bridge.announcements.spec import AttemptState, CallOutcome
from bridge.calls.presynth import Presynthesizer
from bridge.campaigns.config import CampaignConfig
from bridge.campaigns.lease import Lease
from bridge.campaigns.progress import Counts
from bridge.campaigns.retry import Decision, decide, reached_twilio
from bridge.campaigns.window import is_open, next_opening, zone
from bridge.errors import AnnouncementInvalid, CampaignError, TwilioApiError, TwimlTooLong
from bridge.settings import Settings
from bridge.store import (
    AnnouncementRecord,
    CampaignRecord,
    CampaignState,
    ContactRecord,
    ContactState,
    Store,
)
from bridge.twilio_rest_client import CallSnapshot, TwilioApi

__all__ = ["CampaignRunner", "ThreadLocalApi", "classify"]

log = structlog.get_logger("bridge.campaigns")

TICK: Final = 1.0
"""Longest sleep of the dispatcher between looks at the clock."""
BACKOFF: Final = 5.0
"""Delay before calling a contact again whose attempt never became a call (throttled by
Twilio, or Twilio unreachable)."""
RECENT: Final = 2.0
"""Seconds of earlier creations (any process) the CPS limiter is seeded with."""
FATAL_CODES: Final = frozenset({20003, 21210, 21212})
"""Twilio codes that no contact can get past (credentials, the caller ID): stop the campaign."""
STOPPED: Final = frozenset({CampaignState.PAUSED, CampaignState.CANCELLED})
"""States in which a runner dials nothing more."""


def classify(exc: TwilioApiError) -> str:
    """What a failed ``calls.create`` means for the attempt.

    ``refused``: Twilio answered 4xx: the call does not exist (invalid number, geo permission…).
    ``throttled``: 429: it does not exist; try again shortly. ``fatal``: no call can be placed
    (credentials, caller ID). ``uncertain``: no answer or 5xx: the call may exist.
    """
    if exc.status == 401 or exc.code in FATAL_CODES:
        return "fatal"
    if exc.status == 429:
        return "throttled"
    if exc.status is not None and 400 <= exc.status < 500:
        return "refused"
    return "uncertain"


class ThreadLocalApi:
    """A ``TwilioApi`` per worker thread: calls are placed from several threads at once, and
    one HTTP session per thread keeps connections alive without sharing them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._local = threading.local()

    def __call__(self) -> TwilioApi:
        api: TwilioApi | None = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = TwilioApi(self._settings)
        return api


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed a task group (the first that is not a cancellation)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _sole(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


class CampaignRunner:
    """Runs one campaign (``run``) until every contact is done or invalid, or until it is
    paused or cancelled in the store (then the calls in progress are settled first).

    Cancel the task running :meth:`run` to stop (Ctrl-C): dialling stops, the lease is
    released, and calls in flight are settled by the next run's recovery.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        campaign: CampaignRecord,
        *,
        api: Callable[[], TwilioApi],
        wall_clock: Callable[[], float] = time.time,
        lease: Lease | None = None,
        on_progress: Callable[[Counts], None] | None = None,
        on_lease_wait: Callable[[str, float], None] | None = None,
        backoff: float = BACKOFF,
        presynth: Presynthesizer | None = None,
    ) -> None:
        self._store = store
        self._presynth = presynth
        self._settings = settings
        self.campaign = campaign
        self.config = CampaignConfig.from_dict(campaign.config)
        self._api = api
        self._wall = wall_clock
        self.lease = lease or Lease(store, campaign.id, wall_clock=wall_clock)
        self._on_progress = on_progress
        self._on_lease_wait = on_lease_wait
        self._backoff = backoff
        self._watcher = OutcomeWatcher(store, api, settings, wall_clock=wall_clock)
        self._limiter = AccountRateLimiter(
            settings, self._the_store, pace=self.config.cps, clock=wall_clock
        )
        self._window = self.config.calling_window()
        self._default_zone = self.config.zone()
        self._zones: dict[str, tzinfo] = {}
        self._retry_on = self.config.retry_outcomes
        self._contacts: dict[int, ContactRecord] = {}
        self._history: dict[int, list[AnnouncementRecord]] = {}
        self._due: list[int] = []
        """Contact indexes due now (a heap: input order)."""
        self._later: list[tuple[float, int]] = []
        """(next_at, index) of pending contacts not yet due (a heap; stale entries skipped)."""
        self._active: set[str] = set()
        """Attempts from plan to end (the concurrency count)."""
        self._open = 0
        """Contacts PENDING or ACTIVE (the campaign ends at 0)."""
        self._in_run: set[int] = set()
        """Contacts PENDING or ACTIVE when this run started: what it has to call (its
        progress counts these)."""
        self.stop: CampaignState | None = None
        """``paused`` or ``cancelled`` once the store said so: nothing more is dialled."""
        self._changed = asyncio.Event()
        self._reported = float("-inf")
        self._creators: ThreadPoolExecutor | None = None
        """Threads for ``calls.create`` alone (one per concurrent attempt, so a creation never
        queues behind outcome polls: the CPS slots stay even on the wire)."""

    async def _the_store(self) -> Store:
        return self._store

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> CampaignRecord:
        """Run to the end; the finished campaign, or the paused or cancelled one (see
        :attr:`stop`). Raises ``CampaignError`` (``CampaignBusy`` when another runner is live,
        ``LeaseLost``, or a Twilio error no call can get past)."""
        taken = await self.lease.take(self._on_lease_wait)
        if taken.state is CampaignState.PAUSED:  # `campaign resume`: it runs again
            taken = (
                await self._store.set_campaign_state(
                    self.campaign.id,
                    CampaignState.RUNNING,
                    allowed_from=(CampaignState.PAUSED,),
                    now=self._wall(),
                )
                or taken
            )
        self._watch(taken)
        log.info("campaign_started", campaign=self.campaign.id, owner=self.lease.owner)
        if self.config.cps > self._settings.bridge_calls_per_second:
            log.warning(
                "campaign_cps_above_account_budget",
                campaign=self.campaign.id,
                cps=self.config.cps,
                budget=self._settings.bridge_calls_per_second,
            )
        self._creators = ThreadPoolExecutor(
            max_workers=min(32, self.config.max_concurrent), thread_name_prefix="calls-create"
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                keeper = tasks.create_task(self.lease.keep(self._watch))
                await self._recover()
                await self._load()
                # Creations by any process in the last seconds (an earlier run of this
                # campaign, another campaign) spend this second's budget. An attempt is
                # recorded up to one slot before its request is sent: shift by one slot.
                recent = await self._store.recent_attempt_times(self._wall() - RECENT)
                local = self._limiter.local
                local.seed(t + local.interval for t in recent)
                await self._dispatch(tasks)
                if not self._open:  # every contact done, even if it was paused meanwhile
                    await self._store.finish_campaign(self.campaign.id, now=self._wall())
                keeper.cancel()
        except BaseExceptionGroup as group:
            raise _sole(group) from None
        finally:
            self._creators.shutdown(wait=False)
            self._report(force=True)
            await self.lease.release()
        finished = await self._store.get_campaign(self.campaign.id)
        assert finished is not None
        if self._open:
            log.info("campaign_stopped", campaign=self.campaign.id, state=finished.state.value)
        else:
            log.info("campaign_finished", campaign=self.campaign.id)
        return finished

    def _watch(self, campaign: CampaignRecord) -> None:
        """The campaign as the store has it now (at the lease's take and each renewal)."""
        if campaign.state in STOPPED and campaign.state != self.stop:
            if self.stop is None:
                log.info("campaign_stopping", campaign=self.campaign.id, state=campaign.state.value)
            self.stop = campaign.state  # paused, then cancelled: it says cancelled
            self._notify()

    # --- recovery -----------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Settle what a previous run left in flight, before anything is (re)dialled."""
        revived = await self._store.revive_evidenced(self.campaign.id)
        if revived:
            log.warning("attempts_revived", campaign=self.campaign.id, attempts=revived)
        unfinished = await self._store.unfinished_announcements(campaign_id=self.campaign.id)
        if unfinished:
            log.info("campaign_recovering", campaign=self.campaign.id, attempts=len(unfinished))
        async with asyncio.TaskGroup() as tasks:
            for record in unfinished:
                tasks.create_task(self._finish_attempt(record))

    async def _finish_attempt(self, record: AnnouncementRecord) -> AnnouncementRecord:
        if record.state is AttemptState.PLANNED:
            record = await self._reconcile(record)
        if record.state is AttemptState.PLACED:
            record = await self._watcher.wait(record.id)
        return record

    async def _reconcile(self, record: AnnouncementRecord) -> AnnouncementRecord:
        """Twilio's Calls list decides; retried while Twilio cannot be asked."""
        while True:
            try:
                return await self._watcher.reconcile(record)
            except TwilioApiError as exc:
                if classify(exc) == "fatal":
                    raise CampaignError(f"cannot reconcile with Twilio: {exc.message}") from None
                log.warning("reconcile_failed", announcement=record.id, error=exc.message)
                await asyncio.sleep(self._backoff)

    async def _load(self) -> None:
        contacts = await self._store.contacts(self.campaign.id)
        for attempt in await self._store.attempts(self.campaign.id):
            if attempt.contact_idx is not None:
                self._history.setdefault(attempt.contact_idx, []).append(attempt)
        for contact in contacts:
            self._contacts[contact.idx] = contact
            if contact.state in (ContactState.PENDING, ContactState.ACTIVE):
                self._open += 1
                self._in_run.add(contact.idx)
            if contact.state is ContactState.PENDING:
                heapq.heappush(self._later, (contact.next_at, contact.idx))
        for contact in contacts:
            if contact.state is ContactState.ACTIVE:
                await self._apply(contact.idx, self._decide(contact.idx))
        self._report(force=True)

    # --- dispatch -----------------------------------------------------------------------------

    async def _dispatch(self, tasks: asyncio.TaskGroup) -> None:
        while self._open or self._active:
            changed = self._changed
            self._report()
            if self.stop is not None:  # paused or cancelled: the calls in progress end
                if not self._active:
                    return
                await self._wait(changed, TICK)
                continue
            if len(self._active) >= self.config.max_concurrent:
                await self._wait(changed, TICK)
                continue
            contact, wake = await self._next_due()
            if contact is None:
                await self._wait(changed, min(TICK, max(0.0, wake - self._wall())))
                continue
            await self._dial(contact, tasks)

    async def _wait(self, changed: asyncio.Event, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await changed.wait()
        except TimeoutError:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _zone(self, contact: ContactRecord) -> tzinfo:
        if not contact.timezone:
            return self._default_zone
        if contact.timezone not in self._zones:
            self._zones[contact.timezone] = zone(contact.timezone)
        return self._zones[contact.timezone]

    async def _next_due(self) -> tuple[ContactRecord | None, float]:
        """The first due contact (input order) whose window is open; else when to look again.
        Due contacts outside their window are moved (and stored) to its next opening."""
        now = self._wall()
        while self._later and self._later[0][0] <= now:
            at, idx = heapq.heappop(self._later)
            contact = self._contacts[idx]
            if contact.state is ContactState.PENDING and contact.next_at == at:
                heapq.heappush(self._due, idx)
        while self._due:
            idx = heapq.heappop(self._due)
            contact = self._contacts[idx]
            if contact.state is not ContactState.PENDING or contact.next_at > now:
                continue
            opening = next_opening(self._window, now, self._zone(contact))
            if opening > now:
                await self._store.update_contact(self.campaign.id, idx, next_at=opening)
                self._contacts[idx] = dataclasses.replace(contact, next_at=opening)
                heapq.heappush(self._later, (opening, idx))
                continue
            return contact, now
        return None, self._later[0][0] if self._later else now + TICK

    async def _dial(self, contact: ContactRecord, tasks: asyncio.TaskGroup) -> None:
        idx = contact.idx
        try:
            spec = self.config.spec(self._settings, contact.number, contact.text)
        except AnnouncementInvalid as exc:  # settings changed since the campaign was made
            await self._apply(
                idx, Decision(ContactState.DONE, outcome=CallOutcome.NOT_PLACED, error=exc.message)
            )
            return
        record = await self._store.plan_attempt(self.campaign.id, idx, spec, now=self._wall())
        self._active.add(record.id)
        self._set_contact(dataclasses.replace(contact, state=ContactState.ACTIVE))
        self._remember(record)
        # The limiter sits between the committed plan and calls.create, so nothing but a
        # thread hand-off separates a CPS slot from the request (the slots stay even).
        await self._limiter.acquire()
        now = self._wall()
        closed = not is_open(self._window, now, self._zone(contact))
        if closed or self.stop is not None:  # not placed: costs no retry
            why = "the calling window closed" if closed else f"the campaign was {self.stop}"
            record = await self._store.mark_not_placed(record.id, f"not placed: {why}", now=now)
            await self._ended(record, None)
            return
        # Handed to a creator thread at once, not at the attempt task's first step.
        loop = asyncio.get_running_loop()
        creating = loop.run_in_executor(self._creators, self._create, record)
        tasks.create_task(self._attempt(record, creating))

    # --- one attempt --------------------------------------------------------------------------

    async def _attempt(
        self, record: AnnouncementRecord, creating: asyncio.Future[CallSnapshot]
    ) -> None:
        record, decision = await self._place(record, creating)
        if not record.final:
            record = await self._watcher.wait(record.id)
        await self._ended(record, decision)

    def _create(self, record: AnnouncementRecord) -> CallSnapshot:
        return place_call(self._api(), self._settings, record.id, record.spec, now=self._wall())

    async def _place(
        self, record: AnnouncementRecord, creating: asyncio.Future[CallSnapshot]
    ) -> tuple[AnnouncementRecord, Decision | None]:
        """The call's creation, recorded. The decision is set when it overrides
        :func:`decide`."""
        try:
            call = await creating
        except TwimlTooLong as exc:
            error, kind = str(exc), "refused"
        except TwilioApiError as exc:
            error, kind = exc.message, classify(exc)
            log.info("create_failed", announcement=record.id, kind=kind, error=error)
        else:
            if self._presynth is not None:  # accepted: synthesise while it rings
                self._presynth.start(
                    job_for(record.id, record.spec, self._settings, now=self._wall())
                )
            placed = await self._store.mark_placed(
                record.id, call.sid, now=self._wall(), status=call.status
            )
            log.info("attempt_placed", announcement=record.id, call_sid=call.sid)
            return placed, None
        if kind == "uncertain":
            # The request may have created the call: Twilio's Calls list decides.
            record = await self._reconcile(record)
            if record.state is AttemptState.NOT_PLACED:
                return record, Decision(ContactState.PENDING, self._wall() + self._backoff)
            return record, None
        now = self._wall()
        if kind == "throttled":
            error = f"Twilio throttled the request: {error}"
            record = await self._store.mark_not_placed(record.id, error, now=now)
            return record, Decision(ContactState.PENDING, now + self._backoff)
        error = f"Twilio refused the call: {error}"
        record = await self._store.mark_not_placed(record.id, error, now=now)
        if kind == "fatal":
            raise CampaignError(
                f"{error}; fix the configuration, then `hamsa-bridge campaign resume "
                f"{self.campaign.id}`"
            )
        return record, Decision(ContactState.DONE, outcome=CallOutcome.NOT_PLACED, error=error)

    async def _ended(self, record: AnnouncementRecord, decision: Decision | None) -> None:
        assert record.contact_idx is not None
        if self._presynth is not None:
            await self._presynth.release(record.id)  # the contact's audio leaves the disk
        self._remember(record)
        log.info(
            "attempt_ended",
            announcement=record.id,
            state=record.state.value,
            outcome=record.outcome.value if record.outcome else None,
            reason=record.reason.value if record.reason else None,
        )
        await self._apply(record.contact_idx, decision or self._decide(record.contact_idx))
        self._active.discard(record.id)
        self._notify()

    # --- contacts -----------------------------------------------------------------------------

    def _remember(self, record: AnnouncementRecord) -> None:
        assert record.contact_idx is not None
        history = self._history.setdefault(record.contact_idx, [])
        for i, known in enumerate(history):
            if known.id == record.id:
                history[i] = record
                return
        history.append(record)

    def _decide(self, idx: int) -> Decision:
        return decide(
            self._history.get(idx, []),
            retries=self.config.retries,
            retry_delay=self.config.retry_delay,
            retry_on=self._retry_on,
            now=self._wall(),
        )

    async def _apply(self, idx: int, decision: Decision) -> None:
        contact = self._contacts[idx]
        outcome = decision.outcome.value if decision.outcome else None
        if decision.state is ContactState.PENDING:
            next_at = next_opening(self._window, decision.not_before, self._zone(contact))
            await self._store.update_contact(
                self.campaign.id, idx, state=ContactState.PENDING, next_at=next_at
            )
            self._set_contact(dataclasses.replace(contact, state=decision.state, next_at=next_at))
            heapq.heappush(self._later, (next_at, idx))
        else:
            await self._store.update_contact(
                self.campaign.id, idx, state=decision.state, outcome=outcome, error=decision.error
            )
            self._set_contact(
                dataclasses.replace(
                    contact, state=decision.state, outcome=outcome, error=decision.error
                )
            )
        self._report()

    def _set_contact(self, contact: ContactRecord) -> None:
        live = (ContactState.PENDING, ContactState.ACTIVE)
        before = self._contacts[contact.idx].state in live
        self._open += (contact.state in live) - before
        self._contacts[contact.idx] = contact

    # --- progress -----------------------------------------------------------------------------

    def counts(self) -> Counts:
        """The whole campaign's contacts."""
        reached = {idx: reached_twilio(h) for idx, h in self._history.items()}
        return Counts.of(self._contacts.values(), reached)

    def run_counts(self) -> Counts:
        """This run's contacts (pending or in progress when it started): what its progress
        shows; its ``to_call`` is the number the run set out to call."""
        reached = {idx: reached_twilio(self._history.get(idx, [])) for idx in self._in_run}
        return Counts.of((self._contacts[idx] for idx in self._in_run), reached)

    def _report(self, *, force: bool = False) -> None:
        if self._on_progress is None or not self._contacts:
            return
        now = time.monotonic()
        if force or now - self._reported >= 0.2:
            self._reported = now
            self._on_progress(self.run_counts())
