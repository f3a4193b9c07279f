"""``hamsa-bridge serve --workers N``: the promises of one process hold across the workers.

``serve`` runs as users run it (``bench._common``'s launcher, ``BRIDGE_WORKERS=2``), the Hamsa
emulator in this process, calls placed by the simulated Twilio caller over real sockets. The
kernel decides which worker accepts a connection, so the tests place calls until each worker
has served one (every line a worker logs names its ``pid``).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from bench._common import ServedBridge, free_port, inbound_plan, serve_env, served_bridge
from bridge.calls.registry import SharedUsedTokens
from bridge.dev.caller import CallResult, place_call
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorState, create_emulator_app
from bridge.dev.media_leg import CallerBehaviour, run_media_stream
from bridge.dev.servers import serving
from bridge.exit_codes import ExitCode
from bridge.workers import worker_count
from tests.cli_support import run_cli, run_cli_streams
from tests.log_audit import record_output
from tests.timing import HANG

TOKEN = "workers-test-auth-token-0123456789"
KEY = "workers-test-hamsa-key-0123456789"
# one sentence (one Hamsa request); at 40 ms per character about 2 s of audio
GREETING = "مرحبا بك في خدمة همسة للاختبار الطويل نسبيا اليوم"
# about 5 s: long enough for a call on each worker to be in progress at once
LONG_GREETING = " ".join([GREETING] * 2 + ["وشكرا لك على انتظارك معنا في هذا الاختبار"])
MAX_CALLS = 20
"""Per worker: more than the calls placed, so no call is refused for capacity."""
MAX_ATTEMPTS = 16
"""Calls placed at most until both workers have served one (1 in 2**15 to fail by chance)."""


@asynccontextmanager
async def workers(
    count: int = 2, **settings: str
) -> AsyncIterator[tuple[ServedBridge, EmulatorState]]:
    """The Hamsa emulator here, ``hamsa-bridge serve`` with ``count`` workers in a subprocess,
    every worker ready."""
    emulator = create_emulator_app(EmulatorConfig(ms_per_char=40, api_keys=frozenset({KEY})))
    async with serving(emulator) as hamsa_url:
        port = free_port()
        env = serve_env(
            hamsa_url,
            hamsa_key=KEY,
            auth_token=TOKEN,
            public_url=f"http://127.0.0.1:{port}",
            BRIDGE_WORKERS=str(count),
            BRIDGE_MAX_CALLS=str(MAX_CALLS),
            **({"BRIDGE_GREETING": GREETING} | settings),
        )
        bridge: ServedBridge | None = None
        try:
            async with served_bridge(port, env, graceful=True) as bridge:
                await bridge.wait_for(lambda es: len(ready_pids(es)) == count)
                yield bridge, emulator.state.emulator
        finally:
            if bridge is not None:
                record_output("".join(bridge.lines))


def ready_pids(events: list[dict[str, Any]]) -> set[int]:
    return {e["pid"] for e in events if e["event"] == "bridge_ready"}


def admissions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What became of each stream's ``start``: ``call_started`` or ``stream_rejected``."""
    return [e for e in events if e["event"] in ("call_started", "stream_rejected")]


def worker_of(bridge: ServedBridge, call_sid: str) -> int | None:
    """The pid of the worker that started the call, once it has."""
    for event in bridge.events():
        if event["event"] == "call_started" and event.get("call_sid") == call_sid:
            pid: int = event["pid"]
            return pid
    return None


async def place(bridge: ServedBridge) -> CallResult:
    return await place_call(inbound_plan(bridge.url, TOKEN))


async def call_on_each_worker(
    bridge: ServedBridge, tasks: asyncio.TaskGroup
) -> list[tuple[asyncio.Task[CallResult], int]]:
    """Place calls one after the other (each until its ``call_started``) until every worker has
    started one; the calls (running in ``tasks``) and the pid of the worker of each."""
    pids = ready_pids(bridge.events())
    placed: list[tuple[asyncio.Task[CallResult], int]] = []
    for _ in range(MAX_ATTEMPTS):
        plan = inbound_plan(bridge.url, TOKEN)
        task = tasks.create_task(place_call(plan))
        await bridge.wait_for(lambda es, sid=plan.call_sid: worker_of(bridge, sid) is not None)
        pid = worker_of(bridge, plan.call_sid)
        assert pid in pids
        placed.append((task, pid))
        if {p for _, p in placed} == pids:
            return placed
    raise AssertionError(f"{MAX_ATTEMPTS} calls, all on one worker")


