"""The campaign runner against the Twilio emulator (and, where calls must be answered and
played, the loopback bridge sharing the database): pacing, concurrency, retries, the export,
the uncertain window between recording an attempt and Twilio creating its call, the lease and
the calling window. They run on SQLite and on PostgreSQL (``database_url``), except where the
time a second run takes would go to the runner's timing rather than the store (``sqlite_only``:
the fifty-number run's pacing, the lost ``calls.create``'s backoff, waiting out a lease, the
calling window): what those do with the store, the tests run on both do too."""

from __future__ import annotations

import asyncio
import csv
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.announcements.limiter import spacing
from bridge.announcements.options import AnnouncementOptions
from bridge.announcements.placing import call_request
from bridge.announcements.spec import AttemptState
from bridge.campaigns.config import CampaignConfig
from bridge.campaigns.contacts import load_contacts, prepare_contacts
from bridge.campaigns.export import write_export
from bridge.campaigns.lease import Lease
from bridge.campaigns.progress import Counts
from bridge.campaigns.runner import CampaignRunner
from bridge.campaigns.template import Template
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import LOOPBACK_NUMBER, Loopback, loopback
from bridge.dev.twilio_emulator import CallRecord, Outcome, TwilioEmulatorConfig
from bridge.errors import CampaignBusy, TwilioApiError
from bridge.settings import Settings
from bridge.store import CampaignRecord, ContactState, Store
from bridge.twilio_rest_client import CallSnapshot, TwilioApi
from tests.store_support import sqlite_only
from tests.timing import HANG, most_within

pytestmark = pytest.mark.anyio

# 25 ms of audio per character keeps calls short; the guards are scaled to match.
FAST = {
    "hamsa_truncation_ms_per_char": 3.0,
    "bridge_prompt_cache_min_ms_per_char": 10.0,
    "bridge_confirm_wait": 0.6,
    "bridge_callback_grace": 0.5,
    "bridge_outcome_poll_interval": 0.25,
    # the account's budget above every campaign's --cps here: their own pace is what is tested
    "bridge_calls_per_second": 10.0,
}
TEXT = "مرحبا {name}، موعدك غدا."


def number(i: int) -> str:
    return f"+9665000{i:05d}"


@asynccontextmanager
async def rig(database_url: str, twilio: TwilioEmulatorConfig) -> AsyncIterator[Loopback]:
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        twilio=twilio,
        bridge_database_url=database_url,
        **FAST,
    ) as lb:
        yield lb


async def create(
    store: Store, settings: Settings, tmp_path: Path, numbers: list[str], **options: Any
) -> CampaignRecord:
    """A campaign made as ``campaign run`` makes it (through the CSV)."""
    path = tmp_path / "numbers.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["number", "name"])
        writer.writerows([n, f"name{i}"] for i, n in enumerate(numbers))
    config = CampaignConfig(
        text=TEXT,
        from_=LOOPBACK_NUMBER,
        options=AnnouncementOptions("Majd", "ksa", "ar", ring_timeout=5),
        **options,
    )
    prepared = prepare_contacts(
        load_contacts(path),
        Template.parse(TEXT),
        lambda n, text: config.spec(settings, n, text),
        settings,
        now=time.time(),
    )
    assert not prepared.problems
    return await store.create_campaign("test", config.to_dict(), prepared.contacts, now=time.time())


class RefusingApi(TwilioApi):
    """Twilio as it answers a number without geo permission (HTTP 400, code 21215); other
    numbers go through to the emulator."""

    def __init__(self, settings: Settings, refused: set[str]) -> None:
        super().__init__(settings)
        self.refused = refused

    def create_call(self, **fields: Any) -> CallSnapshot:
        if fields["to"] in self.refused:
            raise TwilioApiError(
                "Twilio answered HTTP 400 (code 21215): Account not authorized to call "
                + fields["to"],
                status=400,
                code=21215,
            )
        return super().create_call(**fields)


def creations(lb: Loopback) -> list[float]:
    assert lb.twilio is not None
    return [
        r.at for r in lb.twilio.requests if r.method == "POST" and r.path.endswith("/Calls.json")
    ]


def most_in_one_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max(
        (sum(1 for t in ordered[i:] if t < start + 1.0) for i, start in enumerate(ordered)),
        default=0,
    )


