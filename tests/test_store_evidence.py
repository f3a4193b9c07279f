"""A stored attempt never says "not placed" while holding evidence of a call (a CallSid, a stream
start, plays), on SQLite and PostgreSQL (``database_url``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from bridge.announcements.spec import AnnouncementSpec, AttemptState
from bridge.settings import Settings
from bridge.store import AnnouncementRecord, ContactRecord, Store
from bridge.store.backend import Tx

pytestmark = pytest.mark.anyio

SETTINGS = Settings(twilio_phone_number="+15005550006", bridge_public_url="https://b.example.com")
SPEC = AnnouncementSpec.create(SETTINGS, to="+966501234567", text="مرحبا")


async def legacy(store: Store, sql: str, announcement_id: str) -> None:
    """A row as an earlier version could leave it (no method of today's store writes it)."""

    def work(tx: Tx) -> None:
        tx.execute(sql, (announcement_id,))

    await store._run(work)  # noqa: SLF001 - writing what no public method may


async def nothing(store: Store, record: AnnouncementRecord) -> None:
    return None


async def plays(store: Store, record: AnnouncementRecord) -> None:
    await store.record_stream(record.id, now=2.0, plays=1)


async def stream(store: Store, record: AnnouncementRecord) -> None:
    await store.record_stream(record.id, now=2.0, started=True)


async def call_sid(store: Store, record: AnnouncementRecord) -> None:
    await legacy(store, "UPDATE announcements SET call_sid = 'CAx' WHERE id = ?", record.id)


Evidence = Callable[[Store, AnnouncementRecord], Awaitable[None]]


@pytest.mark.parametrize(
    ("evidence", "after"),
    [
        (nothing, AttemptState.NOT_PLACED),
        (plays, AttemptState.PLANNED),
        (stream, AttemptState.PLANNED),
        (call_sid, AttemptState.PLANNED),
    ],
)
async def test_not_placed_is_refused_with_evidence(
    database_url: str, evidence: Evidence, after: AttemptState
) -> None:
    async with await Store.open(database_url) as store:
        record, _ = await store.create_announcement(SPEC, now=1.0)
        await evidence(store, record)
        marked = await store.mark_not_placed(record.id, "no call found", now=3.0)
        assert marked.state is after
        assert (marked.error is None) == (after is AttemptState.PLANNED)


@pytest.mark.parametrize("before", [AttemptState.PLANNED, AttemptState.NOT_PLACED])
async def test_a_stream_claim_makes_the_attempt_placed(
    database_url: str, before: AttemptState
) -> None:
    async with await Store.open(database_url) as store:
        record, _ = await store.create_announcement(SPEC, now=1.0)
        if before is AttemptState.NOT_PLACED:
            await store.mark_not_placed(record.id, "raced", now=1.5)
        assert await store.claim_stream(record.id, "CA1", now=2.0)
        claimed = await store.get_announcement(record.id)
        assert claimed is not None
        assert (claimed.state, claimed.call_sid, claimed.placed_at) == (
            AttemptState.PLACED,
            "CA1",
            2.0,
        )
        assert (claimed.error, claimed.ended_at) == (None, None)


@pytest.mark.parametrize(
    ("evidence", "revived"),
    [
        ("", False),
        ("call_sid = 'CAx'", True),
        ("stream_started_at = 2.0", True),
        ("plays = 1", True),
    ],
)
async def test_evidenced_not_placed_rows_of_earlier_versions_are_revived(
    database_url: str, evidence: str, revived: bool
) -> None:
    async with await Store.open(database_url) as store:
        contacts = [ContactRecord("", 0, "+966500000001", {}, "t")]
        campaign = await store.create_campaign("c", {}, contacts, now=1.0)
        record = await store.plan_attempt(campaign.id, 0, SPEC, now=1.0)
        await store.mark_not_placed(record.id, "not placed", now=3.0)
        if evidence:
            await legacy(store, f"UPDATE announcements SET {evidence} WHERE id = ?", record.id)  # noqa: S608
        assert await store.revive_evidenced(campaign.id) == int(revived)
        after = await store.get_announcement(record.id)
        assert after is not None
        state = AttemptState.PLACED if revived else AttemptState.NOT_PLACED
        assert after.state is state
        assert (after.ended_at is None) == revived
        if revived:
            assert after.error is None
            assert [
                a.id for a in await store.unfinished_announcements(campaign_id=campaign.id)
            ] == [record.id]
