"""Reconciliation that cannot be fooled (issue 13): ``kill -9`` while a ``calls.create`` is in
flight, status callbacks lost for half of the numbers, calls answered and ended within a second
(so they are over by the time ``campaign resume`` looks), Twilio's ``date_created`` at whole
seconds. Every number is called exactly as often as its retries allow, every call Twilio saw
belongs to exactly one attempt, and the export agrees with Twilio's call log.

The kill lands inside the creation: the Twilio emulator holds the chosen ``calls.create``
(``before_create``) until the runner is dead, then creates the call, as Twilio does for a
client that went away. ``HAMSA_KILL_SEEDS=20`` runs 20 seeds instead of the suite's 3.
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import time
from pathlib import Path

import pytest

from bridge.announcements.spec import AttemptState
from bridge.campaigns.export import COLUMNS, export_rows
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import loopback
from bridge.dev.twilio_emulator import Outcome, TwilioEmulatorConfig
from bridge.dev.twilio_emulator.rest_model import Form
from bridge.store import ContactState, Store
from tests.test_campaign_durability import environment, start
from tests.timing import HANG

pytestmark = pytest.mark.anyio

NUMBERS = [f"+9665002{i:05d}" for i in range(30)]
INVALID = "12345"
RETRIES = 1
SEEDS = list(range(1, 1 + int(os.environ.get("HAMSA_KILL_SEEDS", "0")))) or [7, 13, 2026]


class CreateGate:
    """``before_create``: lets ``after - 1`` creations through, then holds the next one until
    :meth:`open` (the test kills the runner in between)."""

    def __init__(self) -> None:
        self._left: int | None = None
        self.holding = asyncio.Event()
        self._release = asyncio.Event()

    def arm(self, after: int) -> None:
        self._left = after
        self.holding = asyncio.Event()
        self._release = asyncio.Event()

    def open(self) -> None:
        self._left = None
        self._release.set()

    async def __call__(self, form: Form) -> None:
        if self._left is None:
            return
        self._left -= 1
        if self._left == 0:
            self.holding.set()
            await self._release.wait()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", SEEDS)
async def test_kill_while_creating_with_lost_callbacks_then_resume(
    tmp_path: Path, database_url: str, seed: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible
    path = tmp_path / "numbers.csv"
    rows = [[n, f"n{i}"] for i, n in enumerate(NUMBERS)]
    rows.insert(rng.randrange(len(rows)), [INVALID, "bad"])
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", "name"])
        writer.writerows(rows)
    shuffled = rng.sample(NUMBERS, len(NUMBERS))
    retried = set(shuffled[:6])
    outcomes: dict[str, Outcome | str] = {n: "busy" for n in shuffled[:3]}
    outcomes |= {n: Outcome(status="no-answer", ring_seconds=0.2) for n in shuffled[3:6]}
    silent = frozenset(rng.sample(NUMBERS, len(NUMBERS) // 2))
    gate = CreateGate()
    log = tmp_path / "runner.log"
    kills: list[tuple[int, float]] = []
    async with loopback(
        EmulatorConfig(ms_per_char=5),
        twilio=TwilioEmulatorConfig(
            outcomes=outcomes,
            default_outcome=Outcome(hangup_after=0.6),  # answered, over within a second
            ring_seconds=0.05,
            drop_status_callbacks=silent,
        ),
        bridge_database_url=database_url,
        hamsa_truncation_ms_per_char=3.0,
        bridge_prompt_cache_min_ms_per_char=10.0,
    ) as lb:
        assert lb.twilio is not None
        twilio = lb.twilio
        twilio.before_create = gate
        env = environment(lb, database_url) | {"BRIDGE_CALLBACK_GRACE": "1"}
        started = time.monotonic()
        for kill in range(rng.randint(3, 6)):
            if kill == 0:
                args = ["run", str(path), "--text", "مرحبا {name}", "--skip-invalid"]
                args += ["--cps", "5", "--max-concurrent", "6", "--retries", str(RETRIES)]
                args += ["--retry-delay", "2", "--name", "harsh"]
            else:
                args = ["resume", "harsh"]
            gate.arm(rng.randint(1, 5))
            process = await start(env, log, *args)
            async with asyncio.timeout(HANG):
                await gate.holding.wait()  # a calls.create is in flight, held
            assert process.returncode is None, log.read_text()
            process.kill()
            await process.wait()
            gate.open()  # Twilio creates the call of a client that is gone
            kills.append((kill, time.monotonic() - started))
            if rng.random() < 0.5:  # let every call end (callbacks or not) before resuming
                async with asyncio.timeout(HANG):
                    await twilio.wait_until(
                        lambda s: all(c.status.is_final for c in s.calls.values())
                    )
        process = await start(env, log, "resume", "harsh")
        async with asyncio.timeout(120):
            code = await process.wait()
        assert code == 0, log.read_text()[-5000:]
        async with asyncio.timeout(HANG):
            await twilio.wait_until(lambda s: all(c.finished.is_set() for c in s.calls.values()))
        calls = dict(twilio.calls)
        async with await Store.open(database_url) as store:
            [campaign] = await store.list_campaigns()
            contacts = await store.contacts(campaign.id)
            attempts = await store.attempts(campaign.id)
    total = time.monotonic() - started

    per_number: dict[str, list[str]] = {}
    for sid, call in sorted(calls.items(), key=lambda item: item[1].info.date_created):
        per_number.setdefault(call.info.to, []).append(sid)
    print(
        f"\nseed {seed}: {len(kills)} kills in creates, {len(calls)} calls, "
        f"{len(attempts)} attempts, {total:.1f} s"
    )
    assert campaign.state == "finished"
    assert {c.state for c in contacts if c.number != INVALID} == {ContactState.DONE}
    # every number called exactly as often as allowed, never more
    for n in NUMBERS:
        assert len(per_number.get(n, [])) == (1 + RETRIES if n in retried else 1), (n, seed)
    assert INVALID not in per_number
    # every call the emulator saw belongs to exactly one attempt
    sids = [a.call_sid for a in attempts if a.call_sid]
    assert sorted(sids) == sorted(calls)
    # a row never says "not placed" while holding evidence of a call
    for attempt in attempts:
        assert attempt.final, attempt
        evidence = attempt.call_sid or attempt.stream_started_at is not None or attempt.plays
        assert bool(evidence) == (attempt.state is not AttemptState.NOT_PLACED), attempt
    # the export agrees with Twilio's call log
    _, exported = export_rows(contacts, attempts)
    columns = {name: i for i, name in enumerate(COLUMNS)}
    for row in exported:
        number = row[columns["number"]]
        placed = per_number.get(number, [])
        assert row[columns["attempts"]] == str(len(placed)), (row, seed)
        assert row[columns["call_sid"]] == (placed[-1] if placed else ""), (row, seed)
