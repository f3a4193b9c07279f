"""``hamsa-bridge hamsa probe``: the I/O around :class:`~bridge.probe.recorder.ProbeRecorder`.

Speaks the built-in phrases (:mod:`bridge.probe.phrases`) through Hamsa's realtime WebSocket at
``HAMSA_WS_URL`` with ``HAMSA_API_KEY`` (the ``X-Api-Key`` header of
:func:`~bridge.calls.hamsa_session.connect_options`, never the URL) in the configured voice,
``mulaw: true``, one request in flight, all on one socket. Before each request the socket is
reopened if it is not OPEN (or its last reply ended in an ``error`` frame or timed out); the
request that opened it carries the connect time. A request whose socket closed before any
answer (no ``ack``, no audio) is recorded as such and sent once more on a new socket. After an
``error`` frame the runner waits up to :data:`TRAILING_END_WAIT` for an ``end`` (whether one
follows is unknown, docs/hamsa-ws.md §3.4).

Nothing is spent without consent: the command prints what it will send and asks on a terminal;
``--yes`` skips the question; no terminal and no ``--yes`` is a refusal. The trace is written only
at the end, through a temporary file renamed over ``--out``, and only if some reply succeeded.

Exit status (:data:`bridge.probe.PROBE_MEANING`, codes of :mod:`bridge.exit_codes`): 0 trace
written · 1 nothing written (no successful reply, or Hamsa unreachable) · 2 refused to start (no
terminal and no ``--yes``, no ``HAMSA_API_KEY``, bad ``--phrases`` or ``--out``) · 5 the key was
rejected (close 4001, HTTP 401/403) · 6 no balance (close 4003) · 7 declined at the question ·
130 interrupted. Exits 5 and 6 write nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from bridge.calls.hamsa_session import connect_options
from bridge.doctor import hamsa_refusal
from bridge.errors import HamsaAuthError, HamsaConnectError, HamsaError
from bridge.probe import (
    EXIT_DECLINED,
    EXIT_KEY_REJECTED,
    EXIT_NO_BALANCE,
    EXIT_NO_TRACE,
    EXIT_OK,
    EXIT_USAGE,
)
from bridge.probe.phrases import MAX_PHRASES, estimate, phrases
from bridge.probe.recorder import ProbeHeader, ProbeRecorder, RequestTrace, public_url
from bridge.probe.report import report_lines
from bridge.protocols.hamsa_client import (
    ConnectRefusal,
    HamsaProtocol,
    classify_close,
    classify_connect_error,
)
from bridge.settings import Settings

TRAILING_END_WAIT: Final = 1.0
"""Seconds to wait for an ``end`` after an ``error`` frame before the next request."""
INFO_WAIT: Final = 5.0
"""Seconds to wait for the ``info`` greeting after the upgrade (a 4001/4003 close comes then)."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    recorder: ProbeRecorder
    stopped: str | None = None
    """Why the probe stopped before its last phrase (a reconnect failed), if it did."""


