"""Logging: structlog for our events, the same renderer for uvicorn's stdlib loggers.

JSON lines in production, a readable console format on a terminal (``BRIDGE_LOG_FORMAT``).
Per-call context (``call_sid``, ``stream_sid``) is bound with ``structlog.contextvars`` for the
whole call, so every line a call logs carries them (tasks of the call's TaskGroup inherit them).

Secrets never reach the output: every rendered line is scrubbed of the configured secret values
(auth token, Hamsa key, API token), stream tokens (``v1.…``/``v2.…``) and passwords in URLs,
whatever logger produced it and wherever in the line they appear (an exception's text included).

uvicorn's per-connection lines are dropped: they carry no call id, and the bridge's own events say
the same with it. For an accepted stream: "connection open"/"connection closed" and the
``"WebSocket /path" [accepted]`` line (``call_started``/``call_summary`` say it). For a handshake
the bridge refuses on purpose (403 signature, 503 starting/draining/capacity/pending limit): the
``"WebSocket /path" 503`` line, websockets' ``connection rejected (503 Service Unavailable)`` and
uvicorn's complaint that follows a denial (``stream_refused`` says it, with the reason). A
handshake uvicorn or Starlette refuses by itself (a path the bridge does not serve) keeps
uvicorn's lines: nothing else would report it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

REDACTED = "***"
HANDLER_NAME = "hamsa-bridge"
_STREAM_TOKEN = re.compile(r"\bv[12]\.[0-9]{1,12}\.[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{43}")
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s\"]+:)[^@\s\"]+@")
_UVICORN_NOISE = frozenset({"connection open", "connection closed"})
_ACCEPTED_LINE = re.compile(r'"WebSocket [^"]*" \[accepted\]$')
# What uvicorn (and websockets, through uvicorn's logger) logs for a denied handshake: the access
# line ``"WebSocket /path" 503``, websockets' ``connection rejected (503 Service Unavailable)`` (or
# ``HTTP response sent (…)``), and, after some denials, the complaint below. Dropped only for a
# connection the app denied on purpose (uvicorn logs them from the task that ran the app, so the
# ContextVar is seen); anywhere else they are kept (the complaint would be a real bug).
_DENIAL_LINES = re.compile(
    r'"WebSocket [^"]*" \d{3}$'
    r"|^(connection rejected|HTTP response sent) \(\d{3} [^)]*\)$"
    r"|^ASGI callable returned without completing handshake\.$"
)
_handshake_denied: ContextVar[bool] = ContextVar("handshake_denied", default=False)
_process_fields: dict[str, Any] = {}
"""Added to every line this process logs (``bind_process_fields``; empty unless a worker)."""


def note_handshake_denied() -> None:
    """Call before ``send_denial_response``, once the refusal is logged (``stream_refused``):
    uvicorn's lines about the denied handshake are then dropped."""
    _handshake_denied.set(True)


def bind_process_fields(**fields: Any) -> None:
    """Add ``fields`` to every line this process logs from now on, whatever the logger: a worker
    of ``serve --workers N`` names itself (``worker``, ``pid``) on each of its lines."""
    _process_fields.update(fields)


def _add_process_fields(_logger: Any, _method: str, event: Any) -> Any:
    for name, value in _process_fields.items():
        event.setdefault(name, value)
    return event


class Redactor:
    """Replaces secrets in log events (every string value, before rendering) and again in the
    rendered line (as written, JSON-escaped and repr-escaped)."""

    def __init__(self, secrets: Iterable[str] = (), *, enabled: bool = True) -> None:
        self.enabled = enabled
        # Longest first, so a secret containing another is replaced whole; short values (a
        # placeholder like "x") would mangle every line: a real secret is long.
        raw = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)
        self._raw = raw
        escaped = {json.dumps(s, ensure_ascii=False)[1:-1] for s in raw}
        escaped |= {json.dumps(s)[1:-1] for s in raw} | {repr(s)[1:-1] for s in raw}
        self._secrets = sorted(set(raw) | escaped, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        """``value`` with secrets replaced in every string it holds (dicts, lists, tuples)."""
        if isinstance(value, str):
            return self._text(value, self._raw)
        if isinstance(value, dict):
            return {key: self.scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(item) for item in value)
        return value

    def processor(self, _logger: Any, _method: str, event: Any) -> Any:
        """A structlog processor: scrub the event dict before it is rendered."""
        return self.scrub(event) if self.enabled else event

    def __call__(self, line: str) -> str:
        if not self.enabled:
            return line
        return self._text(line, self._secrets)

    @staticmethod
    def _text(line: str, secrets: list[str]) -> str:
        for secret in secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        if "v1." in line or "v2." in line:
            line = _STREAM_TOKEN.sub(REDACTED, line)
        if "@" in line:
            line = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", line)
        return line


class _RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    def __init__(self, redactor: Redactor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class _DropUvicornNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("uvicorn"):
            return True
        message = record.getMessage()
        if message in _UVICORN_NOISE or _ACCEPTED_LINE.search(message):
            return False
        return not (_handshake_denied.get() and _DENIAL_LINES.search(message))


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    redact: bool = True,
) -> logging.Handler:
    """Configure structlog and route stdlib logging (uvicorn, websockets) through it.

    ``secrets``: values that must never appear in the output (settings' secret values).
    ``redact=False`` is for the test suite's log audit only: it must see what code tried to log.
    Returns the handler installed on the root logger.
    """
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process_fields,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a module's logger then follows a later configure() (``main()`` may run
        # more than once in a process, as the CLI tests do, and structlog's capture_logs must
        # see every event). The cost is a dictionary read per log line, none per audio frame.
        cache_logger_on_first_use=False,
    )
    redactor = Redactor(secrets, enabled=redact)
    formatter = _RedactingFormatter(
        redactor,
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redactor.processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(_DropUvicornNoise())
    root = logging.getLogger()
    # Replace our own handler only: others (a test runner's capture, an embedding app's) stay.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != HANDLER_NAME] + [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("websockets").setLevel(max(logging.INFO, root.level))
    # twilio-python logs every request's headers at INFO, ten lines per REST call
    logging.getLogger("twilio.http_client").setLevel(max(logging.WARNING, root.level))
    return handler
