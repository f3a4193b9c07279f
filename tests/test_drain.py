"""Graceful drain of ``hamsa-bridge serve`` (a real process, real signals), and its logs.

The Hamsa emulator runs in this process; the bridge runs as users run it; calls are placed by
the simulated Twilio caller over real sockets.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import pytest

from bench._common import ServedBridge, free_port, inbound_plan, serve_env, served_bridge
from bridge.dev.caller import CallResult, place_call
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorState, create_emulator_app
from bridge.dev.servers import serving
from tests.log_audit import record_output
from tests.timing import HANG

pytestmark = pytest.mark.anyio

TOKEN = "drain-test-auth-token-0123456789"
KEY = "drain-test-hamsa-key-0123456789"
# one sentence (one Hamsa request); at 40 ms per character about 2 s of audio
GREETING = "مرحبا بك في خدمة همسة للاختبار الطويل نسبيا اليوم"

CALL_LOGGERS = {"bridge.call", "bridge.hamsa", "bridge.speech", "bridge.ivr", "bridge.announcement"}
"""Loggers that only log on behalf of a call."""
CALL_EVENTS_ELSEWHERE = {"webhook_answered", "call_status"}


@asynccontextmanager
async def running_bridge(**settings: str) -> AsyncIterator[tuple[ServedBridge, EmulatorState]]:
    """The Hamsa emulator here, ``hamsa-bridge serve`` in a subprocess (JSON logs on stderr)."""
    emulator = create_emulator_app(EmulatorConfig(ms_per_char=40, api_keys=frozenset({KEY})))
    async with serving(emulator) as hamsa_url:
        port = free_port()
        env = serve_env(
            hamsa_url,
            hamsa_key=KEY,
            auth_token=TOKEN,
            public_url=f"http://127.0.0.1:{port}",
            BRIDGE_GREETING=GREETING,
            **settings,
        )
        bridge: ServedBridge | None = None
        try:
            async with served_bridge(port, env) as bridge:
                # ``serve`` listens before the app starts: once it says ``bridge_ready`` a
                # call connects (tests/test_serve_listening.py)
                await bridge.wait_for(lambda es: any(e["event"] == "bridge_ready" for e in es))
                yield bridge, emulator.state.emulator
        finally:
            if bridge is not None:
                record_output("".join(bridge.lines))


def assert_call_lines_carry_call_sid(bridge: ServedBridge) -> None:
    """Every line is JSON (``events()`` parses them all); every line a call logs names it."""
    events = bridge.events()
    call_lines = [
        e
        for e in events
        if (e["logger"] in CALL_LOGGERS or e["event"] in CALL_EVENTS_ELSEWHERE)
        and e["event"] != "stream_rejected"  # a stream refused before its start is no call
    ]
    assert len(call_lines) >= 4
    for event in call_lines:
        assert event.get("call_sid", "").startswith("CA"), event
        if event["logger"] in CALL_LOGGERS:
            assert event.get("stream_sid", "").startswith("MZ"), event


async def place(bridge: ServedBridge, opened: asyncio.Event | None = None) -> CallResult:
    return await place_call(inbound_plan(bridge.url, TOKEN, on_open=opened.set if opened else None))


async def test_sigterm_lets_two_calls_finish_refuses_new_ones_then_exits() -> None:
    async with running_bridge() as (bridge, hamsa), httpx2.AsyncClient() as http:
        async with asyncio.TaskGroup() as tasks:
            calls = [tasks.create_task(place(bridge)) for _ in range(2)]
            await bridge.wait_for(lambda es: sum(e["event"] == "call_started" for e in es) == 2)
            bridge.process.send_signal(signal.SIGTERM)
            await bridge.wait_for(lambda es: any(e["event"] == "drain_started" for e in es))
            ready = await http.get(bridge.url + "/readyz")
            metrics = (await http.get(bridge.url + "/metrics")).text
            late = await place(bridge)
        async with asyncio.timeout(HANG):
            code = await bridge.process.wait()
        summaries = [e for e in bridge.events() if e["event"] == "call_summary"]

    assert ready.status_code == 503
    assert ready.json()["status"] == "draining"
    assert "hamsa_bridge_draining 1.0" in metrics
    assert "hamsa_bridge_active_calls 2.0" in metrics
    # the late call: its webhook is answered (stateless), its stream refused before accept
    assert late.webhook_status == 200
    assert late.handshake_status == 503
    # both calls played to their end and were closed normally by the bridge
    [request_a, request_b] = hamsa.requests
    assert len(request_a.audio) == len(request_b.audio) > 8000  # over a second each
    for call in calls:
        result = call.result()
        assert result.ended_by == "bridge"
        assert result.close_code == 1000
        assert result.leg is not None
        assert [m.echoed_at is not None for m in result.leg.timeline.marks] == [True]
        expected = len(request_a.audio) + (-len(request_a.audio) % 160)
        # every byte played (``heard`` would add the silence of a late frame on a busy machine)
        assert len(result.leg.played) == expected
    assert [s["outcome"] for s in summaries] == ["completed", "completed"]
    assert bridge.count("drain_complete") == 1
    assert bridge.count("drain_timeout_ending_calls") == 0
    assert code == -signal.SIGTERM  # it ends by the signal it drained on: status 143
    assert_call_lines_carry_call_sid(bridge)
    joined = "".join(bridge.lines)
    assert TOKEN not in joined
    assert KEY not in joined


async def test_calls_still_running_at_the_drain_timeout_are_ended_and_counted() -> None:
    async with running_bridge(BRIDGE_DRAIN_TIMEOUT="0.5") as (bridge, hamsa):
        async with asyncio.TaskGroup() as tasks:
            calls = [tasks.create_task(place(bridge)) for _ in range(2)]
            await bridge.wait_for(lambda es: sum(e["event"] == "call_started" for e in es) == 2)
            bridge.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(HANG):
            code = await bridge.process.wait()

    assert code == -signal.SIGTERM
    [ending] = [e for e in bridge.events() if e["event"] == "drain_timeout_ending_calls"]
    assert ending["calls"] == 2
    [complete] = [e for e in bridge.events() if e["event"] == "drain_complete"]
    assert complete["calls_ended"] == 2
    assert complete["open_streams"] == 0
    summaries = [e for e in bridge.events() if e["event"] == "call_summary"]
    assert [s["outcome"] for s in summaries] == ["ended_by_drain", "ended_by_drain"]
    for call in calls:
        result = call.result()
        assert result.ended_by == "bridge"
        assert result.close_code == 1001  # going away: Twilio moves on past </Connect>
        assert result.leg is not None
        # cut before its end (bytes played: ``heard`` would count a busy machine's gaps too)
        assert 0 < len(result.leg.played) < len(hamsa.requests[0].audio)
    assert_call_lines_carry_call_sid(bridge)


async def test_a_second_signal_exits_at_once() -> None:
    async with running_bridge() as (bridge, _hamsa), asyncio.TaskGroup() as tasks:
        call = tasks.create_task(place(bridge))
        await bridge.wait_for(lambda es: any(e["event"] == "call_started" for e in es))
        bridge.process.send_signal(signal.SIGTERM)
        await bridge.wait_for(lambda es: any(e["event"] == "drain_started" for e in es))
        bridge.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(HANG):
            code = await bridge.process.wait()
    assert code == -signal.SIGTERM
    result = call.result()
    assert result.ended_by == "bridge"
    assert result.close_code == 1012  # cut at once by uvicorn's own shutdown
    assert result.leg is not None
    assert not [m for m in result.leg.timeline.marks if m.echoed_at]  # never heard to its end


async def test_metrics_on_their_own_port_only() -> None:
    metrics_port = free_port()
    async with (
        running_bridge(BRIDGE_METRICS_PORT=str(metrics_port)) as (bridge, _hamsa),
        httpx2.AsyncClient() as http,
    ):
        public = await http.get(bridge.url + "/metrics")
        internal = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert public.status_code == 404
    assert internal.status_code == 200
    assert "hamsa_bridge_active_calls 0.0" in internal.text
    assert "process_resident_memory_bytes" in internal.text
