"""A call's Hamsa sockets are freed by reference counting when the call ends, whatever ended it.

Production runs a full garbage collection rarely (``bridge/server.py``: about once an hour), so
a socket left in a reference cycle lives on, with its transport and buffers, until then: during a
Hamsa outage or on a flaky network, every failed connect would add one. Each test here runs calls
over real sockets (loopback: simulated Twilio caller ↔ bridge ↔ Hamsa emulator) with the cyclic
GC disabled, then counts the websockets ``ClientConnection`` and ``ClientProtocol`` objects still
alive: with the GC off, objects in unreachable cycles stay in its lists, where
``gc.get_objects()`` finds them. Every call
ended (and the warm pool closed): none may be left.

The faults: a refused upgrade (HTTP 503, HTTP 401), a server that closes during the handshake
(websockets' ``InvalidMessage`` caused by an ``EOFError``), a handshake timeout, a socket lost
mid-reply, a close 4001 at the request, and warm-pool sockets that fail to connect or close while
idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol

from bridge.dev.hamsa_emulator import EmulatorConfig, Fault
from bridge.dev.loopback import Loopback
from bridge.protocols.websockets_cycle import ReleasingClientConnection
from bridge.protocols.websockets_direct import DirectClientConnection
from tests.leaks import Holdings, settle
from tests.test_faults_hamsa import TEXT, emulator, ended, rig_for
from tests.timing import HANG

pytestmark = pytest.mark.anyio

WITHIN = 20.0
"""How long the count may take to reach zero once every call ended: closing a socket takes a few
loop turns (its transport's ``connection_lost``), which a loaded machine can stretch to seconds.
A socket in a cycle never gets there."""

CLIENT_TYPES = (ClientConnection, ReleasingClientConnection, DirectClientConnection, ClientProtocol)


def connections_alive() -> int:
    """The websockets client connections and their sans-I/O protocols alive in this process
    (Hamsa's and the simulated callers'). By type: ``gc.get_objects()`` also lists weak proxies,
    which ``isinstance`` would dereference (and fail on, once their referent is gone)."""
    return sum(type(obj) in CLIENT_TYPES for obj in gc.get_objects())


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """Only reference counting frees objects in the block (what was garbage before is collected
    first, so the counts start from the live objects)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def none_alive(what: str) -> None:
    """Wait (bounded) until no websockets client connection is alive; fail counting them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN
    while alive := connections_alive():
        if loop.time() >= deadline:
            raise AssertionError(f"{alive} ClientConnection alive after {what}: in cycles")
        await asyncio.sleep(0.05)  # polling a count: nothing to wait on


async def calls(rig: Loopback, n: int) -> None:
    """``n`` calls, one after the other, each to its end (the bridge closed its stream)."""
    for _ in range(n):
        async with asyncio.timeout(HANG):
            await rig.call()
        await ended(rig)


@contextlib.asynccontextmanager
async def closing_during_handshake() -> AsyncIterator[str]:
    """A server that reads the upgrade request and closes without answering; its ``ws://`` URL."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime/ws"
    finally:
        server.close()
        await server.wait_closed()


CASES: dict[str, tuple[EmulatorConfig, dict[str, Any], int]] = {
    "normal": (emulator(), {}, 3),
    "refused_503": (emulator(refuse_connections=10**6), {"hamsa_connect_attempts": 2}, 1),
    "refused_401": (emulator(auth_failure="http"), {"hamsa_api_key": "wrong-key"}, 1),
    "handshake_timeout": (
        emulator(connect_delay=2.0),  # the emulator's handlers end soon after the call
        {"hamsa_connect_timeout": 0.2, "hamsa_connect_attempts": 2},
        1,
    ),
    "close_mid_reply": (emulator(faults={1: Fault.CLOSE_MID_REPLY}), {}, 1),
    "close_4001_at_request": (emulator(faults={1: Fault.CLOSE_4001}), {}, 1),
}
"""The emulator, the bridge's settings and how many calls."""


@pytest.mark.parametrize("case", CASES)
async def test_hamsa_sockets_are_freed_without_the_cyclic_gc(case: str) -> None:
    config, settings, n = CASES[case]
    with cyclic_gc_off():
        async with rig_for(config, bridge_greeting=TEXT, **settings) as (rig, _tap):
            before = Holdings.now()
            await calls(rig, n)
            await settle(before)
            await none_alive(f"{n} {case} calls")


async def test_hamsa_sockets_closed_during_the_handshake_are_freed_without_the_cyclic_gc() -> None:
    settings: dict[str, Any] = {"hamsa_connect_attempts": 2}
    with cyclic_gc_off():
        async with (
            closing_during_handshake() as url,
            rig_for(emulator(), bridge_greeting=TEXT, hamsa_ws_url=url, **settings) as (rig, _),
        ):
            before = Holdings.now()
            await calls(rig, 1)
            await settle(before)
            await none_alive("a call whose every Hamsa handshake was cut")


async def test_warm_pool_sockets_failed_or_closed_while_idle_are_freed_without_the_cyclic_gc() -> (
    None
):
    # the pool's two first connects are refused (503); then its sockets are closed after 0.3 s
    # idle, and each slot opens another (after its backoff)
    config = emulator(refuse_connections=2, idle_close_after=0.3)
    with cyclic_gc_off():
        async with rig_for(config, bridge_greeting=TEXT, hamsa_warm_connections=2) as (rig, tap):
            pool = rig.bridge.warm_pool
            assert pool is not None
            async with asyncio.timeout(HANG):
                await tap.wait_for("hamsa_warm_socket_closed")  # opened after the refusals
            await calls(rig, 1)
            await pool.aclose()
            await none_alive("warm-pool sockets refused, closed while idle, then the pool closed")
            assert pool.attempts >= 3
