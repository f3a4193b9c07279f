"""Twilio's requests to the application: signed TwiML requests and status callbacks."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET  # noqa: S405 - parsing TwiML from the application under test
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlencode, urlsplit

import httpx2

from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.ledger import CallLedger
from bridge.dev.twilio_emulator.records import (
    CallbackRecord,
    CallRecord,
    StreamRecord,
    WebhookRecord,
)
from bridge.dev.twilio_emulator.rest_model import CallEvent, CallStatus
from bridge.signatures import TwilioSignatures

__all__ = ["WEBHOOK_USER_AGENT", "Webhooks", "parse_twiml"]

WEBHOOK_USER_AGENT: Final = "TwilioProxy/1.1"


def parse_twiml(text: str) -> ET.Element:
    """A TwiML document's ``<Response>``; ``ValueError`` if it is not one."""
    try:
        root = ET.fromstring(text)  # noqa: S314 - TwiML from the application under test
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from exc
    if root.tag != "Response":
        raise ValueError(f"root element <{root.tag}>, not <Response>")
    return root


class Webhooks:
    """Signed HTTP requests to the application's URLs, each recorded in the emulator's state.

    A failure is recorded as Twilio's error on the call (11200 HTTP retrieval failure, 12100
    document parse failure); it never raises.
    """

    def __init__(self, state: CallLedger) -> None:
        self._state = state
        self._signer = TwilioSignatures(state.config.auth_token)
        self._http: httpx2.AsyncClient | None = None

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = httpx2.AsyncClient(
                timeout=self._state.config.webhook_timeout,
                follow_redirects=True,
                trust_env=False,
                headers={"User-Agent": WEBHOOK_USER_AGENT, "Accept": "*/*"},
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- signing ------------------------------------------------------------------------------

    def _signature(self, url: str, params: Mapping[str, str]) -> str | None:
        return self._signer.sign(url, params) if self._state.config.sign_requests else None

    def _signed(
        self, url: str, method: str, params: Mapping[str, str]
    ) -> tuple[str, dict[str, str] | None, str | None]:
        """``(url, form, signature)``: GET carries the params in the query and signs the full
        URL; POST signs the URL and the sorted params (§7.1)."""
        if method == "GET":
            separator = "&" if urlsplit(url).query else "?"
            full = url + (separator + urlencode(list(params.items())) if params else "")
            return full, None, self._signature(full, {})
        return url, dict(params), self._signature(url, params)

    async def _send(
        self, url: str, form: dict[str, str] | None, signature: str | None
    ) -> httpx2.Response:
        headers = {"X-Twilio-Signature": signature} if signature is not None else {}
        if form is None:
            return await self._client().get(url, headers=headers)
        return await self._client().post(url, data=form, headers=headers)

    def _call_params(self, call: CallRecord, status: str) -> dict[str, str]:
        info = call.info
        params = {
            "AccountSid": info.account_sid,
            "ApiVersion": rest.API_VERSION,
            "CallSid": info.sid,
            "CallStatus": status,
            "Called": info.to,
            "Caller": info.from_,
            "Direction": info.direction.value,
            "From": info.from_,
            "To": info.to,
        }
        if call.machine_detection and info.answered_by:
            params["AnsweredBy"] = info.answered_by
        if info.forwarded_from:
            params["ForwardedFrom"] = info.forwarded_from
        if info.caller_name:
            params["CallerName"] = info.caller_name
        return params

    # --- TwiML --------------------------------------------------------------------------------

    async def fetch_twiml(
        self,
        call: CallRecord,
        kind: str,
        url: str,
        method: str,
        extra: Mapping[str, str] | None = None,
    ) -> ET.Element | None:
        """Request TwiML (``kind``: see :attr:`WebhookRecord.kind`); ``None`` if it failed."""
        state = self._state
        status = "ringing" if call.status is CallStatus.RINGING else call.status.value
        params = self._call_params(call, status) | dict(extra or {})
        record = WebhookRecord(
            call_sid=call.sid,
            kind=kind,
            url=url,
            method=method,
            params=params,
            signature=None,
            at=time.monotonic(),
        )
        state.webhooks.append(record)
        target, form, record.signature = self._signed(url, method, params)
        try:
            response = await self._send(target, form, record.signature)
        except httpx2.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            state.record_error(call, 11200, f"HTTP retrieval failure: {url}: {record.error}")
            return None
        record.status = response.status_code
        record.body = response.text
        state.notify()
        if not 200 <= response.status_code < 300:
            record.error = f"HTTP {response.status_code}"
            state.record_error(
                call, 11200, f"HTTP retrieval failure: {url} answered {record.error}"
            )
            return None
        try:
            return parse_twiml(response.text)
        except ValueError as exc:
            record.error = str(exc)
            state.record_error(call, 12100, f"Document parse failure: {url}: {record.error}")
            return None

    async def fetch_with_fallback(
        self,
        call: CallRecord,
        kinds: tuple[str, str],
        primary: tuple[str, str],
        fallback: tuple[str | None, str],
    ) -> tuple[ET.Element, str] | None:
        """TwiML from ``primary`` (url, method), else from ``fallback`` with ``ErrorCode`` and
        ``ErrorUrl``; returns the document and the URL it came from."""
        root = await self.fetch_twiml(call, kinds[0], *primary)
        if root is not None:
            return root, primary[0]
        url, method = fallback
        if url is None or call.status.is_final:
            return None
        extra = {"ErrorCode": str(call.errors[-1][0]) if call.errors else "11200"}
        extra["ErrorUrl"] = primary[0]
        root = await self.fetch_twiml(call, kinds[1], url, method, extra)
        return (root, url) if root is not None else None

    # --- status callbacks ---------------------------------------------------------------------

    def queue_status_callback(self, call: CallRecord, event: CallEvent) -> None:
        """Queue the status callback for ``event`` if the call asked for it."""
        if call.status_callback is None or event not in call.events:
            return
        if call.info.to in self._state.config.drop_status_callbacks:
            return
        info = call.info
        params = self._call_params(call, rest.callback_status(event, info.status))
        params |= {
            "Timestamp": rest.rfc2822(self._state.now()),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(call.callback_sequence),
        }
        call.callback_sequence += 1
        if event is CallEvent.COMPLETED:
            duration = info.duration
            params["CallDuration"] = str(duration if duration is not None else 0)
        record = CallbackRecord(
            call_sid=call.sid,
            event=event.value,
            url=call.status_callback,
            method=call.status_callback_method,
            params=params,
            signature=None,
            at=time.monotonic(),
        )
        call.outbox.put_nowait((record, params))

    def queue_stream_callback(
        self, call: CallRecord, stream: StreamRecord, event: str, url: str, method: str
    ) -> None:
        """Queue a ``<Stream statusCallback>``: ``stream-started``/``-stopped``/``-error``."""
        params = {
            "AccountSid": call.info.account_sid,
            "CallSid": call.sid,
            "StreamSid": stream.stream_sid,
            "StreamName": stream.name or stream.stream_sid,
            "StreamEvent": event,
            "Timestamp": self._state.now()
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        if event == "stream-error" and stream.error is not None:
            params["StreamError"] = f"{stream.error[0]}: {stream.error[1]}"
        record = CallbackRecord(
            call_sid=call.sid,
            event=event,
            url=url,
            method=method,
            params=params,
            signature=None,
            at=time.monotonic(),
        )
        call.outbox.put_nowait((record, params))

    async def deliver_callbacks(self, call: CallRecord) -> None:
        """Send the call's queued callbacks in order, until ``None`` is queued."""
        state = self._state
        while (item := await call.outbox.get()) is not None:
            record, params = item
            record.at = time.monotonic()
            state.callbacks.append(record)
            target, form, record.signature = self._signed(record.url, record.method, params)
            try:
                response = await self._send(target, form, record.signature)
                record.status = response.status_code
            except httpx2.HTTPError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                state.record_error(
                    call, 11200, f"status callback {record.url} failed: {record.error}"
                )
            state.notify()
