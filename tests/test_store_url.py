"""``BRIDGE_DATABASE_URL`` vetted before anything is opened, and never shown with its password."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bridge.errors import StoreError
from bridge.store import check_database_url, redact_url
from bridge.store.store import open_backend, sqlite_path


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///bridge.db",
        "sqlite:////var/lib/bridge/bridge.db",
        "postgresql://bridge:secret-pw@db.internal:5432/bridge",
        "postgres://bridge@db/bridge?sslmode=require",
        "postgresql:///bridge?host=/run/postgresql",
    ],
)
def test_good_urls_pass(url: str) -> None:
    check_database_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///", "expected sqlite:///path/to/file.db"),
        ("sqlite://relative.db", "expected sqlite:///path/to/file.db"),
        ("mysql://bridge:secret-pw@db/bridge", "or postgresql://user:password@host"),
        ("postgresql://bridge:secret-pw@db:port/bridge", "the port 'port' is not a number"),
        ("postgresql://bridge:secret-pw@[db/bridge", "not a valid PostgreSQL URL"),
        ("postgresql://bridge:secret-pw@db/bridge?colour=red", "not a valid PostgreSQL URL"),
    ],
)
def test_bad_urls_are_refused_saying_what_is_expected_without_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(StoreError) as caught:
        check_database_url(url)
    assert message in str(caught.value)
    assert "secret-pw" not in str(caught.value)
    with pytest.raises(StoreError):
        open_backend(url)


def test_without_psycopg_postgres_urls_say_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(StoreError) as caught:
        check_database_url("postgresql://bridge:secret-pw@db/bridge")
    assert "pip install 'hamsa-bridge[postgres]'" in str(caught.value)
    assert "postgresql://bridge:***@db/bridge" in str(caught.value)
    check_database_url("sqlite:///still-fine.db")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bridge:secret-pw@db:5432/x", "postgresql://bridge:***@db:5432/x"),
        ("postgres://:secret-pw@db/x", "postgres://:***@db/x"),
        ("postgresql://db/x?user=u&password=secret-pw&sslmode=verify-full", None),
        ("postgresql://bridge:secret-pw@db:port/x", "postgresql://bridge:***@db:port/x"),
        ("postgresql://bridge@db/x", "postgresql://bridge@db/x"),
        ("sqlite:///bridge.db", "sqlite:///bridge.db"),
    ],
)
def test_redacted_urls_keep_everything_but_the_password(url: str, shown: str | None) -> None:
    redacted = redact_url(url)
    assert "secret-pw" not in redacted
    if shown is not None:
        assert redacted == shown
    else:
        assert redacted == "postgresql://db/x?user=u&password=***&sslmode=verify-full"


def test_sqlite_path_stays_for_sqlite_urls() -> None:
    assert sqlite_path("sqlite:///relative.db") == Path("relative.db")
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    with pytest.raises(StoreError, match="a PostgreSQL database, not a SQLite file"):
        sqlite_path("postgresql://bridge:secret-pw@db/bridge")
