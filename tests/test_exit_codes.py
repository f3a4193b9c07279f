"""The exit status of every ``hamsa-bridge`` command, as a table: per command, one case per code
of ``bridge/exit_codes.py`` it can return that is reachable offline, with the stream its message
goes to (errors on stderr, results on stdout).

Peers are the emulators (``bridge.dev``) or a port nothing listens on; nothing of ours is mocked.
The cases without a peer run ``main()`` in this process; those with one run it in a thread (it runs
its own event loop) or as a subprocess, as a user does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorServer
from bridge.dev.loopback import LOOPBACK_NUMBER, loopback
from bridge.dev.twilio_emulator import Outcome
from bridge.exit_codes import MEANING, ExitCode
from bridge.logs import HANDLER_NAME
from tests.cli_support import (
    free_port,
    outbound_rig,
    run_cli_on_a_terminal,
    run_cli_streams,
)
from tests.log_audit import record_output
from tests.timing import HANG

SID = "AC" + "5" * 32
KEY = "exit-codes-test-key"
PERSON = "+966501112233"
TEXT = "موعدك غدا صباحا."
CLOSED = "127.0.0.1:{closed}"
"""A port bound by the test and not listening: connections to it are refused at once."""
TWILIO = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "token"}
PUBLIC = {"BRIDGE_PUBLIC_URL": "https://bridge.example.com"}
NOWHERE = {
    **TWILIO,
    "TWILIO_API_URL": f"http://{CLOSED}",
    "BRIDGE_PUBLIC_URL": f"http://{CLOSED}",  # loopback: accepted with a loopback Twilio API
    "HAMSA_API_KEY": KEY,
    "HAMSA_WS_URL": f"ws://{CLOSED}/v1/realtime/ws",
    "HAMSA_CONNECT_ATTEMPTS": "1",
    "HAMSA_RETRY_DELAYS": "0.01",
    "TWILIO_PHONE_NUMBER": "+966501234567",
}
"""Every peer at the closed port."""


@dataclass(frozen=True, slots=True)
class Case:
    argv: tuple[str, ...]
    env: dict[str, str]
    code: ExitCode
    stream: str
    """Where ``message`` must be: ``out`` or ``err`` (and not in the other)."""
    message: str


def case(
    code: ExitCode, stream: str, message: str, *argv: str, **env: str
) -> tuple[ExitCode, Case]:
    return code, Case(argv, env, code, stream, message)


BROKEN_FLOW = '[flow]\nstart = "nowhere"\n'

CASES: dict[str, list[tuple[ExitCode, Case]]] = {
    "hamsa-bridge": [
        case(ExitCode.OK, "out", f"hamsa-bridge {version('hamsa-bridge')}\n", "--version"),
        case(ExitCode.USAGE, "err", "required: COMMAND"),
        case(ExitCode.USAGE, "err", "invalid choice: 'dance'", "dance"),
        case(
            ExitCode.USAGE,
            "err",
            "HAMSA_CONNECT_TIMEOUT",
            "twiml",
            "inbound",
            **{"HAMSA_CONNECT_TIMEOUT": "-1"},
        ),
    ],
    "serve": [
        case(ExitCode.USAGE, "err", "invalid int value: 'eighty'", "serve", "--port", "eighty"),
        case(ExitCode.USAGE, "err", "missing required settings: TWILIO_AUTH_TOKEN", "serve"),
        case(
            ExitCode.USAGE,
            "err",
            "BRIDGE_IVR_FLOW {tmp}/broken.toml is invalid",
            "serve",
            "--port",
            "0",
            TWILIO_AUTH_TOKEN="t",
            HAMSA_API_KEY="k",
            BRIDGE_IVR_FLOW="{tmp}/broken.toml",
            **PUBLIC,
        ),
    ],
    "demo": [case(ExitCode.USAGE, "err", "SECONDS:DIGIT", "demo", "--press", "x")],
    "call": [
        case(ExitCode.USAGE, "err", "set TWILIO_AUTH_TOKEN", "call", "--url", "http://h/x"),
        case(
            ExitCode.FAILURE,
            "err",
            "cannot reach",
            "call",
            "--url",
            f"http://{CLOSED}/twiml/inbound",
            "--out",
            "{tmp}/x.wav",
            TWILIO_AUTH_TOKEN="t",
        ),
    ],
    "twilio configure": [
        case(ExitCode.USAGE, "err", "pass --number", "twilio", "configure", **TWILIO, **PUBLIC),
        case(
            ExitCode.USAGE,
            "err",
            "'0501234567' is not an E.164 number",
            "twilio",
            "configure",
            "--number",
            "0501234567",
            **TWILIO,
            **PUBLIC,
        ),
        case(
            ExitCode.USAGE,
            "err",
            "TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits",
            "twilio",
            "configure",
            "--number",
            "+966501234567",
            **{**TWILIO, "TWILIO_ACCOUNT_SID": "AC1234"},
            **PUBLIC,
        ),
        case(
            ExitCode.USAGE,
            "err",
            "set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
            "twilio",
            "configure",
            "--number",
            "+966501234567",
            **PUBLIC,
        ),
        case(
            ExitCode.FAILURE,
            "err",
            "cannot reach the Twilio API",
            "twilio",
            "configure",
            **NOWHERE,
        ),
    ],
    "twilio show": [
        case(
            ExitCode.USAGE,
            "err",
            "TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits",
            "twilio",
            "show",
            **{**TWILIO, "TWILIO_ACCOUNT_SID": "ACxyz" + "0" * 29},
        ),
        case(
            ExitCode.USAGE, "err", "set TWILIO_AUTH_TOKEN", "twilio", "show", TWILIO_ACCOUNT_SID=SID
        ),
        case(ExitCode.FAILURE, "err", "cannot reach the Twilio API", "twilio", "show", **NOWHERE),
        case(
            ExitCode.FAILURE,
            "err",
            "cannot reach the Twilio API",
            "twilio",
            "show",
            "--json",
            **NOWHERE,
        ),
    ],
    "twilio call-in": [
        case(ExitCode.USAGE, "err", "pass --number", "twilio", "call-in"),
        case(
            ExitCode.USAGE,
            "err",
            "is not an E.164 number",
            "twilio",
            "call-in",
            "--number",
            "12345",
        ),
        case(ExitCode.FAILURE, "err", "cannot reach", "twilio", "call-in", **NOWHERE),
    ],
    "twiml inbound": [
        case(ExitCode.OK, "out", "<Redirect", "twiml", "inbound", **PUBLIC),
        case(ExitCode.USAGE, "err", "BRIDGE_PUBLIC_URL not set", "twiml", "inbound"),
    ],
    "ivr validate": [
        case(ExitCode.OK, "out", "15 nodes", "ivr", "validate", "clinic"),
        case(ExitCode.FAILURE, "out", "error(s) in", "ivr", "validate", "{tmp}/broken.toml"),
    ],
    "ivr graph": [
        case(ExitCode.OK, "out", "flowchart TD", "ivr", "graph", "clinic"),
        case(ExitCode.FAILURE, "err", "is invalid", "ivr", "graph", "{tmp}/broken.toml"),
        # PATH is emptied for this case (see run): no graphviz
        case(
            ExitCode.FAILURE,
            "err",
            "install graphviz",
            "ivr",
            "graph",
            "clinic",
            "--png",
            "{tmp}/clinic.png",
        ),
    ],
    "ivr warm": [
        case(
            ExitCode.USAGE,
            "err",
            "set BRIDGE_PROMPT_CACHE_DIR",
            "ivr",
            "warm",
            "clinic",
            HAMSA_API_KEY=KEY,
        ),
        case(
            ExitCode.USAGE,
            "err",
            "set HAMSA_API_KEY",
            "ivr",
            "warm",
            "clinic",
            BRIDGE_PROMPT_CACHE_DIR="{tmp}/prompts",
        ),
        case(
            ExitCode.FAILURE,
            "err",
            "is invalid",
            "ivr",
            "warm",
            "{tmp}/broken.toml",
            **{"BRIDGE_PROMPT_CACHE_DIR": "{tmp}/prompts", "HAMSA_API_KEY": KEY},
        ),
        case(
            ExitCode.FAILURE,
            "err",
            "Hamsa gave no usable reply",
            "ivr",
            "warm",
            "clinic",
            BRIDGE_PROMPT_CACHE_DIR="{tmp}/prompts",
            **NOWHERE,
        ),
    ],
    "announce": [
        case(
            ExitCode.USAGE,
            "err",
            "announce: --to:",
            "announce",
            "--to",
            "0501112233",
            "--text",
            TEXT,
            **NOWHERE,
        ),
        case(
            ExitCode.USAGE,
            "err",
            "the following arguments are required: --text",
            "announce",
            "--to",
            PERSON,
        ),
        case(
            ExitCode.USAGE,
            "err",
            "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, BRIDGE_PUBLIC_URL",
            "announce",
            "--to",
            PERSON,
            "--text",
            TEXT,
            TWILIO_PHONE_NUMBER="+966501234567",
        ),
    ],
    "doctor": [
        case(ExitCode.FAILURE, "out", "✗ Twilio credentials", "doctor", **NOWHERE),
        case(ExitCode.FAILURE, "out", '"ok": false', "doctor", "--json", **NOWHERE),
        case(ExitCode.FAILURE, "out", "✗ TWILIO_ACCOUNT_SID — missing", "doctor"),
    ],
    "hamsa probe": [
        case(
            ExitCode.USAGE,
            "err",
            "HAMSA_API_KEY is not set",
            "hamsa",
            "probe",
            "--out",
            "{tmp}/t.jsonl",
            "--yes",
        ),
        case(
            ExitCode.USAGE, "err", "the following arguments are required: --out", "hamsa", "probe"
        ),
        case(
            ExitCode.USAGE,
            "err",
            "pass --yes",
            "hamsa",
            "probe",
            "--out",
            "{tmp}/t.jsonl",
            HAMSA_API_KEY=KEY,
        ),
        case(
            ExitCode.FAILURE,
            "err",
            "nothing written",
            "hamsa",
            "probe",
            "--out",
            "{tmp}/t.jsonl",
            "--yes",
            **NOWHERE,
        ),
    ],
    "emulate-hamsa": [
        case(
            ExitCode.USAGE,
            "err",
            "contradicts --model fast",
            "emulate-hamsa",
            "--realistic",
            "--model",
            "fast",
        ),
        case(ExitCode.USAGE, "err", "bad --fault", "emulate-hamsa", "--fault", "x=NOPE"),
        case(ExitCode.USAGE, "err", "cannot listen on", "emulate-hamsa", "--port", "{busy}"),
    ],
    "emulate-twilio": [
        case(
            ExitCode.USAGE,
            "err",
            "account_sid must be 'AC' followed by 32 hex digits",
            "emulate-twilio",
            TWILIO_ACCOUNT_SID="AC1",
        ),
        case(ExitCode.USAGE, "err", "cannot listen on", "emulate-twilio", "--port", "{busy}"),
    ],
}
"""The cases ``main()`` runs in this process, by command (the peerless ones)."""

TABLE = [(command, code, c) for command, cases in CASES.items() for code, c in cases]


@pytest.fixture
def ports() -> Iterator[dict[str, str]]:
    """``closed``: a bound port nothing listens on; ``busy``: a port something listens on."""
    with socket.socket() as closed, socket.socket() as busy:
        closed.bind(("127.0.0.1", 0))
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {"closed": str(closed.getsockname()[1]), "busy": str(busy.getsockname()[1])}


def fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def run_main(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``hamsa-bridge ARGV`` in this process: the process's exit status, stdout, stderr.

    The log handler ``main()`` installs (on the captured stderr) is removed afterwards, and the
    root level restored: later tests must not log to a closed capture."""
    root = logging.getLogger()
    level = root.level
    try:
        code = main(argv, env)
    except SystemExit as exc:  # argparse: --version, --help, a usage error
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.handlers[:] = [h for h in root.handlers if h.get_name() != HANDLER_NAME]
        root.setLevel(level)
    captured = capsys.readouterr()
    record_output(captured.out + captured.err)
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("command", "code", "given"),
    TABLE,
    ids=[f"{command}-{code.value}-{' '.join(c.argv[:4])}" for command, code, c in TABLE],
)
def test_exit_status_and_stream(
    command: str,
    code: ExitCode,
    given: Case,
    tmp_path: Path,
    ports: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray file of the working directory is read
    if "--png" in given.argv:
        monkeypatch.setenv("PATH", str(tmp_path))  # no graphviz `dot`
    (tmp_path / "broken.toml").write_text(BROKEN_FLOW, encoding="utf-8")
    values = {**ports, "tmp": str(tmp_path)}
    argv = [fill(word, values) for word in given.argv]
    env = {name: fill(value, values) for name, value in given.env.items()}
    status, out, err = run_main(argv, env, capsys)
    assert status == code, f"{command}: {out}\n{err}"
    message = fill(given.message, values)
    expected, other = (out, err) if given.stream == "out" else (err, out)
    assert message in expected, f"{command}: {out}\n{err}"
    assert message not in other


def test_every_code_of_the_table_is_exercised() -> None:
    """Each code has a case here (in the table, or one of the peer tests below)."""
    tested = {code for _, code, _ in TABLE} | {
        ExitCode.NOT_CONFIRMED,  # test_announce_outcomes_exit_0_3_4_or_1
        ExitCode.NOT_REACHED,  # ditto
        ExitCode.HAMSA_KEY_REJECTED,  # test_probe_exits_by_what_hamsa_said
        ExitCode.HAMSA_NO_BALANCE,  # ditto
        ExitCode.DECLINED,  # test_probe_declined_at_the_question_exits_7
        ExitCode.INTERRUPTED,  # test_ctrl_c_exits_130, test_servers_stop_gracefully_on_ctrl_c…
    }
    assert tested == set(ExitCode)
    assert set(MEANING) == set(ExitCode)


# --- with a peer: the emulators ---------------------------------------------------------------


def probe_env(emu: EmulatorServer) -> dict[str, str]:
    return {"HAMSA_WS_URL": emu.ws_url, "HAMSA_API_KEY": KEY}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "code", "message"),
    [
        ({}, ExitCode.OK, "trace written to"),
        ({"api_keys": frozenset({"another-key"})}, ExitCode.HAMSA_KEY_REJECTED, "rejected the key"),
        ({"balance_ok": False}, ExitCode.HAMSA_NO_BALANCE, "balance is empty"),
    ],
)
async def test_probe_exits_by_what_hamsa_said(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config: dict[str, Any],
    code: ExitCode,
    message: str,
) -> None:
    values: dict[str, Any] = {"api_keys": frozenset({KEY}), **config}
    argv = ["hamsa", "probe", "--out", str(tmp_path / "t.jsonl"), "--yes", "--phrases", "1"]
    async with EmulatorServer(EmulatorConfig(**values)) as emu:
        status, out, err = await asyncio.to_thread(run_main, argv, probe_env(emu), capsys)
    assert status == code, out + err
    assert message in (out if code == ExitCode.OK else err)


