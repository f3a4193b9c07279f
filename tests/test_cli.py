"""The console script: demo, call and emulate-hamsa as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import wave
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from bridge.dev.loopback import loopback
from tests.cli_support import free_port, run_cli
from tests.timing import HANG

pytestmark = pytest.mark.anyio


async def test_demo_plays_a_whole_call_and_writes_the_wav(tmp_path: Path) -> None:
    out = tmp_path / "heard.wav"
    code, output = await run_cli("demo", "--fast", "--out", str(out), "--text", "مرحبا بك في همسة.")
    assert code == 0, output
    assert "first audio:" in output
    assert "protocol warnings: none" in output
    assert "bridge closed the stream (code 1000)" in output
    assert "hamsa: 1 connection(s), 1 request(s)" in output
    assert "start policy: sentence 1 held" in output  # what the start policy decided
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 8000
        assert wav.getsampwidth() == 2
        assert wav.getnframes() >= 8000  # over a second of speech


async def test_demo_with_a_key_press_shows_the_clear(tmp_path: Path) -> None:
    code, output = await run_cli(
        "demo", "--fast", "--out", str(tmp_path / "x.wav"), "--text", "ب" * 40, "--press", "0.5:1"
    )
    assert code == 0, output
    assert "key '1' pressed" in output
    assert "clear:" in output


async def test_call_command_against_a_running_bridge(tmp_path: Path) -> None:
    async with loopback(bridge_greeting="مرحبا بك.") as rig:
        out = tmp_path / "call.wav"
        code, output = await run_cli(
            "call",
            "--url",
            rig.public_url + "/twiml/inbound",
            "--out",
            str(out),
            env={"TWILIO_AUTH_TOKEN": rig.auth_token},
        )
    assert code == 0, output
    assert "webhook: HTTP 200" in output
    assert out.exists()


async def test_call_command_with_the_wrong_token_reports_403(tmp_path: Path) -> None:
    async with loopback(bridge_greeting="مرحبا بك.") as rig:
        code, output = await run_cli(
            "call",
            "--url",
            rig.public_url + "/twiml/inbound",
            "--out",
            str(tmp_path / "x.wav"),
            env={"TWILIO_AUTH_TOKEN": "wrong"},
        )
    assert code == 1
    assert "webhook: HTTP 403" in output


async def test_emulate_hamsa_serves_the_realtime_protocol() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "emulate-hamsa",
        "--port",
        str(port),
        env={**os.environ, "HAMSA_API_KEY": "cli-key"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(HANG):
            while b"listening" not in await process.stdout.readline():
                pass
            url = f"ws://127.0.0.1:{port}/v1/realtime/ws"
            async with connect(url, additional_headers={"X-Api-Key": "cli-key"}) as ws:
                info = json.loads(await ws.recv())
    finally:
        process.terminate()
        await process.wait()
    assert info["type"] == "info"


@pytest.mark.parametrize("argv", [["serve"], ["demo", "--press", "x"]])
async def test_bad_invocations_fail_with_a_message(argv: list[str]) -> None:
    env = {"TWILIO_AUTH_TOKEN": "", "BRIDGE_PUBLIC_URL": "", "HAMSA_API_KEY": ""}
    code, output = await run_cli(*argv, env=env)
    assert code == 2  # a missing setting and a malformed option are both usage errors
    assert "missing required settings" in output or "SECONDS:DIGIT" in output


async def test_invalid_configuration_names_the_variable_but_never_a_secret() -> None:
    env = {
        "BRIDGE_API_TOKEN": "short-secret",
        "HAMSA_CONNECT_TIMEOUT": "-1",
        "BRIDGE_PUBLIC_URL": "https://bridge.example.com/x",
    }
    code, output = await run_cli("serve", env=env)
    assert code == 2
    assert "BRIDGE_API_TOKEN: must be at least 16 characters" in output
    assert "HAMSA_CONNECT_TIMEOUT" in output
    assert "short-secret" not in output
    # not a secret: shown, with the part that is wrong
    assert "BRIDGE_PUBLIC_URL: 'https://bridge.example.com/x' has a path" in output
