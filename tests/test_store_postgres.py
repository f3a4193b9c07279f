"""The store on PostgreSQL only: claims contended by two stores (two connections, as two bridge
replicas or campaign runners have), a connection dropped under the store, no password in any
message, concurrent first opens. (Everything else runs on both databases: ``database_url``.)

A contest is made deterministic by a third connection holding the contested row's lock: both
stores' statements are seen waiting for it (``pg_stat_activity``) before it is released, so
they really do run at the same time, and exactly one must win.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import pytest
import structlog.testing

from bridge.announcements.spec import AnnouncementSpec
from bridge.errors import StoreError
from bridge.settings import Settings
from bridge.store import ContactRecord, Store
from bridge.store.backend import Tx
from bridge.store.schema import SCHEMA_VERSION
from tests.store_support import with_database
from tests.timing import HANG

pytestmark = pytest.mark.anyio

T = TypeVar("T")

SETTINGS = Settings(twilio_phone_number="+15005550006", bridge_public_url="https://b.example.com")


def spec() -> AnnouncementSpec:
    return AnnouncementSpec.create(SETTINGS, to="+966501234567", text="مرحبا")


def password_of(url: str) -> str:
    password = urlsplit(url).password
    assert password
    assert len(password) >= 8  # the log audit looks for secrets of 8 characters or more
    return password


async def waiting_for_locks(admin: psycopg.AsyncConnection[Any], count: int) -> None:
    """Until ``count`` sessions of this database wait for a lock."""
    async with asyncio.timeout(HANG):
        while True:
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] >= count:
                return
            await asyncio.sleep(0.005)  # polling a condition, not waiting for luck


async def contest(
    url: str, lock: str, args: tuple[Any, ...], claims: list[Callable[[], Awaitable[T]]]
) -> list[T]:
    """Run ``claims`` at the same time, released together by a transaction holding ``lock``."""
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as admin,
        await psycopg.AsyncConnection.connect(url) as blocker,
    ):
        await blocker.execute(lock, args)  # an open transaction: the lock is held
        tasks = [asyncio.ensure_future(claim()) for claim in claims]
        await waiting_for_locks(admin, len(claims))
        assert not any(task.done() for task in tasks)
        await blocker.rollback()
        async with asyncio.timeout(HANG):
            return list(await asyncio.gather(*tasks))


@asynccontextmanager
async def two_stores(url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database, as two processes would hold them; closed afterwards."""
    async with await Store.open(url) as one, await Store.open(url) as two:
        yield one, two


# --- atomic claims between processes ------------------------------------------------------------


async def test_one_of_two_stores_claims_the_stream(postgres_url: str) -> None:
    async with two_stores(postgres_url) as (one, two):
        record, _ = await one.create_announcement(spec(), now=1.0)
        won = await contest(
            postgres_url,
            "SELECT 1 FROM announcements WHERE id = %s FOR UPDATE",
            (record.id,),
            [
                lambda: one.claim_stream(record.id, "CA1", now=2.0),
                lambda: two.claim_stream(record.id, "CA1", now=2.5),
            ],
        )
        assert sorted(won) == [False, True]
        claimed = await two.get_announcement(record.id)
        assert claimed is not None
        assert claimed.stream_started_at == (2.0 if won[0] else 2.5)
        assert claimed.call_sid == "CA1"


async def test_one_of_two_stores_begins_placing(postgres_url: str) -> None:
    async with two_stores(postgres_url) as (one, two):
        record, _ = await one.create_announcement(spec(), now=1.0)
        won = await contest(
            postgres_url,
            "SELECT 1 FROM announcements WHERE id = %s FOR UPDATE",
            (record.id,),
            [
                lambda: one.begin_placing(record.id, now=2.0),
                lambda: two.begin_placing(record.id, now=3.0),
            ],
        )
        assert sorted(won) == [False, True]
        placing = await one.get_announcement(record.id)
        assert placing is not None
        assert placing.sent_at == (2.0 if won[0] else 3.0)