@pytest.mark.anyio
async def test_probe_declined_at_the_question_exits_7(tmp_path: Path) -> None:
    async with EmulatorServer(EmulatorConfig(api_keys=frozenset({KEY}))) as emu:
        args = ("hamsa", "probe", "--out", str(tmp_path / "t.jsonl"), "--phrases", "1")
        status, output = await run_cli_on_a_terminal(*args, env=probe_env(emu), typed="n\n")
        assert emu.state.requests == []
    assert status == ExitCode.DECLINED, output
    assert "nothing sent" in output


@pytest.mark.anyio
async def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    """Ctrl-C while ``hamsa probe`` waits at its question on a terminal."""
    controller, terminal = os.openpty()
    env = {**os.environ, "HAMSA_API_KEY": KEY, "HAMSA_WS_URL": "ws://127.0.0.1:9/x"}
    process: asyncio.subprocess.Process | None = None
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            *("hamsa", "probe", "--out", str(tmp_path / "t.jsonl")),
            env=env,
            stdin=terminal,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        async with asyncio.timeout(HANG):
            output = await process.stdout.readuntil(b"[y/N] ")
            process.send_signal(signal.SIGINT)
            rest, _ = await process.communicate()
    finally:
        os.close(terminal)
        os.close(controller)
        if process is not None and process.returncode is None:  # a hang: kill it, or a later
            # test gets its ResourceWarning
            process.kill()
            await process.wait()
    record_output((output + rest).decode())
    assert process.returncode == ExitCode.INTERRUPTED, (output + rest).decode()
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.anyio
async def test_ivr_warm_exits_0_once_every_prompt_is_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "BRIDGE_PROMPT_CACHE_DIR": str(tmp_path / "prompts"),
        "BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR": "5",
        "HAMSA_TRUNCATION_MS_PER_CHAR": "3",
    }
    config = EmulatorConfig(api_keys=frozenset({KEY}), ms_per_char=12)
    async with EmulatorServer(config) as emu:
        env |= probe_env(emu)
        status, out, err = await asyncio.to_thread(run_main, ["ivr", "warm", "clinic"], env, capsys)
    assert status == ExitCode.OK, out + err
    assert "0 not cached" in out
    assert err == ""


