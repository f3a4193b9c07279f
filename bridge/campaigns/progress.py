"""A campaign's progress: what to show (pure), and the two ways of showing it.

What is counted: :class:`Counts` puts each contact in one bucket. The progress of a *run*
(``campaign run`` or ``resume``) counts the contacts that run has to call, the contacts still
pending or in progress when it started: its total is the header's "N number(s) to call", and a
number is done once it has its final outcome (retries spent or not needed). Invalid rows and
duplicates are never called and are never in a total.

What is shown: :class:`ProgressView` turns counts and the time into :class:`ProgressFields`
(done/total, rate, ETA, the outcomes worth showing): pure, the clock is passed in.
:func:`fit` lays the fields out in a given width (the bar shrinks, then the least useful fields
go), :func:`plain_line` writes them all.

How: on a terminal (:class:`LiveProgress`), one line redrawn in place by ``rich.live.Live``,
fitted to the console's width at each redraw (so it never wraps, even after a resize), at most
four times a second. Otherwise (a log file, CI: :class:`PlainProgress`), a plain line without
control codes at most every :data:`PLAIN_INTERVAL` seconds when something changed, and the last
one at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Final, Protocol, TextIO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text

from bridge.store import ContactRecord, ContactState

__all__ = [
    "PLAIN_INTERVAL",
    "Counts",
    "Layout",
    "LiveProgress",
    "PlainProgress",
    "ProgressDisplay",
    "ProgressFields",
    "ProgressView",
    "fit",
    "plain_line",
    "progress_for",
]

TTY_INTERVAL: Final = 0.25
"""Shortest time between two redraws of the live line."""
PLAIN_INTERVAL: Final = 5.0
"""Shortest time between two plain lines (without a terminal)."""
RATE_AFTER: Final = 2.0
"""Seconds of a run before its rate (and so its ETA) is shown."""
BAR_MIN: Final = 10
BAR_MAX: Final = 30


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
        """Every contact (row), called or not."""
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def finished(self) -> int:
        """Contacts with a final state (done, invalid or duplicate)."""
        return self.total - self.left

    @property
    def to_call(self) -> int:
        """The numbers to call: every contact but the invalid rows and the duplicates."""
        return self.total - self.invalid - self.duplicate

    @property
    def left(self) -> int:
        """Numbers not done yet: in progress, waiting for a retry, or not called yet."""
        return self.active + self.retry + self.waiting

    @property
    def done(self) -> int:
        """Numbers to call that have their final outcome."""
        return self.to_call - self.left

    def outcomes(self) -> list[tuple[str, int]]:
        """The final outcomes (always), then ``canceled`` when non-zero."""
        named = [
            ("heard", self.heard),
            ("answered", self.answered),
            ("busy", self.busy),
            ("no-answer", self.no_answer),
            ("failed", self.failed),
            ("not-placed", self.not_placed),
        ]
        return named + ([("canceled", self.canceled)] if self.canceled else [])

    def in_progress(self) -> list[tuple[str, int]]:
        """The numbers not done yet, by where they stand (the non-zero ones)."""
        named = [
            ("calling", self.active),
            ("waiting for retry", self.retry),
            ("not called yet", self.waiting),
        ]
        return [(name, n) for name, n in named if n]

    def describe(self) -> str:
        """``heard 3 · answered 0 · busy 1 · …``: the outcomes, then what is not done yet."""
        return " · ".join(f"{name} {n}" for name, n in self.outcomes() + self.in_progress())


# --- what to show (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProgressFields:
    """What a progress line says, in order of importance."""

    done: int
    total: int
    rate: float | None = None
    """Numbers done per minute in this run (``None``: not measurable yet)."""
    eta: float | None = None
    """Seconds until every number is done at that rate (``None``: unknown)."""
    items: tuple[tuple[str, int], ...] = ()
    """The outcome counts, then what is in progress: the live line shows the non-zero ones
    (and ``heard``), as far as they fit."""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


class ProgressView:
    """Turns a run's :class:`Counts` into :class:`ProgressFields`; the rate is measured from the
    first counts it is given (the start of the run). Pure: the caller passes the time."""

    def __init__(self, *, rate_after: float = RATE_AFTER) -> None:
        self._rate_after = rate_after
        self._start: tuple[float, int] | None = None

    def fields(self, counts: Counts, now: float) -> ProgressFields:
        if self._start is None:
            self._start = (now, counts.done)
        started, done_then = self._start
        elapsed, progressed = now - started, counts.done - done_then
        rate = eta = None
        if elapsed >= self._rate_after:
            per_second = progressed / elapsed
            rate = per_second * 60
            if per_second > 0:
                eta = counts.left / per_second
        return ProgressFields(
            done=counts.done,
            total=counts.to_call,
            rate=rate,
            eta=eta,
            items=tuple(counts.outcomes() + counts.in_progress()),
        )


def duration(seconds: float) -> str:
    """``45s``, ``8m05s``, ``2h03m``, ``3d04h``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _rate(rate: float) -> str:
    return f"{rate:.1f}/min" if rate < 10 else f"{rate:.0f}/min"


def _summary(view: ProgressFields) -> list[str]:
    """done/total, the rate and the ETA (when known)."""
    parts = [f"{view.done}/{view.total} done"]
    if view.rate is not None:
        parts.append(_rate(view.rate))
    if view.done < view.total and view.eta is not None:
        parts.append(f"ETA {duration(view.eta)}")
    return parts


