"""Live progress of a campaign on stderr, with no dependency.

On a terminal: one line redrawn in place (a bar and the counts by outcome), at most four times a
second. Otherwise (a log file, CI): a plain line whenever the counts change, at most once a
second, so logs stay readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Final, TextIO

from bridge.store import ContactRecord, ContactState

__all__ = ["Counts", "Progress"]

TTY_INTERVAL: Final = 0.25
LOG_INTERVAL: Final = 1.0
BAR_WIDTH: Final = 24


@dataclass(frozen=True, slots=True)
class Counts:
    """Contacts by where they stand (each contact in exactly one bucket)."""

    heard: int = 0
    answered: int = 0
    """Answered, but not confirmed heard (see ``CallOutcome``)."""
    busy: int = 0
    no_answer: int = 0
    failed: int = 0
    not_placed: int = 0
    invalid: int = 0
    active: int = 0
    retry: int = 0
    """Pending again after an attempt that reached Twilio (waiting for the retry delay)."""
    waiting: int = 0
    """Pending, never called yet."""
    canceled: int = 0
    duplicate: int = 0

    @classmethod
    def of(cls, contacts: Iterable[ContactRecord], reached: Mapping[int, int]) -> Counts:
        """``reached``: per contact index, its attempts that reached Twilio."""
        values = dict.fromkeys((f.name for f in fields(cls)), 0)
        for contact in contacts:
            if contact.state is ContactState.INVALID:
                key = "invalid"
            elif contact.state is ContactState.ACTIVE:
                key = "active"
            elif contact.state is ContactState.PENDING:
                key = "retry" if reached.get(contact.idx, 0) else "waiting"
            else:
                key = (contact.outcome or "failed").replace("-", "_")
                if key not in values:
                    key = "failed"
            values[key] += 1
        return cls(**values)

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def finished(self) -> int:
        """Contacts with a final state (done, invalid or duplicate)."""
        return self.total - self.active - self.retry - self.waiting

    def describe(self) -> str:
        """``heard 3 · answered 0 · busy 1 · …``: the outcomes always, the rarer buckets when
        non-zero."""
        always = [
            ("heard", self.heard),
            ("answered", self.answered),
            ("busy", self.busy),
            ("no-answer", self.no_answer),
            ("failed", self.failed),
            ("not-placed", self.not_placed),
            ("invalid", self.invalid),
            ("active", self.active),
            ("waiting for retry", self.retry),
        ]
        rare = [
            ("not called yet", self.waiting),
            ("canceled", self.canceled),
            ("duplicate", self.duplicate),
        ]
        parts = always + [(name, n) for name, n in rare if n]
        return " · ".join(f"{name} {n}" for name, n in parts)


class Progress:
    """Renders :class:`Counts` to ``stream``; call :meth:`update` as often as you like."""

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._clock = clock
        self._shown: Counts | None = None
        self._pending: Counts | None = None
        self._last = float("-inf")
        self._width = 0

    def line(self, counts: Counts) -> str:
        total = counts.total or 1
        done = counts.finished
        filled = round(BAR_WIDTH * done / total)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return f"[{bar}] {done}/{counts.total}  {counts.describe()}"

    def update(self, counts: Counts) -> None:
        """Show ``counts`` now, or as soon as the rate limit allows (next update or close)."""
        if counts == self._shown:
            self._pending = None
            return
        self._pending = counts
        now = self._clock()
        if now - self._last >= (TTY_INTERVAL if self._tty else LOG_INTERVAL):
            self._draw(now)

    def close(self) -> None:
        """Show the last counts (and end the redrawn line)."""
        if self._pending is not None:
            self._draw(self._clock())
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0

    def _draw(self, now: float) -> None:
        counts = self._pending
        assert counts is not None
        text = self.line(counts)
        if self._tty:
            pad = max(0, self._width - len(text))
            self._stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
        self._shown, self._pending, self._last = counts, None, now
