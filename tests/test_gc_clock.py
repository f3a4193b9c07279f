"""The cyclic GC's young collections on a clock (``bridge/gc_clock.py``).

Why the clock exists is CPython's counting rule: the death of an old object lowers the
generation-0 count, so under births balanced by old deaths the young list grows with no automatic
collection at all. The first test shows that rule (the premise); the others show the clock empties
the young list, and that the app's lifespan runs it.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import deque
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from bridge.app import create_app
from bridge.gc_clock import FULL_EVERY_SECONDS, collect_on_a_clock, full_collection_threshold
from bridge.settings import Settings

HANG = 10.0  # seconds: only a broken clock waits this long
BACKLOG = 20_000


def young() -> int:
    return len(gc.get_objects(generation=0))


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Thresholds so high that no automatic collection runs during the test, restored after."""
    thresholds = gc.get_threshold()
    enabled = gc.isenabled()
    gc.collect()
    gc.enable()
    gc.set_threshold(10_000_000, 10, 10_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not enabled:
            gc.disable()


def old_population() -> deque[list[int]]:
    population = deque([i] for i in range(BACKLOG))
    gc.collect()  # every survivor of a full collection is old (generation 2)
    return population


def churn(population: deque[list[int]]) -> None:
    """A new object born for each old one that dies: what a bridge at steady load does."""
    for i in range(BACKLOG):
        population.append([i])
        population.popleft()


def test_a_full_collection_about_every_hour_whatever_the_tick() -> None:
    assert FULL_EVERY_SECONDS == 3600
    assert full_collection_threshold(0.25) == 14_400
    assert full_collection_threshold(0.1) == 36_000
    assert full_collection_threshold(10) == 360
    assert full_collection_threshold(7200) == 1  # never 0: that would turn full collections off


def test_old_deaths_hide_the_young_backlog_from_the_automatic_rule() -> None:
    """The premise, at CPython's own thresholds: 20,000 newborns alive, no collection ran."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.set_threshold(700, 10, 10_000_000)
    runs: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            runs.append(info["generation"])

    gc.callbacks.append(note)
    try:
        population = old_population()
        runs.clear()
        churn(population)
        backlog = young()
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*thresholds)
    assert backlog >= BACKLOG
    assert runs == []


@pytest.mark.anyio
@pytest.mark.usefixtures("gc_state")
async def test_the_clock_collects_the_young_backlog() -> None:
    population = old_population()
    churn(population)
    assert young() >= BACKLOG
    ticks: list[bool] = []
    first = asyncio.Event()

    def ticked(number: int, collected: bool) -> None:
        ticks.append(collected)
        first.set()

    clock = asyncio.create_task(collect_on_a_clock(0.001, ticked=ticked))
    try:
        async with asyncio.timeout(HANG):
            await first.wait()
        after_one_tick = young(), len(gc.get_objects(generation=1))
    finally:
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)
    assert ticks[0] is True
    # what survived is old: neither young generation holds the backlog (only what the loop itself
    # allocated since the tick)
    assert after_one_tick[0] < 1_000
    assert after_one_tick[1] < 1_000


@pytest.mark.anyio
@pytest.mark.usefixtures("gc_state")
async def test_the_clock_keeps_off_a_gc_the_process_turned_off() -> None:
    """``tests/test_stall_report.py`` turns the GC off to prove a call leaves no cycle: a clock
    that collected anyway would hide one."""
    population = old_population()
    gc.disable()
    try:
        churn(population)
        ticks: list[bool] = []
        twenty = asyncio.Event()

        def ticked(number: int, collected: bool) -> None:
            ticks.append(collected)
            if number == 20:
                twenty.set()

        clock = asyncio.create_task(collect_on_a_clock(0.001, ticked=ticked))
        async with asyncio.timeout(HANG):
            await twenty.wait()
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)
        assert ticks == [False] * 20
        assert young() >= BACKLOG
    finally:
        gc.enable()


@pytest.mark.usefixtures("gc_state")
def test_the_app_runs_the_clock_at_its_setting() -> None:
    seen = threading.Event()

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 1:
            seen.set()

    gc.callbacks.append(note)
    try:
        settings = Settings(
            twilio_auth_token="t",
            bridge_public_url="https://bridge.example",
            hamsa_api_key="k",
            hamsa_ws_url="ws://127.0.0.1:9/x",  # never dialled: no call is placed
            bridge_gc_tick_ms=2,
        )
        with TestClient(create_app(settings)):
            assert seen.wait(HANG)
    finally:
        gc.callbacks.remove(note)
