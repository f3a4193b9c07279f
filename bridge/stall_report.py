"""What the event loop was doing when it stalled (``BRIDGE_STALL_REPORT_MS``; 0, the default: off).

A stall is a heartbeat that ran ``threshold`` or more late: the loop schedules a timer every
``interval`` (``threshold``/2, 5–50 ms) and notes when it really ran. A watchdog thread wakes as
often (``poll``), reads the loop thread's CPU clock
(``time.pthread_getcpuclockid``) and, while the heartbeat is overdue, samples the loop thread's
Python stack (``sys._current_frames()``). A ``gc.callbacks`` hook times every collection
(generation, duration, objects collected). When a late heartbeat has run, the watchdog joins the
three over the stall and logs one ``event_loop_stall`` line (warning) naming the cause
(:func:`classify`) and the top frames; at stop one ``event_loop_stall_summary`` line gives the
stalls by cause and the collections by generation (:func:`summarise`).

Causes, in the order they are decided:

* ``GC gen N``: collections overlapping the stall took at least half of it;
* ``no Python frame: the process was not scheduled``: the watchdog itself overslept a third of
  the stall (it needs the CPU and the GIL) and the loop thread used under half a CPU meanwhile
  (the frames shown are where it was); ``no Python frame: C code held the GIL`` when the loop
  thread was on the CPU instead, the watchdog overslept half the stall and got at most one
  sample;
* from the samples that show the loop running Python (most common first, at least half of them):
  ``GC`` (a sample inside this module's GC hook), ``logging``, ``store/file I/O``
  (``bridge/store``, sqlite3, psycopg, pathlib, shutil), ``metrics`` (prometheus_client),
  ``JSON``, each ``at`` our innermost frame (``file:line``); else ``our code at file:line
  (function)``; else ``library at file:line (function)``; with no site holding half the
  samples, ``busy: many callbacks``;
* samples that only ever show the loop between callbacks (epoll or uvloop's C code):
  ``no Python frame: in the loop's C code`` (loop thread on the CPU) or ``… the process was not
  scheduled``.

Why not asyncio's debug mode (``slow_callback_duration``): it times only handles (not uvloop's
socket callbacks, where ``data_received`` runs) and captures a traceback for every handle created
(``uvloop/cbhandles.pyx``; https://docs.python.org/3/library/asyncio-dev.html#debug-mode): far too
costly for production. The samples name the frame instead.

Cost. Off: nothing (no thread, no timer, no GC hook). On, with the 20 ms threshold: 100
heartbeats and 100 watchdog wakes a second (each takes the GIL for a clock read and a compare,
and for a stack walk of ~20 µs only while the heartbeat is overdue), two clock reads per
collection. Measured on the 2-vCPU VM of BENCHMARKS.md: 0.9–1.1 % of a core in an otherwise idle
process (mostly the VM's timer wake-ups: a bare 100 Hz timer costs 0.5 %), and no difference
beyond the noise (±1 point) under a loop busy with 300 tasks. Memory: bounded rings (``HISTORY``
polls, samples and collections, plain tuples the cyclic GC does not track).

References: https://docs.python.org/3/library/gc.html#gc.callbacks,
https://docs.python.org/3/library/sys.html#sys._current_frames,
https://docs.python.org/3/library/time.html#time.pthread_getcpuclockid.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, Final

import structlog

log = structlog.get_logger("bridge.stall_report")

HISTORY: Final = 2048
"""Entries each ring keeps (polls, samples, collections): seconds of history at the poll rate."""
MAX_FRAMES: Final = 40
"""Frames kept per sample (innermost first); the log line shows ``SHOWN_FRAMES``."""
SHOWN_FRAMES: Final = 8
OVERDUE: Final = 0.002
"""How late the heartbeat must be for a watchdog wake to sample the loop's stack (uvloop's timers
run to the millisecond)."""
STARVED: Final = 1 / 3
"""The share of a stall the watchdog must have overslept for a loop thread off the CPU to count
as not scheduled."""
SHARE: Final = 0.5
"""The share of a stall (or of its samples) a cause must hold to be named."""
NOT_SCHEDULED: Final = "no Python frame: the process was not scheduled"
GIL_HELD: Final = "no Python frame: C code held the GIL"
LOOP_C_CODE: Final = "no Python frame: in the loop's C code"
BUSY: Final = "busy: many callbacks"

Frame = tuple[str, int, str]
"""``(file, line, function)``; ``file`` as :func:`short_path` gives it."""

_OUR_PACKAGES: Final = ("bridge/", "twiml/", "tests/", "bench/")
_OWN_FILE: Final = "bridge/stall_report.py"
"""This module: a sample inside its GC hook is a collection starting or ending."""
_CATEGORIES: Final = (
    # (name, file prefixes or fragments); first match wins, so a logger's JSON counts as logging
    ("GC", (_OWN_FILE,)),
    ("logging", ("logging/", "structlog/", "bridge/logs.py")),
    (
        "store/file I/O",
        ("bridge/store/", "sqlite3/", "psycopg/", "psycopg_pool/", "pathlib.py", "shutil.py"),
    ),
    ("metrics", ("prometheus_client/", "bridge/metrics.py")),
    ("JSON", ("json/",)),
)
_MACHINERY: Final = ("selectors.py",)
"""Files of the pure-Python loop's wait (asyncio without uvloop): between callbacks."""


