"""Operations, in process over real sockets: /metrics after real calls, /readyz, the call cap."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import create_app
from bridge.dev.caller import CallPlan, place_call
from bridge.dev.hamsa_emulator import EmulatorConfig, Fault
from bridge.dev.loopback import loopback
from bridge.dev.servers import bind, serving
from bridge.settings import Settings
from tests.timing import HANG, stall_watch

pytestmark = pytest.mark.anyio

LONG_GREETING = "مرحبا بك في خدمة همسة للاختبار. نرجو أن تستمع إلى هذه الرسالة حتى نهايتها."


def scrape(text: str) -> dict[str, float]:
    """Every sample as ``name{label="v",…}`` → value (labels sorted)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def get_metrics(base_url: str) -> dict[str, float]:
    async with httpx2.AsyncClient() as http:
        response = await http.get(base_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return scrape(response.text)


async def test_metrics_move_as_a_call_with_a_truncated_reply_goes() -> None:
    # request 1 is the seeds' 640-byte failure: never played, retried on a fresh socket
    emulator = EmulatorConfig(ms_per_char=20, faults={1: Fault.TRUNCATE_640})
    async with loopback(emulator, hamsa_retry_delays=(0.05,)) as lb:
        before = await get_metrics(lb.public_url)
        assert before["hamsa_bridge_active_calls"] == 0
        assert before["hamsa_bridge_max_calls"] == 100
        assert before.get('hamsa_bridge_calls_total{outcome="completed"}', 0) == 0
        async with stall_watch() as watch:
            result = await lb.call()
        assert result.ended_by == "bridge"
        m = await get_metrics(lb.public_url)

    frames = len(result.heard) // 160
    assert frames > 10
    assert m['hamsa_bridge_calls_total{outcome="completed"}'] == 1
    assert m["hamsa_bridge_call_duration_seconds_count"] == 1
    assert m["hamsa_bridge_active_calls"] == 0
    assert m["hamsa_bridge_open_streams"] == 0
    assert m["hamsa_bridge_hamsa_connections_total"] == 2
    assert m["hamsa_bridge_hamsa_reconnects_total"] == 1
    assert m["hamsa_bridge_hamsa_requests_total"] == 2
    assert m["hamsa_bridge_hamsa_truncated_replies_total"] == 1
    assert m["hamsa_bridge_hamsa_retries_total"] == 1
    assert m['hamsa_bridge_hamsa_errors_total{kind="truncated"}'] == 1
    assert m['hamsa_bridge_hamsa_errors_total{kind="connect"}'] == 0
    assert m["hamsa_bridge_frames_sent_total"] == frames
    assert watch.stalled or m["hamsa_bridge_underruns_total"] == 0  # (a stall is the machine's)
    assert m["hamsa_bridge_clears_total"] == 0
    # both replies had a first byte; the played one was measured through the bridge
    assert m["hamsa_bridge_hamsa_first_byte_seconds_count"] == 2
    assert m["hamsa_bridge_bridge_added_latency_seconds_count"] == 1
    # the truncation guard holds the first 100 ms of audio (HAMSA_TRUNCATION_HOLD_MS) at most
    assert 0 <= m["hamsa_bridge_bridge_added_latency_seconds_sum"] < 0.5
    assert m["hamsa_bridge_first_audio_seconds_count"] == 1
    assert m["hamsa_bridge_first_audio_seconds_sum"] < 2.0
    assert m["hamsa_bridge_mark_round_trip_seconds_count"] == 1
    assert m["hamsa_bridge_draining"] == 0
    assert m['hamsa_bridge_streams_refused_total{reason="capacity"}'] == 0
    assert "process_cpu_seconds_total" in m  # process collectors on the app's own registry


async def test_barge_in_counts_a_clear() -> None:
    async with loopback(EmulatorConfig(ms_per_char=60)) as lb:
        result = await lb.call(keys=[(0.6, "1")])
        m = await get_metrics(lb.public_url)
    assert result.ended_by == "bridge"
    assert m["hamsa_bridge_clears_total"] == 1
    assert m['hamsa_bridge_calls_total{outcome="skipped"}'] == 1


async def test_a_third_call_over_max_calls_is_refused_and_the_first_two_play_whole() -> None:
    async with loopback(
        EmulatorConfig(ms_per_char=25), bridge_max_calls=2, bridge_greeting=LONG_GREETING
    ) as lb:
        opened = [asyncio.Event(), asyncio.Event()]
        async with asyncio.TaskGroup() as tasks:
            calls = [tasks.create_task(lb.call(on_open=event.set)) for event in opened]
            async with asyncio.timeout(HANG):
                for event in opened:
                    await event.wait()
            async with httpx2.AsyncClient() as http:
                ready = await http.get(lb.public_url + "/readyz")
            third = await lb.call()
        m = await get_metrics(lb.public_url)
        # capacity is back once the calls are over
        async with httpx2.AsyncClient() as http:
            ready_after = await http.get(lb.public_url + "/readyz")
        requests = list(lb.hamsa.requests)

    assert ready.status_code == 503
    assert ready.json()["status"] == "at_capacity"
    assert third.webhook_status == 200
    assert third.handshake_status == 503
    assert third.leg is None
    assert ready_after.status_code == 200
    assert m['hamsa_bridge_streams_refused_total{reason="capacity"}'] == 1
    assert m['hamsa_bridge_calls_total{outcome="completed"}'] == 2
    # only the two admitted calls reached Hamsa (two sentences each), each heard all its audio
    assert len({r.connection_id for r in requests}) == 2
    assert len(requests) == 4
    played: list[int] = []
    for call in calls:
        result = call.result()
        assert result.ended_by == "bridge"
        assert result.close_code == 1000
        assert result.leg is not None
        assert [mark.echoed_at is not None for mark in result.leg.timeline.marks] == [True]
        # every byte played (``leg.played``; ``heard`` is the real-time axis, where a gap on a
        # busy machine counts as silence)
        played.append(len(result.leg.played))
    per_call: dict[int, int] = {}
    for r in requests:
        per_call[r.connection_id] = per_call.get(r.connection_id, 0) + len(r.audio)
    audio = sorted(per_call.values())
    assert sorted(played) == [n + (-n % 160) for n in audio]


async def test_livez_and_readyz_of_an_idle_bridge() -> None:
    async with loopback(EmulatorConfig()) as lb:
        async with httpx2.AsyncClient() as http:
            live = await http.get(lb.public_url + "/livez")
            ready = await http.get(lb.public_url + "/readyz")
        assert live.status_code == 200
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "active_calls": 0,
            "open_streams": 0,
            "max_calls": 100,
        }


