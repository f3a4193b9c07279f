"""The voice platform: every call's lifecycle, as a task of the running loop.

Ringing and the callee's :class:`~bridge.dev.twilio_emulator.config.Outcome`, answer, the TwiML
the application returns (webhooks and status callbacks: :mod:`.webhooks`; media streams:
:mod:`.media`), and live updates from the REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import xml.etree.ElementTree as ET  # noqa: S405 - TwiML from the application under test
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.ledger import CallLedger
from bridge.dev.twilio_emulator.media import MediaStreams
from bridge.dev.twilio_emulator.records import (
    HANG_UP,
    CallRecord,
    Redirect,
    TransferRecord,
    VerbRecord,
)
from bridge.dev.twilio_emulator.rest_model import (
    CallEvent,
    CallInfo,
    CallStatus,
    Direction,
    UpdateAction,
)
from bridge.dev.twilio_emulator.webhooks import Webhooks, parse_twiml
from bridge.protocols.twilio_stream_server import is_dtmf_key

__all__ = ["VoicePlatform"]

logger = logging.getLogger(__name__)

_DIAL_PREFIXES: Final = {"Client": "client:", "Conference": "conference:", "Queue": "queue:"}

Document = tuple[ET.Element, str | None]
"""A TwiML ``<Response>`` and the URL it came from (``None``: given inline)."""


class VoicePlatform:
    """Starts, runs and updates the calls of one emulator (``state.voice``)."""

    def __init__(self, state: CallLedger) -> None:
        self._state = state
        self.webhooks = Webhooks(state)
        self._streams = MediaStreams(state, self.webhooks)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        """Shut down: no new calls."""

    # --- starting, updating and stopping calls ----------------------------------------------

    def start_inbound_call(
        self,
        to: str,
        from_: str,
        *,
        keys: Sequence[tuple[float, str]] = (),
        answers: Sequence[str] = (),
        hangup_after: float | None = None,
        sign_handshake: bool = True,
        forwarded_from: str | None = None,
        caller_name: str | None = None,
    ) -> str:
        """See :meth:`.state.TwilioEmulatorState.start_inbound_call`."""
        state = self._state
        if self.closed:
            raise RuntimeError("the emulator is shut down")
        number = state.number(to)
        if number is None:
            raise LookupError(f"{to} is not one of the account's numbers")
        if not (rest.is_e164(from_) or from_.startswith(("client:", "sip:"))):
            raise ValueError(f"from {from_!r} is not an E.164 number, client: or sip: address")
        if number.trunk_sid:
            raise ValueError(
                f"{to} belongs to SIP trunk {number.trunk_sid}: Twilio routes its calls to the "
                "trunk, not to VoiceUrl (the emulator has no SIP trunks)"
            )
        if number.voice_application_sid:
            raise ValueError(
                f"{to} uses TwiML App {number.voice_application_sid}, which takes precedence over "
                "VoiceUrl (the emulator has no TwiML Apps)"
            )
        if number.voice_url is None:
            raise ValueError(f"{to} has no VoiceUrl: set one through the REST API first")
        for _, digit in keys:
            if not is_dtmf_key(digit):
                raise ValueError(f"not a DTMF digit: {digit!r}")
        now = state.now()
        info = CallInfo(
            sid=state.new_sid("CA"),
            account_sid=state.account.sid,
            to=to,
            from_=from_,
            direction=Direction.INBOUND,
            status=CallStatus.RINGING,
            date_created=now,
            date_updated=now,
            start_time=now,
            phone_number_sid=number.sid,
            forwarded_from=forwarded_from,
            caller_name=caller_name,
        )
        call = CallRecord(
            info=info,
            url=number.voice_url,
            method=number.voice_method,
            fallback_url=number.voice_fallback_url,
            fallback_method=number.voice_fallback_method,
            status_callback=number.status_callback,
            status_callback_method=number.status_callback_method,
            time_limit=state.config.max_call_seconds,
            keys=tuple(keys),
            answers=tuple(answers),
            hangup_after=hangup_after,
            sign_handshake=sign_handshake,
        )
        self._start(call)
        return call.sid

    def start_outbound_call(self, request: rest.CallRequest) -> CallRecord:
        """A call created through the REST API (``queued``; it dials on the next tick)."""
        state = self._state
        now = state.now()
        source = state.number(request.from_)
        info = CallInfo(
            sid=state.new_sid("CA"),
            account_sid=state.account.sid,
            to=request.to,
            from_=request.from_,
            direction=Direction.OUTBOUND_API,
            status=CallStatus.QUEUED,
            date_created=now,
            date_updated=now,
            phone_number_sid=source.sid if source is not None else None,
        )
        outcome = state.config.outcome_for(request.to)
        call = CallRecord(
            info=info,
            url=request.url,
            method=request.method,
            twiml=request.twiml,
            fallback_url=request.fallback_url,
            fallback_method=request.fallback_method,
            status_callback=request.status_callback,
            status_callback_method=request.status_callback_method,
            events=request.status_callback_events,
            machine_detection=request.machine_detection,
            timeout=request.timeout,
            time_limit=min(float(request.time_limit), state.config.max_call_seconds),
            outcome=outcome,
            keys=outcome.keys,
            answers=outcome.answers,
            hangup_after=outcome.hangup_after,
        )
        self._start(call)
        return call

    def update_call(self, call: CallRecord, update: rest.CallUpdate) -> None:
        """A REST update of a live call: new settings, and cancel, hang up or new TwiML.

        A call in progress acts on it at once: a running stream is hung up (``stop``, close
        1000), then the new TwiML runs, or the call ends.
        """
        if update.status_callback is not None:
            call.status_callback = update.status_callback
        if update.status_callback_method is not None:
            call.status_callback_method = update.status_callback_method
        if update.fallback_url is not None:
            call.fallback_url = update.fallback_url
        if update.fallback_method is not None:
            call.fallback_method = update.fallback_method
        if update.time_limit is not None:
            call.time_limit = min(float(update.time_limit), self._state.config.max_call_seconds)
            call.interrupt.set()  # a running stream re-reads the deadline
        action = rest.update_action(call.status, update)
        if action is UpdateAction.CANCEL:
            self._finish(call, CallStatus.CANCELED)
            call.interrupt.set()
        elif action is UpdateAction.HANG_UP:
            self._finish(call, CallStatus.COMPLETED)
            call.pending = HANG_UP
            call.interrupt.set()
        elif action is UpdateAction.REDIRECT:
            if call.status is CallStatus.IN_PROGRESS:
                call.pending = Redirect(update.twiml, update.url, update.method)
                call.interrupt.set()
            else:  # not answered yet: these instructions run once it is
                call.url, call.twiml, call.method = update.url, update.twiml, update.method

    async def aclose(self) -> None:
        """Stop every call and close the webhook client."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhooks.aclose()

    # --- the lifecycle ------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self, call: CallRecord) -> None:
        self._state.calls[call.sid] = call
        self._state.notify()
        self._spawn(self._run_call(call))

    async def _run_call(self, call: CallRecord) -> None:
        courier = self._spawn(self.webhooks.deliver_callbacks(call))
        try:
            if call.info.direction is Direction.INBOUND:
                await self._inbound(call)
            else:
                await self._outbound(call)
        except Exception as exc:
            logger.exception("Twilio emulator: call %s failed", call.sid)
            self._state.record_error(
                call, 11100 if isinstance(exc, ValueError) else 20500, repr(exc)
            )
        finally:
            if not call.status.is_final:
                ending = (
                    CallStatus.COMPLETED
                    if call.status is CallStatus.IN_PROGRESS
                    else CallStatus.FAILED
                )
                self._finish(call, ending)
            call.outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(courier)
            call.finished.set()
            self._state.notify()

    def _set_status(self, call: CallRecord, status: CallStatus) -> None:
        call.info = call.info.moved_to(status, self._state.now())
        self._state.notify()

    def _finish(self, call: CallRecord, status: CallStatus) -> None:
        """End the call in ``status`` (no-op if it has ended) and queue ``completed``."""
        if call.status.is_final:
            return
        self._set_status(call, status)
        self.webhooks.queue_status_callback(call, CallEvent.COMPLETED)

    async def _ring(self, call: CallRecord, seconds: float) -> bool:
        """Ring for ``seconds``; ``False`` if the call ended (canceled) meanwhile."""
        deadline = time.monotonic() + seconds
        while not call.status.is_final:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await call.interrupt.wait()
                call.interrupt.clear()
        return False

    async def _outbound(self, call: CallRecord) -> None:
        outcome = call.outcome
        await asyncio.sleep(0)  # "queued", then dialing starts on the next tick
        if call.status.is_final:
            return
        self.webhooks.queue_status_callback(call, CallEvent.INITIATED)
        if outcome.status == "failed":
            self._finish(call, CallStatus.FAILED)
            return
        if outcome.status == "busy":
            self._finish(call, CallStatus.BUSY)
            return
        self._set_status(call, CallStatus.RINGING)
        self.webhooks.queue_status_callback(call, CallEvent.RINGING)
        if outcome.status == "no-answer":
            ring = float(call.timeout)
            if outcome.ring_seconds is not None:
                ring = min(ring, outcome.ring_seconds)
            if await self._ring(call, ring):
                self._finish(call, CallStatus.NO_ANSWER)
            return
        ring = (
            outcome.ring_seconds
            if outcome.ring_seconds is not None
            else self._state.config.ring_seconds
        )
        if ring > call.timeout:
            if await self._ring(call, float(call.timeout)):
                self._finish(call, CallStatus.NO_ANSWER)
            return
        if not await self._ring(call, ring):
            return
        if self._state.before_answer is not None:
            await self._state.before_answer(call)
            if call.status.is_final:
                return
        if call.machine_detection:
            answered_by = outcome.answered_by
            if call.machine_detection == "Enable" and answered_by.startswith("machine_end"):
                answered_by = "machine_start"
            call.info = replace(call.info, answered_by=answered_by)
        self._answer(call)
        if call.twiml is not None and call.url is None:
            root = self._parse_inline(call, call.twiml)
            if root is not None:
                await self._execute(call, (root, None))
            return
        assert call.url is not None
        found = await self.webhooks.fetch_with_fallback(
            call,
            ("url", "fallback"),
            (call.url, call.method),
            (call.fallback_url, call.fallback_method),
        )
        if found is not None:
            await self._execute(call, found)

    async def _inbound(self, call: CallRecord) -> None:
        assert call.url is not None
        found = await self.webhooks.fetch_with_fallback(
            call,
            ("voice", "voice-fallback"),
            (call.url, call.method),
            (call.fallback_url, call.fallback_method),
        )
        if found is None:
            # Twilio answers to play "an application error has occurred", then hangs up.
            self._answer(call)
            return
        first = next(iter(found[0]), None)
        if first is not None and first.tag == "Reject":
            self._record_verb(call, first)
            self._finish(call, CallStatus.BUSY)
            return
        self._answer(call)
        await self._execute(call, found)

    def _answer(self, call: CallRecord) -> None:
        if call.status.is_final:
            return
        self._set_status(call, CallStatus.IN_PROGRESS)
        call.answered_mono = time.monotonic()
        self.webhooks.queue_status_callback(call, CallEvent.ANSWERED)

    # --- TwiML --------------------------------------------------------------------------------

    def _parse_inline(self, call: CallRecord, twiml: str) -> ET.Element | None:
        try:
            return parse_twiml(twiml)
        except ValueError as exc:
            self._state.record_error(call, 12100, f"Document parse failure: Twiml: {exc}")
            return None

    async def _take_pending(self, call: CallRecord) -> Document | None:
        """The document a REST update asked for; ``None`` if it hangs up or fails."""
        pending, call.pending = call.pending, None
        call.interrupt.clear()
        if not isinstance(pending, Redirect):
            return None
        if pending.url is not None:
            root = await self.webhooks.fetch_twiml(call, "update", pending.url, pending.method)
            return (root, pending.url) if root is not None else None
        assert pending.twiml is not None
        parsed = self._parse_inline(call, pending.twiml)
        return (parsed, None) if parsed is not None else None

    async def _execute(self, call: CallRecord, document: Document) -> None:
        """Run a TwiML document and whatever it leads to, until the call ends."""
        following: Document | None = document
        while following is not None:
            root, base = following
            following = None
            for verb in list(root):
                if call.pending is not None:
                    following = await self._take_pending(call)
                    break
                if call.status.is_final:
                    return
                if call.deadline is not None and time.monotonic() >= call.deadline:
                    return  # TimeLimit reached
                step = await self._verb(call, verb, base)
                if call.pending is not None:
                    following = await self._take_pending(call)
                    break
                if step is None:
                    continue
                if step == "end":
                    return
                assert isinstance(step, tuple)
                following = step
                break

    def _record_verb(self, call: CallRecord, verb: ET.Element) -> None:
        text = "".join(verb.itertext()).strip()
        call.verbs.append(VerbRecord(call.sid, verb.tag, dict(verb.attrib), text, time.monotonic()))
        self._state.notify()

    def _resolve(self, call: CallRecord, url: str, base: str | None) -> str | None:
        resolved = urljoin(base, url) if base else url
        if urlsplit(resolved).scheme not in ("http", "https", "ws", "wss"):
            self._state.record_error(call, 11100, f"Invalid URL format: {url!r}")
            return None
        return resolved

    async def _verb(
        self, call: CallRecord, verb: ET.Element, base: str | None
    ) -> Document | str | None:
        """Run one verb: ``None`` to go on, ``"end"`` to hang up, or the next document."""
        self._record_verb(call, verb)
        tag = verb.tag
        if tag in ("Hangup", "Reject"):
            return "end"
        if tag == "Dial":
            self._dial(call, verb)
            return "end"
        if tag == "Redirect":
            url = self._resolve(call, (verb.text or "").strip(), base)
            if url is None:
                return "end"
            method = rest.parse_method(verb.get("method")) or "POST"
            root = await self.webhooks.fetch_twiml(call, "redirect", url, method)
            return (root, url) if root is not None else "end"
        if tag == "Connect":
            stream = verb.find("Stream")
            if stream is None:
                self._state.record_error(
                    call, 13201, "<Connect> without <Stream> is not emulated; skipped"
                )
                return None
            ended_by = await self._streams.run(call, stream, base)
            if ended_by in ("caller", "time-limit") or call.pending is not None:
                return "end" if call.pending is None else None
            action = verb.get("action")
            if action:
                url = self._resolve(call, action, base)
                if url is None:
                    return "end"
                method = rest.parse_method(verb.get("method")) or "POST"
                root = await self.webhooks.fetch_twiml(call, "action", url, method)
                return (root, url) if root is not None else "end"
            return None
        return None  # Say, Play, Pause, Gather, Start, Stop, …: recorded only

    def _dial(self, call: CallRecord, verb: ET.Element) -> None:
        """Record the transfer a ``<Dial>`` asks for (the call ends here)."""
        direct = (verb.text or "").strip()
        targets = [direct] if direct else []
        for child in verb:
            name = (child.text or "").strip()
            prefix = _DIAL_PREFIXES.get(child.tag, "")
            if name:
                targets.append(name if name.startswith(prefix) else prefix + name)
        self._state.transfers.append(
            TransferRecord(
                call.sid, targets, ET.tostring(verb, encoding="unicode"), time.monotonic()
            )
        )
        self._state.notify()
