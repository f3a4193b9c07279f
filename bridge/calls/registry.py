"""The calls active in this process (lives in app state; never module-level), and the stream
tokens already used: in this process's memory, or, under ``serve --workers N``, in a SQLite file
every worker on the machine shares (``SharedUsedTokens``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections import deque
from pathlib import Path
from typing import Protocol


class Endable(Protocol):
    def end(self, reason: str) -> bool:
        """End the call now, deliberately (closes its stream with 1001 Going Away); True if a
        call in progress was cut."""


class UsedTokens(Protocol):
    def claim(self, token: str, *, expires_at: float, now: float) -> bool:
        """Record ``token`` as used until ``expires_at``; False if it was used before."""

    def close(self) -> None:
        """Release what the record holds (the app's lifespan calls it at shutdown)."""


class SharedUsedTokens:
    """Stream tokens used by any process sharing one SQLite file: the workers of
    ``serve --workers N``, so a token replayed to another worker is refused too.

    A row per token accepted (its SHA-256, never the token) until it expires; expired rows are
    deleted as claims come. Claims are synchronous, one short write each (once per call, at its
    ``start``); durability is off on purpose (the file lives only as long as the supervisor, in
    its private runtime directory). Opened on the first claim, so each process gets its own
    connection (never one inherited across ``fork``).
    """

    SWEEP_EVERY = 30.0
    """Seconds between deletions of expired rows (per process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._next_sweep = 0.0

    @classmethod
    def create(cls, path: Path) -> None:
        """Create the file and its table (the supervisor does, before any worker starts)."""
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS used_tokens "
                "(digest BLOB PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"
            )
            db.commit()

    def claim(self, token: str, *, expires_at: float, now: float) -> bool:
        db = self._db
        if db is None:
            db = self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            db.execute("PRAGMA synchronous=OFF")
        digest = hashlib.sha256(token.encode()).digest()
        db.execute("BEGIN IMMEDIATE")
        try:
            if now >= self._next_sweep:
                db.execute("DELETE FROM used_tokens WHERE expires_at < ?", (now,))
                self._next_sweep = now + self.SWEEP_EVERY
            cursor = db.execute(
                "INSERT OR IGNORE INTO used_tokens (digest, expires_at) VALUES (?, ?)",
                (digest, expires_at),
            )
            claimed = cursor.rowcount == 1
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return claimed

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


class CallRegistry:
    """Active calls by CallSid, and the stream tokens already used.

    Refuses a second stream for a call already streaming here, and a stream token that was
    already accepted (tokens are single-use; each is remembered until it expires): in this
    process's memory, or in ``used_tokens`` when given (shared with other processes).
    """

    def __init__(self, used_tokens: UsedTokens | None = None) -> None:
        self._calls: dict[str, object] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._shared = used_tokens
        self._used: set[str] = set()
        self._expiries: deque[tuple[float, str]] = deque()

    def claim_token(self, token: str, *, expires_at: float, now: float) -> bool:
        """Record ``token`` as used; False if it was used before (a replay)."""
        if self._shared is not None:
            return self._shared.claim(token, expires_at=expires_at, now=now)
        while self._expiries and self._expiries[0][0] < now:
            self._used.discard(self._expiries.popleft()[1])
        if token in self._used:
            return False
        self._used.add(token)
        self._expiries.append((expires_at, token))
        return True

    def add(self, call_sid: str, call: object) -> bool:
        if call_sid in self._calls:
            return False
        self._calls[call_sid] = call
        self._empty.clear()
        return True

    def remove(self, call_sid: str, call: object) -> None:
        if self._calls.get(call_sid) is call:
            del self._calls[call_sid]
            if not self._calls:
                self._empty.set()

    async def wait_empty(self) -> None:
        """Return once no call is active (bound it with ``asyncio.timeout``)."""
        await self._empty.wait()

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._calls


class OpenStreams:
    """The stream WebSockets this process accepted and has not closed yet (calls, and streams
    still awaiting their ``start``): what a drain waits for. Capacity counts calls (the
    ``CallRegistry``); the streams that are not calls yet are bounded by
    ``BRIDGE_MAX_PENDING_STREAMS``."""

    def __init__(self) -> None:
        self._streams: set[Endable] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, stream: Endable) -> None:
        self._streams.add(stream)
        self._empty.clear()

    def discard(self, stream: Endable) -> None:
        self._streams.discard(stream)
        if not self._streams:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once every stream has closed (bound it with ``asyncio.timeout``)."""
        await self._empty.wait()

    def snapshot(self) -> list[Endable]:
        return list(self._streams)

    def __len__(self) -> int:
        return len(self._streams)