@pytest.mark.anyio
async def test_serve_exits_1_when_startup_fails() -> None:
    """A custom voice Hamsa does not know: the bridge listened, but could not start."""
    config = EmulatorConfig(api_keys=frozenset({KEY}), custom_voices=frozenset())
    async with EmulatorServer(config) as emu:
        env = {
            **probe_env(emu),
            "HAMSA_API_URL": emu.http_url,
            "HAMSA_PRELOAD_VOICES": "c803658e-ccec-47e7-ad0f-1caf9ba4babb",
            "TWILIO_AUTH_TOKEN": "t",
            **PUBLIC,
        }
        status, out, err = await run_cli_streams(
            "serve", "--host", "127.0.0.1", "--port", "0", env=env
        )
    assert status == ExitCode.FAILURE, out + err
    assert "startup_failed" in err


@pytest.mark.anyio
@pytest.mark.parametrize("command", ["serve", "emulate-hamsa", "emulate-twilio"])
async def test_servers_stop_gracefully_on_ctrl_c_and_exit_130(command: str) -> None:
    """A server stops gracefully on Ctrl-C (the bridge drains its calls first), then exits 130
    like any interrupted command (SIGTERM: 143)."""
    port = free_port()
    env = {
        **os.environ,
        "TWILIO_AUTH_TOKEN": "t",
        "HAMSA_API_KEY": KEY,
        "HAMSA_WARM_CONNECTIONS": "0",
        "BRIDGE_LOG_FORMAT": "console",
        **PUBLIC,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *(command, "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(HANG):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
            process.send_signal(signal.SIGINT)
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    record_output(output.decode())
    assert process.returncode == ExitCode.INTERRUPTED, output.decode()
    assert "Traceback" not in output.decode()


@pytest.mark.anyio
async def test_demo_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_wav = tmp_path / "demo.wav"
    argv = ["demo", "--fast", "--text", "مرحبا بك.", "--out", str(out_wav)]
    status, out, err = await asyncio.to_thread(run_main, argv, {}, capsys)
    assert status == ExitCode.OK, out + err
    assert out_wav.exists()


@pytest.mark.anyio
async def test_call_exits_0_or_1_by_whether_the_stream_came(tmp_path: Path) -> None:
    async with loopback(bridge_greeting="مرحبا بك.") as rig:
        url = rig.public_url + "/twiml/inbound"
        args = ("call", "--url", url, "--out", str(tmp_path / "call.wav"))
        ok = await run_cli_streams(*args, env={"TWILIO_AUTH_TOKEN": rig.auth_token})
        refused = await run_cli_streams(*args, env={"TWILIO_AUTH_TOKEN": "another-token"})
    assert ok[0] == ExitCode.OK, ok
    assert refused[0] == ExitCode.FAILURE, refused
    assert "webhook: HTTP 403" in refused[1]


# --- the outbound rig: bridge, Twilio and Hamsa emulators sharing a database --------------------


@pytest.mark.anyio
async def test_twilio_commands_and_doctor_exit_0_against_the_emulators(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path, callback_grace=2) as (lb, env):
        env = {
            **env,
            "HAMSA_API_KEY": lb.settings.hamsa_api_key.get_secret_value(),
            "HAMSA_WS_URL": lb.settings.hamsa_ws_url,
            "HAMSA_API_URL": lb.settings.hamsa_api_url,
        }
        show = await run_cli_streams("twilio", "show", "--json", env=env)
        configure = await run_cli_streams("twilio", "configure", "--dry-run", env=env)
        call_in = await run_cli_streams(
            "twilio", "call-in", "--out", str(tmp_path / "in.wav"), env=env
        )
        doctor = await run_cli_streams("doctor", "--json", env=env)
    for status, out, err in (show, configure, call_in, doctor):
        assert status == ExitCode.OK, out + err
    [number] = json.loads(show[1])["numbers"]
    assert (number["phone_number"], number["points_here"]) == (LOOPBACK_NUMBER, True)
    assert "nothing to change" in configure[1]
    assert "call completed" in call_in[1]
    assert json.loads(doctor[1])["ok"] is True


@pytest.mark.anyio
async def test_announce_outcomes_exit_0_3_4_or_1(tmp_path: Path) -> None:
    busy, unconfirmed = "+966501112234", "+966501112235"
    callees: dict[str, Outcome | str] = {busy: "busy", unconfirmed: Outcome(echo_marks=False)}
    async with outbound_rig(tmp_path, callees, callback_grace=2, bridge_confirm_wait=0.6) as (
        lb,
        env,
    ):
        env = {**env, "BRIDGE_LOG_LEVEL": "error"}
        heard = await run_cli_streams("announce", "--to", PERSON, "--text", TEXT, env=env)
        not_reached = await run_cli_streams("announce", "--to", busy, "--text", TEXT, env=env)
        played = await run_cli_streams("announce", "--to", unconfirmed, "--text", TEXT, env=env)
        # a caller ID that is not the account's: Twilio refuses the call (21210)
        refused = await run_cli_streams(
            "announce", "--to", PERSON, "--from", "+966509999999", "--text", TEXT, env=env
        )
    assert heard[0] == ExitCode.OK, heard
    assert "outcome: heard" in heard[1]
    assert not_reached[0] == ExitCode.NOT_REACHED, not_reached
    assert "outcome: busy" in not_reached[1]
    assert played[0] == ExitCode.NOT_CONFIRMED, played
    assert "outcome: answered" in played[1]
    assert refused[0] == ExitCode.FAILURE, refused
    assert "outcome: not-placed" in refused[1]
