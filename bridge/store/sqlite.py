"""The store on SQLite: one file, WAL, ``synchronous=FULL``, shared by several processes.

Writers serialise on ``BEGIN IMMEDIATE`` (taken up front: no deadlock when a reader would
upgrade) with a 30 s busy timeout; readers use ``BEGIN DEFERRED`` and never wait (WAL: a reader
sees the last commit). ``COMMIT`` with ``synchronous=FULL`` is on disk when it returns.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import StoreError
from bridge.store.backend import SQLITE, Dialect, Result, Row, Tx
from bridge.store.schema import SCHEMA_VERSION, schema_statements

__all__ = ["SqliteBackend"]

T = TypeVar("T")


def _dict_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, values, strict=True)}


class _SqliteTx:
    dialect: Dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result:
        cursor = self._conn.execute(sql, args)
        rows: list[Row] = cursor.fetchall()
        return Result(rows, cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SqliteBackend:
    dialect: Dialect = SQLITE

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def description(self) -> str:
        return str(self.path)

    def connect(self) -> None:
        self._connection()

    def _version(self, conn: sqlite3.Connection) -> int:
        version: int = conn.execute("PRAGMA user_version").fetchone()["user_version"]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: database schema {version} is newer than this version "
                f"understands ({SCHEMA_VERSION}): upgrade hamsa-bridge"
            )
        return version

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            try:
                conn.row_factory = _dict_row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                if self._version(conn) != SCHEMA_VERSION:
                    # one creator/migrator at a time: the version is read again under the lock
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in schema_statements(SQLITE, self._version(conn)):
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None
        self._conn = conn
        return conn

    def transaction(self, work: Callable[[Tx], T], *, write: bool) -> T:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
            try:
                result = work(_SqliteTx(conn))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {exc}") from None
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
