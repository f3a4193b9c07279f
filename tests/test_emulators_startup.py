"""``emulate-hamsa`` and ``emulate-twilio`` say where they listen, in plain words on stdout, the
first line as soon as they accept connections; uvicorn's own startup lines stay out of it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import pytest
from websockets.asyncio.client import connect

from bridge.dev.hamsa_emulator import DELIVERY_MODELS, MODEL_SUMMARIES
from tests.log_audit import record_output
from tests.timing import HANG

pytestmark = pytest.mark.anyio

UVICORN_LINES = ("Started server process", "Application startup", "Uvicorn running", "INFO:")


@asynccontextmanager
async def started(*args: str, env: dict[str, str]) -> AsyncIterator[tuple[str, list[str]]]:
    """Run ``hamsa-bridge ARGS`` on port 0; yield its first stdout line (within 20 s) and, once
    the block ends and the command is stopped, the list filled with the rest of stdout and all
    of stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        "--port",
        "0",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    rest: list[str] = []
    try:
        async with asyncio.timeout(HANG):
            first = (await process.stdout.readline()).decode()
        assert first, "the command exited before saying where it listens"
        yield first, rest
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(HANG):
            out, err = await process.communicate()
        rest += [out.decode(), err.decode()]
        record_output("".join(rest))


async def test_emulate_hamsa_says_where_it_listens_with_its_model_and_speech() -> None:
    env = {"HAMSA_API_KEY": "startup-key", "BRIDGE_LOG_LEVEL": "info"}
    args = ("emulate-hamsa", "--realistic", "--speech", "tones", "--fault", "2=truncate_640")
    async with started(*args, env=env) as (first, rest):
        found = re.fullmatch(r"Hamsa emulator listening on (ws://127\.0\.0\.1:(\d+)/\S+)\n", first)
        assert found, first
        url = found.group(1)
        async with connect(url, additional_headers={"X-Api-Key": "startup-key"}) as ws:
            info = json.loads(await ws.recv())
    assert info["type"] == "info"
    stdout, stderr = rest
    port = found.group(2)
    assert f"HAMSA_API_URL to http://127.0.0.1:{port}" in stdout
    assert "delivery: realistic (connect 1.2 s, first audio 0.3-1.7 s" in stdout
    assert "speech: tones (one per character, as asked)" in stdout
    assert "API key: the value of HAMSA_API_KEY" in stdout
    assert "startup-key" not in stdout + stderr  # the key's source, never its value
    assert "faults: request 2 TRUNCATE_640" in stdout
    for line in UVICORN_LINES:
        assert line not in stdout + stderr


async def test_emulate_twilio_says_where_it_listens_the_same_way() -> None:
    env = {"TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "", "BRIDGE_LOG_LEVEL": "info"}
    async with started("emulate-twilio", "--number", "+15005550006", env=env) as (first, rest):
        found = re.fullmatch(r"Twilio emulator listening on (http://127\.0\.0\.1:\d+)\n", first)
        assert found, first
        async with httpx2.AsyncClient() as http:
            log = await http.get(found.group(1) + "/_emulator/log")
    assert log.status_code == 200
    stdout, stderr = rest
    assert "set TWILIO_API_URL to that" in stdout
    assert "TWILIO_ACCOUNT_SID=AC" in stdout  # generated, so shown
    assert "number +15005550006: VoiceUrl=" in stdout
    for line in UVICORN_LINES:
        assert line not in stdout + stderr


def test_every_delivery_model_has_its_line() -> None:
    assert list(MODEL_SUMMARIES) == list(DELIVERY_MODELS)
