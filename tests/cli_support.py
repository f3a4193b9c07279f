"""Running ``hamsa-bridge`` as a user does, in a subprocess (shared by the CLI tests)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench._common import free_port as free_port  # the CLI tests import it from here
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import LOOPBACK_NUMBER, Loopback, loopback
from bridge.dev.twilio_emulator import Outcome, TwilioEmulatorConfig
from tests.log_audit import record_output


async def run_cli_streams(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``hamsa-bridge ARGS`` to its end (60 s at most): exit status, stdout and stderr apart."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        output, errors = await process.communicate()
    assert process.returncode is not None
    out, err = output.decode(), errors.decode()
    record_output(out + err)
    return process.returncode, out, err


async def run_cli_on_a_terminal(*args: str, env: dict[str, str], typed: str) -> tuple[int, str]:
    """``hamsa-bridge ARGS`` with a pseudo-terminal for stdin, on which ``typed`` is typed."""
    controller, terminal = os.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            *args,
            env={**os.environ, **env},
            stdin=terminal,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        os.write(controller, typed.encode())  # the terminal holds the line until it is read
        async with asyncio.timeout(60):
            output, _ = await process.communicate()
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode is not None
    text = output.decode()
    record_output(text)
    return process.returncode, text


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
    text = output.decode()
    record_output(text)  # the suite's log audit reads every CLI's output too
    return process.returncode, text


@asynccontextmanager
async def outbound_rig(
    tmp_path: Path,
    outcomes: dict[str, Outcome | str] | None = None,
    *,
    callback_grace: float,
    database: str | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Loopback, dict[str, str]]]:
    """Bridge + Hamsa and Twilio emulators on loopback sharing a store (``database``, a
    ``BRIDGE_DATABASE_URL``; default: a SQLite file under ``tmp_path``), and the environment an
    ``announce``/``campaign`` subprocess needs to reach them."""
    database = database or f"sqlite:///{tmp_path}/bridge.db"
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        twilio=TwilioEmulatorConfig(outcomes=outcomes or {}),
        bridge_database_url=database,
        hamsa_truncation_ms_per_char=3.0,
        bridge_prompt_cache_min_ms_per_char=10.0,
        **settings,
    ) as lb:
        yield (
            lb,
            {
                "TWILIO_ACCOUNT_SID": lb.settings.twilio_account_sid,
                "TWILIO_AUTH_TOKEN": lb.auth_token,
                "TWILIO_API_URL": lb.settings.twilio_api_url,
                "TWILIO_PHONE_NUMBER": LOOPBACK_NUMBER,
                "BRIDGE_PUBLIC_URL": lb.public_url,
                "BRIDGE_DATABASE_URL": database,
                "BRIDGE_CALLBACK_GRACE": str(callback_grace),
                # the account's budget above the campaigns' --cps: their own pace is tested
                "BRIDGE_CALLS_PER_SECOND": "10",
            },
        )
