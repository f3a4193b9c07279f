"""The store: announcements, campaigns and contacts in SQLite (one file, WAL, synchronous=FULL).

Every write commits before the method returns, so a process killed at any instant (``kill -9``)
leaves a consistent database: a call attempt is on disk before ``calls.create`` is sent. Several
processes may share the file (the bridge records stream results and status callbacks, a campaign
runner plans attempts); writers serialise on ``BEGIN IMMEDIATE`` with a busy timeout.

The sqlite3 connection lives in one worker thread; each method runs one transaction there.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from bridge.announcements.spec import AnnouncementSpec, AttemptState, outcome_of_status
from bridge.errors import StoreError
from bridge.store.records import AnnouncementRecord, CampaignRecord, ContactRecord, ContactState
from bridge.voice import Voice

__all__ = ["Store"]

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    finished_at REAL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS contacts (
    campaign_id TEXT NOT NULL REFERENCES campaigns(id),
    idx INTEGER NOT NULL,
    number TEXT NOT NULL,
    variables TEXT NOT NULL,
    text TEXT NOT NULL,
    timezone TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    outcome TEXT,
    error TEXT,
    PRIMARY KEY (campaign_id, idx)
);
CREATE TABLE IF NOT EXISTS announcements (
    id TEXT PRIMARY KEY,
    campaign_id TEXT REFERENCES campaigns(id),
    contact_idx INTEGER,
    attempt INTEGER NOT NULL DEFAULT 1,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    text TEXT NOT NULL,
    speaker TEXT NOT NULL,
    dialect TEXT NOT NULL,
    language TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    confirm_digit TEXT,
    repeat_digit TEXT NOT NULL,
    machine_detection INTEGER NOT NULL,
    ring_timeout INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    call_sid TEXT UNIQUE,
    sent_at REAL,
    placed_at REAL,
    ended_at REAL,
    status TEXT,
    status_seq INTEGER NOT NULL DEFAULT -1,
    status_at REAL,
    answered_by TEXT,
    duration INTEGER,
    confirmation TEXT,
    plays INTEGER NOT NULL DEFAULT 0,
    stream_started_at REAL,
    stream_ended_at REAL,
    error TEXT,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS announcements_by_contact
    ON announcements (campaign_id, contact_idx);
CREATE INDEX IF NOT EXISTS announcements_by_state ON announcements (state);
CREATE INDEX IF NOT EXISTS announcements_by_created ON announcements (created_at);
"""

