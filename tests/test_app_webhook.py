"""In-process app tests: the Voice webhook, health endpoints, configuration refusal."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from starlette.testclient import TestClient

from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.signatures import TwilioSignatures
from bridge.stream_token import verify_token

TOKEN = "test-auth-token"
PUBLIC = "https://bridge.example.com"
CALL_SID = "CA" + "a" * 32
FORM = {
    "AccountSid": "AC" + "b" * 32,
    "CallSid": CALL_SID,
    "From": "+966500000001",
    "To": "+966110000000",
    "CallStatus": "ringing",
    "Direction": "inbound",
}


@pytest.fixture
def settings() -> Settings:
    return Settings(
        twilio_auth_token=TOKEN,
        bridge_public_url=PUBLIC,
        hamsa_api_key="k",
        hamsa_ws_url="ws://127.0.0.1:9/x",
    )


@pytest.fixture
def client(settings: Settings) -> TestClient:
    with TestClient(
        create_app(settings, wall_clock=lambda: 1_000_000.0), base_url="http://internal:8080"
    ) as c:
        yield c


def signed(url: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": TwilioSignatures(TOKEN).sign(url, form)}


def test_signed_webhook_returns_connect_stream_with_token(client: TestClient) -> None:
    response = client.post(
        "/twiml/inbound", data=FORM, headers=signed(PUBLIC + "/twiml/inbound", FORM)
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    assert [c.tag for c in root] == ["Connect"]  # nothing after </Connect>
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://bridge.example.com/twilio/stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["from"] == "+966500000001"
    assert params["to"] == "+966110000000"
    verify_token(TOKEN.encode(), params["token"], CALL_SID, now=1_000_100.0)
    assert TOKEN not in response.text


def test_signature_is_checked_against_public_url_not_host_header(client: TestClient) -> None:
    # signed for the URL the client actually used (the internal host): must be refused
    response = client.post(
        "/twiml/inbound", data=FORM, headers=signed("http://internal:8080/twiml/inbound", FORM)
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Twilio-Signature": ""}, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}],
)
def test_unsigned_or_wrongly_signed_webhook_is_403(
    client: TestClient, headers: dict[str, str]
) -> None:
    assert client.post("/twiml/inbound", data=FORM, headers=headers).status_code == 403


def test_tampered_form_is_403(client: TestClient) -> None:
    headers = signed(PUBLIC + "/twiml/inbound", FORM)
    response = client.post("/twiml/inbound", data={**FORM, "From": "+15550000000"}, headers=headers)
    assert response.status_code == 403


def test_query_string_is_part_of_the_signed_url(client: TestClient) -> None:
    url = PUBLIC + "/twiml/inbound?flow=main"
    assert (
        client.post("/twiml/inbound?flow=main", data=FORM, headers=signed(url, FORM)).status_code
        == 200
    )
    headers = signed(PUBLIC + "/twiml/inbound", FORM)
    assert client.post("/twiml/inbound?flow=main", data=FORM, headers=headers).status_code == 403


def test_malformed_call_sid_is_400(client: TestClient) -> None:
    form = {**FORM, "CallSid": "nope"}
    response = client.post(
        "/twiml/inbound", data=form, headers=signed(PUBLIC + "/twiml/inbound", form)
    )
    assert response.status_code == 400


def test_health_endpoints(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_stream_handshake_with_bad_signature_is_refused(client: TestClient) -> None:
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as info,
        client.websocket_connect("/twilio/stream", headers={"X-Twilio-Signature": "bad"}),
    ):
        pass
    assert info.value.status_code == 403


@pytest.mark.parametrize("missing", ["twilio_auth_token", "bridge_public_url", "hamsa_api_key"])
def test_serving_without_required_settings_is_refused(missing: str) -> None:
    values = {
        "twilio_auth_token": TOKEN,
        "bridge_public_url": PUBLIC,
        "hamsa_api_key": "k",
        missing: "",
    }
    with pytest.raises(ConfigError, match=missing.upper()):
        create_app(Settings(**values))


def test_settings_from_env_parses_lists_and_ignores_unrelated() -> None:
    s = Settings.from_env(
        {
            "HAMSA_PRELOAD_VOICES": " a, b ,,",
            "HAMSA_RETRY_DELAYS": "0.1,0.2",
            "BRIDGE_PUBLIC_URL": "https://x.example.com/",
            "PATH": "/bin",
        }
    )
    assert s.hamsa_preload_voices == ("a", "b")
    assert s.hamsa_retry_delays == (0.1, 0.2)
    assert s.stream_url == "wss://x.example.com/twilio/stream"


def test_settings_reject_bad_public_url() -> None:
    with pytest.raises(ValueError, match="has no scheme"):
        Settings.from_env({"BRIDGE_PUBLIC_URL": "bridge.example.com"})


def test_signed_status_callback_is_accepted_and_unsigned_refused(client: TestClient) -> None:
    form = {**FORM, "CallStatus": "completed", "CallDuration": "12", "SequenceNumber": "3"}
    url = PUBLIC + "/twilio/status"
    assert client.post("/twilio/status", data=form, headers=signed(url, form)).status_code == 204
    assert client.post("/twilio/status", data=form).status_code == 403
    tampered = {**form, "CallStatus": "busy"}
    assert (
        client.post("/twilio/status", data=tampered, headers=signed(url, form)).status_code == 403
    )