class _Socket:
    """One open Hamsa socket and its protocol core."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.protocol = HamsaProtocol()
        self.dirty = False

    @property
    def usable(self) -> bool:
        return self.ws.state is State.OPEN and not self.dirty


async def _open(settings: Settings, clock: Clock) -> tuple[_Socket, float]:
    """Connect and wait for ``info``; returns the socket and the connect (upgrade) time.

    Raises :class:`HamsaAuthError` for a refused key or balance (HTTP 401/403, close 4001/4003)
    and :class:`HamsaConnectError` when Hamsa cannot be reached.
    """
    started = clock()
    try:
        ws = await connect(settings.hamsa_ws_url, **connect_options(settings))
    except InvalidStatus as exc:
        status = exc.response.status_code
        if classify_connect_error(status) is not ConnectRefusal.OTHER:
            raise HamsaAuthError(f"Hamsa refused the key: HTTP {status}", code=status) from None
        raise HamsaConnectError(f"Hamsa answered the upgrade with HTTP {status}") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise HamsaConnectError(f"cannot connect to Hamsa: {type(exc).__name__}") from None
    connect_s = clock() - started
    sock = _Socket(ws)
    try:
        async with asyncio.timeout(INFO_WAIT):
            message = await ws.recv()
    except TimeoutError:
        pass  # no greeting: go on, the request will tell
    except ConnectionClosed:
        raise classify_close(ws.close_code, ws.close_reason or "") from None
    else:
        if isinstance(message, bytes):
            sock.protocol.receive_bytes(message)
        else:
            sock.protocol.receive_text(message)
    return sock, connect_s


async def _read_one(sock: _Socket, recorder: ProbeRecorder, clock: Clock) -> bool:
    """Receive one message and feed its events to the recorder; ``False`` once the socket closed."""
    ws, protocol = sock.ws, sock.protocol
    try:
        message = await ws.recv()
    except ConnectionClosed:
        at = clock()
        for event in protocol.receive_close(ws.close_code, ws.close_reason or ""):
            recorder.feed(event, at)
        return False
    at = clock()
    if isinstance(message, bytes):
        events = protocol.receive_bytes(message)
    else:
        events = protocol.receive_text(message)
    for event in events:
        recorder.feed(event, at)
    return True


async def _reply(sock: _Socket, recorder: ProbeRecorder, settings: Settings, clock: Clock) -> None:
    """Record the reply in flight until ``end``, ``error``, a close or a timeout (first byte:
    ``HAMSA_FIRST_BYTE_TIMEOUT``, between frames: ``HAMSA_CHUNK_TIMEOUT``)."""
    while not recorder.reply_over:
        if sock.protocol.frames_received:
            timeout = settings.hamsa_chunk_timeout
        else:
            timeout = settings.hamsa_first_byte_timeout
        try:
            async with asyncio.timeout(timeout):
                alive = await _read_one(sock, recorder, clock)
        except TimeoutError:
            sock.dirty = True  # the reply may still come: never reuse this socket
            return
        if not alive:
            return
    if recorder.awaiting_trailing_end:
        sock.dirty = True  # the socket's framing is uncertain after an error (§3.4)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TRAILING_END_WAIT):
                while recorder.awaiting_trailing_end and await _read_one(sock, recorder, clock):
                    pass


def _closed_unanswered(record: RequestTrace) -> bool:
    """The socket closed before any answer: most likely a close that was on its way when the
    request left (an idle close, or a server going away: close codes in docs/hamsa-ws.md §2).
    Worth one more try."""
    return record.close is not None and record.ack_s is None and not record.frames


async def _close(sock: _Socket) -> None:
    with contextlib.suppress(Exception):
        await sock.ws.close()


async def run_probe(
    settings: Settings,
    texts: Sequence[str],
    *,
    clock: Clock = time.monotonic,
    started: datetime | None = None,
) -> ProbeResult:
    """Speak ``texts`` one by one and record every reply.

    Raises :class:`HamsaAuthError` as soon as Hamsa refuses the key or the balance (at the
    upgrade or by a close, whenever it comes), and :class:`HamsaConnectError` when the first
    socket cannot be opened; a later reconnect that fails ends the probe early
    (:attr:`ProbeResult.stopped`) with what was recorded so far.
    """
    voice = settings.voice
    header = ProbeHeader(started or datetime.now(UTC), settings.hamsa_ws_url, voice, mulaw=True)
    recorder = ProbeRecorder(header)
    sock: _Socket | None = None
    try:
        for text in texts:
            for attempt in (1, 2):
                if sock is None or not sock.usable:
                    if sock is not None:
                        await _close(sock)
                        sock = None
                    try:
                        sock, connect_s = await _open(settings, clock)
                    except HamsaConnectError as exc:
                        if not recorder.records:
                            raise
                        return ProbeResult(recorder, stopped=exc.message)
                    recorder.opened(connect_s)
                frame = sock.protocol.request(text, voice, mulaw=True)
                recorder.sent(text, clock())
                with contextlib.suppress(ConnectionClosed):
                    await sock.ws.send(frame)  # if it closed, the next recv says how
                await _reply(sock, recorder, settings, clock)
                record = recorder.finish()
                if record.error is not None:
                    sock.dirty = True
                if record.close is not None:
                    refusal = classify_close(*record.close)
                    if isinstance(refusal, HamsaAuthError):
                        raise refusal
                if not (attempt == 1 and _closed_unanswered(record)):
                    break
    finally:
        if sock is not None:
            await _close(sock)
    return ProbeResult(recorder)


def write_trace(path: Path, lines: Sequence[str]) -> None:
    """Write the trace atomically: a temporary file next to ``path``, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
            stream.write("".join(line + "\n" for line in lines))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _warning(settings: Settings, texts: Sequence[str]) -> list[str]:
    cost = estimate(texts)
    voice = settings.voice
    return [
        f"hamsa probe: this sends {cost.requests} text-to-speech requests, "
        f"{cost.chars} characters in all,",
        f"  to {public_url(settings.hamsa_ws_url)}",
        f"  as {voice.speaker}/{voice.dialect}/{voice.language}, mulaw: true, "
        "with the key in HAMSA_API_KEY.",
        f"  About {cost.audio_s:.0f} s of audio (at ~80 ms per character): about "
        f"{cost.credits:.1f} credits at 3 credits per minute of audio.",
        "  This spends your Hamsa balance.",
    ]


