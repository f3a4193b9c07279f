"""``hamsa-bridge announce`` as a user runs it (a subprocess) against the loopback rig: the
Twilio emulator places the call, the bridge hosted by the test plays it and records what
happened in the database the command shares."""

from __future__ import annotations

import json
import socket
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from bridge.dev.loopback import LOOPBACK_NUMBER, Loopback
from bridge.dev.twilio_emulator import Outcome
from tests.cli_support import outbound_rig, run_cli
from tests.timing import ANSWER_WAIT

pytestmark = pytest.mark.anyio

PERSON = "+966501112233"
TEXT = "موعدك غدا صباحا."


def rig(
    tmp_path: Path, outcomes: dict[str, Outcome | str] | None = None
) -> AbstractAsyncContextManager[tuple[Loopback, dict[str, str]]]:
    return outbound_rig(tmp_path, outcomes, callback_grace=2, bridge_confirm_wait=ANSWER_WAIT)


def lines(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)


async def test_a_heard_call_exits_0_and_prints_the_outcome(tmp_path: Path) -> None:
    async with rig(tmp_path) as (lb, env):
        code, output = await run_cli("announce", "--to", PERSON, "--text", TEXT, env=env)
        assert lb.twilio is not None
        [call] = lb.twilio.calls.values()
    assert code == 0, output
    printed = lines(output)
    assert printed["outcome"] == "heard"
    assert printed["plays"] == "1"
    assert printed["confirmation"] == "not asked"
    assert printed["duration"] == f"{call.info.duration} s"
    assert printed["call"] == call.sid
    assert "answered by" not in printed
    assert call.info.to == PERSON
    assert call.info.from_ == LOOPBACK_NUMBER


async def test_a_pressed_confirm_digit_is_reported(tmp_path: Path) -> None:
    callee = Outcome(answers=("1",))  # presses 1 when the confirmation prompt has played
    async with rig(tmp_path, {PERSON: callee}) as (lb, env):
        code, output = await run_cli(
            "announce", "--to", PERSON, "--text", TEXT, "--confirm-digit", "1", env=env
        )
    assert code == 0, output
    assert lines(output)["confirmation"] == "confirmed"


async def test_an_answering_machine_is_reported(tmp_path: Path) -> None:
    callee = Outcome(answered_by="machine_end_beep")
    async with rig(tmp_path, {PERSON: callee}) as (lb, env):
        code, output = await run_cli(
            "announce", "--to", PERSON, "--text", TEXT, "--machine-detection", env=env
        )
        assert lb.twilio is not None
        [call] = lb.twilio.calls.values()
    assert code == 0, output
    printed = lines(output)
    assert printed["answered by"] == "machine_end_beep"
    assert printed["plays"] == "1"
    assert call.machine_detection == "DetectMessageEnd"


async def test_a_stream_that_never_reaches_a_bridge_fails_naming_bridge_public_url(
    tmp_path: Path,
) -> None:
    # Twilio answers, but BRIDGE_PUBLIC_URL points at a port nothing listens on (bound, so no
    # other process can take it meanwhile): the stream and the status callbacks go nowhere.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
        async with rig(tmp_path) as (lb, env):
            env = {
                **env,
                "BRIDGE_PUBLIC_URL": nowhere,
                "BRIDGE_OUTCOME_POLL_INTERVAL": "0.5",
                "BRIDGE_LOG_LEVEL": "error",
            }
            code, output = await run_cli(
                "announce", "--to", PERSON, "--text", TEXT, "--json", env=env
            )
            again, text = await run_cli("announce", "--to", PERSON, "--text", TEXT, env=env)
            assert lb.twilio is not None
            streams = list(lb.twilio.streams)
    assert [s.ended_by for s in streams] == ["error", "error"]  # Twilio could not connect
    assert code == 1, output
    body = json.loads(output[output.index("{") :])
    assert (body["status"], body["outcome"], body["reason"]) == (
        "completed",
        "failed",
        "stream-never-connected",
    )
    assert body["error"].startswith("stream-never-connected: ")
    assert "BRIDGE_PUBLIC_URL" in body["error"]
    assert body["plays"] == 0
    assert again == 1, text
    printed = lines(text)
    assert printed["outcome"] == "failed"
    assert printed["error"].startswith("stream-never-connected: ")
    assert printed["error"].endswith(f"(BRIDGE_PUBLIC_URL={nowhere})")
    assert "plays" not in printed


