"""One Hamsa realtime socket per call, reused for every utterance (I/O around ``HamsaProtocol``).

- Opened as soon as the call's stream starts, so its ~1.2 s setup overlaps call setup.
- Before each request: if the socket's ``state is not State.OPEN`` (or the last reply ended in an
  ``error`` frame, after which the socket's framing is uncertain), reconnect.
- One request in flight: Hamsa has no request id (docs/hamsa-ws.md §3.3). A reply abandoned on
  barge-in is drained by the reader task in the background (read and discard until its ``end``);
  the next request waits for that drain up to ``HAMSA_DRAIN_TIMEOUT`` and swaps the socket if it
  takes longer (new sockets are what Hamsa throttles, so draining is tried first).
- Keepalive ``ping_interval=20, ping_timeout=10``; the key travels in ``X-Api-Key``, never in
  the URL.
- Connect failures: bounded retries with backoff and jitter on the call's time scale; HTTP
  401/403 or close codes 4001/4003 are not retried (``HamsaAuthError``).
- Speech to text (:meth:`HamsaSession.transcribe`) goes on the **same** socket, under the same
  lock as ``reply()``: TTS and STT requests leave in the order they were asked for, one in flight
  (docs/hamsa-ws.md §10). Hamsa's answers are outcomes (:class:`SttOutcome`), never exceptions;
  a request abandoned by its time limit is drained like an abandoned reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from bridge.errors import (
    HamsaAuthError,
    HamsaConnectError,
    HamsaError,
    HamsaReplyError,
    HamsaTimeout,
)
from bridge.metrics import Metrics
from bridge.protocols.hamsa_client import (
    Ack,
    Audio,
    Closed,
    ConnectRefusal,
    End,
    Event,
    HamsaProtocol,
    Info,
    ReplyError,
    Thinking,
    Transcript,
    Unexpected,
    classify_close,
    classify_connect_error,
)
from bridge.protocols.websockets_cycle import drop_tracebacks
from bridge.protocols.websockets_direct import DirectClientConnection
from bridge.settings import Settings
from bridge.voice import Voice

log = structlog.get_logger("bridge.hamsa")


class Connector(Protocol):
    """Opens one Hamsa socket: ``websockets.asyncio.client.connect`` or a compatible callable
    (``WarmHamsaPool``), called with the URL and :func:`connect_options`' keywords, and awaited.
    The URL's parameter is ``uri``, as ``connect`` names it."""

    def __call__(self, uri: str, **options: Any) -> Awaitable[ClientConnection]: ...


