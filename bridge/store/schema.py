"""The store's tables, written once for both databases (types from the :class:`Dialect`).

The tables are created as in the first version, then each later version's migration is applied
in order (:data:`MIGRATIONS`, statements both databases accept); a database at version ``n``
gets only the migrations after ``n``, and one of a newer version than this code knows is
refused. PostgreSQL gets ``DOUBLE PRECISION`` times and a ``seq`` identity column standing in
for SQLite's ``rowid`` (the insertion order that breaks ties between equal ``created_at``).

Versions: 1, the first; 2 adds ``announcements.plays_unconfirmed`` (a play whose final mark
never came back); 3 adds ``call_budget`` (the account's calls-per-second budget, shared by every
process: ``bridge.announcements.limiter``).
"""

from __future__ import annotations

from typing import Final

from bridge.store.backend import Dialect

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "schema_statements"]

SCHEMA_VERSION: Final = 3

MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    2: ("ALTER TABLE announcements ADD COLUMN plays_unconfirmed INTEGER NOT NULL DEFAULT 0",),
    # one row per Twilio account: the instant its token bucket is full again
    3: (
        """CREATE TABLE IF NOT EXISTS call_budget (
    account TEXT PRIMARY KEY,
    full_at {real} NOT NULL
)""",
    ),
}
"""Version → the statements that bring a database from the version before to it (``{real}``:
the dialect's floating-point type)."""

_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at {real} NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    finished_at {real},
    lease_owner TEXT,
    lease_until {real} NOT NULL DEFAULT 0{sequence}
)""",
    """CREATE TABLE IF NOT EXISTS contacts (
    campaign_id TEXT NOT NULL REFERENCES campaigns(id),
    idx INTEGER NOT NULL,
    number TEXT NOT NULL,
    variables TEXT NOT NULL,
    text TEXT NOT NULL,
    timezone TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at {real} NOT NULL DEFAULT 0,
    outcome TEXT,
    error TEXT,
    PRIMARY KEY (campaign_id, idx)
)""",
    """CREATE TABLE IF NOT EXISTS announcements (
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
    created_at {real} NOT NULL,
    call_sid TEXT UNIQUE,
    sent_at {real},
    placed_at {real},
    ended_at {real},
    status TEXT,
    status_seq INTEGER NOT NULL DEFAULT -1,
    status_at {real},
    answered_by TEXT,
    duration INTEGER,
    confirmation TEXT,
    plays INTEGER NOT NULL DEFAULT 0,
    stream_started_at {real},
    stream_ended_at {real},
    error TEXT,
    idempotency_key TEXT UNIQUE{sequence}
)""",
    """CREATE INDEX IF NOT EXISTS announcements_by_contact
    ON announcements (campaign_id, contact_idx)""",
    "CREATE INDEX IF NOT EXISTS announcements_by_state ON announcements (state)",
    "CREATE INDEX IF NOT EXISTS announcements_by_created ON announcements (created_at)",
)


def schema_statements(dialect: Dialect, version: int = 0) -> list[str]:
    """DDL bringing a database at schema ``version`` (0: empty) to :data:`SCHEMA_VERSION`, one
    statement per item, in order. Run in one transaction with the version's update."""
    if version >= SCHEMA_VERSION:
        return []
    statements: list[str] = []
    if version < 1:
        sequence = f",\n    {dialect.sequence_column}" if dialect.sequence_column else ""
        statements += [table.format(real=dialect.real, sequence=sequence) for table in _TABLES]
    for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
        statements += [step.format(real=dialect.real) for step in MIGRATIONS[target]]
    return statements
