"""The store's databases for the tests: SQLite, and PostgreSQL when a server is given.

``database_url`` runs a test once per backend (ids ``[sqlite]`` and ``[postgres]``), each time
with a fresh, empty database: a file under ``tmp_path``, or a database created for the test on
the server of ``BRIDGE_TEST_POSTGRES_URL`` (its role needs ``CREATEDB``; ``.ci/postgres start``
prints one) and dropped after it. ``postgres_url`` is the same for PostgreSQL-only tests.

Without ``BRIDGE_TEST_POSTGRES_URL`` (or without psycopg) the PostgreSQL variants are skipped,
unless ``BRIDGE_TEST_REQUIRE_POSTGRES=1`` (CI): then they fail, saying why.

Registered as a plugin by ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    import psycopg

POSTGRES_ENV = "BRIDGE_TEST_POSTGRES_URL"
REQUIRE_ENV = "BRIDGE_TEST_REQUIRE_POSTGRES"
BACKENDS = ["sqlite", "postgres"]

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
"""For a test that uses ``database_url`` but whose PostgreSQL run would add only time: what it
measures is not the store (pacing, waiting out a lease), and what it does with the store other
tests do on both."""


def postgres_server() -> str:
    """The test server's URL; skips the test without one (fails it when one is required)."""
    url = os.environ.get(POSTGRES_ENV, "")
    problem = ""
    if not url:
        problem = f'{POSTGRES_ENV} is not set (eval "$(.ci/postgres start)" sets it)'
    elif importlib.util.find_spec("psycopg") is None:
        problem = "psycopg is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {problem}", pytrace=False)
        pytest.skip(problem)
    return url


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


class PostgresDatabases:
    """Creates and drops the tests' databases through one connection to the server."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._admin: psycopg.Connection[Any] | None = None

    def admin(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._admin is None or self._admin.closed or self._admin.broken:
            self._admin = psycopg.connect(self.server_url, autocommit=True)
        return self._admin

    def create(self) -> str:
        name = f"bridge_test_{os.getpid()}_{secrets.token_hex(4)}"
        self.admin().execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return with_database(self.server_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        assert name.startswith("bridge_test_")
        self.admin().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    from bridge.settings import Settings

    server_url = postgres_server()
    Settings(bridge_database_url=server_url)  # the log audit learns its password: never logged
    databases = PostgresDatabases(server_url)
    yield databases
    databases.close()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped after the test)."""
    postgres_server()
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = databases.create()
    try:
        yield url
    finally:
        databases.drop(url)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store database: ``sqlite:///…`` or ``postgresql://…`` (parametrised)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/bridge.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
