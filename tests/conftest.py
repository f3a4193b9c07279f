"""Shared pytest configuration. Keep it minimal: fixtures used by one module live in that module."""

from __future__ import annotations

import os
import signal
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
    checkout's code, whatever the virtual environment's install points at. ``BRIDGE_WORKERS=1``:
    a ``serve`` a test starts is one process, whatever the machine's CPUs, unless the test asks
    for workers (``tests/test_workers.py``)."""
    root = str(Path(__file__).resolve().parent.parent)
    before = Path.cwd()
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "BRIDGE_WORKERS")}
    os.chdir(tmp_path_factory.mktemp("cwd"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, saved["PYTHONPATH"]]))
    os.environ["BRIDGE_WORKERS"] = "1"
    yield
    os.chdir(before)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


pytest_plugins = ["tests.log_audit", "tests.store_support"]
"""``tests.store_support`` provides ``database_url`` (every test on SQLite and on PostgreSQL)
and ``postgres_url`` (PostgreSQL only)."""


def _interruptible() -> None:
    """Let Ctrl-C reach the commands the suite starts, as it does from a terminal.

    A shell starts a background job (``pytest &``, ``nohup``) with SIGINT ignored, and every
    process it starts inherits that: the tests that press Ctrl-C on ``serve`` or ``hamsa probe``
    would then see it ignored. The suite puts back Python's own handler (so children start with
    the default action) in pytest and in each xdist worker, which loads this file too.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_interruptible()
