"""The whole product as a user runs it, as separate processes on loopback:
``emulate-twilio`` + ``emulate-hamsa`` + ``serve``, then ``twilio configure``, then someone dials
the number (``twilio call-in``): the caller's WAV holds the greeting, byte for byte what Hamsa
sent, and every hop was signed and checked."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import wave
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx2
import pytest

from bridge.audio.codec import lin16_to_ulaw
from tests.cli_support import free_port, run_cli
from tests.log_audit import record_output
from tests.timing import HANG

pytestmark = pytest.mark.anyio

ACCOUNT = "AC" + "e" * 32
TOKEN = "e2e-auth-token"
KEY = "e2e-hamsa-key"
NUMBER = "+966501112233"
GREETING = "مرحبا بك في همسة."


@asynccontextmanager
async def process(env: dict[str, str], *args: str, ready: str) -> AsyncIterator[list[str]]:
    """Run ``hamsa-bridge ARGS`` until the block ends; wait for a line containing ``ready``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout

    async def pump() -> None:
        while line := await stdout.readline():
            lines.append(line.decode(errors="replace"))

    try:
        async with asyncio.timeout(HANG):
            while not any(ready in line for line in lines):
                line = await stdout.readline()
                if not line:
                    raise AssertionError(f"{args[0]} exited: {''.join(lines)}")
                lines.append(line.decode(errors="replace"))
        reader = asyncio.create_task(pump())
        yield lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        if "reader" in locals():
            await reader
        record_output("".join(lines))


async def test_configure_then_an_inbound_call_hears_the_greeting(tmp_path: Path) -> None:
    hamsa_port, twilio_port, bridge_port = free_port(), free_port(), free_port()
    env = {
        "HAMSA_API_KEY": KEY,
        "HAMSA_WS_URL": f"ws://127.0.0.1:{hamsa_port}/v1/realtime/ws",
        "HAMSA_API_URL": f"http://127.0.0.1:{hamsa_port}",
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_API_URL": f"http://127.0.0.1:{twilio_port}",
        "TWILIO_PHONE_NUMBER": NUMBER,
        "BRIDGE_PUBLIC_URL": f"http://127.0.0.1:{bridge_port}",
        "BRIDGE_GREETING": GREETING,
        "BRIDGE_LOG_FORMAT": "json",
    }
    # the Twilio emulator knows nothing of the bridge: its number starts unconfigured
    twilio_env = {k: v for k, v in env.items() if k != "BRIDGE_PUBLIC_URL"}
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(
            process(env, "emulate-hamsa", "--port", str(hamsa_port), ready="listening")
        )
        await stack.enter_async_context(
            process(
                twilio_env,
                "emulate-twilio",
                "--port",
                str(twilio_port),
                "--number",
                NUMBER,
                "--ring-seconds",
                "0.05",
                ready="listening",
            )
        )
        bridge_log = await stack.enter_async_context(
            process(
                env, "serve", "--host", "127.0.0.1", "--port", str(bridge_port), ready="running on"
            )
        )

        code, output = await run_cli("twilio", "configure", env=env)
        assert code == 0, output
        assert "configured" in output

        code, output = await run_cli("doctor", env=env)
        assert code == 0, output
        # the running bridge checks handshake signatures: one signed with another token is refused
        code, output = await run_cli("doctor", env={**env, "TWILIO_AUTH_TOKEN": "not-the-token"})
        assert code == 1
        assert "✗ signed stream handshake accepted" in output
        assert "HTTP 403" in output

        wav_path = tmp_path / "heard.wav"
        code, output = await run_cli("twilio", "call-in", "--out", str(wav_path), env=env)
        assert code == 0, output
        assert f"webhook POST http://127.0.0.1:{bridge_port}/twiml/inbound: HTTP 200" in output
        assert "status callback completed: HTTP 204" in output  # signed, validated by the bridge
        assert "ended by bridge, warnings 0" in output

        async with httpx2.AsyncClient() as http:
            log = (await http.get(f"{env['HAMSA_API_URL']}/_emulator/log?audio=base64")).json()
    # doctor's test phrases came first; the call made exactly one request
    [request] = [r for r in log["requests"] if r["text"] == GREETING]
    hamsa_audio = base64.b64decode(request["audio"])
    with wave.open(str(wav_path)) as wav:
        heard = lin16_to_ulaw(wav.readframes(wav.getnframes()))
    expected = hamsa_audio + b"\xff" * (-len(hamsa_audio) % 160)
    # μ-law → PCM → μ-law maps every code to itself except 0x7F (negative zero) → 0xFF
    assert heard == expected.replace(b"\x7f", b"\xff")
    joined = "".join(bridge_log)
    events = [json.loads(line) for line in bridge_log if line.startswith("{")]
    assert not [e for e in events if e["event"] == "webhook_signature_invalid"]
    # the only rejected stream is doctor's signed probe, which never sends ``start``
    rejected = [e["reason"] for e in events if e["event"] == "stream_rejected"]
    assert rejected == ["stream closed before start"]
    # every stream handshake the bridge accepted carried a valid signature (the emulator signs)
    handshakes = [
        e["handshake_signature"]
        for e in events
        if e["event"] in ("call_started", "stream_rejected")
    ]
    assert handshakes == ["valid", "valid"]  # doctor's probe and the call
    assert [e["outcome"] for e in events if e["event"] == "call_summary"] == ["completed"]
    assert TOKEN not in joined
    assert KEY not in joined
