"""Inbound calls: streams our webhook connected (a ``v1`` token bound to the CallSid), and the
greeting, what they do by default.

``InboundStreams`` is the admission hook every inbound feature shares: the greeting runs
``greeting_script``, an IVR its flow (``bridge.ivr.feature``). It takes any stream (ask it last):
a missing, malformed, forged, expired token, or one issued for another CallSid, is refused
(``bridge.stream_token``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.calls.context import Admission, CallContext, CallScript, Rejection, aclose
from bridge.calls.speech import SpeechOutcome
from bridge.errors import SignatureError
from bridge.stream_token import verify_token

if TYPE_CHECKING:
    from bridge.protocols.twilio_stream_server import Started
    from bridge.settings import Settings

__all__ = ["InboundStreams", "greeting_script"]


async def greeting_script(ctx: CallContext) -> None:
    """Inbound calls without an IVR flow: speak ``BRIDGE_GREETING`` (a key skips it), hang up."""
    outcome = await ctx.say(ctx.settings.bridge_greeting)
    ctx.outcome = "skipped" if outcome is SpeechOutcome.INTERRUPTED else "completed"
    ctx.reason = f"greeting {outcome.value}"


class InboundStreams:
    """Admits a stream whose ``token`` is a live ``v1`` token for its CallSid; runs ``script``."""

    def __init__(
        self,
        settings: Settings,
        script: CallScript = greeting_script,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self.script = script
        self._wall_clock = wall_clock

    def admit(self, start: Started) -> Admission | Rejection:
        key = self._settings.twilio_auth_token.get_secret_value().encode()
        params = start.custom_parameters
        token = params.get("token")
        try:
            expires_at = verify_token(key, token, start.call_sid, now=self._wall_clock())
        except SignatureError as exc:
            return Rejection.token(exc.message)
        assert token is not None
        return Admission(
            self.script,
            token,
            expires_at,
            call_started={"direction": params.get("direction", "inbound")},
        )

    async def aclose(self) -> None:
        """Close the script's resources (an IVR's HTTP client), if it holds any."""
        await aclose(self.script)
