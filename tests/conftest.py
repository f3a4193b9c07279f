"""Shared pytest configuration. Keep it minimal: fixtures used by one module live in that module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only (the websockets client needs asyncio)."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _empty_working_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test, and every ``hamsa-bridge`` process a test starts, runs in an empty directory:
    ``hamsa-bridge`` reads ``./.env``, and a ``.env`` in the checkout (the README's offline path
    creates one) must not reach the suite; default outputs (``hamsa-demo.wav``, the SQLite
    store) stay out of the checkout. ``PYTHONPATH`` keeps ``python -m bridge.cli`` on this
    checkout's code, whatever the virtual environment's install points at."""
    root = str(Path(__file__).resolve().parent.parent)
    before, pythonpath = Path.cwd(), os.environ.get("PYTHONPATH")
    os.chdir(tmp_path_factory.mktemp("cwd"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, pythonpath]))
    yield
    os.chdir(before)
    if pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = pythonpath


pytest_plugins = ["tests.log_audit", "tests.store_support"]
"""``tests.store_support`` provides ``database_url`` (every test on SQLite and on PostgreSQL)
and ``postgres_url`` (PostgreSQL only)."""