def sample(text: str, name: str) -> float | None:
    """The value of the series ``name`` (with its labels, as exported) in ``text``."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


pytestmark = pytest.mark.anyio


async def test_sigterm_drains_every_worker_no_call_is_cut_new_ones_are_refused() -> None:
    async with (
        workers(BRIDGE_GREETING=LONG_GREETING) as (bridge, hamsa),
        httpx2.AsyncClient() as http,
    ):
        async with asyncio.TaskGroup() as tasks:
            calls = await call_on_each_worker(bridge, tasks)
            bridge.process.send_signal(signal.SIGTERM)
            await bridge.wait_for(lambda es: sum(e["event"] == "drain_started" for e in es) == 2)
            ready = await http.get(bridge.url + "/readyz")
            metrics = (await http.get(bridge.url + "/metrics")).text
            late = [await place(bridge) for _ in range(4)]  # whichever worker takes them
        async with asyncio.timeout(HANG):
            code = await bridge.process.wait()
        events = bridge.events()

    summaries = [e for e in events if e["event"] == "call_summary"]
    pids = ready_pids(events)
    assert len(pids) == 2
    assert ready.status_code == 503
    body = ready.json()
    assert (body["status"], body["scope"], body["workers"]) == ("draining", "worker", 2)
    assert body["worker"] in (1, 2)
    assert body["max_calls"] == MAX_CALLS  # the worker's own cap
    assert sample(metrics, "hamsa_bridge_draining") == 1.0
    for result in late:
        assert result.webhook_status == 200  # stateless: any worker answers it
        assert result.handshake_status == 503
    # every call, on both workers, played to its end and was closed normally by the bridge
    assert {pid for _, pid in calls} == pids
    audio = {len(request.audio) for request in hamsa.requests}
    assert len(hamsa.requests) == len(calls)
    assert len(audio) == 1
    [length] = audio
    assert length > 3 * 8000  # over three seconds each
    for task, _ in calls:
        result = task.result()
        assert result.ended_by == "bridge"
        assert result.close_code == 1000
        assert result.leg is not None
        # every byte played (``heard`` would add the silence of a late frame on a busy machine)
        assert len(result.leg.played) == length + (-length % 160)
    assert [s["outcome"] for s in summaries] == ["completed"] * len(calls)
    assert {s["pid"] for s in summaries} == pids
    drained = [e for e in events if e["event"] == "drain_complete"]
    assert {e["pid"] for e in drained} == pids
    assert [e["calls_ended"] for e in drained] == [0, 0]
    exited = [e for e in events if e["event"] == "worker_exited"]
    assert {(e["worker_pid"], e["exit_status"]) for e in exited} == {(p, "SIGTERM") for p in pids}
    assert not [e for e in events if e["event"] in ("worker_died", "worker_failed")]
    assert code == -signal.SIGTERM  # the supervisor ends by the signal, as one serve does
    assert TOKEN not in "".join(bridge.lines)


async def test_a_stream_token_replayed_to_another_worker_is_refused() -> None:
    async with workers() as (bridge, hamsa):
        first = await place(bridge)
        await bridge.wait_for(lambda es: bridge.count("call_summary") == 1)
        genuine = worker_of(bridge, first.plan.call_sid)
        assert first.close_code == 1000
        assert first.stream_url is not None
        replays: list[tuple[int | None, int]] = []
        for _ in range(MAX_ATTEMPTS):
            before = len(admissions(bridge.events()))
            replay = await run_media_stream(
                first.stream_url,
                first.parameters,  # the same token, for the same call
                auth_token=TOKEN,
                call_sid=first.plan.call_sid,
                account_sid=first.plan.account_sid,
                stream_sid="MZ" + secrets.token_hex(16),
                behaviour=CallerBehaviour(max_duration=10),
            )
            await bridge.wait_for(lambda es, n=before: len(admissions(es)) > n)
            [rejected] = admissions(bridge.events())[before:]
            assert (rejected["event"], rejected.get("reason")) == (
                "stream_rejected",
                "stream token already used (replay)",
            ), f"the replay was not refused by worker {rejected['pid']} (first: {genuine})"
            replays.append((replay.close_code, rejected["pid"]))
            if rejected["pid"] != genuine:
                break
        requests = len(hamsa.requests)

    assert genuine in ready_pids(bridge.events())
    assert [code for code, _ in replays] == [1008] * len(replays)
    assert replays[-1][1] != genuine, "no replay reached the other worker"
    assert requests == 1  # only the genuine stream reached Hamsa


async def test_metrics_report_the_machine_and_keep_a_dead_workers_counts() -> None:
    metrics_port = free_port()
    async with (
        workers(BRIDGE_METRICS_PORT=str(metrics_port)) as (bridge, _hamsa),
        httpx2.AsyncClient() as http,
    ):
        scrape_url = f"http://127.0.0.1:{metrics_port}/metrics"
        async with asyncio.TaskGroup() as tasks:
            calls = await call_on_each_worker(bridge, tasks)
        await bridge.wait_for(
            lambda es: sum(e["event"] == "call_summary" for e in es) == len(calls)
        )
        # a new connection each: the kernel picks the worker that answers; each answer is the sum
        scrapes = []
        for _ in range(6):
            async with httpx2.AsyncClient() as scraper:
                scrapes.append((await scraper.get(scrape_url)).text)
        public = await http.get(bridge.url + "/metrics")
        ready = (await http.get(bridge.url + "/readyz")).json()

        # a worker dies: it is replaced, and what it counted is still counted
        victim = calls[0][1]
        os.kill(victim, signal.SIGKILL)
        await bridge.wait_for(lambda es: len(ready_pids(es)) == 3)
        after_restart = (await http.get(scrape_url)).text
        await place(bridge)
        await bridge.wait_for(lambda es: bridge.count("call_summary") == len(calls) + 1)
        after_another_call = (await http.get(scrape_url)).text
        last = [e["pid"] for e in bridge.events() if e["event"] == "call_summary"][-1]

    completed = 'hamsa_bridge_calls_total{outcome="completed"}'
    assert len({pid for _, pid in calls}) == 2
    assert last != victim  # the call after the kill: a live worker took it
    for text in scrapes:
        assert sample(text, completed) == len(calls)  # both workers' calls, summed
        assert sample(text, "hamsa_bridge_max_calls") == 2 * MAX_CALLS  # per worker, summed
        assert sample(text, "hamsa_bridge_draining") == 0.0
        assert sample(text, "hamsa_bridge_call_duration_seconds_count") == len(calls)
        assert "process_resident_memory_bytes" not in text  # it would describe one worker
    assert public.status_code == 404  # BRIDGE_METRICS_PORT: only on its own port
    assert (ready["scope"], ready["workers"], ready["max_calls"]) == ("worker", 2, MAX_CALLS)
    [died] = [e for e in bridge.events() if e["event"] == "worker_died"]
    assert (died["worker_pid"], died["exit_status"]) == (victim, "SIGKILL")
    assert died["restart_in"] <= 1  # 1 s: it had lived less than RESTART_QUICK
    assert sample(after_restart, completed) == len(calls)
    assert sample(after_restart, "hamsa_bridge_max_calls") == 2 * MAX_CALLS  # the dead one left
    assert sample(after_another_call, completed) == len(calls) + 1


async def test_a_worker_that_fails_to_start_stops_the_others_and_serve_exits_1() -> None:
    config = EmulatorConfig(api_keys=frozenset({KEY}), custom_voices=frozenset())
    emulator = create_emulator_app(config)
    async with serving(emulator) as hamsa_url:
        port = free_port()
        env = serve_env(
            hamsa_url,
            hamsa_key=KEY,
            auth_token=TOKEN,
            public_url=f"http://127.0.0.1:{port}",
            BRIDGE_WORKERS="2",
            HAMSA_PRELOAD_VOICES="c803658e-ccec-47e7-ad0f-1caf9ba4babb",  # unknown to Hamsa
        )
        async with served_bridge(port, env) as bridge:
            async with asyncio.timeout(HANG):
                code = await bridge.process.wait()
        record_output("".join(bridge.lines))
    assert code == ExitCode.FAILURE
    assert bridge.count("startup_failed") >= 1
    assert bridge.count("worker_failed") >= 1
    assert bridge.count("worker_died") == 0  # never restarted: it would fail again


async def test_a_settings_error_is_reported_once_before_anything_listens(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[flow]\nstart = "x"\n', encoding="utf-8")
    env = {
        "BRIDGE_IVR_FLOW": str(broken),
        "TWILIO_AUTH_TOKEN": TOKEN,
        "HAMSA_API_KEY": KEY,
        "BRIDGE_PUBLIC_URL": "https://bridge.example.com",
    }
    code, output = await run_cli("serve", "--workers", "2", "--port", "0", env=env)
    assert code == ExitCode.USAGE
    assert output.count("is invalid") == 1
    assert "workers_starting" not in output


async def test_ctrl_c_stops_every_worker_gracefully_and_exits_130() -> None:
    async with workers() as (bridge, _hamsa):
        bridge.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(HANG):
            code = await bridge.process.wait()
    assert code == ExitCode.INTERRUPTED
    assert bridge.count("drain_complete") == 2
    assert "Traceback" not in "".join(bridge.lines)


async def test_workers_is_a_number_from_0_to_256() -> None:
    code, _, err = await run_cli_streams("serve", "--workers", "-1")
    assert code == ExitCode.USAGE
    assert "give 0 (one per CPU) to 256" in err


def test_0_workers_is_one_per_usable_cpu() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3


def test_used_tokens_are_shared_by_every_process_on_the_file(tmp_path: Path) -> None:
    path = tmp_path / "used-tokens.sqlite3"
    SharedUsedTokens.create(path)
    one, other = SharedUsedTokens(path), SharedUsedTokens(path)  # as two workers open it
    token = "v1.1000.abcdefghijkl." + "m" * 43
    try:
        assert one.claim(token, expires_at=1000, now=900)
        assert not other.claim(token, expires_at=1000, now=901)  # replayed to another worker
        assert not one.claim(token, expires_at=1000, now=902)
        assert other.claim("v1.1000.other", expires_at=1000, now=903)
        # expired rows go as claims come (the token itself is refused before, by its expiry)
        assert other.claim("v1.2000.later", expires_at=2000, now=1001)
    finally:
        one.close()
        other.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT digest, expires_at FROM used_tokens").fetchall()
    assert [expires for _, expires in rows] == [2000]
    assert all(len(digest) == 32 for digest, _ in rows)
    stored = b"".join(file.read_bytes() for file in tmp_path.iterdir())
    assert token.encode() not in stored  # a digest, never the token
