"""What the store needs of a database: a dialect, and transactions run on one worker thread.

The :class:`~bridge.store.store.Store` writes its SQL once, with ``?`` placeholders and the few
dialect-dependent pieces taken from :class:`Dialect`; a :class:`Backend` (SQLite or PostgreSQL)
runs each of the store's methods as one transaction and hands it a :class:`Tx`, whose rows are
plain dicts keyed by column name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["POSTGRES", "SQLITE", "Backend", "Dialect", "Result", "Row", "Tx"]

T = TypeVar("T")

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Dialect:
    """The pieces of SQL that differ between the databases."""

    name: str
    real: str
    """The type of Unix times and other floats (PostgreSQL's ``REAL`` is only 4 bytes)."""
    sequence_column: str
    """A column definition numbering rows in insertion order (empty: the database has one)."""
    insertion_order: str
    """The expression ordering rows by insertion (the tie-breaker of equal ``created_at``)."""
    lock_row: str
    """Appended to a ``SELECT`` whose rows the transaction goes on to update."""


SQLITE = Dialect(
    name="sqlite",
    real="REAL",
    sequence_column="",
    insertion_order="rowid",
    lock_row="",  # BEGIN IMMEDIATE already serialises every writer
)
POSTGRES = Dialect(
    name="postgresql",
    real="DOUBLE PRECISION",
    sequence_column="seq BIGINT GENERATED ALWAYS AS IDENTITY",
    insertion_order="seq",
    lock_row=" FOR UPDATE",
)


@dataclass(frozen=True, slots=True)
class Result:
    """A statement's rows (none for most writes) and how many rows it changed."""

    rows: list[Row]
    rowcount: int

    def first(self) -> Row | None:
        return self.rows[0] if self.rows else None


class Tx(Protocol):
    """One open transaction (SQL with ``?`` placeholders, whatever the database)."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Result: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Backend(Protocol):
    """A database connection owned by one worker thread: every method is called there."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def description(self) -> str:
        """The database as error messages name it (never with a password)."""
        ...

    def connect(self) -> None:
        """Connect (if not connected) and make sure the schema is there; ``StoreError``."""

    def transaction(self, work: Callable[[Tx], T], *, write: bool) -> T:
        """Run ``work`` in one transaction, committed before this returns (``write``) or a
        consistent snapshot (not ``write``). Database errors become ``StoreError``."""
        ...

    def close(self) -> None: ...
