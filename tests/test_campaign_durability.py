"""``kill -9`` at random moments, then ``campaign resume`` until the campaign ends: every number
reaches a final outcome, none is called more often than its retries allow, and every call
Twilio placed belongs to exactly one recorded attempt.

The campaign runs as ``hamsa-bridge campaign run`` / ``resume`` subprocesses, exactly as a user
runs them; the Twilio emulator, the bridge and the Hamsa emulator are hosted by the test process
on loopback and share the store with the runner: a SQLite file, and a PostgreSQL database
(``database_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import random
import sys
import time
from pathlib import Path

import pytest

from bridge.announcements.spec import AttemptState
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import Loopback, loopback
from bridge.dev.twilio_emulator import Outcome, TwilioEmulatorConfig
from bridge.store import ContactState, Store
from tests.timing import HANG

pytestmark = pytest.mark.anyio

SEED = 20261122
NUMBERS = [f"+9665001{i:05d}" for i in range(24)]
BUSY = set(NUMBERS[2:5]) | {NUMBERS[17]}
NO_ANSWER = {NUMBERS[7], NUMBERS[20]}
FAILED = {NUMBERS[11]}
RETRIES = 1
KILLS = 6


def environment(lb: Loopback, database: str) -> dict[str, str]:
    settings = lb.settings
    return {
        "TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "TWILIO_AUTH_TOKEN": lb.auth_token,
        "TWILIO_API_URL": settings.twilio_api_url,
        "TWILIO_PHONE_NUMBER": settings.twilio_phone_number,
        "BRIDGE_PUBLIC_URL": lb.public_url,
        "BRIDGE_DATABASE_URL": database,
        "BRIDGE_CALLBACK_GRACE": "0.5",
        "BRIDGE_OUTCOME_POLL_INTERVAL": "0.25",
        # the account's budget above the campaigns' --cps: they are paced by their own option
        "BRIDGE_CALLS_PER_SECOND": "10",
        "BRIDGE_LOG_LEVEL": "info",
        "BRIDGE_LOG_FORMAT": "json",
    }


async def start(env: dict[str, str], log: Path, *args: str) -> asyncio.subprocess.Process:
    """``hamsa-bridge campaign ARGS``: stdout piped (its first line says the campaign is
    there), stderr (progress and logs) appended to ``log``."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            "campaign",
            *args,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=out,
        )


@pytest.mark.timeout(120)
async def test_kill_minus_nine_at_random_moments_then_resume_until_finished(
    tmp_path: Path, database_url: str
) -> None:
    rng = random.Random(SEED)  # noqa: S311 - reproducible kill moments
    path = tmp_path / "numbers.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", "name"])
        writer.writerows([n, f"n{i}"] for i, n in enumerate(NUMBERS))
    outcomes: dict[str, Outcome | str] = {n: "busy" for n in BUSY}
    outcomes |= {n: Outcome(status="no-answer", ring_seconds=0.3) for n in NO_ANSWER}
    outcomes |= {n: "failed" for n in FAILED}
    database = database_url
    log = tmp_path / "runner.log"
    kills: list[tuple[str, float, bool, int]] = []
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        twilio=TwilioEmulatorConfig(outcomes=outcomes, ring_seconds=0.3),
        bridge_database_url=database,
        hamsa_truncation_ms_per_char=3.0,
        bridge_prompt_cache_min_ms_per_char=10.0,
    ) as lb:
        assert lb.twilio is not None
        twilio = lb.twilio
        env = environment(lb, database)
        started = time.monotonic()
        for kill in range(KILLS):
            if kill == 0:
                args = ["run", str(path), "--text", "مرحبا {name}، هذا تذكير."]
                args += ["--cps", "4", "--max-concurrent", "4", "--retries", str(RETRIES)]
                args += ["--retry-delay", "0.3", "--name", "durable"]
            else:
                args = ["resume", "durable"]
            process = await start(env, log, *args)
            began = time.monotonic()
            if kill == 0:  # the campaign exists once its id is printed
                assert process.stdout is not None
                async with asyncio.timeout(HANG):
                    first = await process.stdout.readline()
                assert first.startswith(b"campaign cp_"), log.read_text()
            if kill % 2:
                # a random moment of the run
                await asyncio.sleep(rng.uniform(0.3, 4.5))
            else:
                # right after Twilio received a creation: the runner is between calls.create
                # and recording the CallSid (the uncertain window)
                seen = len(twilio.calls)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(6):
                        await twilio.wait_until(lambda s, n=seen: len(s.calls) > n)
            alive = process.returncode is None
            process.kill()
            await process.wait()
            what = f"{args[0]}/{'random' if kill % 2 else 'after-create'}"
            kills.append((what, time.monotonic() - began, alive, len(twilio.calls)))
        process = await start(env, log, "resume")
        async with asyncio.timeout(60):
            code = await process.wait()
        total = time.monotonic() - started
        assert code == 0, log.read_text()
        async with asyncio.timeout(HANG):  # the last status callbacks
            await twilio.wait_until(lambda s: all(c.finished.is_set() for c in s.calls.values()))
        calls = dict(twilio.calls)
        async with await Store.open(database) as store:
            [campaign] = await store.list_campaigns()
            contacts = await store.contacts(campaign.id)
            attempts = await store.attempts(campaign.id)

    print(
        "\nkills: "
        + ", ".join(f"{what} +{after:.1f}s ({made} calls)" for what, after, _, made in kills)
        + f"; {len(calls)} calls, {len(attempts)} attempts, {total:.1f} s in all"
    )
    # every kill hit a live runner of an unfinished campaign
    assert all(alive for _, _, alive, _ in kills)
    assert kills[-1][3] < len(calls)
    assert campaign.state == "finished"
    # every number reached a final outcome
    assert {c.state for c in contacts} == {ContactState.DONE}
    outcome = {c.number: c.outcome for c in contacts}
    for n in NUMBERS:
        expected = "busy" if n in BUSY else "no-answer" if n in NO_ANSWER else None
        expected = expected or ("failed" if n in FAILED else "heard")
        assert outcome[n] == expected, n
    # no number called more often than 1 + retries; retried outcomes used every retry
    per_number: dict[str, list[str]] = {}
    for sid, call in calls.items():
        per_number.setdefault(call.info.to, []).append(sid)
    for n in NUMBERS:
        placed = per_number.get(n, [])
        retried = n in BUSY | NO_ANSWER | FAILED
        assert len(placed) == (1 + RETRIES if retried else 1), (n, placed)
    # no two attempts share a CallSid; every call at Twilio belongs to exactly one attempt
    sids = [a.call_sid for a in attempts if a.call_sid]
    assert len(sids) == len(set(sids))
    assert sorted(sids) == sorted(calls)
    # attempts that never became calls are NOT_PLACED and carry no CallSid
    for attempt in attempts:
        assert attempt.final
        assert (attempt.call_sid is None) == (attempt.state is AttemptState.NOT_PLACED)
