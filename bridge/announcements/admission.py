"""The announcements' admission hook: which streams are announcements, and which may play.

An announcement's call is placed with inline TwiML before its CallSid exists, so its stream
carries a ``v2`` token that MACs every other ``<Parameter>`` (``bridge.announcements.parameters``):
the announcement travels in the stream itself and plays whichever replica Twilio connects to.

``admit`` takes the streams with a ``v2`` token (others are left to the next hook) and refuses
one whose parameters were altered, signed with another key, expired, malformed, or sent from
another Twilio account. ``claim`` then wins the store's atomic claim (a known announcement, not
yet streamed, of this CallSid: single-use across replicas), failing closed when the store is
unreachable. Only then does the call open a Hamsa socket and run the ``AnnouncementScript``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from bridge.announcements import parameters
from bridge.announcements.script import AnnouncementScript
from bridge.calls.context import Admission, Rejection
from bridge.errors import SignatureError, StoreError
from bridge.metrics import Metrics

if TYPE_CHECKING:
    from bridge.calls.presynth import Presynthesizer
    from bridge.protocols.twilio_stream_server import Started
    from bridge.settings import Settings
    from bridge.store import Store
    from bridge.twilio_rest_client import TwilioApi

__all__ = ["AnnouncementStreams"]

log = structlog.get_logger("bridge.announcement")


class AnnouncementStreams:
    """Admits the streams of announcements this deployment's store knows."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Callable[[], Awaitable[Store]],
        twilio_api: Callable[[], TwilioApi],
        wall_clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        presynth: Presynthesizer | None = None,
    ) -> None:
        """``store``: the announcements database, opened on first use; ``twilio_api``: a REST
        client (an announcement's AMD lookup and its hang-up after the final mark);
        ``presynth``: this process' presynthesis (a stream whose audio is not ready stops it)."""
        self._settings = settings
        self._store = store
        self._twilio_api = twilio_api
        self._wall_clock = wall_clock
        self._metrics = metrics or Metrics()
        self._presynth = presynth

    def admit(self, start: Started) -> Admission | Rejection | None:
        params = start.custom_parameters
        if not parameters.has_announcement_token(params):
            return None
        key = self._settings.twilio_auth_token.get_secret_value().encode()
        now = self._wall_clock()
        try:
            expires_at = parameters.verify(key, params, now=now, call_sid=start.call_sid)
            try:
                announcement = parameters.decode(params)
            except ValueError as exc:
                raise SignatureError(f"announcement parameters invalid: {exc}") from None
            account = self._settings.twilio_account_sid
            if account and start.account_sid != account:
                raise SignatureError("announcement stream from another Twilio account")
        except SignatureError as exc:
            return Rejection.token(exc.message)
        script = AnnouncementScript(
            announcement,
            store=self._store,
            twilio_api=self._twilio_api,
            wall_clock=self._wall_clock,
            metrics=self._metrics,
            presynth=self._presynth,
        )
        return Admission(
            script,
            params["token"],
            expires_at,
            call_started={"direction": "outbound", "announcement": announcement.id},
            claim=functools.partial(self._claim, announcement.id, start.call_sid),
        )

    async def _claim(self, announcement_id: str, call_sid: str) -> Rejection | None:
        """The store's claim: a known announcement, not yet streamed, of this CallSid. Fails
        closed if the store is unreachable."""
        try:
            store = await self._store()
            claimed = await store.claim_stream(announcement_id, call_sid, now=self._wall_clock())
        except (StoreError, OSError) as exc:
            log.error("announcement_store_failed", error=str(exc))
            claimed = False
        if not claimed:
            return Rejection("announcement unknown, already streamed, or of another call")
        return None
