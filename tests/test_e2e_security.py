"""Security on loopback: signatures on the webhook and handshake, the stream token, and that an
unauthenticated stream never causes a Hamsa connection."""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest

from bridge.dev.loopback import loopback
from bridge.stream_token import issue_token
from tests.timing import HANG

pytestmark = pytest.mark.anyio

SHORT = "مرحبا بك."


async def test_unsigned_and_wrongly_signed_webhooks_are_403() -> None:
    async with loopback(bridge_greeting=SHORT) as rig:
        unsigned = await rig.call(sign_webhook=False)
        wrong = await rig.call(auth_token="not-the-token")
        connections = len(rig.hamsa.connections)
    assert unsigned.webhook_status == 403
    assert wrong.webhook_status == 403
    assert unsigned.leg is None
    assert wrong.leg is None
    assert connections == 0


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1.9999999999.forged",
        "garbage",
    ],
)
async def test_stream_without_a_valid_token_is_refused_without_hamsa(token: str) -> None:
    async with loopback(bridge_greeting=SHORT) as rig:
        result = await rig.call(token_override=token)
        connections = len(rig.hamsa.connections)
    assert result.close_code == 1008
    assert result.leg is not None
    assert result.leg.received == b""
    assert connections == 0


async def test_token_for_another_call_is_refused() -> None:
    async with loopback(bridge_greeting=SHORT) as rig:
        other = issue_token(rig.auth_token.encode(), "CA" + "0" * 32, now=time.time(), ttl=60)
        result = await rig.call(token_override=other)
        connections = len(rig.hamsa.connections)
    assert result.close_code == 1008
    assert connections == 0


async def test_expired_token_is_refused() -> None:
    async with loopback(bridge_greeting=SHORT, bridge_stream_token_ttl=0.001) as rig:
        plan = rig.plan()
        expired = issue_token(rig.auth_token.encode(), plan.call_sid, now=0, ttl=60)
        result = await rig.call(call_sid=plan.call_sid, token_override=expired)
        connections = len(rig.hamsa.connections)
    assert result.close_code == 1008
    assert connections == 0


async def test_handshake_signed_with_the_wrong_key_is_denied_403() -> None:
    async with loopback(bridge_greeting=SHORT) as rig:
        plan = rig.plan()
        # the webhook is signed correctly, the stream handshake with another key
        result = await rig.call(handshake_token="not-the-token", call_sid=plan.call_sid)
        connections = len(rig.hamsa.connections)
    assert result.handshake_status == 403
    assert result.leg is None
    assert connections == 0


async def test_unsigned_handshake_with_valid_token_is_accepted() -> None:
    # Twilio may not sign <Connect><Stream> handshakes: the token alone must then suffice.
    async with loopback(bridge_greeting=SHORT) as rig:
        result = await rig.call(sign_handshake=False)
    assert result.leg is not None
    assert len(result.leg.received) > 0


async def test_no_query_string_and_no_secret_in_twiml() -> None:
    async with loopback(bridge_greeting=SHORT) as rig:
        result = await rig.call(hangup_after=0.1)
        key = rig.settings.hamsa_api_key.get_secret_value()
    assert result.stream_url is not None
    assert "?" not in result.stream_url
    assert rig.auth_token not in result.twiml
    assert key not in result.twiml
    assert "token" in result.parameters


async def test_health_endpoints_on_loopback() -> None:
    async with loopback(bridge_greeting=SHORT) as rig, httpx2.AsyncClient() as http:
        live = await http.get(rig.public_url + "/livez")
        ready = await http.get(rig.public_url + "/readyz")
        get_webhook = await http.get(rig.public_url + "/twiml/inbound")
    assert live.status_code == 200
    assert ready.status_code == 200
    assert get_webhook.status_code == 405


async def test_streams_that_never_authenticate_are_bounded_and_timed_out() -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    overrides = {"bridge_max_pending_streams": 2, "bridge_start_timeout": 0.5}
    async with loopback(bridge_greeting=SHORT, **overrides) as rig:
        url = rig.settings.stream_url
        async with connect(url) as first, connect(url) as second:
            with pytest.raises(InvalidStatus) as info:
                async with connect(url):
                    pass
            assert info.value.response.status_code == 503
            # silent sockets are closed once the start timeout passes (policy violation)
            for ws in (first, second):
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(HANG):
                        await ws.recv()
                assert ws.close_code == 1008
        result = await rig.call()  # and the bridge takes calls again
        connections = len(rig.hamsa.connections)
    assert result.leg is not None
    assert len(result.leg.received) > 0
    assert connections == 1