class Reply:
    """The audio of one request, chunk by chunk, as it arrives.

    Cost: a ``deque`` of the chunks not yet read and, while the reader waits, one future; not
    an ``asyncio.Queue`` (three deques and an ``Event`` each, ~3 KB a reply: see
    ``bench/memory_per_call.py``).
    """

    __slots__ = (
        "_items",
        "_waiter",
        "_first_byte_timeout",
        "_chunk_timeout",
        "finished",
        "abandoned",
        "audio_received",
    )

    def __init__(self, first_byte_timeout: float, chunk_timeout: float) -> None:
        self._items: deque[bytes | HamsaError | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._first_byte_timeout = first_byte_timeout
        self._chunk_timeout = chunk_timeout
        self.finished = False
        self.abandoned = False
        self.audio_received = False

    def feed(self, item: bytes | HamsaError | None) -> None:
        if item is None or isinstance(item, HamsaError):
            self.finished = True
        elif not self.abandoned:
            self.audio_received = True
        if not self.abandoned:
            self._items.append(item)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def abandon(self) -> None:
        self.abandoned = True
        self._items.clear()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _next(self) -> bytes | HamsaError | None:
        """The next item, waiting for it if none is there (one reader at a time)."""
        items = self._items
        while not items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return items.popleft()

    async def _chunks(self) -> AsyncIterator[bytes]:
        first = True
        while True:
            timeout = self._first_byte_timeout if first else self._chunk_timeout
            if self._items:
                item = self._items.popleft()  # already here: no timer to arm
            else:
                try:
                    async with asyncio.timeout(timeout):
                        item = await self._next()
                except TimeoutError:
                    what = "first audio byte" if first else "next audio chunk or end"
                    raise HamsaTimeout(f"no {what} from Hamsa within {timeout:g} s") from None
            if item is None:
                return
            if isinstance(item, HamsaError):
                raise item
            first = False
            yield item


class SttOutcome(enum.Enum):
    """How one speech-to-text request ended (:attr:`SttResult.outcome`)."""

    TEXT = "text"
    """A transcript with something in it."""
    EMPTY = "empty"
    """A transcript that is empty or only whitespace."""
    THINKING = "thinking"
    """``[THINKING]`` came, then nothing more within ``HAMSA_STT_TIMEOUT``."""
    ERROR = "error"
    """An ``error`` frame, the socket closed under the request, or no socket could be opened."""
    TIMEOUT = "timeout"
    """Nothing at all within ``HAMSA_STT_TIMEOUT``."""


@dataclass(frozen=True, slots=True)
class SttResult:
    """The result of :meth:`HamsaSession.transcribe`.

    ``text``: the transcript, stripped of surrounding whitespace (``""`` unless
    :attr:`SttOutcome.TEXT`); ``via``: the form it came in (``"text"`` or ``"json"``, ``None``
    without a transcript); ``seconds``: from sending the request to its end (the time limit for
    THINKING and TIMEOUT).
    """

    outcome: SttOutcome
    text: str = ""
    via: str | None = None
    seconds: float = 0.0


class _Stt:
    """One STT request in flight: settled once, by its transcript or an error."""

    __slots__ = ("settled", "answer", "thinking")

    def __init__(self) -> None:
        self.settled = asyncio.Event()
        self.answer: Transcript | HamsaError | None = None
        self.thinking = False

    def settle(self, answer: Transcript | HamsaError) -> None:
        if not self.settled.is_set():
            self.answer = answer
            self.settled.set()


class _Connection:
    """An open socket, its protocol core and its reader task."""

    def __init__(self, ws: ClientConnection, number: int) -> None:
        self.ws = ws
        self.number = number
        self.protocol = HamsaProtocol()
        self.reply: Reply | None = None
        self.stt: _Stt | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.dirty = False
        self.fatal: HamsaAuthError | None = None
        """Set when Hamsa closed with a non-retryable code (bad key, no balance)."""
        self.task: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return self.ws.state is State.OPEN and not self.dirty

    async def read(self) -> None:
        """The socket's one reader: feed the core, route events to the reply in flight.

        On a :class:`DirectClientConnection` (every socket ``connect_options`` opens), once
        what already waits for ``recv()`` is read (Hamsa's ``info`` at connect, what a pooled
        socket received), later messages are handled as they are parsed, in this task's context
        (the call's log bindings), and the task only waits for the end of that; what falls back
        to ``recv()`` is read here as before."""
        ws = self.ws
        try:
            if isinstance(ws, DirectClientConnection):
                while len(ws.recv_messages.frames):
                    self._receive(await ws.recv())
                context = contextvars.copy_context()
                # no await since the queue was seen empty: nothing can come between
                if ws.deliver_to(lambda message: context.run(self._receive, message)):
                    assert ws.delivery_ended is not None
                    try:
                        await ws.delivery_ended
                    finally:
                        ws.stop_delivery()  # cancelled: nothing reaches this reader after it
            async for message in ws:
                self._receive(message)
        except ConnectionClosed:
            pass
        finally:
            self.dirty = True
            for event in self.protocol.receive_close(
                self.ws.close_code, self.ws.close_reason or ""
            ):
                self._dispatch(event)
            if self.reply is not None and not self.reply.finished:
                self._finish(
                    HamsaReplyError("Hamsa socket closed", audio_received=self.reply.audio_received)
                )
            if self.stt is not None:
                self._finish(HamsaReplyError("Hamsa socket closed", audio_received=False))

    def _receive(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            events = self.protocol.receive_bytes(message)
        else:
            events = self.protocol.receive_text(message)
        for event in events:
            self._dispatch(event)

    def _finish(self, item: HamsaError | None) -> None:
        if self.reply is not None:
            self.reply.feed(item)
        if self.stt is not None:
            self.stt.settle(
                item
                or HamsaReplyError(
                    "Hamsa ended the STT request without a transcript", audio_received=False
                )
            )
        self.reply = None
        self.stt = None
        self.idle.set()

    def _dispatch(self, event: Event) -> None:
        match event:
            case Audio(data=data):
                if self.reply is not None:
                    self.reply.feed(data)
            case End():
                self._finish(None)
            case ReplyError(message=message):
                # After a TTS error more audio of the failed reply may still come, and nothing
                # tells it from the next reply's: replace the socket. An STT error leaves no
                # such tail (a trailing ``end`` is already told apart by the core), so the
                # call keeps its one socket.
                if self.stt is None:
                    self.dirty = True
                audio = self.reply is not None and self.reply.audio_received
                self._finish(HamsaReplyError(f"Hamsa error: {message}", audio_received=audio))
            case Closed(code=code, reason=reason, in_flight=in_flight, audio_received=audio):
                self.dirty = True
                error = classify_close(code, reason, in_flight=in_flight, audio_received=audio)
                if isinstance(error, HamsaAuthError):
                    self.fatal = error
                log.info("hamsa_closed", connection=self.number, code=code, reason=reason)
                self._finish(error)
            case Transcript():
                if self.stt is not None:
                    self.stt.settle(event)
                self._finish(None)
            case Thinking():
                if self.stt is not None:
                    self.stt.thinking = True
                log.info("stt_thinking", connection=self.number)
            case Info() | Ack():
                pass
            case Unexpected(kind=kind, detail=detail):
                log.warning("hamsa_unexpected", connection=self.number, kind=kind, detail=detail)

    def start(
        self, text: str, voice: Voice, first_byte_timeout: float, chunk_timeout: float
    ) -> str:
        self.reply = Reply(first_byte_timeout, chunk_timeout)
        self.idle.clear()
        return self.protocol.request(text, voice, mulaw=True)

    def start_stt(self, wav: bytes, language: str) -> tuple[str, _Stt]:
        message = self.protocol.request_stt(wav, language=language)
        self.stt = stt = _Stt()
        self.idle.clear()
        return message, stt


def connect_options(settings: Settings) -> dict[str, Any]:
    """How every Hamsa socket is opened (``websockets.connect`` keywords): the API key header,
    keepalive pings, timeouts and the frame size limit. Shared by a call's own connects and the
    warm pool's, so a pooled socket is exactly the socket the call would have opened."""
    return {
        "additional_headers": {"X-Api-Key": settings.hamsa_api_key.get_secret_value()},
        "open_timeout": settings.hamsa_connect_timeout,
        "ping_interval": 20,
        "ping_timeout": 10,
        "close_timeout": 2,
        "max_size": 4 * 1024 * 1024,
        "user_agent_header": "hamsa-bridge",
        # messages handled as parsed; freed by reference counting once closed (their modules)
        "create_connection": DirectClientConnection,
    }


class HamsaSession:
    """A call's Hamsa connection: opened early, reused, reconnected when not OPEN."""

    def __init__(
        self,
        settings: Settings,
        tasks: asyncio.TaskGroup,
        *,
        connector: Connector = connect,
        rng: random.Random | None = None,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._tasks = tasks
        self._connector = connector
        # Jitter, not security; the module's shared generator unless a test passes its own: a
        # ``random.Random()`` per call would cost ~2.8 KB of Mersenne Twister state.
        self._random = rng.random if rng is not None else random.random  # noqa: S311
        self._lock = asyncio.Lock()
        self._conn: _Connection | None = None
        self._fatal: HamsaAuthError | None = None
        self.connections_opened = 0
        self.requests_sent = 0

    async def open(self) -> None:
        """Connect ahead of the first request (errors are kept for the first request to raise)."""
        async with self._lock:
            with contextlib.suppress(HamsaError):
                await self._ensure()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close(conn)

    async def reset(self) -> None:
        """Drop the current socket; the next request opens a fresh one (after a truncated reply)."""
        async with self._lock:
            await self.close()

    @contextlib.asynccontextmanager
    async def reply(self, text: str, voice: Voice) -> AsyncIterator[Reply]:
        """Send one ``tts`` request and yield its ``Reply``; one request in flight per call."""
        async with self._lock:
            conn = await self._ready()
            settings = self._settings
            message = conn.start(
                text, voice, settings.hamsa_first_byte_timeout, settings.hamsa_chunk_timeout
            )
            reply = conn.reply
            assert reply is not None
            await self._send(conn, message)
            self._metrics.hamsa_requests.inc()
            try:
                yield reply
            finally:
                if not reply.finished:
                    reply.abandon()

    async def transcribe(self, wav: bytes, *, language: str) -> SttResult:
        """Send one ``stt`` request for ``wav`` (a whole utterance) and wait for its transcript.

        Under the lock ``reply()`` takes: requests of both kinds leave in the order they were
        asked for, one in flight; a socket that is not usable is replaced first, and a reply or
        transcript still draining is waited for up to ``HAMSA_DRAIN_TIMEOUT``.

        Never raises for Hamsa's answers or for a socket that cannot be opened: an ``error``
        frame, a close under the request or a failed connect is :attr:`SttOutcome.ERROR`; no
        answer within ``HAMSA_STT_TIMEOUT`` is :attr:`SttOutcome.TIMEOUT`
        (:attr:`SttOutcome.THINKING` if ``[THINKING]`` came), and the request is left to drain.
        Raises :class:`~bridge.errors.HamsaAuthError` like ``reply()`` (the key or the balance),
        and :class:`~bridge.errors.InvalidState` for a ``wav`` the protocol refuses (our bug).
        """
        settings = self._settings
        loop = asyncio.get_running_loop()
        async with self._lock:
            try:
                conn = await self._ready()
            except HamsaAuthError:
                raise
            except HamsaError as exc:
                log.warning("stt_connect_failed", error=str(exc))
                return self._stt_result(SttOutcome.ERROR, None, 0.0)
            message, stt = conn.start_stt(wav, language)
            started = loop.time()
            await self._send(conn, message)
            try:
                async with asyncio.timeout(settings.hamsa_stt_timeout):
                    await stt.settled.wait()
            except TimeoutError:
                # Left in flight: the reader drains its late answer; the next request waits for
                # that up to HAMSA_DRAIN_TIMEOUT, then swaps the socket.
                outcome = SttOutcome.THINKING if stt.thinking else SttOutcome.TIMEOUT
                return self._stt_result(outcome, None, loop.time() - started)
            seconds = loop.time() - started
            answer = stt.answer
            if isinstance(answer, HamsaAuthError):
                raise answer
            if isinstance(answer, Transcript):
                text = answer.text.strip()
                outcome = SttOutcome.TEXT if text else SttOutcome.EMPTY
                return self._stt_result(outcome, answer, seconds, truncated=answer.truncated)
            log.info("stt_error", connection=conn.number, error=str(answer))
            return self._stt_result(SttOutcome.ERROR, None, seconds)

    async def _send(self, conn: _Connection, message: str) -> None:
        """Write one request's frame (the lock held; the request already in flight in ``conn``'s
        core) and count it."""
        try:
            await conn.ws.send(message)
        except ConnectionClosed:
            pass  # closed between the state check and the send: the reader reports it
        except asyncio.CancelledError:
            conn.dirty = True  # the frame may or may not have left: don't trust the socket
            raise
        self.requests_sent += 1

    def _stt_result(
        self,
        outcome: SttOutcome,
        answer: Transcript | None,
        seconds: float,
        *,
        truncated: bool = False,
    ) -> SttResult:
        text = answer.text.strip() if answer is not None else ""
        via = answer.via if answer is not None else None
        log.info(
            "stt_answer",
            via=via,
            chars=len(text),
            seconds=round(seconds, 3),
            outcome=outcome.value,
            truncated=truncated,
        )
        if text:
            log.debug("stt_transcript", text=text)
        return SttResult(outcome, text, via, seconds)

    async def _ready(self) -> _Connection:
        """The socket for the next request (the lock held): usable, nothing in flight. A reply
        or transcript still draining is waited for up to ``HAMSA_DRAIN_TIMEOUT``; then the socket
        is marked dirty and replaced."""
        conn = await self._ensure()
        if not conn.idle.is_set():
            try:
                async with asyncio.timeout(self._settings.hamsa_drain_timeout):
                    await conn.idle.wait()
            except TimeoutError:
                log.info("hamsa_drain_timeout", connection=conn.number)
                conn.dirty = True
            conn = await self._ensure()
        return conn

    async def _ensure(self) -> _Connection:
        if self._fatal is not None:
            raise self._fatal
        conn = self._conn
        if conn is not None and conn.usable:
            return conn  # possibly still draining an abandoned reply: the caller waits for it
        if conn is not None:
            self._conn = None
            await self._close(conn)
            if conn.fatal is not None:
                self._fatal = conn.fatal
                raise conn.fatal
        try:
            self._conn = await self._connect()
        except HamsaAuthError as exc:
            self._fatal = exc
            raise
        return self._conn

    async def _connect(self) -> _Connection:
        settings = self._settings
        attempts = settings.hamsa_connect_attempts
        last: HamsaError | None = None
        for attempt in range(attempts):
            if attempt:
                delay = min(2.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + self._random())
                await asyncio.sleep(delay)
            try:
                ws: ClientConnection = await self._connector(
                    settings.hamsa_ws_url, **connect_options(settings)
                )
            except InvalidStatus as exc:
                drop_tracebacks(exc)  # else the connection stays in a cycle with it
                status = exc.response.status_code
                if classify_connect_error(status) is not ConnectRefusal.OTHER:
                    raise HamsaAuthError(
                        f"Hamsa refused the API key (HTTP {status}); check HAMSA_API_KEY",
                        code=status,
                    ) from None
                last = HamsaConnectError(f"Hamsa answered the upgrade with HTTP {status}")
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                drop_tracebacks(exc)  # InvalidMessage: as InvalidStatus
                last = HamsaConnectError(f"cannot connect to Hamsa: {type(exc).__name__}: {exc}")
            else:
                self.connections_opened += 1
                self._metrics.hamsa_connections.inc()
                if self.connections_opened > 1:
                    self._metrics.hamsa_reconnects.inc()
                conn = _Connection(ws, self.connections_opened)
                conn.task = self._tasks.create_task(conn.read())
                log.info("hamsa_connected", connection=conn.number, attempt=attempt + 1)
                return conn
            log.warning("hamsa_connect_failed", attempt=attempt + 1, error=str(last))
        assert last is not None
        raise last

    async def _close(self, conn: _Connection) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if conn.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await conn.task
