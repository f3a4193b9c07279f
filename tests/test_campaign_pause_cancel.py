"""``campaign pause`` and ``campaign cancel`` from another terminal, against a ``campaign run``
in its own process (the loopback rig of ``test_campaign_cli``, on SQLite and on PostgreSQL):
the runner notices within a lease renewal, dials nothing more, lets the calls in progress end
and settles them; a paused campaign resumes where it stopped, a cancelled one is refused."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import sys
import time
from pathlib import Path
from typing import Final

import pytest

from bridge.campaigns.export import NOT_CALLED
from bridge.campaigns.lease import HEARTBEAT
from bridge.dev.loopback import Loopback
from bridge.dev.twilio_emulator import Outcome
from bridge.store import CampaignState, ContactRecord, ContactState, Store
from tests.cli_support import run_cli
from tests.store_support import sqlite_only
from tests.test_campaign_cli import TEXT, rig, write
from tests.timing import HANG

pytestmark = pytest.mark.anyio

SLOW: Final = 3.0
"""Seconds the first numbers ring before answering: their calls are in progress when the
campaign is paused or cancelled."""


async def start_run(
    path: Path, env: dict[str, str], *args: str
) -> tuple[asyncio.subprocess.Process, str]:
    """``campaign run`` in its own process; the campaign's id from its first line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "campaign",
        "run",
        str(path),
        "--text",
        TEXT,
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    async with asyncio.timeout(HANG):
        while not (line := (await process.stdout.readline()).decode()).startswith("campaign "):
            assert line, "the run ended before printing its campaign"
    return process, line.split()[1]


async def ended(process: asyncio.subprocess.Process) -> str:
    async with asyncio.timeout(HANG):
        output, _ = await process.communicate()
    return output.decode()


def creations(lb: Loopback) -> list[float]:
    """When the emulator received each ``calls.create`` (this process's monotonic clock)."""
    assert lb.twilio is not None
    return [
        r.at for r in lb.twilio.requests if r.method == "POST" and r.path.endswith("/Calls.json")
    ]


def calls_per_number(lb: Loopback, numbers: list[str]) -> list[int]:
    assert lb.twilio is not None
    calls = lb.twilio.calls.values()
    return [sum(1 for c in calls if c.info.to == n) for n in numbers]


async def stored(
    env: dict[str, str], campaign_id: str
) -> tuple[CampaignState, list[ContactRecord]]:
    async with await Store.open(env["BRIDGE_DATABASE_URL"]) as store:
        campaign = await store.get_campaign(campaign_id)
        contacts = await store.contacts(campaign_id)
    assert campaign is not None
    assert campaign.lease_owner is None  # the runner let go
    return campaign.state, contacts