def short_path(filename: str) -> str:
    """``…/bridge/calls/playback.py`` → ``bridge/calls/playback.py``; a library file from its
    package (``…/site-packages/uvicorn/x.py`` → ``uvicorn/x.py``; ``…/lib/python3.11/json/x.py``
    → ``json/x.py``)."""
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    for package in _OUR_PACKAGES:
        index = path.rfind("/" + package)
        if index >= 0:
            return path[index + 1 :]
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.startswith("python3") and i + 1 < len(parts):
            return "/".join(parts[i + 1 :])
    return "/".join(parts[-2:])


@dataclass(frozen=True, slots=True)
class GcRun:
    """One collection (``gc.callbacks``), monotonic seconds."""

    start: float
    end: float
    generation: int
    collected: int

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Sample:
    """The loop thread's stack at ``at``: its frames running work, innermost first (the loop's
    own frames dropped); empty: no Python frame (between callbacks)."""

    at: float
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class Poll:
    """A watchdog wake: when, and the loop thread's CPU time then (seconds; None: unreadable)."""

    at: float
    loop_cpu: float | None


@dataclass(frozen=True, slots=True)
class Stall:
    """A heartbeat due at ``due`` that ran at ``end`` (``late`` = end - due). The loop was
    free at ``since`` (the previous heartbeat), so whatever blocked it ran in ``since..end``."""

    since: float
    due: float
    end: float
    samples: tuple[Sample, ...] = ()
    gc_runs: tuple[GcRun, ...] = ()
    polls: tuple[Poll, ...] = ()
    """The watchdog's wakes from the last before ``since`` to the first after ``end``."""

    @property
    def late(self) -> float:
        return self.end - self.due


@dataclass(frozen=True, slots=True)
class Verdict:
    cause: str
    frames: tuple[Frame, ...] = ()
    """The frames of the sample that shows the cause (innermost first), if any."""
    detail: Mapping[str, Any] = field(default_factory=dict)


def sample_site(frames: Sequence[Frame]) -> str:
    """What one sample shows the loop doing: a category (``logging``, ``store/file I/O``,
    ``metrics``, ``JSON``) at our innermost frame, ``our code at file:line (function)``, or
    ``library at …``; "" for no Python frame."""
    if not frames:
        return ""
    ours = next((f for f in frames if f[0].startswith(_OUR_PACKAGES) and f[0] != _OWN_FILE), None)
    for name, markers in _CATEGORIES:
        if any(marker in f[0] for f in frames for marker in markers):
            where = ours or frames[0]
            return f"{name} at {where[0]}:{where[1]}"
    if ours is not None:
        return f"our code at {ours[0]}:{ours[1]} ({ours[2]})"
    top = frames[0]
    return f"library at {top[0]}:{top[1]} ({top[2]})"


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _cpu_share(
    polls: Sequence[Poll], start: float, end: float, every: float
) -> tuple[float | None, float]:
    """(the loop thread's CPU ÷ wall time over the polls bracketing ``start..end``, how long
    the watchdog overslept its ``every`` within ``start..end``: it needs the CPU and the GIL)."""
    readings = [(p.at, p.loop_cpu) for p in polls if p.loop_cpu is not None]
    before = [r for r in readings if r[0] <= start]
    after = [r for r in readings if r[0] >= end]
    overslept = 0.0
    ordered = sorted(polls, key=lambda p: p.at)
    for a, b in zip(ordered, ordered[1:], strict=False):
        late_from = max(a.at + every, start)
        overslept += max(0.0, min(b.at, end) - late_from)
    if not before or not after:
        return None, overslept
    (first_at, first_cpu), (last_at, last_cpu) = before[-1], after[0]
    wall = last_at - first_at
    return ((last_cpu - first_cpu) / wall if wall > 0 else None), overslept


