"""The Twilio emulator against Twilio's official OpenAPI spec (twilio/twilio-oai
``twilio_api_v2010.json``), with openapi-core.

Every request these tests send — through httpx2 and through the official twilio-python client —
is captured on the wire and validated against the spec (method, path, query, form body, Basic
auth), and so is every response the emulator gives (status, JSON body). Validation is strict:
every property a response schema defines must be present (``response_properties_default_policy
= "required"``), and Twilio's ``date-time-rfc-2822`` and ``phone-number`` formats are checked.

The spec declares no error responses for these operations, so an error answer is checked two
ways: openapi-core must report exactly "no such response in the spec" (nothing else wrong), and
the body must match Twilio's error shape (``ERROR_SCHEMA``). Requests that break the spec on
purpose (missing ``To``, no credentials) must be reported as invalid by openapi-core.

The spec is 1.8 MB: it is loaded once per module (about 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bridge.dev.twilio_emulator import NumberConfig, TwilioEmulatorConfig, TwilioEmulatorServer
from bridge.dev.twilio_emulator.rest_model import basic_auth_header, is_e164

openapi_core = pytest.importorskip("openapi_core", reason="openapi-core is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (openapi-core's) is missing")

from openapi_core import Config, OpenAPI  # noqa: E402
from openapi_core.templating.responses.exceptions import ResponseNotFound  # noqa: E402
from openapi_core.testing import MockRequest, MockResponse  # noqa: E402

SPEC = Path(__file__).parents[2] / "shared/twilio-oai/twilio_api_v2010.json"
SERVER = "https://api.twilio.com"
TIMEOUT = 10.0
TOKEN = "8c1f3b0e2d4a6c8e0f1a3b5c7d9e1f20"
ACCOUNT = "AC" + "0123456789abcdef" * 2
NUMBER = "+15005550006"
OTHER_NUMBER = "+966110000000"
CALLEE = "+14155550100"

ERROR_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["code", "message", "more_info", "status"],
    "additionalProperties": False,
    "properties": {
        "code": {"type": "integer", "minimum": 10000, "maximum": 99999},
        "message": {"type": "string", "minLength": 1},
        "more_info": {"type": "string", "pattern": r"^https://www\.twilio\.com/docs/errors/\d+$"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
    },
}

_RFC2822 = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000")

pytestmark = pytest.mark.anyio


def _rfc2822(value: Any) -> bool:
    if not isinstance(value, str) or not _RFC2822.fullmatch(value):
        return False
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return True


def _phone_number(value: Any) -> bool:
    return isinstance(value, str) and is_e164(value)


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    """The official spec, loaded once (1.8 MB; about a second)."""
    if not SPEC.is_file():
        pytest.skip(
            f"Twilio's OpenAPI spec is not at {SPEC} (twilio/twilio-oai "
            "spec/json/twilio_api_v2010.json); conformance tests need it"
        )
    started = time.process_time()  # the work loading costs, not how busy the machine is
    with SPEC.open(encoding="utf-8") as source:
        document = json.load(source)
    config = Config(
        response_properties_default_policy="required",
        extra_format_validators={
            "date-time-rfc-2822": _rfc2822,
            "phone-number": _phone_number,
        },
    )
    api = OpenAPI.from_dict(document, config=config)
    api.load_seconds = time.process_time() - started  # type: ignore[attr-defined]
    return api


# --- capturing the wire ---------------------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    status: int
    response: bytes
    response_type: str

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def json(self) -> Any:
        return json.loads(self.response)


@dataclass
class Wire:
    exchanges: list[Exchange] = field(default_factory=list)

    async def on_response(self, response: httpx2.Response) -> None:
        await response.aread()
        request = response.request
        self.exchanges.append(
            Exchange(
                method=request.method,
                url=str(request.url),
                headers=dict(request.headers),
                body=request.content,
                status=response.status_code,
                response=response.content,
                response_type=response.headers.get("content-type", ""),
            )
        )

    def on_requests_response(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        """A ``requests`` response hook (what twilio-python's ``TwilioHttpClient`` uses)."""
        request = response.request
        body = request.body or b""
        self.exchanges.append(
            Exchange(
                method=request.method,
                url=request.url,
                headers=dict(request.headers),
                body=body.encode() if isinstance(body, str) else body,
                status=response.status_code,
                response=response.content,
                response_type=response.headers.get("content-type", ""),
            )
        )
        return response


def _request(exchange: Exchange) -> MockRequest:
    parts = urlsplit(exchange.url)
    headers = {k.lower(): v for k, v in exchange.headers.items()}
    return MockRequest(
        SERVER,
        exchange.method,
        parts.path,
        args=parse_qsl(parts.query, keep_blank_values=True),  # type: ignore[arg-type]
        headers=headers,
        data=exchange.body,
        content_type=headers.get("content-type", "application/x-www-form-urlencoded"),
    )


def _response(exchange: Exchange) -> MockResponse:
    return MockResponse(
        exchange.response,
        status_code=exchange.status,
        content_type=exchange.response_type.split(";")[0],
    )


def check(spec: OpenAPI, exchange: Exchange, *, request_ok: bool = True) -> list[Exception]:
    """Validate one exchange; returns the request errors (asserted empty when ``request_ok``)."""
    request = _request(exchange)
    request_errors = list(spec.unmarshal_request(request).errors)
    if request_ok:
        assert request_errors == [], (exchange.method, exchange.url, request_errors)
    else:
        assert request_errors, f"the spec should reject {exchange.method} {exchange.url}"
    response_errors = list(spec.unmarshal_response(request, _response(exchange)).errors)
    if exchange.status < 400:
        assert response_errors == [], (exchange.method, exchange.url, response_errors)
    else:
        assert len(response_errors) == 1, response_errors
        assert isinstance(response_errors[0], ResponseNotFound), response_errors
        jsonschema.validate(exchange.json(), ERROR_SCHEMA)
        assert exchange.json()["status"] == exchange.status
    return request_errors


def check_all(spec: OpenAPI, wire: Wire) -> None:
    for exchange in wire.exchanges:
        check(spec, exchange)


@contextlib.asynccontextmanager
async def emulator(
    **config: Any,
) -> AsyncIterator[tuple[TwilioEmulatorServer, Wire, httpx2.AsyncClient]]:
    numbers = {
        NUMBER: NumberConfig(voice_url="https://bridge.example.com/twiml/inbound"),
        OTHER_NUMBER: NumberConfig(friendly_name="Riyadh"),
    }
    settings = TwilioEmulatorConfig(
        account_sid=ACCOUNT, auth_token=TOKEN, numbers=numbers, seed=3, **config
    )
    wire = Wire()
    async with (
        TwilioEmulatorServer(settings) as server,
        httpx2.AsyncClient(
            base_url=server.http_url,
            headers={"Authorization": basic_auth_header(ACCOUNT, TOKEN)},
            event_hooks={"response": [wire.on_response]},
        ) as http,
    ):
        yield server, wire, http


@contextlib.contextmanager
def official_client(server: TwilioEmulatorServer, wire: Wire) -> Iterator[Client]:
    http = TwilioHttpClient(request_hooks={"response": [wire.on_requests_response]})
    client = Client(ACCOUNT, TOKEN, http_client=http)
    client.api.base_url = server.http_url
    try:
        yield client
    finally:
        if http.session is not None:
            http.session.close()


def calls_path(suffix: str = "") -> str:
    return f"/2010-04-01/Accounts/{ACCOUNT}/Calls{suffix}.json"


def numbers_path(suffix: str = "") -> str:
    return f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers{suffix}.json"


# --- tests ----------------------------------------------------------------------------------------


def test_the_spec_loads_quickly_enough(spec: OpenAPI) -> None:
    seconds: float = spec.load_seconds  # type: ignore[attr-defined]
    assert seconds < 20, f"loading the spec took {seconds:.1f} s of CPU"


async def test_account_fetch_and_update_conform(spec: OpenAPI) -> None:
    async with emulator() as (_, wire, http):
        await http.get(f"/2010-04-01/Accounts/{ACCOUNT}.json")
        await http.post(f"/2010-04-01/Accounts/{ACCOUNT}.json", data={"FriendlyName": "Mine"})
        assert wire.exchanges[-1].json()["friendly_name"] == "Mine"
        check_all(spec, wire)


async def test_calls_create_fetch_list_update_conform(spec: OpenAPI) -> None:
    async with emulator(ring_seconds=30.0) as (server, wire, http):
        created = await http.post(
            calls_path(),
            data={
                "To": CALLEE,
                "From": NUMBER,
                "Twiml": "<Response><Say>hello</Say></Response>",
                "StatusCallback": "https://bridge.example.com/twilio/status",
                "StatusCallbackEvent": ["initiated", "completed"],
                "StatusCallbackMethod": "POST",
                "Timeout": "30",
                "TimeLimit": "600",
                "MachineDetection": "Enable",
            },
        )
        assert created.status_code == 201
        assert created.request.content.count(b"StatusCallbackEvent=") == 2
        sid = created.json()["sid"]
        by_url = await http.post(
            calls_path(),
            data={
                "To": CALLEE,
                "From": NUMBER,
                "Url": "https://bridge.example.com/twiml/out",
                "Method": "GET",
            },
        )
        assert by_url.status_code == 201
        async with asyncio.timeout(TIMEOUT):
            await server.state.wait_until(lambda s: s.calls[sid].status == "ringing")
        await http.get(calls_path(f"/{sid}"))
        await http.get(calls_path(), params={"To": CALLEE, "PageSize": "1"})
        second_page = wire.exchanges[-1].json()["next_page_uri"]
        assert second_page is not None
        await http.get(second_page)
        await http.get(calls_path(), params={"Status": "ringing", "From": NUMBER})
        await http.post(calls_path(f"/{sid}"), data={"Twiml": "<Response><Hangup/></Response>"})
        await http.post(calls_path(f"/{sid}"), data={"Status": "canceled"})
        async with asyncio.timeout(TIMEOUT):
            await server.state.wait_for_call(sid)
        await http.post(
            calls_path(f"/{by_url.json()['sid']}"),
            data={"Status": "completed", "StatusCallback": "https://bridge.example.com/s"},
        )
        await http.get(calls_path(f"/{sid}"))
        assert wire.exchanges[-1].json()["status"] == "canceled"
        assert [e.status for e in wire.exchanges] == [
            201,
            201,
            200,
            200,
            200,
            200,
            200,
            200,
            200,
            200,
        ]
        check_all(spec, wire)


async def test_numbers_list_fetch_update_conform(spec: OpenAPI) -> None:
    async with emulator() as (_, wire, http):
        await http.get(numbers_path())
        listing = wire.exchanges[-1].json()["incoming_phone_numbers"]
        assert [n["phone_number"] for n in listing] == [NUMBER, OTHER_NUMBER]
        await http.get(numbers_path(), params={"PhoneNumber": NUMBER})
        await http.get(numbers_path(), params={"FriendlyName": "Riyadh", "PageSize": "1"})
        await http.get(numbers_path(), params={"PageSize": "1", "Page": "1"})
        sid = listing[0]["sid"]
        await http.get(numbers_path(f"/{sid}"))
        await http.post(
            numbers_path(f"/{sid}"),
            data={
                "VoiceUrl": "https://bridge.example.com/twiml/inbound",
                "VoiceMethod": "POST",
                "StatusCallback": "https://bridge.example.com/twilio/status",
                "StatusCallbackMethod": "POST",
                "VoiceFallbackUrl": "https://bridge.example.com/fallback",
                "FriendlyName": "Bridge line",
            },
        )
        assert all(e.status == 200 for e in wire.exchanges)
        check_all(spec, wire)


async def test_error_responses_conform(spec: OpenAPI) -> None:
    async with emulator() as (server, wire, http):
        unknown_call = "CA" + "e" * 32
        unknown_number = "PN" + "e" * 32
        # Spec-valid requests that the emulator must refuse.
        await http.get(calls_path(f"/{unknown_call}"))
        await http.post(calls_path(f"/{unknown_call}"), data={"Status": "completed"})
        await http.get(numbers_path(f"/{unknown_number}"))
        await http.get(calls_path(), headers={"Authorization": basic_auth_header(ACCOUNT, "no")})
        await http.post(calls_path(), data={"To": CALLEE, "From": NUMBER})  # no Url/Twiml
        await http.post(
            calls_path(), data={"To": CALLEE, "From": "+19998887777", "Twiml": "<Response/>"}
        )
        await http.post(
            calls_path(),
            data={"To": CALLEE, "From": NUMBER, "Twiml": "<Response>" + "x" * 4000 + "</Response>"},
        )
        # A call that has ended: 21220.
        created = await http.post(
            calls_path(), data={"To": CALLEE, "From": NUMBER, "Twiml": "<Response/>"}
        )
        sid = created.json()["sid"]
        async with asyncio.timeout(TIMEOUT):
            await server.state.wait_for_call(sid)
        await http.post(calls_path(f"/{sid}"), data={"Twiml": "<Response><Hangup/></Response>"})
        codes = [e.json()["code"] for e in wire.exchanges if e.status >= 400]
        assert codes == [20404, 20404, 20404, 20003, 21205, 21210, 32018, 21220]
        check_all(spec, wire)

        # Requests that break the spec: openapi-core must say so, the emulator must refuse them.
        wire.exchanges.clear()
        await http.post(calls_path(), data={"From": NUMBER, "Url": "https://a.example/x"})
        await http.post(calls_path(), data={"To": CALLEE, "Url": "https://a.example/x"})
        await http.get(calls_path(), headers={"Authorization": ""})
        await http.get(calls_path(), params={"PageSize": "0"})
        assert [e.json()["code"] for e in wire.exchanges] == [21201, 21213, 20003, 20001]
        for exchange in wire.exchanges:
            check(spec, exchange, request_ok=False)


async def test_official_client_traffic_conforms(spec: OpenAPI) -> None:
    async with emulator() as (server, wire, _):
        with official_client(server, wire) as client:
            await asyncio.to_thread(client.api.v2010.accounts(ACCOUNT).fetch)
            numbers = await asyncio.to_thread(client.incoming_phone_numbers.list, page_size=1)
            await asyncio.to_thread(
                client.incoming_phone_numbers(numbers[0].sid).update,
                voice_url="https://bridge.example.com/twiml/inbound",
                status_callback="https://bridge.example.com/twilio/status",
            )
            await asyncio.to_thread(
                client.incoming_phone_numbers.list, phone_number=NUMBER, limit=20
            )
            call = await asyncio.to_thread(
                client.calls.create,
                to=CALLEE,
                from_=NUMBER,
                twiml="<Response><Say>hi</Say></Response>",
                status_callback="https://bridge.example.com/twilio/status",
                status_callback_event=["initiated", "ringing", "answered", "completed"],
                machine_detection="DetectMessageEnd",
                timeout=20,
            )
            async with asyncio.timeout(TIMEOUT):
                await server.state.wait_for_call(call.sid)
            await asyncio.to_thread(client.calls(call.sid).fetch)
            await asyncio.to_thread(client.calls.list, to=CALLEE, page_size=5)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.calls(call.sid).update, status="completed")
        statuses = [e.status for e in wire.exchanges]
        assert statuses.count(201) == 1
        assert statuses[-1] == 400  # the ended call: 21220
        assert set(statuses[:-1]) == {200, 201}
        (create,) = [e for e in wire.exchanges if e.status == 201]
        assert create.body.count(b"StatusCallbackEvent=") == 4
        assert create.headers["User-Agent"].startswith("twilio-python/")
        check_all(spec, wire)


