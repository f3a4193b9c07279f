"""``serve`` listens before its app starts: ``bridge_ready`` in the log means a call connects.

The socket is bound and listening before uvicorn runs the app's startup, so a client that
connects at ``bridge_ready`` (or earlier) is queued by the kernel, never refused; a port that
cannot be listened on stops ``serve`` with status 1 and says why.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import httpx2
import pytest

from bench._common import KEY, TOKEN, free_port, serve_env, served_bridge
from bridge.dev.hamsa_emulator import EmulatorConfig, create_emulator_app
from bridge.dev.servers import serving
from bridge.exit_codes import ExitCode
from bridge.uvicorn_setup import listening_socket
from tests.timing import HANG

pytestmark = pytest.mark.anyio


async def test_at_bridge_ready_the_port_already_takes_connections() -> None:
    emulator = create_emulator_app(EmulatorConfig(api_keys=frozenset({KEY})))
    async with serving(emulator) as hamsa_url:
        port = free_port()
        env = serve_env(
            hamsa_url, hamsa_key=KEY, auth_token=TOKEN, public_url=f"http://127.0.0.1:{port}"
        )
        async with served_bridge(port, env) as bridge:
            await bridge.wait_for(lambda es: any(e["event"] == "bridge_ready" for e in es))
            # no retry: the first attempt after the line must be answered
            async with httpx2.AsyncClient(timeout=HANG) as http:
                ready = await http.get(bridge.url + "/readyz")
    assert ready.status_code == 200


async def test_a_port_in_use_stops_serve_with_status_1_and_says_why() -> None:
    with listening_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        env = serve_env(
            "http://127.0.0.1:9",
            hamsa_key=KEY,
            auth_token=TOKEN,
            public_url=f"http://127.0.0.1:{port}",
            HAMSA_WARM_CONNECTIONS="0",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            *("serve", "--host", "127.0.0.1", "--port", str(port)),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(HANG):
            output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == ExitCode.FAILURE, text
    assert "startup_failed" in text
    assert f"cannot listen on 127.0.0.1:{port}" in text


def test_the_listening_socket_is_tcp_so_the_loop_disables_nagle() -> None:
    with listening_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