def most_live(calls: list[CallRecord]) -> int:
    """Most calls live at once at Twilio: created (``date_created``) → final status."""
    events: list[tuple[datetime, int]] = []
    for call in calls:
        assert call.status.is_final
        events += [(call.info.date_created, 1), (call.info.date_updated, -1)]
    live = best = 0
    for _, delta in sorted(events):  # at equal instants, ends (-1) sort first
        live += delta
        best = max(best, live)
    return best


def calls_to(lb: Loopback, to: str) -> list[CallRecord]:
    assert lb.twilio is not None
    return sorted(
        (c for c in lb.twilio.calls.values() if c.info.to == to), key=lambda c: c.info.date_created
    )


@pytest.mark.timeout(90)
async def test_fifty_numbers_at_five_per_second_with_retries_and_export(tmp_path: Path) -> None:
    # SQLite only (see the module's docstring)
    numbers = [number(i) for i in range(50)]
    busy, no_answer, failed = numbers[3:7], numbers[10:13], numbers[20:23]
    refused = numbers[30]
    outcomes: dict[str, Outcome | str] = {n: "busy" for n in busy}
    outcomes |= {n: Outcome(status="no-answer", ring_seconds=0.2) for n in no_answer}
    outcomes |= {n: "failed" for n in failed}
    twilio = TwilioEmulatorConfig(outcomes=outcomes, ring_seconds=1.2)
    progress: list[Counts] = []
    async with rig(f"sqlite:///{tmp_path}/bridge.db", twilio) as lb:
        assert lb.twilio is not None
        async with await Store.open(lb.settings.bridge_database_url) as store:
            campaign = await create(
                store, lb.settings, tmp_path, numbers, cps=5, max_concurrent=8, retry_delay=1.0
            )
            runner = CampaignRunner(
                store,
                lb.settings,
                campaign,
                api=lambda: RefusingApi(lb.settings, {refused}),
                on_progress=progress.append,
            )
            started = time.monotonic()
            async with asyncio.timeout(75):
                finished = await runner.run()
            elapsed = time.monotonic() - started
            wall_minus_monotonic = time.time() - time.monotonic()
            contacts = await store.contacts(campaign.id)
            attempts = await store.attempts(campaign.id)
        out = tmp_path / "results.csv"
        write_export(out, contacts, attempts)
        calls = list(lb.twilio.calls.values())
        creates = creations(lb)
        async with asyncio.timeout(HANG):  # the last calls' callbacks
            await lb.twilio.wait_until(lambda s: all(c.finished.is_set() for c in calls))

    # every number reached its end
    assert finished.state == "finished"
    assert {c.state for c in contacts} == {ContactState.DONE}
    by_number = {c.number: c for c in contacts}
    # pacing: the limiter's slots are spacing(5) apart (1.02 / 5 + 30 ms), each after its
    # attempt was planned (recorded) and before its request reached Twilio, so no second holds
    # more than 5 (attempt planned → request arrived) spans, however late the machine ran the
    # hand-offs. (When the requests arrived is the machine's: one sent late can arrive close to
    # the next; that figure is printed, not judged.)
    arrived = {
        r.response["sid"]: r.at + wall_minus_monotonic
        for r in lb.twilio.requests
        if r.method == "POST" and r.path.endswith("/Calls.json") and r.status == 201
    }
    spans = [(a.created_at, arrived[a.call_sid]) for a in attempts if a.call_sid is not None]
    ordered = sorted(creates)
    tightest = min(b - a for a, b in zip(ordered, ordered[5:], strict=False))
    print(
        f"\n{len(creates)} creations in {elapsed:.1f} s; most in 1 s: planned and arrived "
        f"{most_within(spans)}, arrived {most_in_one_second(creates)} (6 arrivals span at least "
        f"{tightest:.3f} s); most live: {most_live(calls)}"
    )
    assert len(creates) == 39 + 10 * 3  # answered once; busy/no-answer/failed 1 + 2 retries
    assert len(spans) == len(creates)  # every creation is an attempt's (the refused one: none)
    assert 1 + 1.0 / spacing(5) < 6
    assert most_within(spans) <= 5
    # concurrency: never more than 8 calls live at Twilio (a slot frees when the runner learns
    # a call's end, after Twilio ended it: causal, whatever the machine's speed)
    assert most_live(calls) <= 8
    # retries: exactly 1 + retries calls, each retry at least the delay after the previous end
    for n in busy + no_answer + failed:
        tries = calls_to(lb, n)
        assert len(tries) == 3, n
        for before, after in zip(tries, tries[1:], strict=False):
            assert (after.info.date_created - before.info.date_updated).total_seconds() >= 1.0
        assert by_number[n].outcome == outcomes_word(outcomes[n])
    # answered once; the refused number never became a call
    for n in set(numbers) - set(busy + no_answer + failed) - {refused}:
        assert len(calls_to(lb, n)) == 1, n
        assert by_number[n].outcome == "heard"
    assert calls_to(lb, refused) == []
    assert by_number[refused].outcome == "not-placed"
    # progress reported along the way, ending with every contact done
    assert progress[-1] == Counts(heard=39, busy=4, no_answer=3, failed=3, not_placed=1)
    assert any(p.active for p in progress)
    assert any(p.retry for p in progress)

    # the export: one row per input row, with what happened
    with out.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["number"] for r in rows] == numbers
    assert [r["name"] for r in rows] == [f"name{i}" for i in range(50)]
    sids = {c.sid: c for c in calls}
    for row in rows:
        n = row["number"]
        tries = calls_to(lb, n)
        assert row["attempts"] == str(len(tries))
        if n == refused:
            assert (row["outcome"], row["call_sid"], row["duration"]) == ("not-placed", "", "")
            assert "21215" in row["error"]
        elif n in busy + no_answer + failed:
            assert row["outcome"] == outcomes_word(outcomes[n])
            assert row["call_sid"] == tries[-1].sid
            assert row["duration"] == ""
        else:
            assert row["outcome"] == "heard"
            assert row["call_sid"] == tries[0].sid
            assert row["duration"] == str(sids[row["call_sid"]].info.duration)
            assert row["confirmation"] == "not asked"
            assert row["error"] == ""