def plain_line(view: ProgressFields) -> str:
    """Everything, on one line of plain text (for logs: no width limit, no control codes)."""
    return " · ".join(_summary(view) + [f"{name} {n}" for name, n in view.items])


@dataclass(frozen=True, slots=True)
class Layout:
    """The live line in a given width: a bar of ``bar`` cells (0: none), then ``parts``."""

    bar: int
    parts: tuple[str, ...]

    SEPARATOR = " · "

    def text(self) -> str:
        return self.SEPARATOR.join(self.parts)

    @property
    def width(self) -> int:
        text = self.text()
        return self.bar + (1 if self.bar and text else 0) + len(text)


def fit(view: ProgressFields, width: int) -> Layout:
    """The line for ``width`` columns, never wider. The bar takes a fifth of the width
    (:data:`BAR_MIN` to :data:`BAR_MAX` cells: the same at every update of a console); then
    done/total, the rate, the ETA, and the outcome counts that are non-zero (``heard``
    always), in that order, as many as fit. In a very narrow console the bar goes, and last
    of all done/total is cut."""
    summary = _summary(view)
    items = [f"{name} {n}" for name, n in view.items if n or name == "heard"]
    bar = min(BAR_MAX, width // 5)
    if bar < BAR_MIN or Layout(bar, (summary[0],)).width > width:
        bar = 0
    chosen = [summary[0]]
    for part in [*summary[1:], *items]:
        if Layout(bar, (*chosen, part)).width > width:
            break
        chosen.append(part)
    if Layout(bar, tuple(chosen)).width <= width:
        return Layout(bar, tuple(chosen))
    return Layout(0, (summary[0][: max(0, width)],))


# --- showing it ------------------------------------------------------------------------------


class ProgressDisplay(Protocol):
    """Where a run's counts go: ``update`` as often as you like, ``close`` at the end."""

    def update(self, counts: Counts) -> None: ...

    def close(self) -> None: ...


class _Line:
    """The live line as a rich renderable: laid out in the console's width at each render."""

    def __init__(self, view: ProgressFields) -> None:
        self.view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # one cell short of the edge: a line that fills the last column makes some
        # terminals wrap the cursor, and the next redraw would leave a line behind
        layout = fit(self.view, options.max_width - 1)
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        if layout.bar:
            filled = min(layout.bar, round(layout.bar * self.view.fraction))
            done, rest = ("#", "-") if options.ascii_only else ("█", "░")
            line.append(done * filled, style="green")
            line.append(rest * (layout.bar - filled), style="bright_black")
            line.append(" ")
        line.append(layout.text())
        yield line


class LiveProgress:
    """On a terminal: one line redrawn in place (``rich.live.Live``), at most every
    :data:`TTY_INTERVAL` seconds, fitted to the console's width at each redraw."""

    def __init__(
        self,
        console: Console,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = TTY_INTERVAL,
    ) -> None:
        self._console = console
        self._clock = clock
        self._interval = interval
        self._view = ProgressView()
        self._live: Live | None = None
        self._pending: Counts | None = None
        self._last = float("-inf")

    def update(self, counts: Counts) -> None:
        self._pending = counts
        now = self._clock()
        if now - self._last >= self._interval:
            self._draw(now)

    def _draw(self, now: float) -> None:
        assert self._pending is not None
        line = _Line(self._view.fields(self._pending, now))
        if self._live is None:  # started at the first counts: nothing to show before
            self._live = Live(
                line,
                console=self._console,
                auto_refresh=False,  # redrawn by update(): no thread
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start(refresh=True)
        else:
            self._live.update(line, refresh=True)
        self._pending, self._last = None, now

    def close(self) -> None:
        """Show the last counts and end the line (the next output starts below it)."""
        if self._pending is not None:
            self._draw(self._clock())
        if self._live is not None:
            self._live.stop()
            self._live = None


class PlainProgress:
    """Without a terminal: a plain line (no control codes) at the first counts, then at most
    every ``interval`` seconds when the counts changed, and the last counts at ``close``."""

    def __init__(
        self,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = PLAIN_INTERVAL,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._interval = interval
        self._view = ProgressView()
        self._shown: Counts | None = None
        self._pending: Counts | None = None
        self._last = float("-inf")

    def update(self, counts: Counts) -> None:
        now = self._clock()
        fields = self._view.fields(counts, now)  # the rate's start: the first counts
        if counts == self._shown:
            self._pending = None
            return
        self._pending = counts
        if now - self._last >= self._interval:
            self._write(plain_line(fields), now)

    def _write(self, line: str, now: float) -> None:
        self._stream.write(f"progress: {line}\n")
        self._stream.flush()
        self._shown, self._pending, self._last = self._pending, None, now

    def close(self) -> None:
        if self._pending is not None:
            now = self._clock()
            self._write(plain_line(self._view.fields(self._pending, now)), now)


def progress_for(stream: TextIO) -> ProgressDisplay:
    """Live on a terminal that can move its cursor, plain lines otherwise."""
    console = Console(file=stream, highlight=False)
    # rich's own checks too (TERM=dumb, TTY_COMPATIBLE=0); FORCE_COLOR alone does not make a
    # log file a terminal: redrawing in place there would fill it with control codes
    if stream.isatty() and console.is_terminal and not console.is_dumb_terminal:
        return LiveProgress(console)
    return PlainProgress(stream)
