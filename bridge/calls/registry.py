"""The calls active in this process (lives in app state; never module-level)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol


class Endable(Protocol):
    def end(self, reason: str) -> bool:
        """End the call now, deliberately (closes its stream with 1001 Going Away); True if a
        call in progress was cut."""


class CallRegistry:
    """Active calls by CallSid, and the stream tokens already used.

    Refuses a second stream for a call already streaming here, and a stream token that was
    already accepted (tokens are single-use; each is remembered until it expires).
    """

    def __init__(self) -> None:
        self._calls: dict[str, object] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._used: set[str] = set()
        self._expiries: deque[tuple[float, str]] = deque()

    def claim_token(self, token: str, *, expires_at: float, now: float) -> bool:
        """Record ``token`` as used; False if it was used before (a replay)."""
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