def _drop_queue_time(body: dict[str, Any]) -> None:
    del body["queue_time"]


@pytest.mark.parametrize(
    "tamper",
    [
        _drop_queue_time,
        lambda body: body.__setitem__("date_created", "2010-08-31T20:36:28Z"),
        lambda body: body.__setitem__("trunk_sid", ""),
        lambda body: body.__setitem__("status", "hung-up"),
        lambda body: body.__setitem__("duration", 15),
    ],
    ids=["missing-property", "iso-date", "empty-sid", "unknown-status", "integer-duration"],
)
async def test_the_checks_catch_a_wrong_shape(
    spec: OpenAPI, tamper: Callable[[dict[str, Any]], None]
) -> None:
    """The harness is not vacuous: a real answer, tampered with, fails validation."""
    async with emulator() as (_, wire, http):
        await http.post(calls_path(), data={"To": CALLEE, "From": NUMBER, "Twiml": "<Response/>"})
    (exchange,) = wire.exchanges
    check(spec, exchange)
    body = exchange.json()
    tamper(body)
    with pytest.raises(AssertionError):
        check(spec, replace(exchange, response=json.dumps(body).encode()))
    bad_request = replace(exchange, body=exchange.body + b"&Timeout=soon")
    with pytest.raises(AssertionError):
        check(spec, bad_request)