async def test_drain_in_process_counts_ended_calls_and_refuses_new_streams() -> None:
    async with loopback(
        EmulatorConfig(ms_per_char=60), bridge_drain_timeout=0.3, bridge_greeting=LONG_GREETING
    ) as lb:
        playing = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            call = tasks.create_task(lb.call(on_audio=playing.set))
            async with asyncio.timeout(HANG):
                await playing.wait()
            drain = tasks.create_task(lb.bridge.drain.drain())
            late = await lb.call()
            ended = await drain
        m = await get_metrics(lb.public_url)
    assert ended == 1
    assert late.handshake_status == 503
    result = call.result()
    assert result.close_code == 1001
    assert m["hamsa_bridge_calls_ended_by_drain_total"] == 1
    assert m['hamsa_bridge_calls_total{outcome="ended_by_drain"}'] == 1
    assert m['hamsa_bridge_streams_refused_total{reason="draining"}'] == 1
    assert m["hamsa_bridge_draining"] == 1


async def test_a_rejected_key_is_counted_once_as_an_auth_error() -> None:
    async with loopback(EmulatorConfig(auth_failure="http")) as lb:
        # the loopback's key is valid: make it invalid for this bridge only
        lb.hamsa.config = dataclasses.replace(lb.hamsa.config, api_keys=frozenset({"other"}))
        result = await lb.call()
        m = await get_metrics(lb.public_url)
    assert result.ended_by == "bridge"
    assert m['hamsa_bridge_hamsa_errors_total{kind="auth"}'] == 1
    assert m['hamsa_bridge_calls_total{outcome="failed"}'] == 1
    assert m["hamsa_bridge_hamsa_connections_total"] == 0


async def test_while_voices_preload_livez_answers_and_calls_are_refused_as_starting() -> None:
    # a Hamsa REST endpoint that accepts connections and never answers: preload hangs
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    hole = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    sock = bind()
    public = "http://{}:{}".format(*sock.getsockname()[:2])
    settings = Settings(
        hamsa_api_key="k" * 16,
        hamsa_api_url=f"http://127.0.0.1:{port}",
        hamsa_preload_voices=("c803658e-ccec-47e7-ad0f-1caf9ba4babb",),
        twilio_auth_token="t" * 32,
        bridge_public_url=public,
    )
    app = create_app(settings)
    try:
        async with serving(app, sock=sock), httpx2.AsyncClient() as http:
            live = await http.get(public + "/livez")
            ready = await http.get(public + "/readyz")
            call = await place_call(
                CallPlan(webhook_url=public + "/twiml/inbound", auth_token="t" * 32)
            )
            metrics = scrape((await http.get(public + "/metrics")).text)
    finally:
        for writer in held:
            writer.close()
        hole.close()
        await hole.wait_closed()
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["status"] == "starting"
    assert call.handshake_status == 503
    assert metrics['hamsa_bridge_streams_refused_total{reason="starting"}'] == 1
