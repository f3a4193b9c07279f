"""What the voice platform needs of the emulator's state: the part of it that calls read and write.

:class:`~bridge.dev.twilio_emulator.state.TwilioEmulatorState` builds the voice platform
(:mod:`.voice`, and through it :mod:`.webhooks` and :mod:`.media`) and hands it itself; they see
it only through :class:`CallLedger`, so nothing the state builds imports the state's module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from bridge.dev.twilio_emulator.config import TwilioEmulatorConfig
from bridge.dev.twilio_emulator.records import (
    CallbackRecord,
    CallRecord,
    StreamRecord,
    TransferRecord,
    WebhookRecord,
)
from bridge.dev.twilio_emulator.rest_model import AccountInfo, IncomingNumber

__all__ = ["CallLedger"]


class CallLedger(Protocol):
    """The account, its numbers and config, the records calls append to, and the clock."""

    @property
    def config(self) -> TwilioEmulatorConfig: ...

    @property
    def account(self) -> AccountInfo: ...

    @property
    def calls(self) -> dict[str, CallRecord]: ...

    @property
    def webhooks(self) -> list[WebhookRecord]: ...

    @property
    def callbacks(self) -> list[CallbackRecord]: ...

    @property
    def streams(self) -> list[StreamRecord]: ...

    @property
    def transfers(self) -> list[TransferRecord]: ...

    @property
    def before_answer(self) -> Callable[[CallRecord], Awaitable[None]] | None:
        """Awaited (if set) before an outbound call is answered."""
        ...

    def now(self) -> datetime:
        """The wall clock, for resource dates and callback timestamps."""
        ...

    def new_sid(self, prefix: str) -> str: ...

    def number(self, phone_number: str) -> IncomingNumber | None:
        """The account's number ``phone_number`` (E.164), or None."""
        ...

    def notify(self) -> None:
        """Wake whoever waits on the records (called after any change to them)."""
        ...

    def record_error(self, call: CallRecord, code: int, detail: str) -> None:
        """A Twilio error or warning on the call (11200 webhook failed, 12100 bad TwiML, …)."""
        ...