def outcomes_word(outcome: Outcome | str) -> str:
    return outcome if isinstance(outcome, str) else outcome.status


# --- the uncertain window --------------------------------------------------------------------


async def test_a_planned_attempt_whose_call_exists_is_attributed_not_redialled(
    tmp_path: Path, database_url: str
) -> None:
    """The process was killed after sending ``calls.create`` and before recording the CallSid."""
    async with rig(database_url, TwilioEmulatorConfig()) as lb:
        assert lb.twilio is not None
        async with await Store.open(lb.settings.bridge_database_url) as store:
            campaign = await create(store, lb.settings, tmp_path, [number(1)], retries=1)
            [contact] = await store.contacts(campaign.id)
            spec = CampaignConfig.from_dict(campaign.config).spec(
                lb.settings, contact.number, contact.text
            )
            planned = await store.plan_attempt(campaign.id, 0, spec, now=time.time() - 5)
            request = call_request(lb.settings, planned.id, spec, now=time.time())
            sent = await asyncio.to_thread(lambda: TwilioApi(lb.settings).create_call(**request))
            async with asyncio.timeout(HANG):
                await CampaignRunner(
                    store, lb.settings, campaign, api=lambda: TwilioApi(lb.settings)
                ).run()
            [attempt] = await store.attempts(campaign.id)
            [contact] = await store.contacts(campaign.id)
        assert list(lb.twilio.calls) == [sent.sid]  # not dialled again
    assert (attempt.id, attempt.call_sid, attempt.state) == (
        planned.id,
        sent.sid,
        AttemptState.ENDED,
    )
    assert (contact.state, contact.outcome) == (ContactState.DONE, "heard")


async def test_a_planned_attempt_without_a_call_is_redialled_without_consuming_a_retry(
    tmp_path: Path, database_url: str
) -> None:
    """The process was killed after recording the attempt, before sending ``calls.create``."""
    twilio = TwilioEmulatorConfig(outcomes={number(2): "busy"})
    async with rig(database_url, twilio) as lb:
        async with await Store.open(lb.settings.bridge_database_url) as store:
            campaign = await create(
                store, lb.settings, tmp_path, [number(2)], retries=1, retry_delay=0.2
            )
            [contact] = await store.contacts(campaign.id)
            spec = CampaignConfig.from_dict(campaign.config).spec(
                lb.settings, contact.number, contact.text
            )
            planned = await store.plan_attempt(campaign.id, 0, spec, now=time.time() - 5)
            async with asyncio.timeout(HANG):
                await CampaignRunner(
                    store, lb.settings, campaign, api=lambda: TwilioApi(lb.settings)
                ).run()
            attempts = await store.attempts(campaign.id)
            [contact] = await store.contacts(campaign.id)
        calls = calls_to(lb, number(2))
    # the crashed attempt is NOT_PLACED; then 1 + retries real calls, both busy
    assert [(a.state, a.outcome and a.outcome.value) for a in attempts] == [
        (AttemptState.NOT_PLACED, "not-placed"),
        (AttemptState.ENDED, "busy"),
        (AttemptState.ENDED, "busy"),
    ]
    assert attempts[0].id == planned.id
    assert [a.call_sid for a in attempts[1:]] == [c.sid for c in calls]
    assert (contact.state, contact.outcome, contact.attempts) == (ContactState.DONE, "busy", 3)


