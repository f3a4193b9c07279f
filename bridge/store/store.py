"""The store: announcements, campaigns and contacts, in SQLite or PostgreSQL.

``BRIDGE_DATABASE_URL`` chooses: ``sqlite:///path.db`` (one file, WAL, ``synchronous=FULL``;
:mod:`bridge.store.sqlite`) or ``postgresql://…`` (:mod:`bridge.store.postgres`, the ``postgres``
extra), which lets bridge replicas and campaign runners on several machines share one store.
The methods below are written once; the SQL differs only where :class:`Dialect` says.

Every write commits before the method returns, so a process killed at any instant (``kill -9``)
leaves a consistent database: a call attempt is stored before ``calls.create`` is sent. Several
processes may share the database (the bridge records stream results and status callbacks, a
campaign runner plans attempts); each method is one transaction, and the claims
(:meth:`Store.claim_stream`, :meth:`Store.begin_placing`, :meth:`Store.acquire_lease`,
:meth:`Store.plan_attempt`) are atomic between processes.

The connection lives in one worker thread; each method runs one transaction there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bridge.announcements.limiter import take
from bridge.announcements.spec import AnnouncementSpec, AttemptState, outcome_of_status
from bridge.errors import StoreError
from bridge.store.backend import Backend, Tx
from bridge.store.records import (
    AnnouncementRecord,
    CampaignRecord,
    CampaignState,
    ContactRecord,
    ContactState,
)
from bridge.store.rows import (
    announcement_from_row,
    contact_from_row,
    contact_values,
    get_announcement,
    get_campaign,
    insert_announcement,
    new_id,
    update,
)
from bridge.store.sqlite import SqliteBackend
from bridge.store.url import check_database_url, is_postgres_url, sqlite_path

__all__ = ["Store", "check_database_url", "open_backend", "sqlite_path"]

T = TypeVar("T")

_UNFINISHED = (AttemptState.PLANNED.value, AttemptState.PLACED.value)


def open_backend(url: str) -> Backend:
    """The backend for ``BRIDGE_DATABASE_URL`` (not connected yet); ``StoreError`` if the URL
    names nothing this version can open."""
    check_database_url(url)
    if is_postgres_url(url):
        from bridge.store.postgres import PostgresBackend  # psycopg is optional: imported here

        return PostgresBackend(url)
    return SqliteBackend(sqlite_path(url))


class Store:
    """Open with :meth:`open`, close with :meth:`close` (or ``async with``)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect (creating the schema if needed); ``StoreError`` if that fails."""
        store = cls(open_backend(url))
        try:
            await asyncio.get_running_loop().run_in_executor(store._executor, store.backend.connect)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def description(self) -> str:
        """The database, as messages may name it (a path, or a URL without its password)."""
        return self.backend.description

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.backend.close)
        finally:
            self._executor.shutdown(wait=False)

    # --- the worker thread --------------------------------------------------------------------

    async def _run(self, work: Callable[[Tx], T]) -> T:
        """``work`` as one write transaction, committed before this returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.backend.transaction(work, write=True)
        )

    async def _read(self, work: Callable[[Tx], T]) -> T:
        """``work`` as one read-only transaction (a consistent snapshot)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.backend.transaction(work, write=False)
        )

    # --- announcements ------------------------------------------------------------------------

    async def create_announcement(
        self,
        spec: AnnouncementSpec,
        *,
        now: float,
        idempotency_key: str | None = None,
    ) -> tuple[AnnouncementRecord, bool]:
        """Record a new ``PLANNED`` announcement; with an ``idempotency_key`` already used, the
        existing one instead. Returns (record, created)."""

        def work(tx: Tx) -> tuple[AnnouncementRecord, bool]:
            announcement_id = new_id("an_")
            # a key used concurrently by another process: one INSERT wins, the other waits
            # for it and then does nothing (reading the winner's below)
            if insert_announcement(
                tx, announcement_id, spec, now=now, idempotency_key=idempotency_key
            ):
                return get_announcement(tx, announcement_id), True
            row = tx.execute(
                "SELECT * FROM announcements WHERE idempotency_key = ?", (idempotency_key,)
            ).first()
            if row is None:
                raise StoreError(f"announcement {idempotency_key!r} vanished")  # not deletable
            return announcement_from_row(row), False

        return await self._run(work)

    async def get_announcement(self, announcement_id: str) -> AnnouncementRecord | None:
        def work(tx: Tx) -> AnnouncementRecord | None:
            row = tx.execute("SELECT * FROM announcements WHERE id = ?", (announcement_id,)).first()
            return announcement_from_row(row) if row is not None else None

        return await self._read(work)

    async def mark_placed(
        self, announcement_id: str, call_sid: str, *, now: float, status: str = "queued"
    ) -> AnnouncementRecord:
        """Twilio created the call: remember its CallSid (a callback may have done so first).

        Also from ``NOT_PLACED``: a CallSid proves the call exists, whatever a reconciliation
        that raced the creation concluded."""

        def work(tx: Tx) -> AnnouncementRecord:
            tx.execute(
                "UPDATE announcements SET call_sid = COALESCE(call_sid, ?), "
                "placed_at = COALESCE(placed_at, ?), "
                "state = CASE WHEN state IN ('planned', 'not_placed') THEN 'placed' "
                "ELSE state END, error = CASE WHEN state = 'not_placed' THEN NULL ELSE error END, "
                "ended_at = CASE WHEN state = 'not_placed' THEN NULL ELSE ended_at END, "
                "status = COALESCE(status, ?), status_at = COALESCE(status_at, ?) WHERE id = ?",
                (call_sid, now, status, now, announcement_id),
            )
            return get_announcement(tx, announcement_id)

        return await self._run(work)

    async def mark_not_placed(
        self, announcement_id: str, error: str, *, now: float
    ) -> AnnouncementRecord:
        """No call exists for this attempt (Twilio refused it, or none was found on resume).

        Refused (the record returned unchanged, still ``PLANNED``) when the row holds evidence
        that the call exists: a CallSid, a stream start, plays. A row never says "not placed"
        while holding any of them."""

        def work(tx: Tx) -> AnnouncementRecord:
            tx.execute(
                "UPDATE announcements SET state = 'not_placed', error = ?, ended_at = ? "
                "WHERE id = ? AND state = 'planned' AND call_sid IS NULL "
                "AND stream_started_at IS NULL AND plays = 0",
                (error, now, announcement_id),
            )
            return get_announcement(tx, announcement_id)

        return await self._run(work)

    async def mark_lost(
        self, announcement_id: str, error: str, *, now: float
    ) -> AnnouncementRecord:
        """The call exists (the bridge saw its stream) but its CallSid is unknown, so nothing
        can tell how it ended: ``ENDED`` without a status."""

        def work(tx: Tx) -> AnnouncementRecord:
            tx.execute(
                "UPDATE announcements SET state = 'ended', error = ?, ended_at = ?, "
                "placed_at = COALESCE(placed_at, ?) "
                "WHERE id = ? AND state IN ('planned', 'not_placed')",
                (error, now, now, announcement_id),
            )
            return get_announcement(tx, announcement_id)

        return await self._run(work)

    async def revive_evidenced(self, campaign_id: str) -> int:
        """Attempts an earlier version marked ``NOT_PLACED`` although their row holds evidence
        of the call (a CallSid, a stream start, plays) become ``PLACED`` again, so recovery
        learns their outcome. The number revived."""

        def work(tx: Tx) -> int:
            result = tx.execute(
                "UPDATE announcements SET state = 'placed', error = NULL, "
                "placed_at = COALESCE(placed_at, ended_at), ended_at = NULL "
                "WHERE campaign_id = ? AND state = 'not_placed' AND (call_sid IS NOT NULL "
                "OR stream_started_at IS NOT NULL OR plays > 0)",
                (campaign_id,),
            )
            return int(result.rowcount)

        return await self._run(work)

    async def record_status(
        self,
        announcement_id: str,
        status: str,
        *,
        now: float,
        seq: int | None = None,
        call_sid: str | None = None,
        duration: int | None = None,
        answered_by: str | None = None,
        error: str | None = None,
    ) -> AnnouncementRecord | None:
        """What Twilio says of the call (a status callback, or a poll with ``seq=None``).

        Callbacks may arrive out of order: a non-final status older (by ``SequenceNumber``) than
        the one known is ignored, and nothing replaces a final status; ``duration`` and
        ``answered_by`` are filled in whenever they are learnt. ``None`` for an unknown id.
        """

        def work(tx: Tx) -> AnnouncementRecord | None:
            row = tx.execute(
                "SELECT * FROM announcements WHERE id = ?" + tx.dialect.lock_row,  # noqa: S608
                (announcement_id,),
            ).first()
            if row is None:
                return None
            record = announcement_from_row(row)
            if call_sid and record.call_sid and call_sid != record.call_sid:
                return record  # another call's news (should not happen): ignore
            updates: dict[str, Any] = {}
            if call_sid and not record.call_sid:
                updates["call_sid"] = call_sid
            if record.state in (AttemptState.PLANNED, AttemptState.NOT_PLACED):
                updates["state"] = AttemptState.PLACED.value  # the call exists
                updates["placed_at"] = now
            final_known = record.status is not None and outcome_of_status(record.status)
            if not final_known:
                newer = seq is None or seq > record.status_seq
                is_final = outcome_of_status(status) is not None
                if newer or is_final:
                    updates["status"] = status
                    updates["status_at"] = now
                    if seq is not None:
                        updates["status_seq"] = max(seq, record.status_seq)
                if is_final:
                    updates["state"] = AttemptState.ENDED.value
                    updates["ended_at"] = now
            if duration is not None and record.duration is None:
                updates["duration"] = duration
            if answered_by and not record.answered_by:
                updates["answered_by"] = answered_by
            if error and not record.error:
                updates["error"] = error
            if updates:
                update(tx, "announcements", updates, "id = ?", (announcement_id,))
            return get_announcement(tx, announcement_id)

        return await self._run(work)

    async def record_stream(
        self,
        announcement_id: str,
        *,
        now: float,
        started: bool = False,
        ended: bool = False,
        plays: int | None = None,
        plays_unconfirmed: int | None = None,
        confirmation: str | None = None,
    ) -> None:
        """What the bridge saw on the call's media stream."""

        def work(tx: Tx) -> None:
            updates: dict[str, Any] = {}
            if started:
                updates["stream_started_at"] = now
            if ended:
                updates["stream_ended_at"] = now
            if plays is not None:
                updates["plays"] = plays
            if plays_unconfirmed is not None:
                updates["plays_unconfirmed"] = plays_unconfirmed
            if confirmation is not None:
                updates["confirmation"] = confirmation
            if updates:
                update(tx, "announcements", updates, "id = ?", (announcement_id,))

        await self._run(work)

    async def begin_placing(self, announcement_id: str, *, now: float) -> bool:
        """Atomically become the one process that sends ``calls.create`` for a ``PLANNED``
        announcement (committed just before sending). ``False``: someone already did."""

        def work(tx: Tx) -> bool:
            result = tx.execute(
                "UPDATE announcements SET sent_at = ? "
                "WHERE id = ? AND state = 'planned' AND sent_at IS NULL",
                (now, announcement_id),
            )
            return result.rowcount == 1

        return await self._run(work)

    async def claim_stream(self, announcement_id: str, call_sid: str, *, now: float) -> bool:
        """Atomically let one media stream serve the announcement: ``True`` for the first
        stream of a known, unfinished announcement whose CallSid (if known) is ``call_sid``.

        Tokens are single-use per replica only; this claim makes them single-use everywhere the
        database is shared, and refuses a replayed token for an announcement already heard."""

        def work(tx: Tx) -> bool:
            # the stream proves the call exists: a PLANNED (or wrongly NOT_PLACED) attempt
            # becomes PLACED with it
            result = tx.execute(
                "UPDATE announcements SET stream_started_at = ?, "
                "call_sid = COALESCE(call_sid, ?), placed_at = COALESCE(placed_at, ?), "
                "error = CASE WHEN state = 'not_placed' THEN NULL ELSE error END, "
                "ended_at = CASE WHEN state = 'not_placed' THEN NULL ELSE ended_at END, "
                "state = 'placed' WHERE id = ? AND stream_started_at IS NULL "
                "AND state IN ('planned', 'placed', 'not_placed') "
                "AND (call_sid IS NULL OR call_sid = ?)",
                (now, call_sid, now, announcement_id, call_sid),
            )
            return result.rowcount == 1

        return await self._run(work)

    async def unfinished_announcements(
        self, *, campaign_id: str | None = None, standalone: bool = False
    ) -> list[AnnouncementRecord]:
        """``PLANNED`` or ``PLACED`` attempts: of one campaign, or (``standalone``) of none."""

        def work(tx: Tx) -> list[AnnouncementRecord]:
            sql = "SELECT * FROM announcements WHERE state IN (?, ?)"
            args: list[Any] = list(_UNFINISHED)
            if campaign_id is not None:
                sql += " AND campaign_id = ?"
                args.append(campaign_id)
            elif standalone:
                sql += " AND campaign_id IS NULL"
            rows = tx.execute(sql + " ORDER BY created_at", args).rows
            return [announcement_from_row(r) for r in rows]

        return await self._read(work)

    async def call_sids(self) -> set[str]:
        """Every CallSid attributed to an attempt."""

        def work(tx: Tx) -> set[str]:
            rows = tx.execute("SELECT call_sid FROM announcements WHERE call_sid IS NOT NULL").rows
            return {str(r["call_sid"]) for r in rows}

        return await self._read(work)

    async def recent_attempt_times(self, since: float) -> list[float]:
        """``created_at`` of every attempt since ``since`` (the calls-per-second budget spent)."""

        def work(tx: Tx) -> list[float]:
            rows = tx.execute(
                "SELECT created_at FROM announcements WHERE created_at >= ? ORDER BY created_at",
                (since,),
            ).rows
            return [float(r["created_at"]) for r in rows]

        return await self._read(work)

    # --- the calls-per-second budget ---------------------------------------------------------

    async def book_call_slot(
        self, account: str, *, rate: float, burst: float, clock: Callable[[], float]
    ) -> float:
        """Book ``account``'s next ``calls.create`` slot (a wall-clock instant, maybe now) in
        the token bucket every process shares (:func:`~bridge.announcements.limiter.take`).

        One transaction, atomic between processes: SQLite's ``BEGIN IMMEDIATE`` serialises it,
        PostgreSQL locks the row (``SELECT … FOR UPDATE``). ``clock`` is read once the row is
        held, so a booking that queued behind another is timed from when it is made.
        """

        def work(tx: Tx) -> float:
            tx.execute(
                "INSERT INTO call_budget (account, full_at) VALUES (?, 0) "
                "ON CONFLICT (account) DO NOTHING",
                (account,),
            )
            row = tx.execute(
                f"SELECT full_at FROM call_budget WHERE account = ?{tx.dialect.lock_row}",  # noqa: S608
                (account,),
            ).first()
            assert row is not None
            now = clock()
            wait, full_at = take(float(row["full_at"]), now, rate, burst)
            tx.execute("UPDATE call_budget SET full_at = ? WHERE account = ?", (full_at, account))
            return now + wait

        return await self._run(work)

    # --- campaigns ----------------------------------------------------------------------------

    async def create_campaign(
        self,
        name: str,
        config: dict[str, Any],
        contacts: Iterable[ContactRecord],
        *,
        now: float,
    ) -> CampaignRecord:
        """A new campaign and all its contacts, in one transaction (``campaign_id`` of the
        given contacts is ignored)."""
        rows = list(contacts)

        def work(tx: Tx) -> CampaignRecord:
            campaign_id = new_id("cp_")
            tx.execute(
                "INSERT INTO campaigns (id, name, config, created_at) VALUES (?, ?, ?, ?)",
                (campaign_id, name, json.dumps(config, ensure_ascii=False), now),
            )
            tx.executemany(
                "INSERT INTO contacts (campaign_id, idx, number, variables, text, timezone, "
                "state, attempts, next_at, outcome, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [contact_values(campaign_id, c) for c in rows],
            )
            return get_campaign(tx, campaign_id)

        return await self._run(work)

    async def get_campaign(self, campaign_id: str) -> CampaignRecord | None:
        def work(tx: Tx) -> CampaignRecord | None:
            row = tx.execute("SELECT id FROM campaigns WHERE id = ?", (campaign_id,)).first()
            return get_campaign(tx, campaign_id) if row is not None else None

        return await self._read(work)

    async def find_campaign(self, ref: str | None) -> CampaignRecord | None:
        """By id, else by name (the newest of that name); ``None``: the newest campaign."""

        def work(tx: Tx) -> CampaignRecord | None:
            order = tx.dialect.insertion_order
            if ref is None:
                row = tx.execute(
                    f"SELECT id FROM campaigns ORDER BY created_at DESC, {order} DESC LIMIT 1"  # noqa: S608
                ).first()
            else:
                row = tx.execute(
                    "SELECT id FROM campaigns WHERE id = ? OR name = ? "  # noqa: S608
                    f"ORDER BY (id = ?) DESC, created_at DESC, {order} DESC LIMIT 1",
                    (ref, ref, ref),
                ).first()
            return get_campaign(tx, row["id"]) if row is not None else None

        return await self._read(work)

    async def list_campaigns(self) -> list[CampaignRecord]:
        def work(tx: Tx) -> list[CampaignRecord]:
            order = tx.dialect.insertion_order
            rows = tx.execute(f"SELECT id FROM campaigns ORDER BY created_at, {order}").rows  # noqa: S608
            return [get_campaign(tx, r["id"]) for r in rows]

        return await self._read(work)

    async def acquire_lease(
        self,
        campaign_id: str,
        owner: str,
        *,
        now: float,
        ttl: float,
        take_from: str | None = None,
    ) -> CampaignRecord:
        """Take (or renew) the right to run the campaign. Returns the campaign; its
        ``lease_owner`` is someone else's if they hold a live lease. ``take_from``: an owner
        known to be dead, whose unexpired lease may be taken over."""

        def work(tx: Tx) -> CampaignRecord:
            tx.execute(
                "UPDATE campaigns SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
                "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ? OR lease_owner = ?)",
                (owner, now + ttl, campaign_id, owner, now, take_from),
            )
            return get_campaign(tx, campaign_id)

        return await self._run(work)

    async def release_lease(self, campaign_id: str, owner: str) -> None:
        def work(tx: Tx) -> None:
            tx.execute(
                "UPDATE campaigns SET lease_owner = NULL, lease_until = 0 "
                "WHERE id = ? AND lease_owner = ?",
                (campaign_id, owner),
            )

        await self._run(work)

    async def set_campaign_state(
        self,
        campaign_id: str,
        state: CampaignState,
        *,
        allowed_from: Iterable[CampaignState],
        now: float,
    ) -> CampaignRecord | None:
        """Move the campaign to ``state`` if it is in one of ``allowed_from`` (atomically: a
        runner finishing it at the same instant wins or loses whole). The campaign as it is
        after; ``None`` if there is no such campaign. ``cancelled`` records ``now`` as its end.
        A runner reads the state at every lease renewal (``pause``/``cancel`` reach it there)."""
        sources = [s.value for s in allowed_from]

        def work(tx: Tx) -> CampaignRecord | None:
            if tx.execute("SELECT id FROM campaigns WHERE id = ?", (campaign_id,)).first() is None:
                return None
            if sources:
                ended = now if state is CampaignState.CANCELLED else None
                marks = ", ".join("?" for _ in sources)
                tx.execute(
                    "UPDATE campaigns SET state = ?, finished_at = ? "  # noqa: S608
                    f"WHERE id = ? AND state IN ({marks})",
                    (state.value, ended, campaign_id, *sources),
                )
            return get_campaign(tx, campaign_id)

        return await self._run(work)

    async def finish_campaign(self, campaign_id: str, *, now: float) -> None:
        def work(tx: Tx) -> None:
            tx.execute(
                "UPDATE campaigns SET state = 'finished', finished_at = ? "
                "WHERE id = ? AND state != 'finished'",
                (now, campaign_id),
            )

        await self._run(work)

    async def contacts(self, campaign_id: str) -> list[ContactRecord]:
        def work(tx: Tx) -> list[ContactRecord]:
            rows = tx.execute(
                "SELECT * FROM contacts WHERE campaign_id = ? ORDER BY idx", (campaign_id,)
            ).rows
            return [contact_from_row(r) for r in rows]

        return await self._read(work)

    async def update_contact(
        self,
        campaign_id: str,
        idx: int,
        *,
        state: ContactState | None = None,
        next_at: float | None = None,
        outcome: str | None = None,
        error: str | None = None,
    ) -> None:
        def work(tx: Tx) -> None:
            updates: dict[str, Any] = {}
            if state is not None:
                updates["state"] = state.value
            if next_at is not None:
                updates["next_at"] = next_at
            if outcome is not None:
                updates["outcome"] = outcome
            if error is not None:
                updates["error"] = error
            if updates:
                update(tx, "contacts", updates, "campaign_id = ? AND idx = ?", (campaign_id, idx))

        await self._run(work)

    async def plan_attempt(
        self, campaign_id: str, idx: int, spec: AnnouncementSpec, *, now: float
    ) -> AnnouncementRecord:
        """Atomically: the contact's next attempt, recorded ``PLANNED`` and counted."""

        def work(tx: Tx) -> AnnouncementRecord:
            # counted by the UPDATE itself: two concurrent planners get distinct numbers
            row = tx.execute(
                "UPDATE contacts SET attempts = attempts + 1, state = 'active' "
                "WHERE campaign_id = ? AND idx = ? RETURNING attempts",
                (campaign_id, idx),
            ).first()
            if row is None:
                raise StoreError(f"campaign {campaign_id} has no contact {idx}")
            attempt = int(row["attempts"])
            announcement_id = new_id("an_")
            insert_announcement(
                tx,
                announcement_id,
                spec,
                now=now,
                campaign_id=campaign_id,
                contact_idx=idx,
                attempt=attempt,
            )
            return get_announcement(tx, announcement_id)

        return await self._run(work)

    async def attempts(self, campaign_id: str) -> list[AnnouncementRecord]:
        """Every attempt of the campaign, oldest first."""

        def work(tx: Tx) -> list[AnnouncementRecord]:
            rows = tx.execute(
                "SELECT * FROM announcements WHERE campaign_id = ? "  # noqa: S608
                f"ORDER BY created_at, {tx.dialect.insertion_order}",
                (campaign_id,),
            ).rows
            return [announcement_from_row(r) for r in rows]

        return await self._read(work)