async def test_the_ivr_transfer_update_conforms(spec: OpenAPI, tmp_path: Path) -> None:
    """The bridge's own REST request for an IVR transfer (twilio-python, via the runner),
    as the Twilio emulator received and answered it, against the official spec."""
    from urllib.parse import urlencode

    from bridge.dev.hamsa_emulator import EmulatorConfig
    from bridge.dev.loopback import loopback

    flow = tmp_path / "transfer.toml"
    flow.write_text(
        '[flow]\nstart = "menu"\n'
        '[nodes.menu]\ntype = "menu"\nprompt = "للاستقبال اضغط صفر."\n'
        'options = { "0" = "desk" }\n'
        '[nodes.desk]\ntype = "transfer"\nto = "+966112345678"\nmessage = "لحظة من فضلك."\n',
        encoding="utf-8",
    )
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        bridge_ivr_flow=str(flow),
        twilio=True,
        hamsa_truncation_ms_per_char=3.0,
    ) as rig:
        sid = await rig.call_in(answers=["0"])
        assert rig.twilio is not None
        [update] = [r for r in rig.twilio.requests if r.method == "POST" and sid in r.path]
        account = rig.settings.twilio_account_sid
        token = rig.auth_token
    assert "<Dial><Number>+966112345678</Number></Dial>" in str(update.form["Twiml"])
    exchange = Exchange(
        method=update.method,
        url=SERVER + update.path,
        headers={
            "Authorization": basic_auth_header(account, token),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        body=urlencode(update.form, doseq=True).encode(),
        status=update.status,
        response=json.dumps(update.response).encode(),
        response_type="application/json",
    )
    check(spec, exchange)


async def test_announcement_requests_conform(spec: OpenAPI) -> None:
    """An announcement's ``calls.create`` (inline TwiML with a 2000-character Arabic text in
    ``<Parameter>``s, AMD, status callbacks, TimeLimit), the resume-time Calls list by To and
    From, the outcome poll and the hang-up, as twilio-python sends them, against the spec."""
    from bridge.announcements.options import AnnouncementOptions
    from bridge.announcements.placing import call_request
    from bridge.announcements.spec import AnnouncementSpec
    from bridge.settings import Settings

    settings = Settings(
        twilio_account_sid=ACCOUNT,
        twilio_auth_token=TOKEN,
        twilio_phone_number=NUMBER,
        bridge_public_url="https://bridge.example.com",
    )
    announcement = AnnouncementSpec.create(
        settings,
        to=CALLEE,
        text=("موعدك غدا في العيادة الساعة العاشرة صباحا، " * 50)[:2000],
        options=AnnouncementOptions(repeat=2, confirm_digit="1", machine_detection=True),
    )
    request = call_request(settings, "an_0123456789abcdef01234567", announcement, now=time.time())
    assert len(request["twiml"]) < 4000
    async with emulator() as (server, wire, _):
        with official_client(server, wire) as client:
            call = await asyncio.to_thread(client.calls.create, **request)
            await asyncio.to_thread(client.calls.list, to=CALLEE, from_=NUMBER, limit=50)
            await asyncio.to_thread(client.calls(call.sid).fetch)
            with contextlib.suppress(Exception):  # 21220 if the call already ended
                await asyncio.to_thread(client.calls(call.sid).update, status="completed")
        create = next(e for e in wire.exchanges if e.status == 201)
        form = dict(parse_qsl(create.body.decode()))
        assert form["MachineDetection"] == "DetectMessageEnd"
        assert form["StatusCallback"].endswith(
            "/twilio/status?announcement=an_0123456789abcdef01234567"
        )
        assert int(form["TimeLimit"]) > int(form["Timeout"]) > 0
        check_all(spec, wire)