class LostResponseApi(TwilioApi):
    """``calls.create`` reaches Twilio (or not), but its answer is lost: a network error."""

    def __init__(self, settings: Settings, *, reaches: bool) -> None:
        super().__init__(settings)
        self.reaches = reaches

    def create_call(self, **fields: Any) -> CallSnapshot:
        if self.reaches:
            super().create_call(**fields)
        raise TwilioApiError("cannot reach the Twilio API: ConnectionError")


@sqlite_only
@pytest.mark.parametrize("reaches", [True, False])
async def test_a_create_without_an_answer_is_reconciled_before_anything_else(
    tmp_path: Path, database_url: str, reaches: bool
) -> None:
    async with rig(database_url, TwilioEmulatorConfig()) as lb:
        async with await Store.open(lb.settings.bridge_database_url) as store:
            campaign = await create(store, lb.settings, tmp_path, [number(3)], retries=0)
            flaky = [LostResponseApi(lb.settings, reaches=reaches)]

            def api() -> TwilioApi:  # the first create is lost; then a working client
                return flaky.pop() if flaky else TwilioApi(lb.settings)

            runner = CampaignRunner(store, lb.settings, campaign, api=api, backoff=0.1)
            async with asyncio.timeout(HANG):
                await runner.run()
            attempts = await store.attempts(campaign.id)
            [contact] = await store.contacts(campaign.id)
        calls = calls_to(lb, number(3))
    assert len(calls) == 1  # never two calls, whichever way the lost request went
    assert (contact.state, contact.outcome) == (ContactState.DONE, "heard")
    expected = [AttemptState.ENDED] if reaches else [AttemptState.NOT_PLACED, AttemptState.ENDED]
    assert [a.state for a in attempts] == expected
    assert attempts[-1].call_sid == calls[0].sid


# --- the lease -------------------------------------------------------------------------------


@sqlite_only
async def test_a_campaign_held_by_a_live_runner_is_refused_and_a_lapsed_lease_is_waited_for(
    tmp_path: Path, database_url: str
) -> None:
    async with await Store.open(database_url) as store:
        settings = Settings(bridge_public_url="http://127.0.0.1:9", twilio_auth_token="t")
        campaign = await create(store, settings, tmp_path, [number(4)])
        # the other runner renews every 0.2 s a lease of 1.5 s: a stall of over a second in
        # this busy process would be needed for it to lapse while its runner lives
        other = Lease(
            store, campaign.id, owner="elsewhere:1:aa", wall_clock=time.time, ttl=1.5, heartbeat=0.2
        )
        await other.take()
        mine = Lease(store, campaign.id, wall_clock=time.time, ttl=1.5, heartbeat=0.2, patience=1.5)
        waits: list[str] = []
        keeper = asyncio.create_task(other.keep())
        started = time.time()  # the lease's clock
        with pytest.raises(CampaignBusy, match="elsewhere:1:aa"):
            async with asyncio.timeout(1.5 + 10):
                await mine.take(lambda holder, until: waits.append(holder))
        assert time.time() - started >= 1.5  # it waited its patience, never less
        assert waits == ["elsewhere:1:aa"]
        keeper.cancel()  # the other runner dies: its lease lapses within its TTL
        with pytest.raises(asyncio.CancelledError):
            await keeper
        lapsing = await store.get_campaign(campaign.id)
        assert lapsing is not None
        assert lapsing.lease_owner == "elsewhere:1:aa"
        async with asyncio.timeout(1.5 + 10):
            await mine.take()
        assert time.time() >= lapsing.lease_until  # taken once the lease lapsed, not before
        held = await store.get_campaign(campaign.id)
        assert held is not None
        assert held.lease_owner == mine.owner


