"""Shared pytest configuration. Keep it minimal: fixtures used by one module live in that module."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only (the websockets client needs asyncio)."""
    return "asyncio"


pytest_plugins = ["tests.log_audit", "tests.store_support"]
"""``tests.store_support`` provides ``database_url`` (every test on SQLite and on PostgreSQL)
and ``postgres_url`` (PostgreSQL only)."""
