"""The Twilio emulator over loopback: the official twilio-python client and httpx2 on its REST API,
and its voice platform against a tiny fake "bridge" (a Starlette app written here) that checks
every signature with ``TwilioSignatures`` exactly as the real bridge does.

Synchronisation waits on events and on ``TwilioEmulatorState.wait_until``/``wait_for_call``
under timeouts; there are no sleeps. twilio-python is synchronous, so its calls run in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bridge.dev.media_leg import CallerBehaviour, StreamResult, run_media_stream
from bridge.dev.servers import bind, serving
from bridge.dev.twilio_emulator import (
    NumberConfig,
    Outcome,
    TwilioEmulatorConfig,
    TwilioEmulatorServer,
    TwilioEmulatorState,
)
from bridge.dev.twilio_emulator.rest_model import Form, basic_auth_header
from bridge.signatures import TwilioSignatures

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
TOKEN = "5f2b2f6c0d6a4c3e9b8a7f6e5d4c3b2a"
ACCOUNT = "AC" + "1234567890abcdef" * 2
NUMBER = "+15005550006"
CALLER = "+966500000001"
CALLEE = "+14155550100"
PAYLOAD = bytes(range(160))

T = TypeVar("T")


# --- the fake bridge ------------------------------------------------------------------------------


@dataclass
class FakeBridge:
    """A minimal app under test: answers webhooks with ``<Connect><Stream>``, checks signatures,
    plays a few frames and a mark on the stream, then closes (or holds until Twilio stops)."""

    signer: TwilioSignatures
    base: str = ""
    frames: int = 3
    hold: bool = False
    """Keep the stream open until Twilio sends ``stop`` (or closes)."""
    after: str = ""
    """TwiML after ``</Connect>``."""
    stream_callback: bool = False
    """Ask for stream status callbacks (``<Stream statusCallback>``) at ``/status``."""
    webhooks: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)
    callbacks: list[tuple[dict[str, str], bool]] = field(default_factory=list)
    handshakes: list[bool] = field(default_factory=list)
    user_agents: list[str | None] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int] = field(default_factory=list)
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    stream_done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stream_url(self) -> str:
        return "ws" + self.base.removeprefix("http") + "/media"

    def twiml(self) -> str:
        callback = f' statusCallback="{self.base}/status"' if self.stream_callback else ""
        return (
            f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream name="bridge" url="{self.stream_url}"{callback}>'
            f'<Parameter name="token" value="t-1" /></Stream>'
            f"</Connect>{self.after}</Response>"
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == name]

    def app(self) -> Starlette:
        async def voice(request: Request) -> Response:
            if request.method == "GET":
                form = dict(parse_qsl(request.url.query, keep_blank_values=True))
                url, signed = f"{self.base}/voice?{request.url.query}", {}
            else:
                form = {k: str(v) for k, v in (await request.form()).items()}
                url, signed = f"{self.base}/voice", form
            ok = self.signer.webhook_ok(url, signed, request.headers.get("x-twilio-signature"))
            self.webhooks.append(("/voice", form, ok))
            return Response(self.twiml(), media_type="text/xml")

        async def page(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            ok = self.signer.webhook_ok(
                f"{self.base}{request.url.path}", form, request.headers.get("x-twilio-signature")
            )
            self.webhooks.append((request.url.path, form, ok))
            if request.url.path == "/broken":
                return Response("oops", status_code=500)
            return Response(
                "<Response><Say>redirected</Say><Hangup/><Say>never</Say></Response>",
                media_type="text/xml",
            )

        async def status(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            ok = self.signer.webhook_ok(
                f"{self.base}/status", form, request.headers.get("x-twilio-signature")
            )
            self.callbacks.append((form, ok))
            return Response("", status_code=204)

        async def media(websocket: WebSocket) -> None:
            ok = self.signer.handshake_ok(
                self.stream_url, websocket.headers.get("x-twilio-signature", "")
            )
            self.handshakes.append(ok)
            self.user_agents.append(websocket.headers.get("user-agent"))
            if not ok:
                await websocket.send_denial_response(Response(status_code=403))
                return
            await websocket.accept()
            try:
                await self._converse(websocket)
            except WebSocketDisconnect as exc:
                self.close_codes.append(exc.code)
            finally:
                self.stream_done.set()

        return Starlette(
            routes=[
                Route("/voice", voice, methods=["GET", "POST"]),
                Route("/redirected", page, methods=["POST"]),
                Route("/broken", page, methods=["POST"]),
                Route("/status", status, methods=["POST"]),
                WebSocketRoute("/media", media),
            ]
        )

    async def _receive(self, websocket: WebSocket) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await websocket.receive_text())
        self.received.append(message)
        return message

    async def _converse(self, websocket: WebSocket) -> None:
        while (await self._receive(websocket))["event"] != "start":
            pass
        sid = self.received[-1]["streamSid"]
        self.streaming.set()
        payload = base64.b64encode(PAYLOAD).decode()
        for _ in range(self.frames):
            await websocket.send_text(
                json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
            )
        await websocket.send_text(
            json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "greeting"}})
        )
        while True:
            message = await self._receive(websocket)
            if message["event"] == "stop":
                break
            if message["event"] == "mark" and not self.hold:
                await websocket.close(1000)
                self.close_codes.append(1000)
                return
        # Twilio closes after ``stop``.
        while True:
            await self._receive(websocket)


@contextlib.contextmanager
def twilio_client(server: TwilioEmulatorServer, token: str = TOKEN) -> Iterator[Client]:
    http = TwilioHttpClient()
    client = Client(server.config.account_sid, token, http_client=http)
    client.api.base_url = server.http_url
    try:
        yield client
    finally:
        if http.session is not None:
            http.session.close()


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(function, *args, **kwargs)


@dataclass
class Env:
    twilio: TwilioEmulatorServer
    bridge: FakeBridge
    http: httpx2.AsyncClient

    @property
    def state(self) -> TwilioEmulatorState:
        return self.twilio.state

    async def wait(self, predicate: Callable[[TwilioEmulatorState], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.state.wait_until(predicate)

    def calls_path(self, suffix: str = "") -> str:
        return f"/2010-04-01/Accounts/{ACCOUNT}/Calls{suffix}.json"


@contextlib.asynccontextmanager
async def environment(
    *,
    voice_method: str = "POST",
    bridge: dict[str, Any] | None = None,
    numbers: Callable[[str], dict[str, Any]] | None = None,
    **config: Any,
) -> AsyncIterator[Env]:
    """The fake bridge and the emulator, whose number points at the bridge (``numbers``: a
    function of the bridge's base URL, to configure them otherwise)."""
    signer = TwilioSignatures(TOKEN)
    fake = FakeBridge(signer, **(bridge or {}))
    sock = bind()
    fake.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config["numbers"] = (
        numbers(fake.base)
        if numbers is not None
        else {
            NUMBER: NumberConfig(
                voice_url=f"{fake.base}/voice",
                voice_method=voice_method,
                status_callback=f"{fake.base}/status",
            )
        }
    )
    settings = TwilioEmulatorConfig(account_sid=ACCOUNT, auth_token=TOKEN, seed=1, **config)
    async with (
        serving(fake.app(), sock=sock),
        TwilioEmulatorServer(settings) as twilio,
        httpx2.AsyncClient(
            base_url=twilio.http_url, headers={"Authorization": basic_auth_header(ACCOUNT, TOKEN)}
        ) as http,
    ):
        yield Env(twilio, fake, http)


# --- REST -----------------------------------------------------------------------------------------


async def test_account_fetch_with_the_official_client() -> None:
    async with environment() as env:
        with twilio_client(env.twilio) as client:
            account = await in_thread(client.api.v2010.accounts(ACCOUNT).fetch)
        assert account.sid == ACCOUNT
        assert account.friendly_name == "Hamsa bridge Twilio emulator"
        assert account.status == "active"
        body = (await env.http.get(f"/2010-04-01/Accounts/{ACCOUNT}.json")).json()
        assert body["uri"] == f"/2010-04-01/Accounts/{ACCOUNT}.json"
        assert body["subresource_uris"]["calls"] == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
        assert body["auth_token"] == TOKEN  # as Twilio's account resource does
        assert env.state.requests[0].auth_user == ACCOUNT
        log = (await env.http.get("/_emulator/log", headers={"Authorization": ""})).text
        assert TOKEN not in log
        assert "[redacted]" in log


async def test_bad_credentials_get_401_20003() -> None:
    async with environment() as env:
        with (
            twilio_client(env.twilio, token="wrong") as client,
            pytest.raises(TwilioRestException) as caught,
        ):
            await in_thread(client.api.v2010.accounts(ACCOUNT).fetch)
        assert (caught.value.status, caught.value.code) == (401, 20003)
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer x"}):
            response = await env.http.get(env.calls_path(), headers=headers)
            assert response.status_code == 401
            assert response.json() == {
                "code": 20003,
                "message": "Authenticate",
                "more_info": "https://www.twilio.com/docs/errors/20003",
                "status": 401,
            }
            assert response.headers["www-authenticate"].startswith("Basic")
        # Credentials are checked before the resource is looked up.
        response = await env.http.get(
            "/2010-04-01/Accounts/nope.json",
            headers={"Authorization": basic_auth_header(ACCOUNT, "wrong")},
        )
        assert response.status_code == 401
        assert all(r.status == 401 for r in env.state.requests)


async def test_unknown_resources_get_404_20404() -> None:
    async with environment() as env:
        unknown = "CA" + "f" * 32
        with twilio_client(env.twilio) as client, pytest.raises(TwilioRestException) as caught:
            await in_thread(client.calls(unknown).fetch)
        assert (caught.value.status, caught.value.code) == (404, 20404)
        path = env.calls_path(f"/{unknown}")
        assert caught.value.msg.endswith(f"The requested resource {path} was not found")
        for path in (
            f"/2010-04-01/Accounts/{ACCOUNT}/Queues.json",
            f"/2010-04-01/Accounts/{'AC' + '9' * 32}/Calls.json",
            f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers/{'PN' + '0' * 32}.json",
        ):
            response = await env.http.get(path)
            assert response.status_code == 404
            assert response.json()["code"] == 20404
            assert response.json()["message"] == f"The requested resource {path} was not found"
        deleted = await env.http.delete(env.calls_path())
        assert (deleted.status_code, deleted.json()["code"]) == (405, 20004)


async def test_numbers_list_fetch_and_update_only_what_is_sent() -> None:
    async with environment() as env:
        with twilio_client(env.twilio) as client:
            found = await in_thread(client.incoming_phone_numbers.list, phone_number="+1500555")
            assert [n.phone_number for n in found] == [NUMBER]
            sid = found[0].sid
            assert (await in_thread(client.incoming_phone_numbers.list, phone_number="+1999")) == []
            wildcard = await in_thread(client.incoming_phone_numbers.list, phone_number="+1500*")
            assert [n.sid for n in wildcard] == [sid]
            path = f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers/{sid}.json"
            before = (await env.http.get(path)).json()
            updated = await in_thread(
                client.incoming_phone_numbers(sid).update,
                voice_url="https://bridge.example.com/twiml/inbound",
            )
        assert updated.voice_url == "https://bridge.example.com/twiml/inbound"
        after = (await env.http.get(path)).json()
        changed = {key for key in before if before[key] != after[key]}
        assert changed <= {"voice_url", "date_updated"}
        assert "voice_url" in changed
        assert env.state.requests[-2].form == {
            "VoiceUrl": "https://bridge.example.com/twiml/inbound"
        }

        response = await env.http.post(path, data={"VoiceMethod": "PUT"})
        assert (response.status_code, response.json()["code"]) == (400, 20001)
        listing = (
            await env.http.get(
                f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json",
                params={"PhoneNumber": NUMBER, "PageSize": "1"},
            )
        ).json()
        assert listing["uri"].endswith(
            "IncomingPhoneNumbers.json?PhoneNumber=%2B15005550006&PageSize=1&Page=0"
        )
        assert (listing["page_size"], listing["next_page_uri"]) == (1, None)


async def test_create_call_validation_errors() -> None:
    async with environment() as env:
        cases = [
            ({}, 21201, "No 'To' number is specified"),
            ({"To": CALLEE}, 21205, "Url parameter is required."),
            ({"To": CALLEE, "Twiml": "<Response/>"}, 21213, None),
            ({"To": CALLEE, "From": "+19998887777", "Twiml": "<Response/>"}, 21210, None),
            ({"To": "12", "From": NUMBER, "Twiml": "<Response/>"}, 21211, None),
            (
                {"To": CALLEE, "From": NUMBER, "Twiml": "<Response>" + "x" * 4000 + "</Response>"},
                32018,
                None,
            ),
        ]
        for data, code, message in cases:
            response = await env.http.post(env.calls_path(), data=data)
            assert response.status_code == 400, data
            body = response.json()
            assert body["code"] == code
            assert body["status"] == 400
            assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
            if message is not None:
                assert body["message"] == message
        assert env.state.calls == {}


async def test_repeated_status_callback_events_and_signed_callbacks() -> None:
    async with environment() as env:
        with twilio_client(env.twilio) as client:
            call = await in_thread(
                client.calls.create,
                to=CALLEE,
                from_=NUMBER,
                twiml="<Response><Say>hello</Say></Response>",
                status_callback=f"{env.bridge.base}/status",
                status_callback_event=["initiated", "ringing", "answered", "completed"],
            )
        assert call.status == "queued"
        assert call.direction == "outbound-api"
        created = env.state.requests[-1]
        assert created.status == 201
        assert created.form["StatusCallbackEvent"] == [
            "initiated",
            "ringing",
            "answered",
            "completed",
        ]
        async with asyncio.timeout(TIMEOUT):
            record = await env.state.wait_for_call(call.sid)
        assert record.status == "completed"
        assert [v.verb for v in record.verbs] == ["Say"]
        callbacks = env.bridge.callbacks
        assert [form["CallStatus"] for form, _ in callbacks] == [
            "initiated",
            "ringing",
            "in-progress",
            "completed",
        ]
        assert all(ok for _, ok in callbacks)
        assert [form["SequenceNumber"] for form, _ in callbacks] == ["0", "1", "2", "3"]
        completed = callbacks[-1][0]
        assert completed["CallbackSource"] == "call-progress-events"
        assert completed["CallDuration"] == "0"
        assert completed["Direction"] == "outbound-api"
        assert completed["ApiVersion"] == "2010-04-01"
        assert (completed["From"], completed["To"], completed["CallSid"]) == (
            NUMBER,
            CALLEE,
            call.sid,
        )
        assert email.utils.parsedate_to_datetime(completed["Timestamp"]).utcoffset() is not None
        assert "CallDuration" not in callbacks[0][0]
        assert [c.status for c in env.state.callbacks_for(call.sid)] == [204] * 4


# --- the voice platform ---------------------------------------------------------------------------


async def test_inbound_call_runs_the_stream_and_completes() -> None:
    async with environment() as env:
        sid = env.state.start_inbound_call(NUMBER, CALLER)
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
        assert call.status == "completed"
        assert call.info.direction == "inbound"
        # The webhook: Twilio's fields, signed, validated by the bridge.
        path, form, ok = env.bridge.webhooks[0]
        assert ok
        assert form["CallStatus"] == "ringing"
        assert form["Direction"] == "inbound"
        assert (form["From"], form["To"], form["CallSid"], form["AccountSid"]) == (
            CALLER,
            NUMBER,
            sid,
            ACCOUNT,
        )
        assert form["ApiVersion"] == "2010-04-01"
        # The stream: signed handshake, start with the Parameter, audio heard, mark echoed.
        assert env.bridge.handshakes == [True]
        assert env.bridge.user_agents == ["Twilio.TmeWs/1.0"]
        start = env.bridge.events("start")[0]
        assert start["start"]["callSid"] == sid
        assert start["start"]["customParameters"] == {"token": "t-1"}
        assert [m["mark"]["name"] for m in env.bridge.events("mark")] == ["greeting"]
        (stream,) = env.state.streams_for(sid)
        assert (stream.ended_by, stream.result.ended_by) == ("bridge", "bridge")
        assert stream.result.close_code == 1000
        assert stream.result.heard == PAYLOAD * 3
        assert stream.parameters == {"token": "t-1"}
        assert not stream.stop_sent
        # The number's status callback: completed only, signed, numbered from 0.
        (callback,) = env.bridge.callbacks
        assert callback[1]
        assert callback[0]["CallStatus"] == "completed"
        assert callback[0]["SequenceNumber"] == "0"
        resource = (await env.http.get(env.calls_path(f"/{sid}"))).json()
        assert resource["status"] == "completed"
        assert resource["duration"] is not None
        assert resource["phone_number_sid"] == next(iter(env.state.numbers))


async def test_stream_status_callbacks() -> None:
    async with environment(bridge={"stream_callback": True}) as env:
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.place_inbound_call(NUMBER, CALLER)
        (stream,) = env.state.streams_for(call.sid)
        events = [
            (form.get("StreamEvent"), form["CallSid"], ok) for form, ok in env.bridge.callbacks
        ]
        assert events == [
            ("stream-started", call.sid, True),
            ("stream-stopped", call.sid, True),
            (None, call.sid, True),  # the number's call-progress "completed"
        ]
        started = env.bridge.callbacks[0][0]
        assert (started["StreamSid"], started["StreamName"]) == (stream.stream_sid, "bridge")
        assert [c.event for c in env.state.callbacks_for(call.sid, stream=True)] == [
            "stream-started",
            "stream-stopped",
        ]


async def test_inbound_call_over_http_with_keys_and_caller_hangup() -> None:
    async with environment(bridge={"hold": True}) as env:
        response = await env.http.post(
            "/_emulator/inbound",
            json={"to": NUMBER, "from": CALLER, "keys": [[0.0, "5"]], "hangup_after": 0.2},
        )
        assert response.status_code == 201
        sid = response.json()["call_sid"]
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
        assert call.status == "completed"
        assert [m["dtmf"]["digit"] for m in env.bridge.events("dtmf")] == ["5"]
        (stop,) = env.bridge.events("stop")
        assert stop["stop"] == {"accountSid": ACCOUNT, "callSid": sid}
        (stream,) = env.state.streams_for(sid)
        assert (stream.ended_by, stream.stop_sent, stream.result.hung_up) == ("caller", True, True)
        assert stream.result.ended_by == "hangup_after"
        missing = await env.http.post("/_emulator/inbound", json={"to": "+15550000000"})
        assert missing.status_code == 404
        bad = await env.http.post("/_emulator/inbound", json={"to": NUMBER, "from": "nobody"})
        assert bad.status_code == 400
        log = (await env.http.get("/_emulator/log")).json()
        assert log["calls"][0]["resource"]["sid"] == sid
        assert log["streams"][0]["ended_by"] == "caller"
        assert log["webhooks"][0]["kind"] == "voice"


async def test_voice_url_by_get_is_signed_over_the_full_url() -> None:
    async with environment(voice_method="GET") as env:
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.place_inbound_call(NUMBER, CALLER)
        assert call.status == "completed"
        _, form, ok = env.bridge.webhooks[0]
        assert ok
        assert form["CallSid"] == call.sid
        assert env.state.webhooks[0].method == "GET"


async def test_unsigned_handshake_is_refused_and_the_call_goes_on() -> None:
    async with environment(bridge={"after": "<Say>sorry</Say>"}) as env:
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.place_inbound_call(NUMBER, CALLER, sign_handshake=False)
        assert env.bridge.handshakes == [False]
        (stream,) = env.state.streams_for(call.sid)
        assert stream.result.handshake_status == 403
        assert stream.ended_by == "error"
        assert stream.error is not None
        assert stream.error[0] == 31920
        assert [v.verb for v in call.verbs] == ["Connect", "Say"]
        assert call.status == "completed"


async def test_unreachable_stream_is_31902_and_the_call_goes_on() -> None:
    closed = bind()
    port = closed.getsockname()[1]
    closed.close()
    async with environment() as env:
        twiml = (
            f'<Response><Connect><Stream url="ws://127.0.0.1:{port}/media" '
            f'statusCallback="{env.bridge.base}/status"/></Connect><Say>sorry</Say></Response>'
        )
        response = await env.http.post(
            env.calls_path(), data={"To": CALLEE, "From": NUMBER, "Twiml": twiml}
        )
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(response.json()["sid"])
        (stream,) = env.state.streams_for(call.sid)
        assert stream.ended_by == "error"
        assert stream.error is not None
        assert stream.error[0] == 31902
        assert [code for code, _ in call.errors] == [31902]
        (callback,) = env.bridge.callbacks
        assert callback[0]["StreamEvent"] == "stream-error"
        assert callback[0]["StreamError"].startswith("31902: ")
        assert [v.verb for v in call.verbs] == ["Connect", "Say"]
        assert call.status == "completed"


async def test_outbound_call_with_twiml_and_with_url() -> None:
    async with environment() as env:
        with twilio_client(env.twilio) as client:
            inline = await in_thread(
                client.calls.create, to=CALLEE, from_=NUMBER, twiml=env.bridge.twiml()
            )
            async with asyncio.timeout(TIMEOUT):
                first = await env.state.wait_for_call(inline.sid)
            fetched = await in_thread(client.calls(inline.sid).fetch)
            by_url = await in_thread(
                client.calls.create, to=CALLEE, from_=NUMBER, url=f"{env.bridge.base}/voice"
            )
            async with asyncio.timeout(TIMEOUT):
                second = await env.state.wait_for_call(by_url.sid)
        assert fetched.status == "completed"
        assert fetched.start_time is not None
        assert fetched.end_time is not None
        assert first.status == second.status == "completed"
        assert len(env.state.streams) == 2
        assert all(s.result.heard == PAYLOAD * 3 for s in env.state.streams)
        assert env.bridge.handshakes == [True, True]
        (webhook,) = env.bridge.webhooks
        path, form, ok = webhook
        assert ok
        assert form["Direction"] == "outbound-api"
        assert form["CallStatus"] == "in-progress"
        assert form["CallSid"] == by_url.sid
        assert "AnsweredBy" not in form


@pytest.mark.parametrize(
    ("outcome", "status", "events"),
    [
        (Outcome(status="busy"), "busy", ["initiated", "busy"]),
        (
            Outcome(status="no-answer", ring_seconds=0.05),
            "no-answer",
            ["initiated", "ringing", "no-answer"],
        ),
        (Outcome(status="failed"), "failed", ["initiated", "failed"]),
    ],
)
async def test_unanswered_outcomes(outcome: Outcome, status: str, events: list[str]) -> None:
    async with environment(outcomes={CALLEE: outcome}) as env:
        with twilio_client(env.twilio) as client:
            call = await in_thread(
                client.calls.create,
                to=CALLEE,
                from_=NUMBER,
                twiml=env.bridge.twiml(),
                status_callback=f"{env.bridge.base}/status",
                status_callback_event=["initiated", "ringing", "answered", "completed"],
            )
            async with asyncio.timeout(TIMEOUT):
                await env.state.wait_for_call(call.sid)
            fetched = await in_thread(client.calls(call.sid).fetch)
        assert fetched.status == status
        assert fetched.duration is None
        assert fetched.end_time is None
        assert [form["CallStatus"] for form, _ in env.bridge.callbacks] == events
        assert env.state.streams == []
        assert env.bridge.webhooks == []


async def test_ringing_longer_than_timeout_is_no_answer() -> None:
    async with environment(ring_seconds=30.0) as env:
        response = await env.http.post(
            env.calls_path(),
            data={"To": CALLEE, "From": NUMBER, "Twiml": "<Response/>", "Timeout": "1"},
        )
        sid = response.json()["sid"]
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
        assert call.status == "no-answer"


@pytest.mark.parametrize(
    ("detection", "answered_by"),
    [("Enable", "machine_start"), ("DetectMessageEnd", "machine_end_beep")],
)
async def test_answering_machine_detection(detection: str, answered_by: str) -> None:
    async with environment(outcomes={CALLEE: "machine_end_beep"}) as env:
        with twilio_client(env.twilio) as client:
            call = await in_thread(
                client.calls.create,
                to=CALLEE,
                from_=NUMBER,
                url=f"{env.bridge.base}/voice",
                machine_detection=detection,
                status_callback=f"{env.bridge.base}/status",
                status_callback_event=["answered", "completed"],
            )
            async with asyncio.timeout(TIMEOUT):
                await env.state.wait_for_call(call.sid)
            fetched = await in_thread(client.calls(call.sid).fetch)
        assert fetched.answered_by == answered_by
        assert env.bridge.webhooks[0][1]["AnsweredBy"] == answered_by
        assert [form["AnsweredBy"] for form, _ in env.bridge.callbacks] == [answered_by] * 2


async def test_update_completed_mid_stream_sends_stop_then_closes() -> None:
    async with environment(bridge={"hold": True}) as env:
        with twilio_client(env.twilio) as client:
            call = await in_thread(
                client.calls.create, to=CALLEE, from_=NUMBER, twiml=env.bridge.twiml()
            )
            async with asyncio.timeout(TIMEOUT):
                await env.bridge.streaming.wait()
                await env.state.wait_until(
                    lambda s: bool(s.streams) and s.streams[0].result.leg is not None
                )
            updated = await in_thread(client.calls(call.sid).update, status="completed")
            assert updated.status == "completed"
            async with asyncio.timeout(TIMEOUT):
                await env.bridge.stream_done.wait()
                record = await env.state.wait_for_call(call.sid)
            with pytest.raises(TwilioRestException) as caught:
                await in_thread(client.calls(call.sid).update, twiml="<Response/>")
        assert (caught.value.status, caught.value.code) == (400, 21220)
        assert "Call is not in-progress. Cannot redirect." in caught.value.msg
        assert record.status == "completed"
        stop = env.bridge.received[-1]
        assert stop["event"] == "stop"
        assert stop["stop"] == {"accountSid": ACCOUNT, "callSid": call.sid}
        numbers = [int(m["sequenceNumber"]) for m in env.bridge.received if "sequenceNumber" in m]
        assert numbers == list(range(1, len(numbers) + 1))
        assert env.bridge.close_codes == [1000]
        (stream,) = env.state.streams
        assert (stream.ended_by, stream.stop_sent) == ("api", True)
        assert [v.verb for v in record.verbs] == ["Connect"]


async def test_update_with_dial_records_a_transfer() -> None:
    async with environment(bridge={"hold": True, "after": "<Say>never</Say>"}) as env:
        sid = env.state.start_inbound_call(NUMBER, CALLER)
        async with asyncio.timeout(TIMEOUT):
            await env.bridge.streaming.wait()
        with twilio_client(env.twilio) as client:
            await in_thread(
                client.calls(sid).update,
                twiml="<Response><Dial><Number>+14155550199</Number><Sip>sip:agent@pbx.example.com</Sip></Dial></Response>",
            )
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
        (transfer,) = env.state.transfers
        assert transfer.call_sid == sid
        assert transfer.targets == ["+14155550199", "sip:agent@pbx.example.com"]
        assert env.bridge.events("stop")
        assert env.state.streams[0].ended_by == "api"
        assert [v.verb for v in call.verbs] == ["Connect", "Dial"]
        assert call.status == "completed"


async def test_update_with_hangup_twiml_stops_the_stream() -> None:
    async with environment(bridge={"hold": True, "after": "<Say>never</Say>"}) as env:
        sid = env.state.start_inbound_call(NUMBER, CALLER)
        async with asyncio.timeout(TIMEOUT):
            await env.bridge.streaming.wait()
        with twilio_client(env.twilio) as client:
            await in_thread(client.calls(sid).update, twiml="<Response><Hangup/></Response>")
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
            await env.bridge.stream_done.wait()
        assert [v.verb for v in call.verbs] == ["Connect", "Hangup"]
        assert env.bridge.received[-1]["event"] == "stop"
        assert env.bridge.close_codes == [1000]
        assert (env.state.streams[0].ended_by, env.state.streams[0].stop_sent) == ("api", True)
        assert call.status == "completed"


async def test_time_limit_hangs_up_the_stream() -> None:
    async with environment(bridge={"hold": True, "after": "<Say>never</Say>"}) as env:
        response = await env.http.post(
            env.calls_path(),
            data={"To": CALLEE, "From": NUMBER, "Twiml": env.bridge.twiml(), "TimeLimit": "1"},
        )
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(response.json()["sid"])
        (stream,) = env.state.streams
        assert (stream.ended_by, stream.stop_sent) == ("time-limit", True)
        assert env.bridge.events("stop")
        assert [v.verb for v in call.verbs] == ["Connect"]
        assert call.status == "completed"


async def test_time_limit_update_hangs_up_a_running_stream() -> None:
    async with environment(bridge={"hold": True, "after": "<Say>never</Say>"}) as env:
        sid = env.state.start_inbound_call(NUMBER, CALLER)  # TimeLimit: max_call_seconds (4 h)
        async with asyncio.timeout(TIMEOUT):
            await env.bridge.streaming.wait()
        response = await env.http.post(env.calls_path(f"/{sid}"), data={"TimeLimit": "1"})
        assert response.status_code == 200
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
            await env.bridge.stream_done.wait()
        (stream,) = env.state.streams
        assert (stream.ended_by, stream.stop_sent) == ("time-limit", True)
        assert env.bridge.received[-1]["event"] == "stop"
        assert env.bridge.close_codes == [1000]
        assert [v.verb for v in call.verbs] == ["Connect"]
        assert call.status == "completed"


async def test_media_leg_hangs_up_when_told() -> None:
    """``run_media_stream(hangup=…)``, the hook the emulator ends streams with: ``stop`` numbered
    after everything sent before it, then close 1000."""
    async with environment(bridge={"hold": True}) as env:
        hangup = asyncio.Event()
        opened: list[StreamResult] = []
        result = StreamResult()
        leg = asyncio.create_task(
            run_media_stream(
                env.bridge.stream_url,
                {"token": "t-1"},
                auth_token=TOKEN,
                call_sid="CA" + "1" * 32,
                account_sid=ACCOUNT,
                stream_sid="MZ" + "1" * 32,
                behaviour=CallerBehaviour(),
                result=result,
                hangup=hangup,
                on_open=lambda: opened.append(result),
            )
        )
        async with asyncio.timeout(TIMEOUT):
            await env.bridge.streaming.wait()
        assert opened == [result]
        assert not leg.done()
        hangup.set()
        async with asyncio.timeout(TIMEOUT):
            assert await leg is result
            await env.bridge.stream_done.wait()
        assert (result.hung_up, result.ended_by, result.close_code) == (True, "hangup", 1000)
        stop = env.bridge.received[-1]
        assert stop["event"] == "stop"
        assert stop["stop"] == {"accountSid": ACCOUNT, "callSid": "CA" + "1" * 32}
        numbers = [int(m["sequenceNumber"]) for m in env.bridge.received if "sequenceNumber" in m]
        assert numbers == list(range(1, len(numbers) + 1))
        assert env.bridge.close_codes == [1000]


async def test_update_with_url_replaces_the_running_twiml() -> None:
    async with environment(bridge={"hold": True, "after": "<Say>never</Say>"}) as env:
        sid = env.state.start_inbound_call(NUMBER, CALLER)
        async with asyncio.timeout(TIMEOUT):
            await env.bridge.streaming.wait()
        response = await env.http.post(
            env.calls_path(f"/{sid}"), data={"Url": f"{env.bridge.base}/redirected"}
        )
        assert response.status_code == 200
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
        assert [(v.verb, v.text) for v in call.verbs] == [
            ("Connect", ""),
            ("Say", "redirected"),
            ("Hangup", ""),
        ]
        path, form, ok = env.bridge.webhooks[-1]
        assert (path, ok, form["CallStatus"]) == ("/redirected", True, "in-progress")
        assert env.state.webhooks[-1].kind == "update"
        assert env.bridge.events("stop")


async def test_twiml_verbs_redirect_and_hangup() -> None:
    async with environment() as env:
        twiml = (
            "<Response><Say voice='Polly.Zeina'>marhaba</Say><Pause length='1'/>"
            f"<Redirect>{env.bridge.base}/redirected</Redirect><Say>unreached</Say></Response>"
        )
        response = await env.http.post(
            env.calls_path(), data={"To": CALLEE, "From": NUMBER, "Twiml": twiml}
        )
        assert response.status_code == 201
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(response.json()["sid"])
        assert [v.verb for v in call.verbs] == ["Say", "Pause", "Redirect", "Say", "Hangup"]
        assert call.verbs[0].attributes == {"voice": "Polly.Zeina"}
        assert env.bridge.webhooks[-1][2]  # the redirect was signed
        assert call.status == "completed"


async def test_failing_voice_url_uses_the_fallback() -> None:
    def numbers(base: str) -> dict[str, Any]:
        return {NUMBER: {"VoiceUrl": f"{base}/broken", "VoiceFallbackUrl": f"{base}/redirected"}}

    async with environment(numbers=numbers) as env:
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.place_inbound_call(NUMBER, CALLER)
        assert [code for code, _ in call.errors] == [11200]
        assert [w.kind for w in env.state.webhooks] == ["voice", "voice-fallback"]
        fallback = env.state.webhooks[1].params
        assert (fallback["ErrorCode"], fallback["ErrorUrl"]) == (
            "11200",
            f"{env.bridge.base}/broken",
        )
        assert [v.verb for v in call.verbs] == ["Say", "Hangup"]
        assert call.status == "completed"

    def broken(base: str) -> dict[str, Any]:
        return {NUMBER: {"VoiceUrl": f"{base}/broken", "VoiceFallbackUrl": f"{base}/broken"}}

    async with environment(numbers=broken) as env:
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.place_inbound_call(NUMBER, CALLER)
        assert [code for code, _ in call.errors] == [11200, 11200]
        assert call.verbs == []
        assert call.status == "completed"


async def test_list_calls_filters_and_pages() -> None:
    async with environment() as env:
        sids = []
        for to in (CALLEE, CALLEE, "+14155550111"):
            response = await env.http.post(
                env.calls_path(), data={"To": to, "From": NUMBER, "Twiml": "<Response/>"}
            )
            sids.append(response.json()["sid"])
        async with asyncio.timeout(TIMEOUT):
            for sid in sids:
                await env.state.wait_for_call(sid)
        page = (await env.http.get(env.calls_path(), params={"PageSize": "2"})).json()
        assert [c["sid"] for c in page["calls"]] == sids[::-1][:2]
        assert page["next_page_uri"] is not None
        following = (await env.http.get(page["next_page_uri"])).json()
        assert [c["sid"] for c in following["calls"]] == [sids[0]]
        assert following["previous_page_uri"] is not None
        filtered = (
            await env.http.get(env.calls_path(), params={"To": CALLEE, "Status": "completed"})
        ).json()
        assert {c["sid"] for c in filtered["calls"]} == set(sids[:2])
        with twilio_client(env.twilio) as client:
            everything = await in_thread(client.calls.list, page_size=1)
            to_callee = await in_thread(client.calls.list, to=CALLEE)
        assert [c.sid for c in everything] == sids[::-1]
        assert len(to_callee) == 2
        bad = await env.http.get(env.calls_path(), params={"PageSize": "0"})
        assert bad.status_code == 400


async def test_cancel_while_ringing() -> None:
    async with environment(ring_seconds=30.0) as env:
        response = await env.http.post(
            env.calls_path(), data={"To": CALLEE, "From": NUMBER, "Twiml": "<Response/>"}
        )
        sid = response.json()["sid"]
        await env.wait(lambda s: s.calls[sid].status == "ringing")
        canceled = await env.http.post(env.calls_path(f"/{sid}"), data={"Status": "canceled"})
        assert canceled.json()["status"] == "canceled"
        async with asyncio.timeout(TIMEOUT):
            call = await env.state.wait_for_call(sid)
        assert call.status == "canceled"
        again = await env.http.post(env.calls_path(f"/{sid}"), data={"Status": "completed"})
        assert (again.status_code, again.json()["code"]) == (400, 21220)


# --- knobs for durability tests -----------------------------------------------------------------


async def test_a_held_create_and_dropped_status_callbacks() -> None:
    """``before_create`` holds a creation in flight (no call exists until it returns);
    ``drop_status_callbacks`` loses every status callback of calls to those numbers; the Calls
    list dates calls at whole seconds, as Twilio does."""
    async with environment(drop_status_callbacks=frozenset({CALLEE})) as env:
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold(form: Form) -> None:
            assert form.get("To") == CALLEE
            holding.set()
            await release.wait()

        env.state.before_create = hold
        with twilio_client(env.twilio) as client:
            creating = asyncio.ensure_future(
                in_thread(
                    client.calls.create,
                    to=CALLEE,
                    from_=NUMBER,
                    twiml="<Response><Say>hello</Say></Response>",
                    status_callback=f"{env.bridge.base}/status",
                    status_callback_event=["initiated", "ringing", "answered", "completed"],
                )
            )
            async with asyncio.timeout(TIMEOUT):
                await holding.wait()
            assert env.state.calls == {}
            release.set()
            async with asyncio.timeout(TIMEOUT):
                call = await creating
                record = await env.state.wait_for_call(call.sid)
            [listed] = await in_thread(client.calls.list, to=CALLEE)
        assert record.status == "completed"
        assert env.bridge.callbacks == []
        assert env.state.callbacks_for(call.sid) == []
        assert listed.sid == call.sid
        assert listed.date_created.microsecond == 0
