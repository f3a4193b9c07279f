"""The live state of one Twilio emulator: the account, its numbers, calls and every record."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.config import TwilioEmulatorConfig
from bridge.dev.twilio_emulator.records import (
    CallbackRecord,
    CallRecord,
    RestRecord,
    StreamRecord,
    TransferRecord,
    WebhookRecord,
)
from bridge.dev.twilio_emulator.rest_model import AccountInfo, Form, IncomingNumber
from bridge.dev.twilio_emulator.voice import VoicePlatform

__all__ = ["TwilioEmulatorState"]

logger = logging.getLogger(__name__)


class TwilioEmulatorState:
    """The live state and records of one emulator app (``app.state.twilio_emulator``).

    Timestamps in records are ``time.monotonic()``; resource dates come from ``wall_clock``.
    Calls run on :attr:`voice` as tasks of the running loop.
    """

    def __init__(
        self,
        config: TwilioEmulatorConfig,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._wall_clock = wall_clock
        # Seeded for reproducibility, not security.
        self._rng: random.Random = (
            random.Random(f"sids:{config.seed}")  # noqa: S311
            if config.seed is not None
            else random.SystemRandom()
        )
        now = self.now()
        self.account = AccountInfo(
            sid=config.account_sid,
            auth_token=config.auth_token,
            friendly_name=config.friendly_name,
            date_created=now,
            date_updated=now,
        )
        self.numbers: dict[str, IncomingNumber] = {}
        for number, settings in config.number_settings().items():
            sid = self.new_sid("PN")
            self.numbers[sid] = IncomingNumber(
                sid=sid,
                account_sid=config.account_sid,
                phone_number=number,
                friendly_name=settings.friendly_name or rest.format_number(number),
                date_created=now,
                date_updated=now,
                voice_url=settings.voice_url,
                voice_method=rest.parse_method(settings.voice_method) or "POST",
                voice_fallback_url=settings.voice_fallback_url,
                voice_fallback_method=rest.parse_method(settings.voice_fallback_method) or "POST",
                status_callback=settings.status_callback,
                status_callback_method=rest.parse_method(settings.status_callback_method) or "POST",
            )
        self.calls: dict[str, CallRecord] = {}
        self.requests: list[RestRecord] = []
        self.webhooks: list[WebhookRecord] = []
        self.callbacks: list[CallbackRecord] = []
        self.streams: list[StreamRecord] = []
        self.transfers: list[TransferRecord] = []
        self._changed = asyncio.Event()
        self.before_answer: Callable[[CallRecord], Awaitable[None]] | None = None
        """Awaited (if set) once an outbound call has rung its ``ring_seconds``, before it is
        answered: a test holds the ringing until something happened (e.g. audio prepared while
        the phone rings), instead of guessing how long that takes."""
        self.before_create: Callable[[Form], Awaitable[None]] | None = None
        """Awaited (if set) with the form of each authenticated ``calls.create`` request before
        the call is created: a test holds a creation in flight (the client waiting for the
        answer) until something happened, e.g. the client was killed. The call is created once
        it returns, whether or not anyone still waits for the answer, as on Twilio."""
        self.voice = VoicePlatform(self)
        """The calls; it sees this state only as a :class:`~.ledger.CallLedger`."""

    # --- waiting ----------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every :meth:`wait_until` (called after any change to the records)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[TwilioEmulatorState], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checked after every change. Bound it with
        ``asyncio.timeout()``."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_for_call(self, call_sid: str) -> CallRecord:
        """Wait until the call has ended and its status callbacks were delivered."""
        call = self.calls[call_sid]
        await call.finished.wait()
        return call

    # --- lookups ------------------------------------------------------------------------------

    def call(self, call_sid: str) -> CallRecord:
        return self.calls[call_sid]

    def number(self, phone_number: str) -> IncomingNumber | None:
        return next((n for n in self.numbers.values() if n.phone_number == phone_number), None)

    def callbacks_for(self, call_sid: str, *, stream: bool = False) -> list[CallbackRecord]:
        """Status callbacks of a call in the order sent (``stream=True``: stream callbacks)."""
        return [
            c
            for c in self.callbacks
            if c.call_sid == call_sid and c.event.startswith("stream-") == stream
        ]

    def streams_for(self, call_sid: str) -> list[StreamRecord]:
        return [s for s in self.streams if s.call_sid == call_sid]

    def webhooks_for(self, call_sid: str) -> list[WebhookRecord]:
        return [w for w in self.webhooks if w.call_sid == call_sid]

    # --- changes ------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The wall clock, for resource dates and callback timestamps."""
        return self._wall_clock()

    def new_sid(self, prefix: str) -> str:
        return rest.make_sid(prefix, self._rng)

    def record_error(self, call: CallRecord, code: int, detail: str) -> None:
        """A Twilio error or warning on the call (11200 webhook failed, 12100 bad TwiML, …)."""
        call.errors.append((code, detail))
        logger.info("call %s: error %s: %s", call.sid, code, detail)
        self.notify()

    # --- calls --------------------------------------------------------------------------------

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
        """Someone calls ``to`` (one of the account's numbers) from ``from_``; returns the new
        CallSid at once (the call runs as a task of the running loop).

        ``keys`` (seconds after the stream's ``start``, digit) and ``hangup_after`` describe the
        caller on each media stream. Raises ``LookupError`` for an unknown number and
        ``ValueError`` for bad arguments.
        """
        return self.voice.start_inbound_call(
            to,
            from_,
            keys=keys,
            answers=answers,
            hangup_after=hangup_after,
            sign_handshake=sign_handshake,
            forwarded_from=forwarded_from,
            caller_name=caller_name,
        )

    async def place_inbound_call(self, to: str, from_: str, **options: Any) -> CallRecord:
        """:meth:`start_inbound_call` and wait for its end (bound it with a timeout)."""
        return await self.wait_for_call(self.start_inbound_call(to, from_, **options))

    async def aclose(self) -> None:
        """Stop every call and close the webhook client (the app's lifespan calls it)."""
        await self.voice.aclose()

    # --- the log ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """All records as JSON-ready data (what ``GET /_emulator/log`` returns). The log needs
        no credentials, so the auth token is redacted wherever the account resource appears."""
        return {
            "account": _redacted(rest.account_resource(self.account)),
            "numbers": [rest.incoming_phone_number_resource(n) for n in self.numbers.values()],
            "calls": [c.to_json() for c in self.calls.values()],
            "requests": [vars(r) | {"response": _redacted(r.response)} for r in self.requests],
            "webhooks": [vars(w) for w in self.webhooks],
            "callbacks": [vars(c) for c in self.callbacks],
            "streams": [s.to_json() for s in self.streams],
            "transfers": [vars(t) for t in self.transfers],
        }


def _redacted(payload: Any) -> Any:
    if isinstance(payload, Mapping) and payload.get("auth_token"):
        return {**payload, "auth_token": "[redacted]"}
    return payload