async def test_a_final_mark_never_echoed_is_played_not_confirmed_heard(tmp_path: Path) -> None:
    async with rig(tmp_path, {PERSON: Outcome(echo_marks=False)}) as (lb, env):
        env = {**env, "BRIDGE_LOG_LEVEL": "error"}
        code, output = await run_cli("announce", "--to", PERSON, "--text", TEXT, "--json", env=env)
        again, text = await run_cli("announce", "--to", PERSON, "--text", TEXT, env=env)
    assert code == 3, output
    body = json.loads(output[output.index("{") :])
    assert (body["outcome"], body["reason"], body["error"]) == (
        "answered",
        "played-unconfirmed",
        None,
    )
    assert (body["plays"], body["plays_unconfirmed"]) == (0, 1)
    assert again == 3, text
    printed = lines(text)
    assert printed["outcome"] == "answered (played, not confirmed heard)"
    assert printed["plays"] == "0"
    assert printed["played, not confirmed heard"] == "1"


async def test_busy_exits_4_not_reached(tmp_path: Path) -> None:
    async with rig(tmp_path, {PERSON: "busy"}) as (lb, env):
        code, output = await run_cli("announce", "--to", PERSON, "--text", TEXT, env=env)
        assert lb.twilio is not None
        [call] = lb.twilio.calls.values()
    assert code == 4, output
    printed = lines(output)
    assert printed["outcome"] == "busy"
    assert printed["call"] == call.sid
    assert "plays" not in printed


async def test_json_prints_the_record(tmp_path: Path) -> None:
    async with rig(tmp_path, {PERSON: Outcome(status="no-answer", ring_seconds=0.1)}) as (lb, env):
        code, output = await run_cli(
            "announce",
            "--to",
            PERSON,
            "--text",
            TEXT,
            "--json",
            env={**env, "BRIDGE_LOG_LEVEL": "error"},
        )
        assert lb.twilio is not None
        [call] = lb.twilio.calls.values()
    assert code == 4, output
    body = json.loads(output[output.index("{") :])
    assert body["outcome"] == "no-answer"
    assert body["state"] == "ended"
    assert body["call_sid"] == call.sid
    assert body["to"] == PERSON
    assert body["id"].startswith("an_")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--to", "0501112233"], "--to"),
        (["--to", PERSON, "--from", "12"], "--from"),
        (["--to", PERSON, "--repeat", "9"], "--repeat"),
        (["--to", PERSON, "--confirm-digit", "2"], "--confirm-digit"),
    ],
)
async def test_invalid_requests_exit_2_naming_the_option(
    tmp_path: Path, args: list[str], option: str
) -> None:
    async with rig(tmp_path) as (lb, env):
        code, output = await run_cli("announce", *args, "--text", TEXT, env=env)
        assert lb.twilio is not None
        assert not lb.twilio.calls
    assert code == 2
    assert f"announce: {option}:" in output


async def test_numbers_outside_the_allowed_prefixes_are_refused(tmp_path: Path) -> None:
    env = {"BRIDGE_ALLOWED_PREFIXES": "+9665", "TWILIO_PHONE_NUMBER": LOOPBACK_NUMBER}
    code, output = await run_cli("announce", "--to", "+14155550100", "--text", TEXT, env=env)
    assert code == 2
    assert "--to: to +14155550100 is outside BRIDGE_ALLOWED_PREFIXES (+9665)" in output


async def test_missing_settings_are_named(tmp_path: Path) -> None:
    env = {
        "TWILIO_ACCOUNT_SID": "",
        "TWILIO_AUTH_TOKEN": "",
        "BRIDGE_PUBLIC_URL": "",
        "TWILIO_PHONE_NUMBER": LOOPBACK_NUMBER,
        "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    code, output = await run_cli("announce", "--to", PERSON, "--text", TEXT, env=env)
    assert code == 2
    assert "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, BRIDGE_PUBLIC_URL" in output
    assert "BRIDGE_DATABASE_URL" in output
