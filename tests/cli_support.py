"""Running ``hamsa-bridge`` as a user does, in a subprocess (shared by the CLI tests)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``hamsa-bridge ARGS`` to its end (60 s at most): exit status and merged output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
