"""The announcements HTTP API and the announcement status callback.

Validation and authentication run in-process (Starlette's ``TestClient``; nothing is placed);
accepted requests, idempotency, callbacks and resuming run on loopback against the Twilio
emulator, where a call really is placed, with the store on SQLite and on PostgreSQL
(``database_url``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog.testing
from starlette.testclient import TestClient

from bridge.announcements.spec import AnnouncementSpec
from bridge.app import create_app
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import LOOPBACK_NUMBER, Loopback, loopback
from bridge.dev.twilio_emulator import RestRecord
from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.signatures import TwilioSignatures
from tests.timing import HANG

API_TOKEN = "api-token-" + "k" * 24
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
AUTH_TOKEN = "twilio-auth-token"
PUBLIC = "https://bridge.example.com"
GOOD = {"to": "+966501112233", "text": "موعدك غدا الساعة العاشرة."}


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_account_sid": "AC" + "b" * 32,
        "twilio_phone_number": "+966501230000",
        "twilio_api_url": "http://127.0.0.1:9",  # never reached: nothing here is placed
        "bridge_public_url": PUBLIC,
        "hamsa_api_key": "k",
        "hamsa_ws_url": "ws://127.0.0.1:9/x",
        "bridge_api_token": API_TOKEN,
        "bridge_database_url": f"sqlite:///{tmp_path}/bridge.db",
    }
    return Settings(**(values | overrides))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = settings_for(tmp_path, bridge_allowed_prefixes=("+966", "+971"))
    with TestClient(create_app(settings), base_url="http://internal:8080") as c:
        yield c


def post(client: TestClient, body: Any, **headers: str) -> httpx2.Response:
    return client.post("/v1/announcements", json=body, headers=AUTH | headers)


def error_fields(response: httpx2.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


# --- in-process: the routes, authentication, validation -------------------------------------


def test_without_an_api_token_the_routes_do_not_exist_and_no_database_is_created(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, bridge_api_token="")
    status_url = PUBLIC + "/twilio/status"
    form = {"CallSid": "CA" + "c" * 32, "CallStatus": "completed", "SequenceNumber": "3"}
    signature = TwilioSignatures(AUTH_TOKEN).sign(status_url, form)
    with TestClient(create_app(settings)) as client:
        created = post(client, GOOD)
        fetched = client.get("/v1/announcements/an_" + "0" * 24, headers=AUTH)
        callback = client.post(
            "/twilio/status", data=form, headers={"X-Twilio-Signature": signature}
        )
    assert created.status_code == 404
    assert fetched.status_code == 404
    assert callback.status_code == 204
    assert not (tmp_path / "bridge.db").exists()


def test_the_api_refuses_to_start_without_twilio_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID"):
        create_app(settings_for(tmp_path, twilio_account_sid=""))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {API_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_bearer_token_is_401(client: TestClient, headers: dict[str, str]) -> None:
    created = client.post("/v1/announcements", json=GOOD, headers=headers)
    fetched = client.get("/v1/announcements/an_" + "0" * 24, headers=headers)
    for response in (created, fetched):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_token_is_never_logged(client: TestClient) -> None:
    with structlog.testing.capture_logs() as logs:
        client.post(
            "/v1/announcements", json=GOOD, headers={"Authorization": "Bearer almost-" + API_TOKEN}
        )
        post(client, GOOD | {"to": "+201001234567"})
    assert logs  # the refusals were logged…
    assert not [e for e in logs if API_TOKEN in repr(e)]  # …without the token


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (GOOD | {"to": "0501112233"}, "to"),
        (GOOD | {"to": "+96650111223344556677"}, "to"),
        (GOOD | {"from": "not-a-number"}, "from"),
        (GOOD | {"repeat": 9}, "repeat"),
        (GOOD | {"repeat": 0}, "repeat"),
        (GOOD | {"repeat": "2"}, "repeat"),
        (GOOD | {"repeat": True}, "repeat"),
        (GOOD | {"confirm_digit": "12"}, "confirm_digit"),
        (GOOD | {"confirm_digit": "2", "repeat_digit": "2"}, "confirm_digit"),
        (GOOD | {"ring_timeout": 2}, "ring_timeout"),
        (GOOD | {"text": "   "}, "text"),
        (GOOD | {"text": "ب" * 2001}, "text"),
        (GOOD | {"confirm-digit": "1"}, "confirm-digit"),
        (GOOD | {"from_": "+966501230000"}, "from_"),
        ({"text": "بلا رقم"}, "to"),
    ],
)
def test_invalid_requests_are_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = post(client, body)
    assert response.status_code == 422, response.text
    assert field in error_fields(response)
    assert all(e["message"] for e in response.json()["errors"])


def test_a_number_outside_the_allowed_prefixes_is_403(client: TestClient) -> None:
    response = post(client, GOOD | {"to": "+201001234567"})
    assert response.status_code == 403
    assert error_fields(response) == ["to"]
    assert "BRIDGE_ALLOWED_PREFIXES" in response.json()["errors"][0]["message"]


def test_text_whose_twiml_would_be_too_long_is_422(client: TestClient) -> None:
    # Each "&" becomes "&amp;" in the TwiML: 1000 of them stay under the text limit (2000)
    # but not under Twilio's 4000-character TwiML limit.
    response = post(client, GOOD | {"text": "& " * 1000})
    assert response.status_code == 422
    assert error_fields(response) == ["text"]
    assert "4000" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b"\xff\xfe", 400),
        (b'{"to": "' + b"1" * (64 * 1024) + b'"}', 413),
    ],
)
def test_malformed_or_oversized_bodies(client: TestClient, content: bytes, status: int) -> None:
    response = client.post(
        "/v1/announcements",
        content=content,
        headers=AUTH | {"Content-Type": "application/json"},
    )
    assert response.status_code == status


def test_an_overlong_idempotency_key_is_400(client: TestClient) -> None:
    response = post(client, GOOD, **{"Idempotency-Key": "k" * 201})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]


def test_unknown_announcement_is_404(client: TestClient) -> None:
    response = client.get("/v1/announcements/an_" + "9" * 24, headers=AUTH)
    assert response.status_code == 404


# --- on loopback: accepted requests place calls ---------------------------------------------


def calls_created(rig: Loopback) -> list[RestRecord]:
    assert rig.twilio is not None
    return [r for r in rig.twilio.requests if r.path.endswith("/Calls.json") and r.method == "POST"]


def api_loopback(database_url: str, **settings: Any) -> Any:
    return loopback(
        EmulatorConfig(ms_per_char=25),
        twilio=True,
        bridge_api_token=API_TOKEN,
        bridge_database_url=database_url,
        hamsa_truncation_ms_per_char=3.0,
        **settings,
    )


@pytest.mark.anyio
async def test_accepted_request_is_202_then_get_shows_it(database_url: str) -> None:
    async with (
        api_loopback(database_url) as rig,
        httpx2.AsyncClient(base_url=rig.public_url, headers=AUTH) as http,
    ):
        response = await http.post("/v1/announcements", json=GOOD | {"repeat": 2})
        body = response.json()
        fetched = await http.get(body["url"])
        service = rig.bridge.announcements
        assert service is not None
        async with asyncio.timeout(HANG):
            final = await service.settled(body["id"])
        created = calls_created(rig)
    assert response.status_code == 202
    assert body["status"] == "planned"
    assert body["url"] == f"/v1/announcements/{body['id']}"
    assert response.headers["location"] == body["url"]
    assert fetched.status_code == 200
    shown = fetched.json()
    assert shown["id"] == body["id"]
    assert shown["to"] == GOOD["to"]
    assert shown["from"] == LOOPBACK_NUMBER
    assert shown["state"] in ("planned", "placed", "ended")
    assert len(created) == 1
    assert final is not None
    assert final.spec.options.repeat == 2
    assert final.plays == 2


@pytest.mark.anyio
async def test_a_retried_post_with_the_same_idempotency_key_places_one_call(
    database_url: str,
) -> None:
    key = {"Idempotency-Key": "order-1234-reminder"}
    async with (
        api_loopback(database_url) as rig,
        httpx2.AsyncClient(base_url=rig.public_url, headers=AUTH) as http,
    ):
        first = await http.post("/v1/announcements", json=GOOD, headers=key)
        again = await http.post("/v1/announcements", json=GOOD, headers=key)
        other = await http.post(
            "/v1/announcements", json=GOOD | {"text": "رسالة أخرى."}, headers=key
        )
        fresh = await http.post("/v1/announcements", json=GOOD, headers={"Idempotency-Key": "2"})
        service = rig.bridge.announcements
        assert service is not None
        async with asyncio.timeout(HANG):
            await service.settled(first.json()["id"])
            await service.settled(fresh.json()["id"])
        created = calls_created(rig)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 422
    assert error_fields(other) == ["Idempotency-Key"]
    assert fresh.status_code == 202
    assert fresh.json()["id"] != first.json()["id"]
    assert len(created) == 2  # one per key, none for the retry or the mismatch


@pytest.mark.anyio
async def test_status_callbacks_are_recorded_for_known_announcements_only(
    database_url: str,
) -> None:
    async with api_loopback(database_url) as rig, httpx2.AsyncClient() as http:
        store = await rig.bridge.store.get()
        spec = AnnouncementSpec.create(rig.settings, to=GOOD["to"], text=GOOD["text"])
        planned, _ = await store.create_announcement(spec, now=time.time())
        signer = TwilioSignatures(rig.auth_token)
        call_sid = "CA" + "d" * 32
        form = {
            "CallSid": call_sid,
            "CallStatus": "completed",
            "SequenceNumber": "3",
            "CallDuration": "7",
            "AnsweredBy": "human",
        }

        async def callback(announcement: str, *, signed: bool = True) -> int:
            url = f"{rig.public_url}/twilio/status?announcement={announcement}"
            headers = {"X-Twilio-Signature": signer.sign(url, form)} if signed else {}
            response = await http.post(url, data=form, headers=headers)
            return response.status_code

        unsigned = await callback(planned.id, signed=False)
        after_unsigned = await store.get_announcement(planned.id)
        known = await callback(planned.id)
        unknown = await callback("an_" + "e" * 24)
        malformed = await callback("../../etc")
        record = await store.get_announcement(planned.id)
    assert unsigned == 403
    assert after_unsigned is not None
    assert after_unsigned.status is None
    assert (known, unknown, malformed) == (204, 204, 204)
    assert record is not None
    assert record.status == "completed"
    assert record.status_seq == 3
    assert record.call_sid == call_sid
    assert record.duration == 7
    assert record.answered_by == "human"
    assert record.state.value == "ended"


@pytest.mark.anyio
@pytest.mark.parametrize("sent", [False, True], ids=["accepted-not-sent", "sent-no-answer"])
async def test_startup_settles_an_attempt_a_previous_process_left_planned(
    database_url: str, sent: bool
) -> None:
    # A previous bridge accepted an announcement and died. Never sent (waiting for a slot):
    # the new bridge places it, once. Sent but unanswered: Twilio's Calls list has no such call,
    # so it is marked not placed and nothing is dialled.
    async with api_loopback(database_url) as first:
        store = await first.bridge.store.get()
        spec = AnnouncementSpec.create(first.settings, to=GOOD["to"], text=GOOD["text"])
        left, _ = await store.create_announcement(spec, now=time.time() - 60)
        if sent:
            assert await store.begin_placing(left.id, now=time.time() - 59)
            assert not await store.begin_placing(left.id, now=time.time() - 59)
    async with (
        api_loopback(database_url) as rig,
        httpx2.AsyncClient(base_url=rig.public_url, headers=AUTH) as http,
    ):
        service = rig.bridge.announcements
        assert service is not None
        async with asyncio.timeout(HANG):
            await service.settled(left.id)
        shown = (await http.get(f"/v1/announcements/{left.id}")).json()
        created = calls_created(rig)
    if sent:
        assert shown["state"] == "not_placed"
        assert shown["outcome"] == "not-placed"
        assert created == []
    else:
        assert shown["state"] == "ended"
        assert shown["outcome"] == "heard"
        assert len(created) == 1
