"""The calls active in this process (lives in app state; never module-level)."""

from __future__ import annotations

import asyncio


class CallRegistry:
    """Active calls by CallSid: refuses a second stream for a call already streaming here."""

    def __init__(self) -> None:
        self._calls: dict[str, object] = {}
        self._empty = asyncio.Event()
        self._empty.set()

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