async def test_one_of_two_stores_takes_a_dead_runners_lease_over(postgres_url: str) -> None:
    async with two_stores(postgres_url) as (one, two):
        contacts = [ContactRecord("", 0, "+966500000001", {}, "t")]
        campaign = await one.create_campaign("c", {}, contacts, now=1.0)
        dead = "elsewhere:1:dead"
        assert (await one.acquire_lease(campaign.id, dead, now=1.0, ttl=60)).lease_owner == dead
        held = await contest(
            postgres_url,
            "SELECT 1 FROM campaigns WHERE id = %s FOR UPDATE",
            (campaign.id,),
            [
                lambda: one.acquire_lease(campaign.id, "one", now=2.0, ttl=6, take_from=dead),
                lambda: two.acquire_lease(campaign.id, "two", now=2.0, ttl=6, take_from=dead),
            ],
        )
        # both are told the same winner: the loser sees the winner's live lease
        assert held[0].lease_owner == held[1].lease_owner in ("one", "two")
        after = await one.get_campaign(campaign.id)
        assert after is not None
        assert after.lease_owner == held[0].lease_owner


async def test_two_stores_planning_the_same_contact_count_two_attempts(postgres_url: str) -> None:
    async with two_stores(postgres_url) as (one, two):
        contacts = [ContactRecord("", 0, "+966500000001", {}, "t")]
        campaign = await one.create_campaign("c", {}, contacts, now=1.0)
        planned = await contest(
            postgres_url,
            "SELECT 1 FROM contacts WHERE campaign_id = %s FOR UPDATE",
            (campaign.id,),
            [
                lambda: one.plan_attempt(campaign.id, 0, spec(), now=2.0),
                lambda: two.plan_attempt(campaign.id, 0, spec(), now=2.0),
            ],
        )
        assert sorted(a.attempt for a in planned) == [1, 2]
        [contact] = await two.contacts(campaign.id)
        assert contact.attempts == 2


async def test_two_stores_using_one_idempotency_key_record_one_announcement(
    postgres_url: str,
) -> None:
    async with two_stores(postgres_url) as (one, two):
        # the blocker inserts the key first (uncommitted): both stores' INSERTs wait on it
        created = await contest(
            postgres_url,
            "INSERT INTO announcements (id, to_number, from_number, text, speaker, dialect, "
            "language, repeat, repeat_digit, machine_detection, ring_timeout, state, created_at, "
            "idempotency_key) VALUES ('an_blocker', '+1', '+1', 't', 's', 'd', 'l', 1, '2', 0, "
            "30, 'planned', 0, %s)",
            ("order-1",),
            [
                lambda: one.create_announcement(spec(), now=2.0, idempotency_key="order-1"),
                lambda: two.create_announcement(spec(), now=2.0, idempotency_key="order-1"),
            ],
        )
        assert sorted(fresh for _, fresh in created) == [False, True]
        assert created[0][0].id == created[1][0].id != "an_blocker"
        assert len(await one.unfinished_announcements(standalone=True)) == 1


async def test_concurrent_first_opens_create_the_schema_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(postgres_url) for _ in range(4)))
    try:
        assert [await s.list_campaigns() for s in stores] == [[]] * 4
    finally:
        for store in stores:
            await store.close()
    async with await psycopg.AsyncConnection.connect(postgres_url) as check:
        cursor = await check.execute("SELECT version FROM bridge_schema")
        assert await cursor.fetchall() == [(SCHEMA_VERSION,)]


# --- a dropped connection ---------------------------------------------------------------------


