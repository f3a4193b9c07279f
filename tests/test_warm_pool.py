"""The warm Hamsa pool on loopback: sockets opened before the calls, one per call, refilled with
backoff, closed on drain and shutdown, never touched by an unauthenticated stream.

Every peer is real (bridge under uvicorn, Hamsa emulator, simulated Twilio caller) and talks over
real sockets; the emulator's connection records (``opened_at``, ``closed_by``) and the caller's
timeline share ``time.monotonic()``, so orderings are asserted, never wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.calls.warm_pool import WarmHamsaPool
from bridge.dev.caller import CallResult
from bridge.dev.hamsa_emulator import ConnectionRecord, EmulatorConfig, EmulatorState
from bridge.dev.loopback import Loopback, loopback
from bridge.stream_token import issue_token
from tests.leaks import Holdings, settle
from tests.timing import HANG

pytestmark = pytest.mark.anyio

SHORT = "مرحبا بك."  # one request, ~0.7 s of audio at the emulator's 80 ms per character


def pool_of(rig: Loopback) -> WarmHamsaPool:
    pool = rig.bridge.warm_pool
    assert pool is not None
    return pool


def connection(hamsa: EmulatorState, number: int) -> ConnectionRecord:
    return next(c for c in hamsa.connections if c.id == number)


def padded(audio: bytes) -> bytes:
    return audio + b"\xff" * (-len(audio) % 160)


def assert_played_whole(rig: Loopback, result: CallResult) -> None:
    """The caller heard every byte Hamsa sent, in whole frames, and the call ended normally."""
    assert result.close_code == 1000
    assert result.leg is not None
    assert result.leg.warnings == []
    audio = b"".join(r.audio for r in rig.hamsa.requests)
    assert audio
    assert bytes(result.leg.received) == padded(audio)


async def test_the_first_request_goes_over_a_socket_opened_before_the_call() -> None:
    async with loopback(bridge_greeting=SHORT, hamsa_warm_connections=2) as rig:
        pool = pool_of(rig)
        assert pool.idle == 2  # the loopback is yielded once the pool's first connects finished
        warm = {c.id for c in rig.hamsa.connections}
        result = await rig.call()
        async with asyncio.timeout(HANG):
            await pool.wait_until(lambda p: p.idle == 2)  # the taken socket was replaced
        first = rig.hamsa.requests[0]
        used = connection(rig.hamsa, first.connection_id)
        assert_played_whole(rig, result)
        assert result.started_at is not None
        assert first.connection_id in warm
        assert used.opened_at < result.started_at < first.received_at
        assert {r.connection_id for r in rig.hamsa.requests} == {first.connection_id}
        assert (pool.taken, pool.misses) == (1, 0)
        # The call owned the socket to its end, then closed it; it never went back to the pool.
        async with asyncio.timeout(HANG):
            await rig.hamsa.wait_until(lambda s: connection(s, used.id).closed_at is not None)
        assert used.closed_by == "client"
        assert len(rig.hamsa.connections) == 3  # two warm sockets, one refill
        second = await rig.call()
        assert second.close_code == 1000
        ids = [r.connection_id for r in rig.hamsa.requests]
        assert len(set(ids)) == 2  # each call its own socket
        assert (pool.taken, pool.misses) == (2, 0)
        registry = rig.bridge.metrics.registry
        takes = "hamsa_bridge_hamsa_warm_takes_total"
        assert registry.get_sample_value(takes, {"result": "hit"}) == 2
        assert registry.get_sample_value(takes, {"result": "miss"}) == 0
        assert registry.get_sample_value("hamsa_bridge_hamsa_warm_sockets") == pool.idle


async def test_first_audio_comes_sooner_with_the_pool_under_a_slow_connect() -> None:
    emulator = EmulatorConfig(connect_delay=0.4, seed=3, draws_per_text=True)
    async with (
        loopback(emulator, bridge_greeting=SHORT, hamsa_warm_connections=1) as warm,
        loopback(emulator, bridge_greeting=SHORT) as cold,
    ):
        assert cold.bridge.warm_pool is None
        pooled, direct = await asyncio.gather(warm.call(), cold.call())
        assert_played_whole(warm, pooled)
        assert_played_whole(cold, direct)
        timings = []
        for rig, result in ((warm, pooled), (cold, direct)):
            assert result.leg is not None
            start, heard = result.started_at, result.leg.timeline.first_media_at
            assert start is not None
            assert heard is not None
            request = rig.hamsa.requests[0]
            timings.append((start, connection(rig.hamsa, request.connection_id).opened_at, heard))
    (w_start, w_opened, w_heard), (c_start, c_opened, c_heard) = timings
    # Pooled: the socket was open before the stream started. Direct: the connect is in the path.
    assert w_opened < w_start < w_heard
    assert c_start < c_opened < c_heard
    assert w_heard - w_start < c_heard - c_start


async def test_a_pooled_socket_hamsa_closed_while_idle_is_never_handed_over() -> None:
    emulator = EmulatorConfig(idle_close_after=0.2)
    async with loopback(emulator, bridge_greeting=SHORT, hamsa_warm_connections=1) as rig:
        pool = pool_of(rig)
        async with asyncio.timeout(HANG):
            await rig.hamsa.wait_until(lambda s: connection(s, 1).closed_by == "server")
            await pool.wait_until(lambda p: p.idle == 0)
        result = await rig.call()
        assert_played_whole(rig, result)
        assert 1 not in {r.connection_id for r in rig.hamsa.requests}
        assert connection(rig.hamsa, 1).close_code == 1000
        assert pool.taken + pool.misses == 1
        assert pool.taken == 0 or pool.opened >= 2  # a warm socket, if any, was a replacement


async def test_refused_connections_are_retried_with_backoff_not_in_a_loop() -> None:
    # Hamsa refuses every upgrade (503): each slot waits ≥ 0.5 s, then ≥ 1 s, … between tries.
    async with loopback(
        EmulatorConfig(refuse_connections=10_000), bridge_greeting=SHORT, hamsa_warm_connections=2
    ) as rig:
        pool = pool_of(rig)
        assert pool.idle == 0
        async with asyncio.timeout(HANG):  # each slot's second try: 0.5-1.5 s after its first
            await rig.hamsa.wait_until(lambda s: s.upgrades >= 4)
        tries = sorted(c.opened_at for c in rig.hamsa.connections)
        assert all(c.refused_status == 503 for c in rig.hamsa.connections)
    # Two slots, each waiting at least 0.5 s after a refusal before its next try (1 s after
    # the second, …): any three tries span at least 0.5 s, however late the machine ran them
    # (a retry loop would put hundreds in that time).
    assert all(third - first >= 0.5 for first, third in zip(tries, tries[2:], strict=False))


async def test_the_pool_fills_once_hamsa_accepts_again() -> None:
    async with loopback(
        EmulatorConfig(refuse_connections=2), bridge_greeting=SHORT, hamsa_warm_connections=2
    ) as rig:
        pool = pool_of(rig)
        async with asyncio.timeout(HANG):
            await pool.wait_until(lambda p: p.idle == 2)
        assert rig.hamsa.upgrades == 4
        result = await rig.call()
        assert_played_whole(rig, result)
        assert pool.taken == 1


@pytest.mark.parametrize(
    ("config", "code"),
    [
        (EmulatorConfig(auth_failure="http", auth_failure_status=401), 401),
        (EmulatorConfig(auth_failure="http", auth_failure_status=403), 403),
        (EmulatorConfig(auth_failure="close"), 4001),
        (EmulatorConfig(balance_ok=False), 4003),
    ],
    ids=["http-401", "http-403", "close-4001", "close-4003"],
)
async def test_a_refused_key_is_not_retried_in_a_loop(config: EmulatorConfig, code: int) -> None:
    key = {} if code == 4003 else {"hamsa_api_key": "not-the-hamsa-key-0123"}
    async with loopback(config, bridge_greeting=SHORT, hamsa_warm_connections=2, **key) as rig:
        pool = pool_of(rig)
        async with asyncio.timeout(HANG):  # the accepted-then-closed sockets leave the pool
            await rig.hamsa.wait_until(
                lambda s: len(s.connections) == 2 and all(c.closed_at for c in s.connections)
            )
            await pool.wait_until(lambda p: p.idle == 0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await rig.hamsa.wait_until(lambda s: s.upgrades > 2)
        records = rig.hamsa.connections
        assert [c.refused_status or c.close_code for c in records] == [code, code]
        assert pool.attempts == 2


async def test_unauthenticated_streams_never_take_a_pooled_socket() -> None:
    async with loopback(bridge_greeting=SHORT, hamsa_warm_connections=2) as rig:
        pool = pool_of(rig)
        other_call = issue_token(rig.auth_token.encode(), "CA" + "0" * 32, now=time.time(), ttl=60)
        for token in ("", "garbage", "v1.9999999999.forged", other_call):
            result = await rig.call(token_override=token)
            assert result.close_code == 1008
            assert result.leg is not None
            assert result.leg.received == b""
        assert (pool.taken, pool.misses) == (0, 0)
        assert pool.idle == 2
        assert len(rig.hamsa.connections) == 2
        assert rig.hamsa.requests == []


async def test_drain_closes_the_pool() -> None:
    async with loopback(bridge_greeting=SHORT, hamsa_warm_connections=2) as rig:
        pool = pool_of(rig)
        assert await rig.bridge.drain.drain() == 0
        assert pool.closed
        assert pool.idle == 0
        async with asyncio.timeout(HANG):
            await rig.hamsa.wait_until(lambda s: all(c.closed_at for c in s.connections))
        assert [c.closed_by for c in rig.hamsa.connections] == ["client", "client"]
        assert len(rig.hamsa.connections) == 2  # no refill after the drain began


async def test_shutdown_closes_the_pool_and_leaves_nothing_behind() -> None:
    before = Holdings.now()
    async with loopback(
        EmulatorConfig(connect_delay=0.05), bridge_greeting=SHORT, hamsa_warm_connections=3
    ) as rig:
        pool = pool_of(rig)
        for _ in range(3):
            assert (await rig.call()).close_code == 1000
        async with asyncio.timeout(HANG):
            await pool.wait_until(lambda p: p.idle == 3)
        hamsa = rig.hamsa
    assert pool.closed
    assert all(c.closed_by == "client" for c in hamsa.connections)
    assert len(hamsa.connections) == 6  # three warm sockets, three refills
    await settle(before)


async def test_shutdown_during_a_refill_connect_leaves_nothing_behind() -> None:
    before = Holdings.now()
    async with loopback(
        EmulatorConfig(connect_delay=1.0), bridge_greeting=SHORT, hamsa_warm_connections=1
    ) as rig:
        pool = pool_of(rig)
        result = await rig.call(hangup_after=0.05)  # took the warm socket: a refill starts
        assert result.ended_by == "hangup_after"
        assert pool.taken == 1
        assert pool.attempts == 2
        assert pool.idle == 0  # the refill is still waiting for the emulator's answer
    assert pool.closed
    await settle(before)
