"""The suite's log audit: no secret in any log line of any test.

Every log line produced in this process during the session (structlog and stdlib: the bridge,
uvicorn, the emulators), unredacted, goes to one JSON-lines file, plus the output of every
``hamsa-bridge`` subprocess the tests run (``record_output``). At the end of the session the file
must contain no stream token (``v1.…``/``v2.…``) and none of the secret values (Twilio auth token,
Hamsa key, API token, database password) of any ``Settings`` built in this process; otherwise the
session fails and the offending lines are printed. The audit file's path is printed at the end.

Under pytest-xdist (``-n N``) each worker writes its own file, and the secrets it saw, into the
controller's directory; the controller audits every worker's file at the end.
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
    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.path = directory / name
        self.stream: TextIO = self.path.open("a", encoding="utf-8")
        self.secrets: set[str] = set()
        self.handler: logging.Handler | None = None

    def record_output(self, text: str) -> None:
        self.stream.write(text if text.endswith("\n") else text + "\n")
        self.stream.flush()

    def save_secrets(self, worker: str) -> None:
        """An xdist worker's secrets, for the controller's audit."""
        self.stream.flush()
        path = self.directory / f"secrets-{worker}.json"
        path.write_text(json.dumps(sorted(self.secrets)), encoding="utf-8")

    def all_secrets(self) -> set[str]:
        """The secrets of this process and of every worker that reported."""
        secrets = set(self.secrets)
        for path in self.directory.glob("secrets-*.json"):
            secrets.update(json.loads(path.read_text(encoding="utf-8")))
        return secrets

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.jsonl"))

    def problems(self) -> list[str]:
        self.stream.flush()
        found: list[str] = []
        every = self.all_secrets()
        secrets = sorted(every | {json.dumps(s)[1:-1] for s in every}, key=len, reverse=True)
        for path in self.files():
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    where = f"{path.name} line {number}"
                    if _STREAM_TOKEN.search(line):
                        found.append(f"{where}: a stream token: {line.strip()[:300]}")
                    for secret in secrets:
                        if secret in line:
                            found.append(f"{where}: a secret value: {line.strip()[:300]}")
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
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and "log_audit_dir" in workerinput:
        directory = Path(workerinput["log_audit_dir"])
        name = f"suite-{workerinput['workerid']}.jsonl"
    else:
        directory = Path(tempfile.mkdtemp(prefix="hamsa-bridge-suite-logs-"))
        name = "suite.jsonl"
    _audit = audit = _Audit(directory, name)
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


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: a worker writes its audit file into the controller's directory."""
    if _audit is not None:
        node.workerinput["log_audit_dir"] = str(_audit.directory)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _audit is None:
        return
    workerinput: dict[str, Any] | None = getattr(session.config, "workerinput", None)
    if workerinput is not None and "log_audit_dir" in workerinput:
        _audit.save_secrets(workerinput["workerid"])  # the controller audits it
        return
    problems = _audit.problems()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    files = _audit.files()
    lines = 0
    for path in files:
        with path.open(encoding="utf-8") as audit_file:
            lines += sum(1 for _ in audit_file)
    where = _audit.path if len(files) <= 1 else f"{len(files)} files in {_audit.directory}"
    message = (
        f"log audit: {lines} lines in {where}, {len(_audit.all_secrets())} secret values checked"
    )
    if problems:
        message += ": SECRETS FOUND\n" + "\n".join(problems[:20])
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if reporter is not None:
        reporter.write_line(message)
    else:
        print(message)
