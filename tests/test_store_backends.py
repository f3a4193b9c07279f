"""What both databases must do alike beyond the bookkeeping of ``test_announcement_core``: several
stores (connections) racing for the same claims, insertion order breaking ties of equal times,
and a database written by a newer version refused (``database_url``: SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bridge.announcements.spec import AnnouncementSpec
from bridge.errors import StoreError
from bridge.settings import Settings
from bridge.store import ContactRecord, Store
from bridge.store.url import is_postgres_url, sqlite_path

pytestmark = pytest.mark.anyio

SETTINGS = Settings(twilio_phone_number="+15005550006", bridge_public_url="https://b.example.com")


def spec(to: str = "+966501234567") -> AnnouncementSpec:
    return AnnouncementSpec.create(SETTINGS, to=to, text="مرحبا")


async def test_of_many_stores_racing_for_each_claim_exactly_one_wins(database_url: str) -> None:
    stores = [await Store.open(database_url) for _ in range(3)]
    try:
        first = stores[0]
        records = [(await first.create_announcement(spec(), now=1.0))[0] for _ in range(4)]
        contacts = [ContactRecord("", 0, "+966500000001", {}, "t")]
        campaign = await first.create_campaign("race", {}, contacts, now=1.0)
        await first.acquire_lease(campaign.id, "dead", now=1.0, ttl=60)
        for record in records:
            placing = await asyncio.gather(*(s.begin_placing(record.id, now=2.0) for s in stores))
            streams = await asyncio.gather(
                *(s.claim_stream(record.id, "CA" + record.id, now=3.0) for s in stores)
            )
            assert sorted(placing) == sorted(streams) == [False, False, True]
        leases = await asyncio.gather(
            *(
                s.acquire_lease(campaign.id, f"runner{i}", now=2.0, ttl=6, take_from="dead")
                for i, s in enumerate(stores)
            )
        )
        assert len({lease.lease_owner for lease in leases}) == 1
        attempts = await asyncio.gather(
            *(s.plan_attempt(campaign.id, 0, spec(), now=2.0) for s in stores)
        )
        assert sorted(a.attempt for a in attempts) == [1, 2, 3]
        keyed = await asyncio.gather(
            *(s.create_announcement(spec(), now=4.0, idempotency_key="k") for s in stores)
        )
        assert len({record.id for record, _ in keyed}) == 1
        assert sorted(created for _, created in keyed) == [False, False, True]
    finally:
        for store in stores:
            await store.close()


async def test_equal_times_are_ordered_by_insertion(database_url: str) -> None:
    async with await Store.open(database_url) as store:
        contacts = [ContactRecord("", 0, "+966500000001", {}, "t")]
        made = [await store.create_campaign("same", {}, contacts, now=5.0) for _ in range(3)]
        assert [c.id for c in await store.list_campaigns()] == [c.id for c in made]
        newest = await store.find_campaign("same")
        assert newest is not None
        assert newest.id == made[-1].id
        assert (await store.find_campaign(made[0].id)).id == made[0].id  # type: ignore[union-attr]
        planned = [await store.plan_attempt(made[0].id, 0, spec(), now=6.0) for _ in range(3)]
        assert [a.id for a in await store.attempts(made[0].id)] == [a.id for a in planned]


async def test_a_database_of_a_newer_schema_is_refused(database_url: str) -> None:
    async with await Store.open(database_url):
        pass
    if is_postgres_url(database_url):
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE bridge_schema SET version = 99")
    else:
        with sqlite3.connect(sqlite_path(database_url)) as conn:
            conn.execute("PRAGMA user_version=99")
        conn.close()
    with pytest.raises(StoreError, match="schema 99 is newer than this version understands"):
        await Store.open(database_url)
