"""The store on PostgreSQL (``BRIDGE_DATABASE_URL=postgresql://…``, the ``postgres`` extra).

Shared by any number of bridge replicas and campaign runners on any number of machines, with
the SQLite store's guarantees:

* **One transaction per store method, committed before it returns** (``synchronous_commit`` as
  the server has it, ``on`` by default: a commit is durable when it returns).
* **Atomic claims between processes.** Writers run at ``READ COMMITTED``, where an ``UPDATE``
  that finds its row changed by a concurrent transaction waits for it and then re-checks its
  ``WHERE`` against the committed row: the conditional updates of ``claim_stream``,
  ``begin_placing``, ``acquire_lease`` (take-over included), ``mark_not_placed`` and
  ``release_lease`` have exactly one winner; ``plan_attempt`` counts with
  ``UPDATE … SET attempts = attempts + 1 … RETURNING``; ``record_status`` reads its row
  ``FOR UPDATE`` before deciding; an idempotency key is claimed by ``INSERT … ON CONFLICT DO
  NOTHING``. Readers run at ``REPEATABLE READ READ ONLY``: one consistent snapshot, never
  blocked, never a serialisation failure. A deadlock or serialisation failure (not expected)
  rolls back and is retried.
* **A dropped connection** (server restart, failover, ``pg_terminate_backend``, an idle timeout)
  is replaced transparently when that is safe: for a read, and for a write that failed before its
  ``COMMIT`` was sent (the server rolls back what it never saw committed). A connection lost
  *during* ``COMMIT`` leaves the outcome unknown: that is a ``StoreError`` saying so.
* **No password in any message or log line:** the URL is shown as ``postgresql://user:***@…``
  and the password is scrubbed from every error text (libpq quotes URIs it cannot parse).

Why synchronous psycopg on a worker thread rather than psycopg's ``AsyncConnection``: the store's
methods are written once, as synchronous transaction bodies run by whichever backend the URL
chose, and ``sqlite3`` has no asynchronous API. Async psycopg would need a second, ``await``-ing
copy of every body (or an async SQLite shim); the thread keeps one body per method, the event
loop never blocks on the database, and each store keeps one connection and one transaction at a
time, exactly as with SQLite (the store is not a hot path: a few statements per call placed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from bridge.errors import StoreError
from bridge.store.backend import POSTGRES, Dialect, Result, Row, Tx
from bridge.store.schema import SCHEMA_VERSION, schema_statements
from bridge.store.url import redact_url

__all__ = ["PostgresBackend", "parse_conninfo"]

T = TypeVar("T")

log = structlog.get_logger("bridge.store")

_BEGIN_WRITE: Final = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"
_BEGIN_READ: Final = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_SESSION: Final = (
    "SELECT set_config('client_min_messages', 'warning', false), "
    # SQLite's busy timeout: a writer waits this long for a row another one holds
    "set_config('lock_timeout', '30s', false), "
    # a client that vanished mid-transaction (its host died) releases its locks
    "set_config('idle_in_transaction_session_timeout', '60s', false)"
)
_DEFAULTS: Final[dict[str, Any]] = {
    "connect_timeout": 10,
    "application_name": "hamsa-bridge",
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""Connection parameters used unless the URL sets them."""
_SCHEMA_LOCK: Final = 0x68616D73612D6272  # pg_advisory_xact_lock key: "hamsa-br"
_RETRIED_SQLSTATES: Final = frozenset({"40001", "40P01"})  # serialisation failure, deadlock
_RETRIES: Final = 3
_LOST_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "25P03"})
"""Shut down by an administrator or a crash, cannot connect now, idle-in-transaction timeout."""


