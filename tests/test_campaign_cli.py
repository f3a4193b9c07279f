"""``hamsa-bridge campaign …`` as a user runs it (subprocesses) against the loopback rig: a file
with problems is refused whole; a good one runs with live progress, then ``status``, ``export``
and ``list`` describe it; Ctrl-C stops it cleanly and ``resume`` finishes it. The runs share
the store with the rig on SQLite and on PostgreSQL (``database_url``)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import signal
import socket
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from bridge.campaigns.commands import _export_target
from bridge.cli import build_parser
from bridge.dev.loopback import LOOPBACK_NUMBER, Loopback
from bridge.dev.twilio_emulator import Outcome
from bridge.store import ContactState, Store
from tests.cli_support import outbound_rig, run_cli
from tests.timing import HANG

pytestmark = pytest.mark.anyio

TEXT = "مرحبا {name}، موعدك يوم {day}."
OFFLINE = {  # nothing is contacted before the file is accepted
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "token",
    "TWILIO_API_URL": "http://127.0.0.1:9",
    "TWILIO_PHONE_NUMBER": LOOPBACK_NUMBER,
    "BRIDGE_PUBLIC_URL": "http://127.0.0.1:9",
}


def write(tmp_path: Path, rows: list[list[str]]) -> Path:
    path = tmp_path / "numbers.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as out:
        csv.writer(out).writerows([["Phone", "name", "day"], *rows])
    return path


def rig(
    tmp_path: Path, database: str, outcomes: dict[str, Outcome | str] | None = None
) -> AbstractAsyncContextManager[tuple[Loopback, dict[str, str]]]:
    return outbound_rig(tmp_path, outcomes, callback_grace=1, database=database)


async def test_a_file_with_invalid_rows_is_refused_whole(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            ["+966500000001", "Ali", "Sunday"],
            ["0500000002", "Sara", "Monday"],  # line 3
            ["+966500000001", "Ali again", "Sunday"],  # line 4: duplicate
            ["+966500000004", "", "Tuesday"],  # line 5: empty {name}
        ],
    )
    env = {**OFFLINE, "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/bridge.db"}
    code, output = await run_cli("campaign", "run", str(path), "--text", TEXT, env=env)
    assert code == 2  # a usage error: nothing was created
    assert "invalid: line 3: number '0500000002' is not an E.164 number" in output
    assert "invalid: line 5: empty {name}" in output
    assert "duplicate: line 4: +966500000001 is also on line 2" in output
    assert "2 invalid row(s), nothing was dialled" in output
    assert "--skip-invalid" in output
    code, output = await run_cli("campaign", "list", env=env)
    assert (code, output.strip()) == (
        0,
        "no campaigns yet: hamsa-bridge campaign run FILE.csv --text '…'",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "hello {name"], "unmatched '{' at character 7"),
        (["--text", "hello {surname}"], "the text uses {surname} but numbers.csv has no such"),
        (["--text", "hi", "--window", "9-5"], "expected HH:MM-HH:MM"),
        (["--text", "hi", "--retry-on", "busy,maybe"], "--retry-on: unknown outcome(s) maybe"),
        (["--text", "hi", "--timezone", "Moon/Base"], "unknown time zone 'Moon/Base'"),
        (["--text", "hi", "--max-concurrent", "0"], "--max-concurrent must be at least 1"),
        (["--text", "hi", "--ring-timeout", "2"], "ring_timeout must be 5 to 600 seconds"),
        (["--text-file", "missing.txt"], "--text-file missing.txt"),
    ],
)
async def test_text_and_option_problems_are_named(
    tmp_path: Path, args: list[str], message: str
) -> None:
    path = write(tmp_path, [["+966500000001", "Ali", "Sunday"]])
    env = {**OFFLINE, "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/bridge.db"}
    code, output = await run_cli("campaign", "run", str(path), *args, env=env)
    assert code == 2
    assert message in output


async def test_missing_settings_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, [["+966500000001", "Ali", "Sunday"]])
    env = {**OFFLINE, "BRIDGE_PUBLIC_URL": "", "BRIDGE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    code, output = await run_cli("campaign", "run", str(path), "--text", TEXT, env=env)
    assert code == 2
    assert "set BRIDGE_PUBLIC_URL" in output


@pytest.mark.timeout(90)
async def test_run_then_status_export_and_list(tmp_path: Path, database_url: str) -> None:
    path = write(
        tmp_path,
        [
            ["+966500000001", "Ali", "Sunday"],
            ["+966 50 000 0002", "Sara", "Monday"],
            ["not a number", "Omar", "Monday"],  # line 4: invalid, skipped
            ["+966500000001", "Ali again", "Sunday"],  # line 5: duplicate
            ["+966500000005", "Huda", "Friday"],  # busy
        ],
    )
    async with rig(tmp_path, database_url, {"+966500000005": "busy"}) as (lb, env):
        code, output = await run_cli(
            "campaign",
            "run",
            str(path),
            "--text",
            TEXT,
            "--skip-invalid",
            "--retries",
            "1",
            "--retry-delay",
            "0.2",
            "--cps",
            "5",
            "--name",
            "clinic",
            env=env,
        )
        assert code == 0, output
        # stderr: the rows not called; stdout: the campaign's id first
        assert "invalid: line 4: number 'not a number' is not an E.164 number" in output
        assert "duplicate: line 5: +966500000001 is also on line 2: called once" in output
        first = next(line for line in output.splitlines() if line.startswith("campaign cp_"))
        campaign_id = first.split()[1]
        assert first.endswith("3 number(s) to call, 1 invalid, 1 duplicate")
        # progress (not a terminal: plain lines), then the summary: the same 3 numbers
        progress = [line for line in output.splitlines() if line.startswith("progress: ")]
        assert progress[0].startswith("progress: 0/3 done · heard 0 · answered 0 · busy 0")
        assert progress[-1].startswith("progress: 3/3 done · ")
        assert "heard 2 · answered 0 · busy 1 · no-answer 0" in progress[-1]
        assert all("/3 done" in line for line in progress)
        assert "\x1b" not in output
        assert (
            f"campaign {campaign_id} finished: 3/3 number(s) done · heard 2 · answered 0 · busy 1"
            in output
        )
        assert f"results: hamsa-bridge campaign export {campaign_id} --out results.csv" in output
        assert lb.twilio is not None
        calls = {c.sid: c for c in lb.twilio.calls.values()}
        texts = [r.text for r in lb.hamsa.requests]

        code, status = await run_cli("campaign", "status", "clinic", env=env)
        assert code == 0, status
        assert f"campaign {campaign_id} (clinic)" in status
        assert "state: finished" in status
        assert "runner: none" in status
        assert "numbers: 3 to call, 1 invalid, 1 duplicate" in status
        assert "progress: 3/3 number(s) done · heard 2 · answered 0 · busy 1" in status
        code, as_json = await run_cli("campaign", "status", campaign_id, "--json", env=env)
        assert code == 0, as_json
        described = json.loads(as_json)
        assert (described["id"], described["name"], described["state"]) == (
            campaign_id,
            "clinic",
            "finished",
        )
        assert described["numbers"] == {
            "to_call": 3, "done": 3, "left": 0, "invalid": 1, "duplicate": 1
        }  # fmt: skip
        assert (described["counts"]["heard"], described["counts"]["busy"]) == (2, 1)
        assert described["runner"] is None

        out = tmp_path / "results.csv"
        code, written = await run_cli("campaign", "export", "clinic", "--out", str(out), env=env)
        assert code == 0, written
        assert written == f"wrote 5 row(s) of campaign {campaign_id} (clinic) to {out}\n"
        assert out.read_bytes().startswith(b"\xef\xbb\xbfnumber,")  # the BOM, for Excel
        with out.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
        # the form of the previous release still works, with a note on stderr
        old = tmp_path / "old.csv"
        code, written = await run_cli(
            "campaign", "export", str(old), "--campaign", campaign_id, env=env
        )
        assert code == 0, written
        assert "deprecated: `campaign export OUT.csv [--campaign ID|NAME]`" in written
        assert old.read_bytes() == out.read_bytes()
        code, written = await run_cli("campaign", "export", "-o", str(old), "--no-bom", env=env)
        assert code == 0, written
        assert old.read_bytes() == out.read_bytes()[3:]  # the newest campaign, without the BOM
        code, written = await run_cli("campaign", "export", env=env)
        assert (code, written.strip()) == (
            2,
            "hamsa-bridge campaign: export: where to? pass --out OUT.csv",
        )

        code, listing = await run_cli("campaign", "list", env=env)
        assert code == 0
        assert f"{campaign_id}" in listing
        assert "finished   3/3  clinic" in listing
        code, listed = await run_cli("campaign", "list", "--json", env=env)
        assert code == 0, listed
        [entry] = json.loads(listed)
        assert (entry["id"], entry["state"], entry["to_call"], entry["done"]) == (
            campaign_id,
            "finished",
            3,
            3,
        )
        code, resumed = await run_cli("campaign", "resume", env=env)
        assert (code, resumed.strip()) == (
            0,
            "no campaign to resume (every one is finished or cancelled)",
        )

    # the rendered text was spoken
    assert "مرحبا Ali، موعدك يوم Sunday." in texts
    # the export: one row per input row, in order, with the row's variables
    summary = [(r["number"], r["attempts"], r["outcome"], r["name"]) for r in rows]
    assert summary == [
        ("+966500000001", "1", "heard", "Ali"),
        ("+966500000002", "1", "heard", "Sara"),
        ("not a number", "0", "invalid", "Omar"),
        ("+966500000001", "0", "duplicate", "Ali again"),
        ("+966500000005", "2", "busy", "Huda"),
    ]
    assert rows[2]["error"].startswith("line 4: number 'not a number' is not an E.164 number")
    assert rows[3]["error"] == "line 5: +966500000001 is also on line 2: called once"
    assert rows[0]["duration"] == str(calls[rows[0]["call_sid"]].info.duration)
    assert calls[rows[4]["call_sid"]].info.to == "+966500000005"
    assert [r["day"] for r in rows] == ["Sunday", "Monday", "Monday", "Sunday", "Friday"]


@pytest.mark.timeout(90)
async def test_calls_whose_stream_never_connects_are_exported_with_the_error(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path, [["+966500000001", "Ali", "Sunday"], ["+966500000002", "Sara", "Monday"]]
    )
    database = f"sqlite:///{tmp_path}/bridge.db"
    with socket.socket() as closed:  # bound, never listening: nothing answers there
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
        async with rig(tmp_path, database) as (lb, env):
            env = {**env, "BRIDGE_PUBLIC_URL": nowhere, "BRIDGE_OUTCOME_POLL_INTERVAL": "0.5"}
            code, output = await run_cli(
                "campaign",
                "run",
                str(path),
                "--text",
                TEXT,
                "--retries",
                "1",
                "--retry-delay",
                "0.2",
                "--retry-on",
                "busy,stream-never-connected",
                env=env,
            )
            assert code == 0, output
            out = tmp_path / "results.csv"
            code, written = await run_cli("campaign", "export", "--out", str(out), env=env)
            assert code == 0, written
            assert lb.twilio is not None
            streams = list(lb.twilio.streams)
    assert (
        "finished: 2/2 number(s) done · heard 0 · answered 0 · busy 0 · no-answer 0 · failed 2"
        in output
    )
    assert len(streams) == 4  # each contact called twice: --retry-on named the reason
    assert {s.ended_by for s in streams} == {"error"}
    with out.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["attempts"], r["outcome"], r["reason"]) for r in rows] == [
        ("2", "failed", "stream-never-connected")
    ] * 2
    assert all(r["error"].startswith("stream-never-connected: ") for r in rows)
    assert all("BRIDGE_PUBLIC_URL" in r["error"] for r in rows)


@pytest.mark.timeout(90)
async def test_ctrl_c_stops_dialling_and_resume_finishes_without_calling_twice(
    tmp_path: Path, database_url: str
) -> None:
    numbers = [f"+9665000001{i:02d}" for i in range(6)]
    path = write(tmp_path, [[n, f"n{i}", "Sunday"] for i, n in enumerate(numbers)])
    async with rig(tmp_path, database_url) as (lb, env):
        assert lb.twilio is not None
        twilio = lb.twilio
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            "campaign",
            "run",
            str(path),
            "--text",
            TEXT,
            "--cps",
            "2",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(HANG):
            await twilio.wait_until(lambda s: len(s.calls) >= 2)
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(HANG):
            output, _ = await process.communicate()
        text = output.decode()
        assert process.returncode == 130, text
        campaign_id = text.split()[1]
        assert f"`hamsa-bridge campaign resume {campaign_id}`" in text
        dialled = len(twilio.calls)
        assert dialled < len(numbers)
        async with await Store.open(env["BRIDGE_DATABASE_URL"]) as store:
            stopped = await store.get_campaign(campaign_id)
        assert stopped is not None
        assert stopped.lease_owner is None  # released: resume need not wait
        assert stopped.state == "running"
        done_before = sum(
            n for key, n in stopped.counts.items() if key not in ("pending", "active")
        )

        code, resumed = await run_cli("campaign", "resume", env=env)
        assert code == 0, resumed
        assert resumed.startswith(f"campaign {campaign_id} (numbers ")
        header = resumed.splitlines()[0]
        left = len(numbers) - done_before
        assert header.endswith(
            f": resuming, {left} number(s) to call ({done_before} of {len(numbers)} done before)"
        )
        # the bar and the summary count the same numbers as the header
        progress = [line for line in resumed.splitlines() if line.startswith("progress: ")]
        assert progress
        assert all(f"/{left} done" in line for line in progress)
        assert f"finished: {left}/{left} number(s) done · " in resumed
        whole = f"the whole campaign: {len(numbers)}/{len(numbers)} number(s) done · "
        assert (whole in resumed) == (done_before > 0)  # said when it differs from the run
        async with await Store.open(env["BRIDGE_DATABASE_URL"]) as store:
            contacts = await store.contacts(campaign_id)
        per_number = [sum(1 for c in twilio.calls.values() if c.info.to == n) for n in numbers]
    assert per_number == [1] * len(numbers)
    assert {(c.state, c.outcome) for c in contacts} == {(ContactState.DONE, "heard")}


def test_every_campaign_parser_follows_the_help_conventions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A description, help on every argument, defaults shown, examples (bridge.cli_format),
    and nothing wider than an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps the options' help to it
    root = build_parser()
    [commands] = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    campaign = commands.choices["campaign"]
    [sub] = [a for a in campaign._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = {"campaign": campaign} | {f"campaign {n}": p for n, p in sub.choices.items()}
    assert set(sub.choices) == {"run", "resume", "pause", "cancel", "status", "export", "list"}
    for name, parser in parsers.items():
        assert parser.description, name
        assert "examples:" in (parser.epilog or ""), name
        rendered = parser.format_help()
        assert max(len(line) for line in rendered.splitlines()) <= 80, name
        for action in parser._actions:
            assert action.help, (name, action.dest)
            if action.default not in (None, False, argparse.SUPPRESS):
                help_line = parser._get_formatter()._expand_help(action)  # type: ignore[attr-defined]
                assert "default" in help_line, (name, action.dest)
    # every subcommand that names a campaign takes the same optional or required positional
    for name in ("resume", "pause", "cancel", "status", "export"):
        [positional] = [a for a in sub.choices[name]._actions if not a.option_strings]
        assert (positional.dest, positional.metavar) == ("campaign", "ID|NAME"), name


@pytest.mark.parametrize(
    ("argv", "target", "deprecated"),
    [
        (["cp_1", "--out", "r.csv"], ("cp_1", Path("r.csv")), False),
        (["clinic", "-o", "r.csv"], ("clinic", Path("r.csv")), False),
        (["-o", "r.csv"], (None, Path("r.csv")), False),
        (["r.csv"], (None, Path("r.csv")), True),  # the previous release's form
        (["out/results", "--campaign", "cp_1"], ("cp_1", Path("out/results")), True),
        (["--campaign", "cp_1", "-o", "r.csv"], ("cp_1", Path("r.csv")), True),
        (["cp_1"], "where to? pass --out OUT.csv", False),  # never a file named cp_1
        (["cp_1", "--campaign", "cp_2", "-o", "r.csv"], "two campaigns given", False),
    ],
)
def test_export_names_its_campaign_like_the_other_subcommands(
    argv: list[str], target: tuple[str | None, Path] | str, deprecated: bool
) -> None:
    args = build_parser().parse_args(["campaign", "export", *argv])
    err = io.StringIO()
    found = _export_target(args, err)
    if isinstance(target, str):
        assert isinstance(found, str)
        assert found.startswith(target)
    else:
        assert found == target
    assert ("deprecated: `campaign export OUT.csv" in err.getvalue()) == deprecated
