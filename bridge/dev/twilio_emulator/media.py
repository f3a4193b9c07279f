"""``<Connect><Stream>``: a call's media stream.

Twilio's side of the stream is :func:`bridge.dev.media_leg.run_media_stream`: the leg connects
to the stream URL with a signed handshake and runs until the bridge closes the socket or the
caller hangs up. When the call must end first — a REST update, the call's time limit — the
emulator sets the leg's ``hangup`` event: the leg sends ``stop`` with the next
``sequenceNumber``, then closes 1000, as Twilio does.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET  # noqa: S405 - TwiML from the application under test
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urljoin, urlsplit

from websockets.exceptions import InvalidHandshake, InvalidURI

from bridge.dev.media_leg import CallerBehaviour, StreamResult, run_media_stream
from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.ledger import CallLedger
from bridge.dev.twilio_emulator.records import CallRecord, StreamEnd, StreamRecord

if TYPE_CHECKING:
    from bridge.dev.twilio_emulator.webhooks import Webhooks

__all__ = ["MediaStreams"]


class MediaStreams:
    """Runs the ``<Connect><Stream>`` verbs of calls, recording each in the emulator's state."""

    def __init__(self, state: CallLedger, webhooks: Webhooks) -> None:
        self._state = state
        self._webhooks = webhooks

    async def run(self, call: CallRecord, stream: ET.Element, base: str | None) -> StreamEnd:
        """Run the stream to its end; returns who ended it (:attr:`StreamRecord.ended_by`)."""
        state, config = self._state, self._state.config
        raw_url = stream.get("url", "")
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        url = urljoin(base, raw_url) if base and base.startswith("http") else raw_url
        if url.startswith("http"):
            url = "ws" + url.removeprefix("http")
        stream_sid = state.new_sid("MZ")
        result = StreamResult()
        record = StreamRecord(
            call_sid=call.sid,
            stream_sid=stream_sid,
            url=url,
            name=stream.get("name"),
            parameters=parameters,
            result=result,
            started_at=time.monotonic(),
        )
        state.streams.append(record)
        state.notify()
        callback = stream.get("statusCallback")
        callback_method = rest.parse_method(stream.get("statusCallbackMethod")) or "POST"

        def report(event: str) -> None:
            if callback:
                self._webhooks.queue_stream_callback(call, record, event, callback, callback_method)

        def fail(code: int, detail: str) -> StreamEnd:
            record.error = (code, detail)
            record.ended_by = "error"
            record.ended_at = time.monotonic()
            state.record_error(call, code, detail)
            report("stream-error")
            return "error"

        scheme = urlsplit(url).scheme
        if scheme not in ("ws", "wss") or not urlsplit(url).netloc:
            return fail(31923, f"malformed stream URL {raw_url!r}")
        if scheme == "ws" and config.require_wss:
            return fail(31922, f"stream URL scheme must be wss: {url}")

        hangup = asyncio.Event()
        behaviour = CallerBehaviour(
            keys=list(call.keys),
            answers=list(call.answers),
            hangup_after=call.hangup_after,
            echo_marks=call.outcome.echo_marks,
            max_duration=config.max_call_seconds,
            sign_handshake=call.sign_handshake and config.sign_handshake,
        )
        leg = asyncio.ensure_future(
            run_media_stream(
                url,
                parameters,
                auth_token=config.auth_token,
                call_sid=call.sid,
                account_sid=call.info.account_sid,
                stream_sid=stream_sid,
                behaviour=behaviour,
                result=result,
                hangup=hangup,
                on_open=lambda: report("stream-started"),
            )
        )
        try:
            hung_up_by = await _supervise(call, leg, hangup)
            await leg
        except TimeoutError as exc:
            result.ended_at = time.monotonic()
            return fail(31901, f"cannot open the stream: {type(exc).__name__}: {exc}")
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            result.ended_at = time.monotonic()
            return fail(31902, f"cannot open the stream: {type(exc).__name__}: {exc}")
        finally:
            if not leg.done():
                leg.cancel()
                await asyncio.gather(leg, return_exceptions=True)
        if result.handshake_status is not None:
            return fail(31920, f"stream handshake answered HTTP {result.handshake_status}")
        record.ended_at = time.monotonic()
        record.stop_sent = result.hung_up
        if hung_up_by is not None:
            record.ended_by = hung_up_by
        elif result.hung_up:
            record.ended_by = "caller" if result.ended_by == "hangup_after" else "time-limit"
        else:
            record.ended_by = "bridge"
        report("stream-stopped")
        state.notify()
        return record.ended_by


async def _supervise(
    call: CallRecord, leg: asyncio.Future[StreamResult], hangup: asyncio.Event
) -> Literal["api", "time-limit"] | None:
    """Wait for the leg to end; hang it up when a REST update ends or redirects the call, or at
    the call's time limit (re-read on every wake-up: an update may change it). Returns why the
    emulator hung up; ``None`` if the leg ended by itself."""
    while not leg.done():
        deadline = call.deadline
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        interrupted = asyncio.ensure_future(call.interrupt.wait())
        waiting: set[asyncio.Future[Any]] = {leg, interrupted}
        try:
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
        if leg.done():
            return None
        if call.pending is not None or call.status.is_final:
            hangup.set()
            return "api"
        deadline = call.deadline
        if deadline is not None and time.monotonic() >= deadline:
            hangup.set()
            return "time-limit"
        call.interrupt.clear()  # woken for nothing else to do (a new TimeLimit): wait again
    return None