async def terminate_the_store_session(url: str) -> None:
    """End the store's server session (as a restart or failover would), and wait until it is
    gone."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await terminate_through(admin)


async def terminate_through(admin: psycopg.AsyncConnection[Any]) -> None:
    cursor = await admin.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'hamsa-bridge'"
    )
    assert await cursor.fetchall() == [(True,)]


async def test_a_dropped_connection_is_replaced_for_a_read_and_an_uncommitted_write(
    postgres_url: str,
) -> None:
    password = password_of(postgres_url)
    async with await Store.open(postgres_url) as store:
        await terminate_the_store_session(postgres_url)
        with structlog.testing.capture_logs() as logs:
            assert await store.list_campaigns() == []
        [event] = [e for e in logs if e["event"] == "store_reconnecting"]
        assert event["database"] == postgres_url.replace(password, "***")
        assert password not in str(logs)
        # a write whose transaction the server never saw committed is simply done again
        await terminate_the_store_session(postgres_url)
        contacts = [ContactRecord("", 0, "+966500000001", {}, "t")]
        campaign = await store.create_campaign("after", {}, contacts, now=1.0)
    async with await Store.open(postgres_url) as other:
        assert [c.id for c in await other.list_campaigns()] == [campaign.id]


async def test_a_connection_lost_while_committing_is_an_error_saying_so(
    postgres_url: str,
) -> None:
    """The session ends between the transaction's last statement and its COMMIT: whether a
    write was saved is unknown, so it is not done again but reported; a read is done again."""
    async with await Store.open(postgres_url) as store:
        await store.create_campaign("c", {}, [], now=1.0)
        once = [True]

        def ended_before_commit(tx: Tx) -> int:
            rows = tx.execute("SELECT count(*) AS n, pg_backend_pid() AS pid FROM campaigns").rows
            if once:
                once.clear()
                with psycopg.connect(postgres_url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s, 10000)", (rows[0]["pid"],))
            return int(rows[0]["n"])

        # the backend directly (the store's own thread is idle meanwhile)
        read = await asyncio.to_thread(store.backend.transaction, ended_before_commit, write=False)
        assert read == 1
        once.append(True)
        with pytest.raises(StoreError, match="lost while committing") as caught:
            await asyncio.to_thread(store.backend.transaction, ended_before_commit, write=True)
        assert password_of(postgres_url) not in str(caught.value)
        assert len(await store.list_campaigns()) == 1  # and the store goes on


async def test_a_database_that_cannot_be_reached_again_is_a_clear_error(postgres_url: str) -> None:
    password = password_of(postgres_url)
    name = urlsplit(postgres_url).path.lstrip("/")
    async with (
        await Store.open(postgres_url) as store,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin,
    ):
        await admin.execute(f"ALTER DATABASE {name} CONNECTION LIMIT 0")
        await terminate_through(admin)
        with pytest.raises(StoreError) as caught:
            await store.list_campaigns()
        message = str(caught.value)
        assert message.startswith("cannot connect to the database postgresql://bridge:***@")
        assert password not in message
        await admin.execute(f"ALTER DATABASE {name} CONNECTION LIMIT -1")
        assert await store.list_campaigns() == []  # the next call connects again


# --- no password in any message ---------------------------------------------------------------


async def test_no_error_message_contains_the_password(postgres_url: str) -> None:
    password = password_of(postgres_url)
    wrong = postgres_url.replace(password, "wrong-" + password[:10])
    messages: list[str] = []
    for url in (wrong, with_database(postgres_url, "no_such_database")):
        with pytest.raises(StoreError) as caught:
            await Store.open(url)
        messages.append(str(caught.value))
    assert "password authentication failed" in messages[0]
    assert '"no_such_database" does not exist' in messages[1]
    async with await Store.open(postgres_url) as store:
        twice = [ContactRecord("", 0, "+966500000001", {}, "t")] * 2
        with pytest.raises(StoreError) as caught:
            await store.create_campaign("dup", {}, twice, now=1.0)  # a duplicate key
        messages.append(str(caught.value))
        assert "duplicate key" in messages[-1]
        assert await store.list_campaigns() == []  # rolled back whole
    for message in messages:
        assert password not in message
        assert "wrong-" not in message
        assert ":***@" in message