def numbers_file(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    numbers = [f"+9665000003{i:02d}" for i in range(count)]
    return write(tmp_path, [[n, f"n{i}", "Sunday"] for i, n in enumerate(numbers)]), numbers


@pytest.mark.timeout(120)
async def test_pause_stops_the_runner_after_its_calls_in_progress_and_resume_goes_on(
    tmp_path: Path, database_url: str
) -> None:
    path, numbers = numbers_file(tmp_path, 20)
    slow: dict[str, Outcome | str] = {n: Outcome(ring_seconds=SLOW) for n in numbers[:2]}
    async with rig(tmp_path, database_url, slow) as (lb, env):
        assert lb.twilio is not None
        process, campaign_id = await start_run(path, env, "--cps", "2")
        async with asyncio.timeout(HANG):
            await lb.twilio.wait_until(lambda s: len(s.calls) >= 2)
        code, said = await run_cli("campaign", "pause", campaign_id, env=env)
        paused = time.monotonic()  # the state changed in the store before this
        assert code == 0, said
        assert f"campaign {campaign_id} (numbers " in said
        assert "paused: its runner " in said
        assert f"`hamsa-bridge campaign resume {campaign_id}` goes on" in said
        text = await ended(process)
        assert process.returncode == 130, text  # stopped before its end
        assert f"campaign {campaign_id} paused: " in text
        assert f"`hamsa-bridge campaign resume {campaign_id}` goes on where it stopped" in text
        # noticed at the next lease renewal: no call created later
        assert max(creations(lb)) < paused + HEARTBEAT + 1.5
        dialled = {c.info.to for c in lb.twilio.calls.values()}
        assert 2 <= len(dialled) < len(numbers)
        state, contacts = await stored(env, campaign_id)
        assert state is CampaignState.PAUSED
        # the calls in progress (ringing for SLOW s) ended and were settled before it stopped
        by_number = {c.number: c for c in contacts}
        assert {(by_number[n].state, by_number[n].outcome) for n in numbers[:2]} == {
            (ContactState.DONE, "heard")
        }
        assert {c.number for c in contacts if c.state is ContactState.DONE} == dialled
        assert {c.state for c in contacts if c.number not in dialled} == {ContactState.PENDING}

        code, status = await run_cli("campaign", "status", campaign_id, env=env)
        assert code == 0, status
        assert "state: paused\n" in status
        code, again = await run_cli("campaign", "pause", campaign_id, env=env)
        assert code == 0, again
        assert again.startswith(f"campaign {campaign_id} (numbers ")
        assert again.endswith(") is already paused\n")

        code, resumed = await run_cli("campaign", "resume", campaign_id, env=env)
        assert code == 0, resumed
        left, before = len(numbers) - len(dialled), len(dialled)
        assert f": resuming, {left} number(s) to call ({before} of {len(numbers)} done before)" in (
            resumed
        )
        assert f"finished: {left}/{left} number(s) done · heard {left} · " in resumed
        assert f"the whole campaign: {len(numbers)}/{len(numbers)} number(s) done" in resumed
        state, contacts = await stored(env, campaign_id)
        per_number = calls_per_number(lb, numbers)
    assert state is CampaignState.FINISHED
    assert per_number == [1] * len(numbers)  # each number called once, across the pause
    assert {(c.state, c.outcome) for c in contacts} == {(ContactState.DONE, "heard")}


@pytest.mark.timeout(120)
async def test_cancel_places_no_further_call_and_resume_refuses_it(
    tmp_path: Path, database_url: str
) -> None:
    path, numbers = numbers_file(tmp_path, 20)
    slow: dict[str, Outcome | str] = {n: Outcome(ring_seconds=SLOW) for n in numbers[:2]}
    async with rig(tmp_path, database_url, slow) as (lb, env):
        assert lb.twilio is not None
        process, campaign_id = await start_run(path, env, "--cps", "2", "--name", "clinic")
        async with asyncio.timeout(HANG):
            await lb.twilio.wait_until(lambda s: len(s.calls) >= 2)
        code, said = await run_cli("campaign", "cancel", "clinic", env=env)
        cancelled = time.monotonic()
        assert code == 0, said
        assert f"campaign {campaign_id} (clinic) cancelled: its runner " in said
        text = await ended(process)
        assert process.returncode == 130, text
        assert max(creations(lb)) < cancelled + HEARTBEAT + 1.5
        dialled = {c.info.to for c in lb.twilio.calls.values()}
        assert 2 <= len(dialled) < len(numbers)
        never = len(numbers) - len(dialled)
        assert (
            f"campaign {campaign_id} cancelled: {len(dialled)}/{len(numbers)} number(s) done"
            in (text)
        )
        assert f"{never} number(s) will not be called" in text
        state, contacts = await stored(env, campaign_id)
        assert state is CampaignState.CANCELLED
        assert all(c.state is not ContactState.ACTIVE for c in contacts)

        calls = len(lb.twilio.calls)
        code, refused = await run_cli("campaign", "resume", campaign_id, env=env)
        assert code == 1
        assert f"campaign {campaign_id} (clinic) was cancelled at " in refused
        assert "cannot be resumed" in refused
        code, nothing = await run_cli("campaign", "resume", env=env)
        assert (code, nothing.strip()) == (
            0,
            "no campaign to resume (every one is finished or cancelled)",
        )
        code, refused = await run_cli("campaign", "pause", "clinic", env=env)
        assert code == 1
        assert "is cancelled: there is nothing to pause" in refused
        assert len(lb.twilio.calls) == calls  # nothing more was dialled

        code, status = await run_cli("campaign", "status", "clinic", env=env)
        assert code == 0, status
        assert "state: cancelled at " in status
        out = tmp_path / "results.csv"
        code, written = await run_cli("campaign", "export", "clinic", "-o", str(out), env=env)
        assert code == 0, written
        per_number = calls_per_number(lb, numbers)
    with out.open(encoding="utf-8-sig", newline="") as f:
        rows = {r["number"]: r for r in csv.DictReader(f)}
    assert {rows[n]["outcome"] for n in dialled} == {"heard"}  # the slow ones included
    assert {rows[n]["outcome"] for n in set(numbers) - dialled} == {NOT_CALLED}
    assert per_number == [1 if n in dialled else 0 for n in numbers]


@sqlite_only
@pytest.mark.timeout(120)
async def test_cancel_settles_the_calls_a_stopped_runner_left_in_progress(
    tmp_path: Path, database_url: str
) -> None:
    path, numbers = numbers_file(tmp_path, 4)
    slow: dict[str, Outcome | str] = {numbers[0]: Outcome(ring_seconds=SLOW)}
    async with rig(tmp_path, database_url, slow) as (lb, env):
        assert lb.twilio is not None
        process, campaign_id = await start_run(path, env, "--cps", "1")
        async with asyncio.timeout(HANG):
            await lb.twilio.wait_until(lambda s: len(s.calls) >= 1)
        process.send_signal(signal.SIGINT)  # Ctrl-C: the first call still rings
        text = await ended(process)
        assert process.returncode == 130, text
        _, contacts = await stored(env, campaign_id)
        assert contacts[0].state is ContactState.ACTIVE
        calls = len(lb.twilio.calls)

        code, said = await run_cli("campaign", "cancel", campaign_id, env=env)
        assert code == 0, said
        in_flight = sum(1 for c in contacts if c.state is ContactState.ACTIVE)
        assert f"cancelled; settling the {in_flight} call(s) its last runner left in progress" in (
            said
        )
        assert f"campaign {campaign_id} cancelled: " in said
        state, contacts = await stored(env, campaign_id)
        assert len(lb.twilio.calls) == calls  # settled, nothing dialled
    assert state is CampaignState.CANCELLED
    assert (contacts[0].state, contacts[0].outcome) == (ContactState.DONE, "heard")
    assert all(c.state is not ContactState.ACTIVE for c in contacts)
