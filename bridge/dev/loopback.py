"""A whole deployment on loopback: the Hamsa emulator and the bridge, with throwaway credentials.

Used by ``hamsa-bridge demo`` and by the end-to-end tests. Everything runs over real sockets
(ports bound on 127.0.0.1 first, so each app knows its own URL), and every signature and token
is checked exactly as in production.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette

from bridge.app import BridgeState, create_app
from bridge.calls.call import CallScript, greeting_script
from bridge.dev.caller import CallPlan, CallResult, place_call
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorState, create_emulator_app
from bridge.dev.servers import bind, serving
from bridge.settings import Settings


@dataclass(slots=True)
class Loopback:
    settings: Settings
    """The bridge's settings (pointing at the emulator)."""
    hamsa: EmulatorState
    """The emulator's live records: connections, requests, the exact audio it sent."""
    bridge_app: Starlette
    public_url: str
    auth_token: str

    @property
    def bridge(self) -> BridgeState:
        state: BridgeState = self.bridge_app.state.bridge_state
        return state

    def plan(self, **overrides: Any) -> CallPlan:
        """A call plan for an inbound call to this bridge; fields may be overridden."""
        plan = CallPlan(webhook_url=self.public_url + "/twiml/inbound", auth_token=self.auth_token)
        for name, value in overrides.items():
            setattr(plan, name, value)
        return plan

    async def call(self, **overrides: Any) -> CallResult:
        return await place_call(self.plan(**overrides))


@asynccontextmanager
async def loopback(
    emulator: EmulatorConfig | None = None,
    *,
    settings: Settings | None = None,
    script: CallScript = greeting_script,
    auth_token: str | None = None,
    **setting_overrides: Any,
) -> AsyncIterator[Loopback]:
    """Start the emulator and the bridge; yield a ``Loopback`` to place calls through.

    ``auth_token``: the Twilio auth token the bridge validates with (default: a random one).
    """
    api_key = "loopback-" + secrets.token_hex(8)
    auth_token = auth_token or secrets.token_hex(16)
    config = dataclasses.replace(emulator or EmulatorConfig(), api_keys=frozenset({api_key}))
    emulator_app = create_emulator_app(config)
    async with serving(emulator_app) as hamsa_url:
        sock = bind()
        try:
            public = "http://{}:{}".format(*sock.getsockname()[:2])
            base = settings.model_dump() if settings is not None else {}
            bridge_settings = Settings.model_validate(
                base
                | {
                    "hamsa_api_key": api_key,
                    "hamsa_ws_url": hamsa_url.replace("http://", "ws://") + "/v1/realtime/ws",
                    "hamsa_api_url": hamsa_url,
                    "twilio_auth_token": auth_token,
                    "bridge_public_url": public,
                }
                | setting_overrides
            )
            app = create_app(bridge_settings, script=script)
        except BaseException:
            sock.close()
            raise
        async with serving(app, sock=sock):
            yield Loopback(
                settings=bridge_settings,
                hamsa=emulator_app.state.emulator,
                bridge_app=app,
                public_url=public,
                auth_token=auth_token,
            )
