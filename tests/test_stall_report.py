"""The event-loop stall report (``bridge.stall_report``): how a stall is classified from its
samples, collections and the watchdog's polls; the summary; and a live watchdog that names the
frame of a callback that blocked the loop for 100 ms."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from bridge.settings import Settings
from bridge.stall_report import (
    BUSY,
    GIL_HELD,
    LOOP_C_CODE,
    NOT_SCHEDULED,
    GcRun,
    Poll,
    Sample,
    Stall,
    StallWatchdog,
    Verdict,
    cause_group,
    classify,
    sample_site,
    short_path,
    summarise,
)
from tests.timing import HANG

POLL = 0.005
PLAYBACK = ("bridge/calls/playback.py", 120, "_run")
APP = ("bridge/app.py", 88, "inbound_webhook")
JSON = ("json/encoder.py", 200, "encode")
STRUCTLOG = ("structlog/_base.py", 50, "_process_event")
SQLITE_CALLER = ("bridge/store/sqlite.py", 77, "execute")
UVICORN = ("uvicorn/protocols/websockets/websockets_sansio_impl.py", 300, "send")


def polls(start: float, end: float, every: float, cpu_share: float) -> tuple[Poll, ...]:
    """The watchdog's wakes every ``every`` s over ``start..end``, the loop thread using
    ``cpu_share`` of a CPU."""
    count = round((end - start) / every)
    return tuple(Poll(start + i * every, i * every * cpu_share) for i in range(count + 1))


def stall(late: float = 0.05, **parts: object) -> Stall:
    """A heartbeat due at 1.01 that ran ``late`` seconds late (the previous one at 1.0)."""
    return Stall(since=1.0, due=1.01, end=1.01 + late, **parts)  # type: ignore[arg-type]


def samples(*stacks: tuple[tuple[str, int, str], ...], start: float = 1.012) -> tuple[Sample, ...]:
    return tuple(Sample(start + 0.005 * i, stack) for i, stack in enumerate(stacks))


def test_short_paths_name_the_package() -> None:
    assert short_path("/work/x/bridge/calls/playback.py") == "bridge/calls/playback.py"
    assert short_path("/v/lib/python3.11/site-packages/uvicorn/main.py") == "uvicorn/main.py"
    assert short_path("/usr/local/lib/python3.11/json/encoder.py") == "json/encoder.py"


def test_a_sample_is_named_by_category_then_by_our_innermost_frame() -> None:
    assert sample_site(()) == ""
    assert sample_site((PLAYBACK,)) == "our code at bridge/calls/playback.py:120 (_run)"
    assert sample_site((JSON, APP)) == "JSON at bridge/app.py:88"
    # structlog renders JSON: the logger is the cause, not the encoder
    assert sample_site((JSON, STRUCTLOG, APP)) == "logging at bridge/app.py:88"
    assert sample_site((SQLITE_CALLER,)) == "store/file I/O at bridge/store/sqlite.py:77"
    assert sample_site((UVICORN,)).startswith("library at uvicorn/")
    assert cause_group("JSON at bridge/app.py:88") == "JSON"
    assert cause_group("our code at bridge/x.py:1 (f)") == "our code"
    assert cause_group("GC gen 2") == "GC gen 2"


def test_collections_covering_half_the_stall_are_the_cause() -> None:
    runs = (GcRun(1.005, 1.008, 0, 10), GcRun(1.02, 1.055, 2, 300))
    verdict = classify(stall(0.05, gc_runs=runs, polls=polls(0.99, 1.07, 0.005, 1.0)), POLL)
    assert verdict.cause == "GC gen 2"
    assert verdict.detail["gc_ms"] == pytest.approx(38.0)


def test_a_short_collection_in_a_long_stall_is_not_the_cause() -> None:
    runs = (GcRun(1.02, 1.022, 0, 10),)
    stacks = samples(*[(PLAYBACK,)] * 8)
    verdict = classify(
        stall(0.05, gc_runs=runs, samples=stacks, polls=polls(0.99, 1.07, 0.005, 1)), POLL
    )
    assert verdict.cause == "our code at bridge/calls/playback.py:120 (_run)"
    assert verdict.frames == (PLAYBACK,)


def test_no_watchdog_wake_and_no_loop_cpu_means_not_scheduled() -> None:
    wakes = (Poll(0.995, 0.0), Poll(1.0, 0.001), Poll(1.058, 0.004), Poll(1.063, 0.008))
    assert classify(stall(0.05, polls=wakes), POLL).cause == NOT_SCHEDULED


def test_no_watchdog_wake_while_the_loop_thread_ran_means_the_gil_was_held() -> None:
    wakes = (Poll(0.995, 0.0), Poll(1.0, 0.005), Poll(1.058, 0.061), Poll(1.063, 0.066))
    assert classify(stall(0.05, polls=wakes), POLL).cause == GIL_HELD


def test_a_loop_preempted_in_our_code_was_not_scheduled_whatever_the_samples_show() -> None:
    # two samples in the playback writer, but the watchdog overslept 40 of the 50 ms and the
    # loop thread used a tenth of a CPU: the kernel ran someone else
    wakes = (Poll(1.0, 0.0), Poll(1.005, 0.001), Poll(1.048, 0.004), Poll(1.062, 0.006))
    stacks = (Sample(1.005, (PLAYBACK,)), Sample(1.048, (PLAYBACK,)))
    verdict = classify(stall(0.05, samples=stacks, polls=wakes), POLL)
    assert verdict.cause == NOT_SCHEDULED
    assert verdict.frames == (PLAYBACK,)


def test_a_sample_in_the_gc_hook_names_where_the_collection_started() -> None:
    hook = ("bridge/stall_report.py", 378, "_on_gc")
    assert sample_site((hook, PLAYBACK)) == "GC at bridge/calls/playback.py:120"


def test_samples_between_callbacks_only_name_the_loop_or_the_scheduler() -> None:
    idle = samples(*[()] * 8)
    on_cpu = classify(stall(0.05, samples=idle, polls=polls(0.99, 1.07, 0.005, 0.9)), POLL)
    assert on_cpu.cause == LOOP_C_CODE
    off_cpu = classify(stall(0.05, samples=idle, polls=polls(0.99, 1.07, 0.005, 0.1)), POLL)
    assert off_cpu.cause == NOT_SCHEDULED


def test_mixed_samples_are_a_busy_loop() -> None:
    stacks = samples((PLAYBACK,), (APP,), (UVICORN,), (JSON, APP), (PLAYBACK,), (APP,), (UVICORN,))
    verdict = classify(stall(0.05, samples=stacks, polls=polls(0.99, 1.07, 0.005, 1)), POLL)
    assert verdict.cause == BUSY
    assert len(verdict.detail["sites"]) == 3


def test_samples_outside_the_stall_are_ignored() -> None:
    stacks = samples(*[(PLAYBACK,)] * 4, start=0.9) + samples(*[(JSON, APP)] * 3)
    verdict = classify(stall(0.05, samples=stacks, polls=polls(0.99, 1.07, 0.005, 1)), POLL)
    assert verdict.cause == "JSON at bridge/app.py:88"


def test_the_summary_counts_each_cause_most_frequent_first() -> None:
    rows = summarise([("GC gen 2", 0.09), ("x", 0.03), ("GC gen 2", 0.05), ("y", 0.2)])
    assert [(cause, t.stalls) for cause, t in rows] == [("GC gen 2", 2), ("y", 1), ("x", 1)]
    assert rows[0][1].late_max == pytest.approx(0.09)
    assert rows[0][1].late_total == pytest.approx(0.14)


def test_the_setting_is_off_by_default() -> None:
    assert Settings().bridge_stall_report_ms == 0
    assert Settings(bridge_stall_report_ms=20).bridge_stall_report_ms == 20


def _block_the_loop() -> None:
    time.sleep(0.1)  # the deliberate stall the watchdog must name


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_callback_that_blocks_the_loop_is_reported_with_its_frame(loop: str) -> None:
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    reported: list[Verdict] = []
    seen = threading.Event()

    def on_stall(found: Stall, verdict: Verdict) -> None:
        if found.late >= 0.05:
            reported.append(verdict)
            seen.set()

    async def main() -> None:
        watchdog = StallWatchdog(0.02, on_stall=on_stall)
        watchdog.start()
        try:
            asyncio.get_running_loop().call_soon(_block_the_loop)
            await asyncio.to_thread(seen.wait, HANG)
        finally:
            watchdog.stop()
        summary = watchdog.summary()
        assert summary["stalls"] >= 1

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    assert seen.is_set()
    verdict = reported[0]
    assert verdict.cause.startswith("our code at tests/test_stall_report.py:")
    assert verdict.cause.endswith("(_block_the_loop)")
    assert verdict.frames[0][2] == "_block_the_loop"


@pytest.mark.anyio
@pytest.mark.parametrize("vanish_after", [None, 0.6], ids=["hung_up", "caller_vanished"])
async def test_an_ended_call_leaves_no_websocket_protocol_for_the_cyclic_gc(
    vanish_after: float | None,
) -> None:
    """websockets' parser generator holds its protocol in a cycle for life
    (``bridge/protocols/websockets_cycle.py``): with the cyclic GC off, the Twilio stream's
    protocol, the Hamsa socket's, and the emulators' and the caller's all go with their call,
    also when the caller's connection is aborted (the bridge's parser then ends on EOFError)."""
    from websockets.protocol import Protocol

    from bridge.dev.hamsa_emulator import EmulatorConfig
    from bridge.dev.loopback import loopback

    def protocols_alive() -> int:
        return sum(1 for o in gc.get_objects() if issubclass(type(o), Protocol))  # no proxies

    gc.collect()
    before = protocols_alive()
    gc.disable()
    try:
        async with loopback(EmulatorConfig(), bridge_greeting="مرحبا بك.") as rig:
            result = await rig.call(vanish_after=vanish_after)
            async with asyncio.timeout(HANG):
                await rig.bridge.streams.wait_empty()
        if vanish_after is None:
            assert result.close_code == 1000
        else:
            assert (result.ended_by, result.close_code) == ("vanished", 1006)
        del rig, result
        assert protocols_alive() == before
    finally:
        gc.enable()


@pytest.mark.anyio
async def test_a_call_that_ends_is_freed_without_the_cyclic_gc() -> None:
    """Full collections are rare (``bridge.server.GC_FULL_EVERY``) because an ended call leaves
    no cycle behind: with the cyclic GC off, no ``Call`` outlives its loopback bridge."""
    from bridge.calls.call import Call
    from bridge.dev.hamsa_emulator import EmulatorConfig
    from bridge.dev.loopback import loopback

    def calls_alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is Call)

    gc.collect()
    before = calls_alive()
    gc.disable()
    try:
        async with loopback(EmulatorConfig(), bridge_greeting="مرحبا بك.") as rig:
            result = await rig.call()
            async with asyncio.timeout(HANG):
                await rig.bridge.streams.wait_empty()
        assert result.close_code == 1000
        del rig, result
        assert calls_alive() == before
    finally:
        gc.enable()