def probe_command(
    settings: Settings,
    *,
    out: Path,
    yes: bool,
    count: int,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    clock: Clock = time.monotonic,
) -> int:
    """``hamsa-bridge hamsa probe``; returns the exit status (module docstring)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def say(line: str, end: str = "\n") -> None:
        print(line, end=end, file=stdout, flush=True)

    def complain(line: str) -> None:
        print(f"hamsa-bridge hamsa probe: {line}", file=stderr, flush=True)

    try:
        texts = phrases(count)
    except ValueError:
        complain(f"--phrases must be within 1..{MAX_PHRASES}")
        return EXIT_USAGE
    if not settings.hamsa_api_key.get_secret_value():
        complain("HAMSA_API_KEY is not set: the probe needs your Hamsa key")
        return EXIT_USAGE
    if out.is_dir() or not out.parent.is_dir():
        complain(f"--out {out}: not a file in an existing directory")
        return EXIT_USAGE

    for line in _warning(settings, texts):
        say(line)
    if not yes:
        if not stdin.isatty():
            complain("not a terminal, so nobody can confirm: pass --yes to send them")
            return EXIT_USAGE
        say("Send them? [y/N] ", end="")
        if stdin.readline().strip().lower() not in ("y", "yes"):
            say("nothing sent")
            return EXIT_DECLINED

    try:
        result = asyncio.run(run_probe(settings, texts, clock=clock))
    except HamsaAuthError as exc:
        detail, fix = hamsa_refusal(exc.code) or (exc.message, "check HAMSA_API_KEY")
        if classify_connect_error(exc.code) is ConnectRefusal.NO_BALANCE:
            complain(
                f"Hamsa says the balance is empty ({detail}): {fix} of the project whose key "
                "is HAMSA_API_KEY; nothing written"
            )
            return EXIT_NO_BALANCE
        complain(f"Hamsa rejected the key ({detail}): {fix}; nothing written")
        return EXIT_KEY_REJECTED
    except HamsaError as exc:
        complain(f"{exc.message}: check HAMSA_WS_URL and the network; nothing written")
        return EXIT_NO_TRACE

    recorder = result.recorder
    say("")
    for line in report_lines(recorder.records):
        say(line)
    if result.stopped:
        say(f"stopped early: {result.stopped}")
    if not recorder.succeeded:
        complain(f"no successful reply: nothing written to {out}")
        return EXIT_NO_TRACE
    write_trace(out, recorder.lines())
    say("")
    say(f"trace written to {out} ({len(recorder.records)} requests)")
    say(f"replay it: hamsa-bridge emulate-hamsa --replay {out}")
    return EXIT_OK