async def test_a_lease_of_a_dead_local_process_is_taken_over_at_once(
    tmp_path: Path, database_url: str
) -> None:
    async with await Store.open(database_url) as store:
        settings = Settings(bridge_public_url="http://127.0.0.1:9", twilio_auth_token="t")
        campaign = await create(store, settings, tmp_path, [number(5)])
        process = await asyncio.create_subprocess_exec("true")
        await process.wait()
        dead = f"{socket.gethostname()}:{process.pid}:bb"
        await Lease(store, campaign.id, owner=dead, wall_clock=time.time, ttl=60).take()
        mine = Lease(store, campaign.id, wall_clock=time.time)
        waits: list[str] = []
        async with asyncio.timeout(HANG):  # far below its 60 s TTL, which is not waited out
            await mine.take(lambda holder, until: waits.append(holder))
        assert waits == []  # never waited: the holder is a process of this host that is gone
        held = await store.get_campaign(campaign.id)
        assert held is not None
        assert held.lease_owner == mine.owner


# --- the calling window ----------------------------------------------------------------------


@sqlite_only
async def test_nobody_is_called_after_the_window_closes_and_stopping_releases_the_lease(
    tmp_path: Path, database_url: str
) -> None:
    """The runner's clock reads 3 s before the window (09:00-20:00 UTC) closes; once two calls
    are in Twilio's list the test moves it past the close (a jump of under 3 s: the lease's TTL
    is 6 s). The calls decided before that go out, the others wait for tomorrow's opening.

    The close is the test's move, not a wall-clock instant: on a busy machine a call decided
    in the window can reach Twilio after a fixed instant, so comparing Twilio's creation times
    with one would test the machine's speed. What the runner controls is that no call is
    decided once its clock says closed: with two calls a second (``cps=2``) at most one call
    may be between its decision and Twilio when the window closes."""
    now = datetime.now(UTC)
    close = datetime(now.year, now.month, now.day, 20, tzinfo=UTC).timestamp()
    if close < now.timestamp() + 60:
        close += 86400
    began = time.monotonic()  # reset as the runner starts
    shift = 0.0

    def clock() -> float:
        return close - 3.0 + (time.monotonic() - began) + shift

    numbers = [number(10 + i) for i in range(8)]
    opening = close + 13 * 3600  # 09:00 the next day
    reported = asyncio.Event()

    def on_progress(counts: Counts) -> None:
        reported.set()

    async with rig(database_url, TwilioEmulatorConfig()) as lb:
        twilio = lb.twilio
        assert twilio is not None
        async with await Store.open(lb.settings.bridge_database_url) as store:
            campaign = await create(
                store, lb.settings, tmp_path, numbers, cps=2, window="09:00-20:00"
            )
            runner = CampaignRunner(
                store,
                lb.settings,
                campaign,
                api=lambda: TwilioApi(lb.settings),
                wall_clock=clock,
                on_progress=on_progress,
            )
            began = time.monotonic()
            task = asyncio.create_task(runner.run())
            async with asyncio.timeout(HANG):
                # two calls go out 0.5 s apart, well inside the 3 s (else the window closes by
                # itself and this waits in vain: the test then fails on HANG)
                await twilio.wait_until(lambda state: len(state.calls) >= 2)
                shift = max(0.0, close - clock())  # the window closes now
                at_close = len(twilio.calls)
                while True:  # until every contact is done or moved to tomorrow's opening
                    await reported.wait()
                    reported.clear()
                    contacts = await store.contacts(campaign.id)
                    waiting = [c for c in contacts if c.state is ContactState.PENDING]
                    done = [c for c in contacts if c.state is ContactState.DONE]
                    if len(waiting) + len(done) == len(numbers) and all(
                        c.next_at == opening for c in waiting
                    ):
                        break
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await store.get_campaign(campaign.id)
        created = list(twilio.calls.values())
    assert created  # some calls went out before the window closed…
    assert at_close <= len(created) <= at_close + 1  # …none decided after
    assert len(waiting) == len(numbers) - len(created) > 0
    assert {c.outcome for c in done} == {"heard"}
    assert after is not None
    assert after.lease_owner is None  # released on stop
