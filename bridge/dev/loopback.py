"""A whole deployment on loopback: the Hamsa emulator and the bridge (and, on request, the Twilio
emulator with a number wired to the bridge), with throwaway credentials.

Used by ``hamsa-bridge demo`` and by the end-to-end tests. Everything runs over real sockets
(ports bound on 127.0.0.1 first, so each app knows its own URL), and every signature and token
is checked exactly as in production.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from starlette.applications import Starlette

from bridge.app import BridgeState, create_app
from bridge.calls.context import AdmissionHook, CallScript
from bridge.calls.inbound import greeting_script
from bridge.dev.caller import CallPlan, CallResult, place_call
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorState, create_emulator_app
from bridge.dev.servers import bind, serving
from bridge.dev.twilio_emulator import (
    NumberConfig,
    TwilioEmulatorConfig,
    TwilioEmulatorServer,
    TwilioEmulatorState,
)
from bridge.ivr.flow import Flow
from bridge.settings import Settings

LOOPBACK_NUMBER = "+966501230000"
"""The Twilio emulator's number wired to the bridge (``loopback(twilio=True)``)."""


RIG_PATIENCE: Final = 60.0
"""How long a rig's simulated caller waits for the webhook and the stream handshake: the bridge
shares the caller's event loop here, and a loaded machine can stall it past Twilio's 15 s."""


@dataclass(slots=True)
class Loopback:
    settings: Settings
    """The bridge's settings (pointing at the emulators)."""
    hamsa: EmulatorState
    """The Hamsa emulator's live records: connections, requests, the exact audio it sent."""
    bridge_app: Starlette
    public_url: str
    auth_token: str
    twilio: TwilioEmulatorState | None = None
    """The Twilio emulator's records, when it runs (``loopback(twilio=True)``)."""

    @property
    def bridge(self) -> BridgeState:
        state: BridgeState = self.bridge_app.state.bridge_state
        return state

    def plan(self, **overrides: Any) -> CallPlan:
        """A call plan for an inbound call to this bridge; fields may be overridden."""
        plan = CallPlan(
            webhook_url=self.public_url + "/twiml/inbound",
            auth_token=self.auth_token,
            patience=RIG_PATIENCE,
        )
        for name, value in overrides.items():
            setattr(plan, name, value)
        return plan

    async def call(self, **overrides: Any) -> CallResult:
        """An inbound call straight to the bridge (our simulated Twilio caller)."""
        return await place_call(self.plan(**overrides))

    async def call_in(self, **options: Any) -> str:
        """Someone dials the wired number through the Twilio emulator; its CallSid once ended.

        ``options``: ``keys``, ``answers``, ``hangup_after`` (see ``start_inbound_call``).
        """
        assert self.twilio is not None, "start the loopback with twilio=True"
        record = await self.twilio.place_inbound_call(LOOPBACK_NUMBER, "+966500000001", **options)
        return record.sid


@asynccontextmanager
async def loopback(
    emulator: EmulatorConfig | None = None,
    *,
    settings: Settings | None = None,
    script: CallScript = greeting_script,
    auth_token: str | None = None,
    twilio: bool | TwilioEmulatorConfig = False,
    hamsa_warm_connections: int = 0,
    ivr_flow: Flow | None = None,
    admission: Sequence[AdmissionHook] = (),
    **setting_overrides: Any,
) -> AsyncIterator[Loopback]:
    """Start the emulator(s) and the bridge; yield a ``Loopback`` to place calls through.

    ``auth_token``: the Twilio auth token the bridge validates with (default: a random one).
    ``twilio``: also run the Twilio emulator (its account's token is ``auth_token``) with
    ``LOOPBACK_NUMBER`` wired to the bridge, and point the bridge's REST client at it.
    ``hamsa_warm_connections``: the bridge's warm Hamsa pool; off (0) unless asked for, so the
    emulator's records hold only the calls' own connections. With a pool, the loopback is yielded
    once its first connects finished (the pool is full if Hamsa accepted them).
    ``ivr_flow``: calls run this flow, already loaded (instead of ``script``; a flow that
    transfers needs ``twilio``).
    ``admission``: admission hooks asked before the bridge's own (see ``create_app``).
    """
    api_key = "loopback-" + secrets.token_hex(8)
    auth_token = auth_token or secrets.token_hex(16)
    config = dataclasses.replace(emulator or EmulatorConfig(), api_keys=frozenset({api_key}))
    emulator_app = create_emulator_app(config)
    async with AsyncExitStack() as stack:
        hamsa_url = await stack.enter_async_context(serving(emulator_app))
        sock = bind()
        public = "http://{}:{}".format(*sock.getsockname()[:2])
        twilio_state: TwilioEmulatorState | None = None
        twilio_settings: dict[str, Any] = {}
        if twilio:
            twilio_config = twilio if isinstance(twilio, TwilioEmulatorConfig) else None
            twilio_config = dataclasses.replace(
                twilio_config or TwilioEmulatorConfig(),
                account_sid="AC" + secrets.token_hex(16),
                auth_token=auth_token,
                numbers={
                    LOOPBACK_NUMBER: NumberConfig(
                        voice_url=public + "/twiml/inbound",
                        status_callback=public + "/twilio/status",
                    )
                },
            )
            server = TwilioEmulatorServer(twilio_config)
            await stack.enter_async_context(server)
            twilio_state = server.state
            twilio_settings = {
                "twilio_account_sid": twilio_config.account_sid,
                "twilio_api_url": server.http_url,
                "twilio_phone_number": LOOPBACK_NUMBER,
            }
        try:
            base = settings.model_dump() if settings is not None else {}
            bridge_settings = Settings.model_validate(
                base
                | {
                    "hamsa_api_key": api_key,
                    "hamsa_ws_url": hamsa_url.replace("http://", "ws://") + "/v1/realtime/ws",
                    "hamsa_api_url": hamsa_url,
                    "twilio_auth_token": auth_token,
                    "bridge_public_url": public,
                    "hamsa_warm_connections": hamsa_warm_connections,
                }
                | twilio_settings
                | setting_overrides
            )
            if ivr_flow is not None:
                from bridge.ivr.feature import flow_script

                script = flow_script(bridge_settings, ivr_flow)
            app = create_app(bridge_settings, script=script, admission=admission)
        except BaseException:
            sock.close()
            raise
        await stack.enter_async_context(serving(app, sock=sock))
        await app.state.bridge_state.wait_started()  # voices preloaded, announcements resumed
        yield Loopback(
            settings=bridge_settings,
            hamsa=emulator_app.state.emulator,
            bridge_app=app,
            public_url=public,
            auth_token=auth_token,
            twilio=twilio_state,
        )