def parse_conninfo(url: str) -> dict[str, Any]:
    """libpq's reading of the URL; ``StoreError`` (password-free) if it is malformed."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(
            f"BRIDGE_DATABASE_URL is not a valid PostgreSQL URL ({_scrub(str(exc), url)}): "
            "expected postgresql://user:password@host:port/database"
        ) from None
    for port in str(params.get("port", "")).split(","):
        if port and not port.strip().isdigit():
            raise StoreError(
                f"BRIDGE_DATABASE_URL {redact_url(url)!r}: the port {port!r} is not a number"
            )
    return params


def _scrub(text: str, url: str) -> str:
    """``text`` without the URL's password (one line)."""
    text = text.replace(url, redact_url(url))
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if isinstance(password, str) and len(password) >= 3:
        text = text.replace(password, "***")
    return " ".join(redact_url(text).split())


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    """The store's ``?`` placeholders as psycopg's ``%s`` (the store's SQL has no literal
    ``?``; a literal ``%`` is escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresTx:
    dialect: Dialect = POSTGRES

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result:
        cursor = self._conn.execute(_placeholders(sql), tuple(args))
        rows: list[Row] = cursor.fetchall() if cursor.description is not None else []
        return Result(rows, cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_placeholders(sql), rows)


class PostgresBackend:
    dialect: Dialect = POSTGRES

    def __init__(self, url: str) -> None:
        params = parse_conninfo(url)
        self._url = url
        self._defaults = {k: v for k, v in _DEFAULTS.items() if k not in params}
        self._conn: psycopg.Connection[DictRow] | None = None

    @property
    def description(self) -> str:
        return redact_url(self._url)

    def _scrub(self, exc: BaseException) -> str:
        return _scrub(str(exc) or type(exc).__name__, self._url)

    # --- the connection -----------------------------------------------------------------------

    def connect(self) -> None:
        self._connection()

    def _connection(self) -> psycopg.Connection[DictRow]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(
                self._url, autocommit=True, row_factory=dict_row, **self._defaults
            )
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the database {self.description}: {self._scrub(exc)}"
            ) from None
        try:
            conn.execute(_SESSION)
            self._ensure_schema(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise StoreError(
                    f"cannot open the database {self.description}: {self._scrub(exc)}"
                ) from None
            raise
        self._conn = conn
        return conn

    def _ensure_schema(self, conn: psycopg.Connection[DictRow]) -> None:
        if self._schema_version(conn) == SCHEMA_VERSION:
            return  # the common case: nothing to create, no lock taken
        conn.execute("BEGIN")
        try:
            # one creator at a time (concurrent CREATE … IF NOT EXISTS can collide)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS bridge_schema (version INTEGER NOT NULL)")
            version = self._schema_version(conn)  # refuses a newer one
            for statement in schema_statements(POSTGRES, version):
                conn.execute(statement)
            conn.execute("DELETE FROM bridge_schema")
            conn.execute("INSERT INTO bridge_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        except BaseException:
            if not conn.broken:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _schema_version(self, conn: psycopg.Connection[DictRow]) -> int:
        row = conn.execute("SELECT to_regclass('bridge_schema') IS NOT NULL AS known").fetchone()
        if row is None or not row["known"]:
            return 0
        row = conn.execute("SELECT max(version) AS version FROM bridge_schema").fetchone()
        version = int(row["version"]) if row is not None and row["version"] is not None else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.description}: database schema {version} is newer than this version "
                f"understands ({SCHEMA_VERSION}): upgrade hamsa-bridge"
            )
        return version

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _lost(self, conn: psycopg.Connection[DictRow], exc: psycopg.Error) -> bool:
        """Is ``conn`` unusable after ``exc`` (and its transaction, if any, rolled back)?"""
        sqlstate = exc.sqlstate or ""
        return (
            conn.closed or conn.broken or sqlstate.startswith("08") or (sqlstate in _LOST_SQLSTATES)
        )

    # --- transactions -------------------------------------------------------------------------

    def transaction(self, work: Callable[[Tx], T], *, write: bool) -> T:
        reconnected = False
        retries = 0
        while True:
            conn = self._connection()
            committing = False
            try:
                conn.execute(_BEGIN_WRITE if write else _BEGIN_READ)
                try:
                    result = work(_PostgresTx(conn))
                except BaseException:
                    self._rollback(conn)
                    raise
                committing = True
                conn.execute("COMMIT")
                return result
            except psycopg.Error as exc:
                if self._lost(conn, exc):
                    self._discard()
                    if write and committing:
                        raise StoreError(
                            f"database {self.description}: the connection was lost while "
                            "committing, so whether the change was saved is unknown "
                            f"({self._scrub(exc)})"
                        ) from None
                    if not reconnected:  # nothing was committed: do it all again
                        reconnected = True
                        log.warning(
                            "store_reconnecting", database=self.description, error=self._scrub(exc)
                        )
                        continue
                    raise StoreError(
                        f"database {self.description}: the connection was lost ({self._scrub(exc)})"
                    ) from None
                if exc.sqlstate in _RETRIED_SQLSTATES and retries < _RETRIES:
                    retries += 1  # rolled back: nothing of it happened
                    continue
                raise StoreError(f"database {self.description}: {self._scrub(exc)}") from None

    def _rollback(self, conn: psycopg.Connection[DictRow]) -> None:
        if conn.closed or conn.broken:
            return  # the server rolled back when the connection went
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            self._discard()  # a connection that cannot roll back is not reused

    def close(self) -> None:
        self._discard()
