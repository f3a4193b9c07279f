"""``Presynthesizer`` against the Hamsa emulator over a real socket: what it stores, what it
refuses to store, its bound on sockets, skipping, releasing, and no double synthesis."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.calls.presynth import JobState, Presynthesizer, PresynthJob
from bridge.calls.prompt_cache import PromptCache
from bridge.dev.hamsa_emulator import (
    DEFAULT_API_KEY,
    EmulatorConfig,
    EmulatorState,
    Fault,
    create_emulator_app,
)
from bridge.dev.servers import serving
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.voice import Voice
from tests.timing import HANG

pytestmark = pytest.mark.anyio

VOICE = Voice("Majd", "ksa", "ar")
TEXT = "موعدك غدا الساعة العاشرة صباحا."
PROMPT = "للتأكيد اضغط 1، ولإعادة الاستماع اضغط 2."
DONE = (JobState.READY, JobState.FAILED, JobState.SKIPPED)


def holder(i: int) -> str:
    return f"an_{i:024x}"


@dataclasses.dataclass
class Rig:
    presynth: Presynthesizer
    cache: PromptCache
    hamsa: EmulatorState
    metrics: Metrics

    def count(self, event: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "hamsa_bridge_announcement_presynth_total", {"event": event}
        )
        return value or 0.0

    async def settle(self, *holders: str) -> None:
        async with asyncio.timeout(HANG):
            await self.presynth.wait_until(lambda p: all(p.states.get(h) in DONE for h in holders))


@asynccontextmanager
async def rig(
    tmp_path: Path, emulator: EmulatorConfig | None = None, **settings: Any
) -> AsyncIterator[Rig]:
    config = emulator or EmulatorConfig(ms_per_char=25)
    app = create_emulator_app(config)
    async with serving(app) as url:
        values: dict[str, Any] = {
            "hamsa_api_key": DEFAULT_API_KEY,
            "hamsa_ws_url": url.replace("http://", "ws://") + "/v1/realtime/ws",
            "hamsa_truncation_ms_per_char": 3.0,
            "bridge_prompt_cache_min_ms_per_char": 10.0,
            "hamsa_retry_delays": (0.05,),
        }
        metrics = Metrics()
        cache = PromptCache(directory=tmp_path / "cache")
        presynth = Presynthesizer(Settings(**(values | settings)), cache, metrics=metrics)
        try:
            yield Rig(presynth, cache, app.state.emulator, metrics)
        finally:
            await presynth.aclose()


def job(i: int, text: str = TEXT, **fields: Any) -> PresynthJob:
    return PresynthJob(holder=holder(i), text=text, voice=VOICE, until=2e9, **fields)


async def test_the_message_is_held_and_the_prompt_cached_for_good(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.presynth.start(job(1, prompts=((PROMPT, VOICE),)))
        await r.settle(holder(1))
        requests = [(q.text, q.audio) for q in r.hamsa.requests]
        state = r.presynth.states[holder(1)]
        message = r.cache.get(TEXT, VOICE)
        prompt = r.cache.get(PROMPT, VOICE)
        held = list((tmp_path / "cache" / "held").glob("*.ulaw"))
        static = list((tmp_path / "cache").glob("*.ulaw"))
        connections = len(r.hamsa.connections)
        closed = all(c.closed_at is not None for c in r.hamsa.connections)
        await r.presynth.release(holder(1))
        after = list((tmp_path / "cache" / "held").glob("*.ulaw"))
        counts = (r.count("started"), r.count("completed"), r.count("failed"))
    assert state is JobState.READY
    assert [t for t, _ in requests] == [TEXT, PROMPT]
    assert message == requests[0][1]  # byte for byte what Hamsa sent
    assert prompt == requests[1][1]
    assert (len(held), len(static)) == (1, 1)
    assert connections == 1  # one socket for the job…
    assert closed  # …closed when done
    assert after == []  # released: the message left the disk
    assert counts == (1, 1, 0)


@pytest.mark.parametrize("fault", [Fault.TRUNCATE_640, Fault.CLOSE_4003, Fault.CLOSE_MID_REPLY])
async def test_a_reply_that_is_not_clean_at_once_is_not_stored_nor_retried(
    tmp_path: Path, fault: Fault
) -> None:
    async with rig(tmp_path, EmulatorConfig(ms_per_char=25, faults={1: fault})) as r:
        r.presynth.start(job(1))
        await r.settle(holder(1))
        state = r.presynth.states[holder(1)]
        requests = len(r.hamsa.requests)
        stored = r.cache.has(TEXT, VOICE)
        failed = r.count("failed")
    assert state is JobState.FAILED
    assert requests == 1  # a retried reply could never be stored: none is made
    assert not stored
    assert failed == 1


async def test_sockets_in_use_never_exceed_the_setting(tmp_path: Path) -> None:
    emulator = EmulatorConfig(ms_per_char=25, first_byte_delay=0.05)
    async with rig(tmp_path, emulator, bridge_presynth_connections=2) as r:
        for i in range(6):
            r.presynth.start(job(i, text=f"{TEXT} رقم {i}."))
        await r.settle(*(holder(i) for i in range(6)))
        spans = [(c.opened_at, c.closed_at) for c in r.hamsa.connections]
        states = {r.presynth.states[holder(i)] for i in range(6)}
    assert states == {JobState.READY}
    assert len(spans) == 6
    events = sorted([(o, 1) for o, _ in spans] + [(c or 0.0, -1) for _, c in spans])
    live = most = 0
    for _, delta in events:  # at equal instants, closes (-1) sort first
        live += delta
        most = max(most, live)
    assert most <= 2


async def test_a_job_without_a_free_slot_in_time_is_skipped(tmp_path: Path) -> None:
    # The first job holds the only slot for at least 1.5 s (its first byte comes that late);
    # the second may wait 0.05 s.
    emulator = EmulatorConfig(
        ms_per_char=25, faults={1: Fault.SLOW_FIRST_BYTE}, slow_first_byte_delay=1.5
    )
    async with rig(tmp_path, emulator, bridge_presynth_connections=1) as r:
        r.presynth.start(job(1))
        r.presynth.start(job(2, text="نص آخر لمتصل آخر غدا.", slot_wait=0.05))
        await r.settle(holder(2))
        second = r.presynth.states[holder(2)]
        texts = [q.text for q in r.hamsa.requests]
        skipped = r.count("skipped")
    assert second is JobState.SKIPPED
    assert texts == [TEXT]
    assert skipped == 1


async def test_release_cancels_a_running_job_and_nothing_is_stored(tmp_path: Path) -> None:
    emulator = EmulatorConfig(
        ms_per_char=25, faults={1: Fault.SLOW_FIRST_BYTE}, slow_first_byte_delay=5.0
    )
    async with rig(tmp_path, emulator) as r:
        r.presynth.start(job(1))
        async with asyncio.timeout(HANG):
            await r.hamsa.wait_until(lambda h: len(h.requests) == 1)
        await r.presynth.release(holder(1))
        state = r.presynth.states.get(holder(1))
        async with asyncio.timeout(HANG):
            await r.hamsa.wait_until(lambda h: h.connections[0].closed_at is not None)
        stored = r.cache.has(TEXT, VOICE)
        files = list((tmp_path / "cache" / "held").iterdir())
    assert state is None
    assert not stored
    assert files == []


async def test_one_text_for_two_announcements_is_synthesised_once(tmp_path: Path) -> None:
    emulator = EmulatorConfig(ms_per_char=25, first_byte_delay=0.1)
    async with rig(tmp_path, emulator) as r:
        r.presynth.start(job(1))
        r.presynth.start(job(2))
        await r.settle(holder(1), holder(2))
        states = (r.presynth.states[holder(1)], r.presynth.states[holder(2)])
        requests = len(r.hamsa.requests)
        await r.presynth.release(holder(1))
        kept = r.cache.has(TEXT, VOICE)  # still held by the second
        await r.presynth.release(holder(2))
        gone = not r.cache.has(TEXT, VOICE)
    assert states == (JobState.READY, JobState.READY)
    assert requests == 1
    assert kept
    assert gone


async def test_cached_texts_open_no_socket(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.cache.put(PROMPT, VOICE, b"\x7f" * 4000)
        r.presynth.start(job(1, text=PROMPT))  # e.g. a message equal to a cached prompt
        await r.settle(holder(1))
        state = r.presynth.states[holder(1)]
        connections = len(r.hamsa.connections)
    assert state is JobState.READY
    assert connections == 0


async def test_disabled_with_zero_connections(tmp_path: Path) -> None:
    async with rig(tmp_path, bridge_presynth_connections=0) as r:
        r.presynth.start(job(1))
        states = dict(r.presynth.states)
        files = list((tmp_path / "cache" / "held").iterdir())
    assert states == {}
    assert files == []