def classify(stall: Stall, poll: float) -> Verdict:
    """The cause of ``stall``, the watchdog waking every ``poll`` s (the module's docstring
    gives the rules, in order)."""
    late = stall.late
    gc_time = sum(_overlap(r.start, r.end, stall.since, stall.end) for r in stall.gc_runs)
    overlapping = [r for r in stall.gc_runs if _overlap(r.start, r.end, stall.since, stall.end)]
    cpu, overslept = _cpu_share(stall.polls, stall.since, stall.end, poll)
    detail: dict[str, Any] = {
        "gc_ms": round(gc_time * 1000, 1),
        "loop_cpu": None if cpu is None else round(cpu, 2),
        "watchdog_late_ms": round(overslept * 1000, 1),
    }
    if overlapping and gc_time >= SHARE * late:
        generation = max(r.generation for r in overlapping)
        return Verdict(f"GC gen {generation}", (), detail)
    samples = [s for s in stall.samples if stall.since <= s.at <= stall.end]
    work = [s for s in samples if s.frames]
    detail["samples"] = len(samples)
    hint = work[-1].frames if work else ()
    if overslept >= STARVED * late and (cpu is None or cpu < SHARE):
        # The watchdog was held up too, and the loop thread mostly did not run, wherever it
        # was: the process did not get the CPU. (A loop blocked in a system call, or sleeping,
        # lets the watchdog run on time.)
        return Verdict(NOT_SCHEDULED, hint, detail)
    if overslept >= SHARE * late and len(work) < 2:
        # The loop thread ran, but the watchdog could not take the GIL: C code held it. What
        # the samples show after it is a hint: the caller of that C code.
        return Verdict(GIL_HELD, hint, detail)
    if work:
        sites = Counter(sample_site(s.frames) for s in work)
        site, count = sites.most_common(1)[0]
        frames = next(s.frames for s in work if sample_site(s.frames) == site)
        if count >= SHARE * len(work):
            return Verdict(site, frames, detail)
        detail["sites"] = dict(sites.most_common(3))
        return Verdict(BUSY, frames, detail)
    if cpu is not None and cpu >= SHARE:
        return Verdict(LOOP_C_CODE, (), detail)
    return Verdict(NOT_SCHEDULED, (), detail)


@dataclass(slots=True)
class CauseTally:
    stalls: int = 0
    late_max: float = 0.0
    late_total: float = 0.0


def summarise(stalls: Iterable[tuple[str, float]]) -> list[tuple[str, CauseTally]]:
    """``(cause, late seconds)`` pairs → each cause's count, worst and total, most frequent
    first (ties: the worse first)."""
    tallies: dict[str, CauseTally] = {}
    for cause, late in stalls:
        tally = tallies.setdefault(cause, CauseTally())
        tally.stalls += 1
        tally.late_max = max(tally.late_max, late)
        tally.late_total += late
    return sorted(tallies.items(), key=lambda item: (-item[1].stalls, -item[1].late_max))


def cause_group(cause: str) -> str:
    """A cause without its place (``JSON at bridge/x.py:3`` → ``JSON``; ``our code at …`` →
    ``our code``): the summary's coarse view."""
    for prefix in ("our code", "library", "logging", "store/file I/O", "metrics", "JSON"):
        if cause.startswith(prefix + " at"):
            return prefix
    return cause


@dataclass(slots=True)
class GcTally:
    runs: int = 0
    seconds: float = 0.0
    longest: float = 0.0
    longest_cpu: float = 0.0
    """The longest collection in CPU time (``longest`` is wall time: a preempted one is long)."""
    collected: int = 0


