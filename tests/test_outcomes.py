"""What an announcement's outcome says the callee experienced: the pure rules (evidence →
outcome, outcome → ``announce`` exit status, outcome → what ``--retry-on`` names) as tables, and
the store's schema migration that records "played, not confirmed heard"."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.announcements.commands import exit_status
from bridge.announcements.options import AnnouncementOptions
from bridge.announcements.spec import (
    AnnouncementSpec,
    CallOutcome,
    Evidence,
    OutcomeReason,
    Verdict,
    decide_outcome,
)
from bridge.campaigns.config import CampaignConfig
from bridge.campaigns.retry import retry_key_of
from bridge.errors import CampaignInvalid
from bridge.store import Store
from bridge.store.backend import POSTGRES, SQLITE, Dialect
from bridge.store.schema import MIGRATIONS, SCHEMA_VERSION, schema_statements

HEARD = Verdict(CallOutcome.HEARD)
ANSWERED = Verdict(CallOutcome.ANSWERED)
UNCONFIRMED = Verdict(CallOutcome.ANSWERED, OutcomeReason.PLAYED_UNCONFIRMED)
NEVER_CONNECTED = Verdict(CallOutcome.FAILED, OutcomeReason.STREAM_NEVER_CONNECTED)


def evidence(
    status: str | None,
    *,
    stream: bool = False,
    plays: int = 0,
    unconfirmed: int = 0,
    not_placed: bool = False,
) -> Evidence:
    return Evidence(
        not_placed=not_placed,
        status=status,
        stream_started=stream,
        plays=plays,
        plays_unconfirmed=unconfirmed,
    )


@pytest.mark.parametrize(
    ("case", "given", "expected"),
    [
        ("still ringing", evidence("ringing"), None),
        ("in progress, stream playing", evidence("in-progress", stream=True), None),
        ("no status yet", evidence(None), None),
        ("never became a call", evidence(None, not_placed=True), Verdict(CallOutcome.NOT_PLACED)),
        ("busy", evidence("busy"), Verdict(CallOutcome.BUSY)),
        ("no-answer", evidence("no-answer"), Verdict(CallOutcome.NO_ANSWER)),
        ("canceled", evidence("canceled"), Verdict(CallOutcome.CANCELED)),
        ("Twilio failed it", evidence("failed"), Verdict(CallOutcome.FAILED)),
        ("answered, no bridge saw the stream", evidence("completed"), NEVER_CONNECTED),
        ("final mark came back", evidence("completed", stream=True, plays=1), HEARD),
        (
            "one of two marks lost",
            evidence("completed", stream=True, plays=1, unconfirmed=1),
            HEARD,
        ),
        (
            "played whole, mark lost",
            evidence("completed", stream=True, unconfirmed=1),
            UNCONFIRMED,
        ),
        ("hung up before the end", evidence("completed", stream=True), ANSWERED),
    ],
)
def test_the_outcome_follows_the_evidence(
    case: str, given: Evidence, expected: Verdict | None
) -> None:
    assert decide_outcome(given) == expected, case


@pytest.mark.parametrize(
    ("verdict", "code"),
    [
        (HEARD, 0),
        (ANSWERED, 3),
        (UNCONFIRMED, 3),
        (Verdict(CallOutcome.BUSY), 4),
        (Verdict(CallOutcome.NO_ANSWER), 4),
        (Verdict(CallOutcome.CANCELED), 4),
        (Verdict(CallOutcome.FAILED), 4),
        (NEVER_CONNECTED, 1),
        (Verdict(CallOutcome.NOT_PLACED), 1),
        (None, 1),
    ],
)
def test_announce_exits_0_only_when_heard(verdict: Verdict | None, code: int) -> None:
    assert exit_status(verdict) == code


def test_every_outcome_has_an_exit_status() -> None:
    for outcome in CallOutcome:
        assert exit_status(Verdict(outcome)) in (0, 1, 3, 4)  # never 2: that is a usage error


@pytest.mark.parametrize(
    ("verdict", "key"),
    [
        (HEARD, CallOutcome.HEARD),
        (UNCONFIRMED, CallOutcome.ANSWERED),  # not an error: retried as "answered" would be
        (Verdict(CallOutcome.FAILED), CallOutcome.FAILED),
        (NEVER_CONNECTED, OutcomeReason.STREAM_NEVER_CONNECTED),
        (None, CallOutcome.FAILED),
    ],
)
def test_retry_on_names_an_error_reason_before_its_outcome(
    verdict: Verdict | None, key: CallOutcome | OutcomeReason
) -> None:
    assert retry_key_of(verdict) == key


def config(retry_on: tuple[str, ...]) -> CampaignConfig:
    return CampaignConfig(
        text="t",
        from_="+966110000000",
        options=AnnouncementOptions("s", "d", "ar"),
        retry_on=retry_on,
    )


def test_retry_on_accepts_stream_never_connected() -> None:
    chosen = config(("busy", "stream-never-connected"))
    assert chosen.retry_outcomes == {CallOutcome.BUSY, OutcomeReason.STREAM_NEVER_CONNECTED}
    assert OutcomeReason.STREAM_NEVER_CONNECTED not in config(("failed",)).retry_outcomes
    with pytest.raises(CampaignInvalid, match="played-unconfirmed"):
        config(("played-unconfirmed",))


def test_the_error_names_the_broken_link() -> None:
    text = OutcomeReason.STREAM_NEVER_CONNECTED.description
    assert text.startswith("stream-never-connected: ")
    assert "BRIDGE_PUBLIC_URL" in text
    assert OutcomeReason.STREAM_NEVER_CONNECTED.is_error
    assert not OutcomeReason.PLAYED_UNCONFIRMED.is_error


# --- the schema: version 1 databases gain plays_unconfirmed ---------------------------------


def steps(dialect: Dialect, version: int) -> list[str]:
    """The migration to ``version``, for ``dialect``."""
    return [step.format(real=dialect.real) for step in MIGRATIONS[version]]


def version_1(dialect: Dialect) -> list[str]:
    later = sum(len(MIGRATIONS[v]) for v in range(2, SCHEMA_VERSION + 1))
    return schema_statements(dialect)[:-later]


def test_migrations_apply_only_after_the_database_version() -> None:
    assert SCHEMA_VERSION == 3
    for dialect in (SQLITE, POSTGRES):
        assert schema_statements(dialect, 3) == []
        assert schema_statements(dialect, 2) == steps(dialect, 3)
        assert schema_statements(dialect, 1) == [*steps(dialect, 2), *steps(dialect, 3)]
        assert schema_statements(dialect, 0) == [
            *version_1(dialect),
            *steps(dialect, 2),
            *steps(dialect, 3),
        ]


SPEC = AnnouncementSpec(
    to="+966501234567",
    from_="+966110000000",
    text="t",
    options=AnnouncementOptions("s", "d", "ar", ring_timeout=30),
)


def make_version_1(database_url: str) -> None:
    if database_url.startswith("sqlite:"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        for statement in version_1(SQLITE):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO announcements (id, to_number, from_number, text, speaker, dialect, "
            "language, repeat, repeat_digit, machine_detection, ring_timeout, state, created_at, "
            "status, plays) VALUES ('an_old', '+966501234567', '+966110000000', 't', 's', 'd', "
            "'ar', 1, '2', 0, 30, 'ended', 1.0, 'completed', 1)"
        )
        conn.execute("PRAGMA user_version=1")
        conn.commit()
        conn.close()
        return
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as pg:
        for statement in version_1(POSTGRES):
            pg.execute(statement)  # type: ignore[arg-type]
        pg.execute("CREATE TABLE bridge_schema (version INTEGER NOT NULL)")
        pg.execute("INSERT INTO bridge_schema (version) VALUES (1)")
        pg.execute(
            "INSERT INTO announcements (id, to_number, from_number, text, speaker, dialect, "
            "language, repeat, repeat_digit, machine_detection, ring_timeout, state, created_at, "
            "status, plays) VALUES ('an_old', '+966501234567', '+966110000000', 't', 's', 'd', "
            "'ar', 1, '2', 0, 30, 'ended', 1.0, 'completed', 1)"
        )


@pytest.mark.anyio
async def test_a_version_1_database_is_migrated_on_open(database_url: str, tmp_path: Path) -> None:
    make_version_1(database_url)
    # concurrent first opens: one migrates, the others find it done
    for opened in await asyncio.gather(*(Store.open(database_url) for _ in range(3))):
        await opened.close()
    async with await Store.open(database_url) as store:
        old = await store.get_announcement("an_old")
        assert old is not None
        assert (old.plays, old.plays_unconfirmed) == (1, 0)
        record, _ = await store.create_announcement(SPEC, now=2.0)
        await store.record_stream(record.id, now=3.0, started=True)
        await store.record_stream(record.id, now=4.0, ended=True, plays=0, plays_unconfirmed=1)
        await store.record_status(record.id, "completed", now=5.0, seq=3)
        played = await store.get_announcement(record.id)
    assert played is not None
    assert (played.outcome, played.reason) == (
        CallOutcome.ANSWERED,
        OutcomeReason.PLAYED_UNCONFIRMED,
    )
    assert played.to_json()["plays_unconfirmed"] == 1
    async with await Store.open(database_url) as again:  # opened again: nothing to migrate
        assert (await again.get_announcement(record.id)) == played
