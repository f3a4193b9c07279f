"""The suite's log audit: no secret in any log line of any test.

Every log line produced in this process during the session (structlog and stdlib: the bridge,
uvicorn, the emulators), unredacted, goes to one JSON-lines file, plus the output of every
``hamsa-bridge`` subprocess the tests run (``record_output``). At the end of the session the file
must contain no stream token (``v1.…``/``v2.…``) and none of the secret values (Twilio auth token,
Hamsa key, API token, database password) of any ``Settings`` built in this process; otherwise the
session fails and the offending lines are printed. The audit file's path is printed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, TextIO

import pytest

from bridge.logs import configure_logging
from bridge.settings import Settings

_STREAM_TOKEN = re.compile(r"\bv[12]\.[0-9]{1,12}\.[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{43}")


class _Audit:
    def __init__(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="hamsa-bridge-suite-logs-"))
        self.path = directory / "suite.jsonl"
        self.stream: TextIO = self.path.open("a", encoding="utf-8")
        self.secrets: set[str] = set()
        self.handler: logging.Handler | None = None

    def record_output(self, text: str) -> None:
        self.stream.write(text if text.endswith("\n") else text + "\n")
        self.stream.flush()

    def problems(self) -> list[str]:
        self.stream.flush()
        found: list[str] = []
        secrets = sorted(
            self.secrets | {json.dumps(s)[1:-1] for s in self.secrets}, key=len, reverse=True
        )
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if _STREAM_TOKEN.search(line):
                    found.append(f"line {number}: a stream token: {line.strip()[:300]}")
                for secret in secrets:
                    if secret in line:
                        found.append(f"line {number}: a secret value: {line.strip()[:300]}")
        return found


_audit: _Audit | None = None


def record_output(text: str) -> None:
    """Add a subprocess's output to the audit (called by the CLI test helpers)."""
    if _audit is not None:
        _audit.record_output(text)


def pytest_configure(config: pytest.Config) -> None:
    global _audit
    if os.environ.get("BRIDGE_TEST_NO_LOG_AUDIT") == "1" or _audit is not None:
        return
    _audit = audit = _Audit()
    handler = configure_logging(level="info", fmt="json", stream=audit.stream, redact=False)
    handler.set_name("suite-log-audit")  # a later configure_logging (a CLI test) keeps it
    audit.handler = handler
    original_init = Settings.__init__

    def recording_init(self: Settings, **values: Any) -> None:
        original_init(self, **values)
        audit.secrets.update(s for s in self.secret_values() if len(s) >= 8)

    Settings.__init__ = recording_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _audit_level() -> None:
    """A CLI test may quieten the root logger; every test is audited at INFO at least."""
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _audit is None:
        return
    problems = _audit.problems()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    with _audit.path.open(encoding="utf-8") as audit_file:
        lines = sum(1 for _ in audit_file)
    message = (
        f"log audit: {lines} lines in {_audit.path}, {len(_audit.secrets)} secret values checked"
    )
    if problems:
        message += ": SECRETS FOUND\n" + "\n".join(problems[:20])
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if reporter is not None:
        reporter.write_line(message)
    else:
        print(message)
