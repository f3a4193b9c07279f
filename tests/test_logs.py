"""Log output: JSON lines, call ids bound, uvicorn's noise dropped, secrets never rendered."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bridge.announcements import parameters
from bridge.dev.loopback import loopback
from bridge.logs import HANDLER_NAME, Redactor, configure_logging, note_handshake_denied
from bridge.stream_token import issue_token
from tests.log_audit import _Audit

SECRET = "auth-token-0123456789abcdef"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """configure_logging into a buffer, alone; the suite's handlers are restored afterwards."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    stream = io.StringIO()
    root.handlers[:] = []  # the suite's audit must not see the leaks planted here
    configure_logging(level="info", fmt="json", secrets=[SECRET, "short"], stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_json_with_the_bound_call_ids(output: io.StringIO) -> None:
    log = structlog.get_logger("bridge.test")
    with structlog.contextvars.bound_contextvars(call_sid="CA" + "1" * 32, stream_sid="MZ1"):
        log.info("call_started", direction="inbound")
        logging.getLogger("uvicorn.error").warning("a stdlib line during the call")
    [ours, theirs] = lines(output)
    assert ours["event"] == "call_started"
    assert ours["call_sid"] == "CA" + "1" * 32
    assert theirs["call_sid"] == "CA" + "1" * 32
    assert theirs["logger"] == "uvicorn.error"


def test_uvicorn_connection_noise_is_dropped(output: io.StringIO) -> None:
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.info("connection open")
    uvicorn.info("connection closed")
    uvicorn.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/twilio/stream")
    # a handshake the app denied on purpose (it logged ``stream_refused``): all of uvicorn's
    # lines about it are noise; a denial the app did not make (a wrong path) is kept
    quirk = "ASGI callable returned without completing handshake."

    def denial(status: int, phrase: str, path: str) -> None:
        uvicorn.info('%s - "WebSocket %s" %d', "127.0.0.1:5000", path, status)
        uvicorn.info("connection rejected (%d %s)", status, phrase)
        uvicorn.error(quirk)

    def denied_by_the_app() -> None:
        note_handshake_denied()
        denial(503, "Service Unavailable", "/twilio/stream")

    contextvars.copy_context().run(denied_by_the_app)
    denial(403, "Forbidden", "/wrong")
    assert [line["event"] for line in lines(output)] == [
        '127.0.0.1:5000 - "WebSocket /wrong" 403',
        "connection rejected (403 Forbidden)",
        quirk,
    ]


@pytest.fixture
def served_output() -> Iterator[io.StringIO]:
    """configure_logging into a buffer, as ``serve`` does; the suite's audit handler stays."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging(level="info", fmt="json", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def refused_status(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=headers or {}):
            pass
    return refused.value.response.status_code


@pytest.mark.anyio
async def test_a_refused_handshake_logs_one_line_of_ours_and_none_of_uvicorns(
    served_output: io.StringIO,
) -> None:
    async with loopback(bridge_max_pending_streams=1) as lb:
        url = lb.settings.stream_url
        async with connect(url):  # awaiting its start: the one pending stream allowed
            over_pending = await refused_status(url)
        forged = await refused_status(url, {"X-Twilio-Signature": "forged"})
        # a path the bridge does not serve: only uvicorn's lines report it, so they stay
        wrong_path = await refused_status(url.replace("/twilio/stream", "/nowhere"))
    # the servers stopped: every connection's lines are written
    logged = lines(served_output)
    assert (over_pending, forged, wrong_path) == (503, 403, 403)
    refused = [line for line in logged if line["event"] == "stream_refused"]
    assert [(line["reason"], line["status"], line["level"]) for line in refused] == [
        ("pending_limit", 503, "warning"),
        ("signature", 403, "warning"),
    ]
    assert refused[0]["pending"] == 1
    assert refused[0]["max_pending_streams"] == 1
    uvicorn = [str(line["event"]) for line in logged if str(line["logger"]).startswith("uvicorn")]
    assert [event for event in uvicorn if "/twilio/stream" in event] == []
    assert [event for event in uvicorn if "/nowhere" in event] == [
        event for event in uvicorn if event.endswith('"WebSocket /nowhere" 403')
    ]
    assert len([event for event in uvicorn if "/nowhere" in event]) == 1
    assert [event for event in uvicorn if event.startswith("connection ")] == [
        "connection rejected (403 Forbidden)"  # the wrong path's
    ]
    assert not any("completing handshake" in event for event in uvicorn)


def test_secrets_tokens_and_url_passwords_are_redacted_wherever_they_appear(
    output: io.StringIO,
) -> None:
    token = issue_token(SECRET.encode(), "CA" + "2" * 32, now=1_700_000_000, ttl=300)
    v2 = parameters.sign(SECRET.encode(), {"id": "an_1"}, now=1_700_000_000, ttl=300)
    log = structlog.get_logger("bridge.test")
    log.info("oops", header=f"X-Api-Key: {SECRET}", nested={"token": token, "list": [v2]})
    logging.getLogger("websockets").info("connect failed: postgresql://bridge:pw-123456@db/x")
    try:
        raise RuntimeError(f"bad {SECRET}")
    except RuntimeError:
        log.exception("crashed")
    text = output.getvalue()
    assert SECRET not in text
    assert token not in text
    assert v2 not in text
    assert "pw-123456" not in text
    assert "postgresql://bridge:***@db/x" in text
    assert text.count("***") >= 5
    # secrets with characters JSON escapes, nested in the console renderer's output too
    odd = 'tok"en\\0123456789\tz'
    for fmt in ("json", "console"):
        buffer = io.StringIO()
        configure_logging(level="info", fmt=fmt, secrets=[odd], stream=buffer)
        structlog.get_logger("bridge.test").info("odd", header=f"Bearer {odd}", nested={"k": odd})
        assert "0123456789" not in buffer.getvalue(), (fmt, buffer.getvalue())
    # a secret shorter than 8 characters is not a credential worth mangling every line for
    assert Redactor(["short"])("a short line") == "a short line"


def test_a_later_configuration_replaces_only_its_own_handler(output: io.StringIO) -> None:
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    configure_logging(level="info", fmt="json", stream=output)
    names = [h.get_name() for h in logging.getLogger().handlers]
    assert names.count(HANDLER_NAME) == 1
    assert foreign in logging.getLogger().handlers


def test_the_suite_audit_catches_a_leaked_token_or_secret(tmp_path: Path) -> None:
    audit = _Audit(tmp_path, "suite.jsonl")
    try:
        audit.secrets.add(SECRET)
        audit.record_output('{"event": "fine"}')
        assert audit.problems() == []
        token = issue_token(b"k" * 16, "CA" + "3" * 32, now=1_700_000_000, ttl=300)
        audit.record_output(f"GET /stream?token={token}")
        audit.record_output(f"key={SECRET}")
        problems = audit.problems()
        assert len(problems) == 2
        assert "stream token" in problems[0]
        assert "secret value" in problems[1]
        # an xdist worker's file and secrets, audited by the controller
        worker = _Audit(tmp_path, "suite-gw0.jsonl")
        worker.secrets.add("worker-secret-value")
        worker.record_output("leaked worker-secret-value")
        worker.save_secrets("gw0")
        worker.stream.close()
        assert any("suite-gw0.jsonl" in p and "secret value" in p for p in audit.problems())
    finally:
        audit.stream.close()