_UNFINISHED = (AttemptState.PLANNED.value, AttemptState.PLACED.value)


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``."""
    if url.startswith(("postgresql://", "postgres://")):
        raise StoreError(
            "BRIDGE_DATABASE_URL: PostgreSQL is not supported by this version yet; use "
            "sqlite:///path/to/file.db (one file shared by the bridge and the campaign runner)"
        )
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise StoreError(f"BRIDGE_DATABASE_URL {url!r}: expected sqlite:///path/to/file.db")
    return Path(url.removeprefix("sqlite:///"))


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class Store:
    """Open with :meth:`open`, close with :meth:`close` (or ``async with``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, url: str) -> Store:
        store = cls(sqlite_path(url))
        try:
            await store._run(lambda conn: None)
        except BaseException:
            await store.close()
            raise
        return store

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        finally:
            self._executor.shutdown(wait=False)

    # --- the worker thread --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: database schema {version} is newer than this version "
                    f"understands ({SCHEMA_VERSION}): upgrade hamsa-bridge"
                )
            conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); commits
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None
        self._conn = conn
        return conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        conn = self._connect()
        try:
            # Writers take the lock up front (no deadlock on upgrade); readers never wait for
            # it (WAL: a reader sees the last commit).
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from None
        return result

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, work, False)

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

        def work(conn: sqlite3.Connection) -> tuple[AnnouncementRecord, bool]:
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT * FROM announcements WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _announcement(row), False
            announcement_id = new_id("an_")
            _insert_announcement(
                conn, announcement_id, spec, now=now, idempotency_key=idempotency_key
            )
            return _get_announcement(conn, announcement_id), True

        return await self._run(work)

    async def get_announcement(self, announcement_id: str) -> AnnouncementRecord | None:
        def work(conn: sqlite3.Connection) -> AnnouncementRecord | None:
            row = conn.execute(
                "SELECT * FROM announcements WHERE id = ?", (announcement_id,)
            ).fetchone()
            return _announcement(row) if row is not None else None

        return await self._read(work)

    async def mark_placed(
        self, announcement_id: str, call_sid: str, *, now: float, status: str = "queued"
    ) -> AnnouncementRecord:
        """Twilio created the call: remember its CallSid (a callback may have done so first).

        Also from ``NOT_PLACED``: a CallSid proves the call exists, whatever a reconciliation
        that raced the creation concluded."""

        def work(conn: sqlite3.Connection) -> AnnouncementRecord:
            conn.execute(
                "UPDATE announcements SET call_sid = COALESCE(call_sid, ?), "
                "placed_at = COALESCE(placed_at, ?), "
                "state = CASE WHEN state IN ('planned', 'not_placed') THEN 'placed' "
                "ELSE state END, error = CASE WHEN state = 'not_placed' THEN NULL ELSE error END, "
                "ended_at = CASE WHEN state = 'not_placed' THEN NULL ELSE ended_at END, "
                "status = COALESCE(status, ?), status_at = COALESCE(status_at, ?) WHERE id = ?",
                (call_sid, now, status, now, announcement_id),
            )
            return _get_announcement(conn, announcement_id)

        return await self._run(work)

    async def mark_not_placed(
        self, announcement_id: str, error: str, *, now: float
    ) -> AnnouncementRecord:
        """No call exists for this attempt (Twilio refused it, or none was found on resume)."""

        def work(conn: sqlite3.Connection) -> AnnouncementRecord:
            conn.execute(
                "UPDATE announcements SET state = 'not_placed', error = ?, ended_at = ? "
                "WHERE id = ? AND state = 'planned'",
                (error, now, announcement_id),
            )
            return _get_announcement(conn, announcement_id)

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

        def work(conn: sqlite3.Connection) -> AnnouncementRecord | None:
            row = conn.execute(
                "SELECT * FROM announcements WHERE id = ?", (announcement_id,)
            ).fetchone()
            if row is None:
                return None
            record = _announcement(row)
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
                _update(conn, "announcements", updates, "id = ?", (announcement_id,))
            return _get_announcement(conn, announcement_id)

        return await self._run(work)

    async def record_stream(
        self,
        announcement_id: str,
        *,
        now: float,
        started: bool = False,
        ended: bool = False,
        plays: int | None = None,
        confirmation: str | None = None,
    ) -> None:
        """What the bridge saw on the call's media stream."""

        def work(conn: sqlite3.Connection) -> None:
            updates: dict[str, Any] = {}
            if started:
                updates["stream_started_at"] = now
            if ended:
                updates["stream_ended_at"] = now
            if plays is not None:
                updates["plays"] = plays
            if confirmation is not None:
                updates["confirmation"] = confirmation
            if updates:
                _update(conn, "announcements", updates, "id = ?", (announcement_id,))

        await self._run(work)

    async def begin_placing(self, announcement_id: str, *, now: float) -> bool:
        """Atomically become the one process that sends ``calls.create`` for a ``PLANNED``
        announcement (committed just before sending). ``False``: someone already did."""

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE announcements SET sent_at = ? "
                "WHERE id = ? AND state = 'planned' AND sent_at IS NULL",
                (now, announcement_id),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    async def claim_stream(self, announcement_id: str, call_sid: str, *, now: float) -> bool:
        """Atomically let one media stream serve the announcement: ``True`` for the first
        stream of a known, unfinished announcement whose CallSid (if known) is ``call_sid``.

        Tokens are single-use per replica only; this claim makes them single-use everywhere the
        database is shared, and refuses a replayed token for an announcement already heard."""

        def work(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE announcements SET stream_started_at = ?, "
                "call_sid = COALESCE(call_sid, ?) WHERE id = ? AND stream_started_at IS NULL "
                "AND state IN ('planned', 'placed', 'not_placed') "
                "AND (call_sid IS NULL OR call_sid = ?)",
                (now, call_sid, announcement_id, call_sid),
            )
            return cursor.rowcount == 1

        return await self._run(work)

    async def unfinished_announcements(
        self, *, campaign_id: str | None = None, standalone: bool = False
    ) -> list[AnnouncementRecord]:
        """``PLANNED`` or ``PLACED`` attempts: of one campaign, or (``standalone``) of none."""

        def work(conn: sqlite3.Connection) -> list[AnnouncementRecord]:
            sql = "SELECT * FROM announcements WHERE state IN (?, ?)"
            args: list[Any] = list(_UNFINISHED)
            if campaign_id is not None:
                sql += " AND campaign_id = ?"
                args.append(campaign_id)
            elif standalone:
                sql += " AND campaign_id IS NULL"
            rows = conn.execute(sql + " ORDER BY created_at", args).fetchall()
            return [_announcement(r) for r in rows]

        return await self._read(work)

    async def call_sids(self) -> set[str]:
        """Every CallSid attributed to an attempt."""

        def work(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT call_sid FROM announcements WHERE call_sid IS NOT NULL"
            ).fetchall()
            return {str(r[0]) for r in rows}

        return await self._read(work)

    async def recent_attempt_times(self, since: float) -> list[float]:
        """``created_at`` of every attempt since ``since`` (the calls-per-second budget spent)."""

        def work(conn: sqlite3.Connection) -> list[float]:
            rows = conn.execute(
                "SELECT created_at FROM announcements WHERE created_at >= ? ORDER BY created_at",
                (since,),
            ).fetchall()
            return [float(r[0]) for r in rows]

        return await self._read(work)

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

        def work(conn: sqlite3.Connection) -> CampaignRecord:
            campaign_id = new_id("cp_")
            conn.execute(
                "INSERT INTO campaigns (id, name, config, created_at) VALUES (?, ?, ?, ?)",
                (campaign_id, name, json.dumps(config, ensure_ascii=False), now),
            )
            conn.executemany(
                "INSERT INTO contacts (campaign_id, idx, number, variables, text, timezone, "
                "state, attempts, next_at, outcome, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        campaign_id,
                        c.idx,
                        c.number,
                        json.dumps(c.variables, ensure_ascii=False),
                        c.text,
                        c.timezone,
                        c.state.value,
                        c.attempts,
                        c.next_at,
                        c.outcome,
                        c.error,
                    )
                    for c in rows
                ],
            )
            return _get_campaign(conn, campaign_id)

        return await self._run(work)

    async def get_campaign(self, campaign_id: str) -> CampaignRecord | None:
        def work(conn: sqlite3.Connection) -> CampaignRecord | None:
            row = conn.execute("SELECT id FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
            return _get_campaign(conn, campaign_id) if row is not None else None

        return await self._read(work)

    async def find_campaign(self, ref: str | None) -> CampaignRecord | None:
        """By id, else by name (the newest of that name); ``None``: the newest campaign."""

        def work(conn: sqlite3.Connection) -> CampaignRecord | None:
            if ref is None:
                row = conn.execute(
                    "SELECT id FROM campaigns ORDER BY created_at DESC, rowid DESC LIMIT 1"
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT id FROM campaigns WHERE id = ? OR name = ? "
                    "ORDER BY (id = ?) DESC, created_at DESC, rowid DESC LIMIT 1",
                    (ref, ref, ref),
                ).fetchone()
            return _get_campaign(conn, row[0]) if row is not None else None

        return await self._read(work)

    async def list_campaigns(self) -> list[CampaignRecord]:
        def work(conn: sqlite3.Connection) -> list[CampaignRecord]:
            rows = conn.execute("SELECT id FROM campaigns ORDER BY created_at, rowid").fetchall()
            return [_get_campaign(conn, r[0]) for r in rows]

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

        def work(conn: sqlite3.Connection) -> CampaignRecord:
            conn.execute(
                "UPDATE campaigns SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
                "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ? OR lease_owner = ?)",
                (owner, now + ttl, campaign_id, owner, now, take_from),
            )
            return _get_campaign(conn, campaign_id)

        return await self._run(work)

    async def release_lease(self, campaign_id: str, owner: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE campaigns SET lease_owner = NULL, lease_until = 0 "
                "WHERE id = ? AND lease_owner = ?",
                (campaign_id, owner),
            )

        await self._run(work)

    async def finish_campaign(self, campaign_id: str, *, now: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE campaigns SET state = 'finished', finished_at = ? "
                "WHERE id = ? AND state != 'finished'",
                (now, campaign_id),
            )

        await self._run(work)

    async def contacts(self, campaign_id: str) -> list[ContactRecord]:
        def work(conn: sqlite3.Connection) -> list[ContactRecord]:
            rows = conn.execute(
                "SELECT * FROM contacts WHERE campaign_id = ? ORDER BY idx", (campaign_id,)
            ).fetchall()
            return [_contact(r) for r in rows]

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
        def work(conn: sqlite3.Connection) -> None:
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
                _update(
                    conn, "contacts", updates, "campaign_id = ? AND idx = ?", (campaign_id, idx)
                )

        await self._run(work)

    async def plan_attempt(
        self, campaign_id: str, idx: int, spec: AnnouncementSpec, *, now: float
    ) -> AnnouncementRecord:
        """Atomically: the contact's next attempt, recorded ``PLANNED`` and counted."""

        def work(conn: sqlite3.Connection) -> AnnouncementRecord:
            row = conn.execute(
                "SELECT attempts FROM contacts WHERE campaign_id = ? AND idx = ?",
                (campaign_id, idx),
            ).fetchone()
            if row is None:
                raise StoreError(f"campaign {campaign_id} has no contact {idx}")
            attempt = int(row[0]) + 1
            conn.execute(
                "UPDATE contacts SET attempts = ?, state = 'active' "
                "WHERE campaign_id = ? AND idx = ?",
                (attempt, campaign_id, idx),
            )
            announcement_id = new_id("an_")
            _insert_announcement(
                conn,
                announcement_id,
                spec,
                now=now,
                campaign_id=campaign_id,
                contact_idx=idx,
                attempt=attempt,
            )
            return _get_announcement(conn, announcement_id)

        return await self._run(work)

    async def attempts(self, campaign_id: str) -> list[AnnouncementRecord]:
        """Every attempt of the campaign, oldest first."""

        def work(conn: sqlite3.Connection) -> list[AnnouncementRecord]:
            rows = conn.execute(
                "SELECT * FROM announcements WHERE campaign_id = ? ORDER BY created_at, rowid",
                (campaign_id,),
            ).fetchall()
            return [_announcement(r) for r in rows]

        return await self._read(work)


# --- rows -------------------------------------------------------------------------------------


def _update(
    conn: sqlite3.Connection,
    table: str,
    updates: dict[str, Any],
    where: str,
    args: tuple[Any, ...],
) -> None:
    columns = ", ".join(f"{name} = ?" for name in updates)  # names are ours, never input
    conn.execute(f"UPDATE {table} SET {columns} WHERE {where}", (*updates.values(), *args))  # noqa: S608


def _insert_announcement(
    conn: sqlite3.Connection,
    announcement_id: str,
    spec: AnnouncementSpec,
    *,
    now: float,
    campaign_id: str | None = None,
    contact_idx: int | None = None,
    attempt: int = 1,
    idempotency_key: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO announcements (id, campaign_id, contact_idx, attempt, to_number, "
        "from_number, text, speaker, dialect, language, repeat, confirm_digit, repeat_digit, "
        "machine_detection, ring_timeout, state, created_at, idempotency_key) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            announcement_id,
            campaign_id,
            contact_idx,
            attempt,
            spec.to,
            spec.from_,
            spec.text,
            spec.voice.speaker,
            spec.voice.dialect,
            spec.voice.language,
            spec.repeat,
            spec.confirm_digit,
            spec.repeat_digit,
            int(spec.machine_detection),
            spec.ring_timeout,
            AttemptState.PLANNED.value,
            now,
            idempotency_key,
        ),
    )


def _get_announcement(conn: sqlite3.Connection, announcement_id: str) -> AnnouncementRecord:
    row = conn.execute("SELECT * FROM announcements WHERE id = ?", (announcement_id,)).fetchone()
    if row is None:
        raise StoreError(f"no announcement {announcement_id}")
    return _announcement(row)


def _announcement(row: sqlite3.Row) -> AnnouncementRecord:
    spec = AnnouncementSpec(
        to=row["to_number"],
        from_=row["from_number"],
        text=row["text"],
        voice=Voice(row["speaker"], row["dialect"], row["language"]),
        repeat=row["repeat"],
        confirm_digit=row["confirm_digit"],
        repeat_digit=row["repeat_digit"],
        machine_detection=bool(row["machine_detection"]),
        ring_timeout=row["ring_timeout"],
    )
    return AnnouncementRecord(
        id=row["id"],
        spec=spec,
        state=AttemptState(row["state"]),
        created_at=row["created_at"],
        campaign_id=row["campaign_id"],
        contact_idx=row["contact_idx"],
        attempt=row["attempt"],
        call_sid=row["call_sid"],
        sent_at=row["sent_at"],
        placed_at=row["placed_at"],
        ended_at=row["ended_at"],
        status=row["status"],
        status_seq=row["status_seq"],
        status_at=row["status_at"],
        answered_by=row["answered_by"],
        duration=row["duration"],
        confirmation=row["confirmation"],
        plays=row["plays"],
        stream_started_at=row["stream_started_at"],
        stream_ended_at=row["stream_ended_at"],
        error=row["error"],
        idempotency_key=row["idempotency_key"],
    )


def _contact(row: sqlite3.Row) -> ContactRecord:
    return ContactRecord(
        campaign_id=row["campaign_id"],
        idx=row["idx"],
        number=row["number"],
        variables=json.loads(row["variables"]),
        text=row["text"],
        state=ContactState(row["state"]),
        attempts=row["attempts"],
        next_at=row["next_at"],
        outcome=row["outcome"],
        error=row["error"],
        timezone=row["timezone"],
    )


def _get_campaign(conn: sqlite3.Connection, campaign_id: str) -> CampaignRecord:
    row = conn.execute("SELECT * FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
    if row is None:
        raise StoreError(f"no campaign {campaign_id}")
    counts: dict[str, int] = {}
    for state, outcome, n in conn.execute(
        "SELECT state, outcome, COUNT(*) FROM contacts WHERE campaign_id = ? "
        "GROUP BY state, outcome",
        (campaign_id,),
    ):
        key = outcome if state == ContactState.DONE.value and outcome else state
        counts[key] = counts.get(key, 0) + int(n)
    return CampaignRecord(
        id=row["id"],
        name=row["name"],
        config=json.loads(row["config"]),
        created_at=row["created_at"],
        state=row["state"],
        finished_at=row["finished_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        counts=counts,
    )