class StallWatchdog:
    """The heartbeat, the watchdog thread and the GC hook (the module's docstring). ``start``
    on the loop's thread inside the running loop; ``stop`` from there too."""

    def __init__(
        self, threshold: float, on_stall: Callable[[Stall, Verdict], None] | None = None
    ) -> None:
        """``on_stall``: also called with each stall reported (in the watchdog thread)."""
        if threshold <= 0:
            raise ValueError("threshold must be positive")
        self.threshold = threshold
        self._on_stall = on_stall
        self.interval = min(max(threshold / 2, 0.005), 0.05)
        self.poll = self.interval
        self.verdicts: list[tuple[Stall, Verdict]] = []
        """Every stall reported (bounded by ``HISTORY``, oldest dropped)."""
        self.gc: dict[int, GcTally] = {}
        self._late: deque[tuple[float, float, float]] = deque()
        # Plain tuples of floats, ints and strings: the cyclic GC untracks them, so the rings add
        # nothing to the collections they time (a dataclass instance would be scanned by each).
        self._samples: deque[tuple[float, tuple[Frame, ...]]] = deque(maxlen=HISTORY)
        self._polls: deque[tuple[float, float | None]] = deque(maxlen=HISTORY)
        self._gc_runs: deque[tuple[float, float, int, int]] = deque(maxlen=HISTORY)
        self._gc_started = 0.0
        self._gc_cpu_started = 0.0
        self._base: set[CodeType] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._cpu_clock: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._due = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: Counter[str] = Counter()

    # --- the loop's side ------------------------------------------------------------------

    def start(self) -> None:
        """Start the heartbeat, the GC hook and the watchdog thread (in the running loop)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        try:
            self._cpu_clock = time.pthread_getcpuclockid(self._loop_thread)
        except (AttributeError, OSError):  # not on this platform: no CPU share in the verdicts
            self._cpu_clock = None
        gc.callbacks.append(self._on_gc)
        loop.call_soon(self._first_beat)
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop everything and log the summary line (the loop's thread)."""
        if self._timer is not None:
            self._timer.cancel()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        log.warning("event_loop_stall_summary", **self.summary())

    def summary(self) -> dict[str, Any]:
        """The summary line's fields: stalls by cause (count, worst and total ms) and the
        collections by generation (count, total and longest ms, objects collected, longest in
        CPU ms)."""
        stalls = summarise((v.cause, s.late) for s, v in self.verdicts)
        return {
            "threshold_ms": round(self.threshold * 1000, 1),
            "stalls": sum(t.stalls for _, t in stalls),
            "by_cause": {
                cause: [t.stalls, round(t.late_max * 1000, 1), round(t.late_total * 1000, 1)]
                for cause, t in stalls
            },
            "gc": {
                f"gen{gen}": [
                    t.runs,
                    round(t.seconds * 1000, 1),
                    round(t.longest * 1000, 1),
                    t.collected,
                    round(t.longest_cpu * 1000, 1),
                ]
                for gen, t in sorted(self.gc.items())
            },
        }

    def _first_beat(self) -> None:
        # Called by the loop itself: every frame below this one is the loop's, not work.
        frame = sys._getframe().f_back
        while frame is not None:
            self._base.add(frame.f_code)
            frame = frame.f_back
        self._last = time.monotonic()
        self._schedule(self._last)

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._timer = self._loop.call_later(self.interval, self._beat)

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._due >= self.threshold:
            self._late.append((self._last, self._due, now))
        self._last = now
        self._schedule(now)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        cpu = time.thread_time()  # the collecting thread's CPU: its cost whatever the load
        if phase == "start":
            self._gc_started = now
            self._gc_cpu_started = cpu
            return
        generation, collected = info.get("generation", 0), info.get("collected", 0)
        self._gc_runs.append((self._gc_started, now, generation, collected))
        tally = self.gc.setdefault(generation, GcTally())
        duration = now - self._gc_started
        tally.runs += 1
        tally.seconds += duration
        tally.longest = max(tally.longest, duration)
        tally.longest_cpu = max(tally.longest_cpu, cpu - self._gc_cpu_started)
        tally.collected += collected

    # --- the watchdog thread --------------------------------------------------------------

    def _watch(self) -> None:
        clock = self._cpu_clock
        while not self._stopping.wait(self.poll):
            now = time.monotonic()
            cpu: float | None = None
            if clock is not None:
                try:
                    cpu = time.clock_gettime(clock)
                except OSError:
                    clock = None
            self._polls.append((now, cpu))
            if self._due and now - self._due > OVERDUE:
                frame = sys._current_frames().get(self._loop_thread)
                self._samples.append((now, self._work(frame)))
            while self._late and self._late[0][2] <= now:
                self._report(*self._late.popleft())

    def _work(self, frame: FrameType | None) -> tuple[Frame, ...]:
        frames: list[Frame] = []
        while frame is not None and len(frames) < MAX_FRAMES:
            code = frame.f_code
            if code in self._base:
                break
            path = short_path(code.co_filename)
            if not path.endswith(_MACHINERY):
                frames.append((path, frame.f_lineno or 0, code.co_name))
            frame = frame.f_back
        return tuple(frames)

    def _report(self, since: float, due: float, end: float) -> None:
        polls = list(self._polls)
        start_at = max((at for at, _ in polls if at <= since), default=since)
        stall = Stall(
            since=since,
            due=due,
            end=end,
            samples=tuple(Sample(at, f) for at, f in self._samples if since <= at <= end),
            gc_runs=tuple(GcRun(*r) for r in self._gc_runs if r[1] >= since and r[0] <= end),
            polls=tuple(Poll(at, cpu) for at, cpu in polls if at >= start_at),
        )
        verdict = classify(stall, self.poll)
        self.verdicts.append((stall, verdict))
        if len(self.verdicts) > HISTORY:
            del self.verdicts[0]
        log.warning(
            "event_loop_stall",
            late_ms=round(stall.late * 1000, 1),
            cause=verdict.cause,
            frames=[f"{f[0]}:{f[1]} {f[2]}" for f in verdict.frames[:SHOWN_FRAMES]],
            gc=[
                f"gen{r.generation} {r.duration * 1000:.1f}ms collected={r.collected}"
                for r in stall.gc_runs
                if r.duration >= 0.001
            ],
            **verdict.detail,
        )
        if self._on_stall is not None:
            self._on_stall(stall, verdict)
