"""The calls active in this process (lives in app state; never module-level)."""

from __future__ import annotations


class CallRegistry:
    """Active calls by CallSid: refuses a second stream for a call already streaming here."""

    def __init__(self) -> None:
        self._calls: dict[str, object] = {}

    def add(self, call_sid: str, call: object) -> bool:
        if call_sid in self._calls:
            return False
        self._calls[call_sid] = call
        return True

    def remove(self, call_sid: str, call: object) -> None:
        if self._calls.get(call_sid) is call:
            del self._calls[call_sid]

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._calls
