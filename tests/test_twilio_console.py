"""``twilio configure``/``show`` and ``doctor`` against the Twilio emulator, the Hamsa emulator
and a running bridge, all over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bridge.console import configure, show
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import Loopback, loopback
from bridge.dev.twilio_emulator import TwilioEmulatorConfig, TwilioEmulatorServer
from bridge.doctor import doctor
from bridge.settings import Settings
from tests.timing import HANG

pytestmark = pytest.mark.anyio

ACCOUNT = "AC" + "c" * 32
TOKEN = "console-auth-token"
NUMBER = "+966501234567"
OTHER = "+966501234568"
ELSEWHERE = "https://elsewhere.example.com/voice"
VOICE = "c803658e-ccec-47e7-ad0f-1caf9ba4babb"


@dataclasses.dataclass
class Stack:
    twilio: TwilioEmulatorServer
    rig: Loopback

    @property
    def settings(self) -> Settings:
        return self.rig.settings

    def with_(self, **overrides: Any) -> Settings:
        return Settings.model_validate(self.settings.model_dump() | overrides)

    def number(self, phone: str) -> Any:
        found = self.twilio.state.number(phone)
        assert found is not None
        return found

    def changing_requests(self) -> list[Any]:
        return [r for r in self.twilio.state.requests if r.method != "GET"]


@asynccontextmanager
async def stack(hamsa: EmulatorConfig | None = None, **overrides: Any) -> AsyncIterator[Stack]:
    config = TwilioEmulatorConfig(
        account_sid=ACCOUNT,
        auth_token=TOKEN,
        numbers={NUMBER: {}, OTHER: {"voice_url": ELSEWHERE, "friendly_name": "other line"}},
    )
    async with (
        TwilioEmulatorServer(config) as twilio,
        loopback(
            hamsa,
            auth_token=TOKEN,
            twilio_account_sid=ACCOUNT,
            twilio_api_url=twilio.http_url,
            twilio_phone_number=NUMBER,
            bridge_greeting="مرحبا بك.",
            **overrides,
        ) as rig,
    ):
        yield Stack(twilio, rig)


async def run(function: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    """``function``'s exit status and its output, stdout and stderr merged."""
    code, output, errors = await run_split(function, *args, **kwargs)
    return code, "\n".join(filter(None, (output, errors)))


async def run_split(function: Any, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
    """``function``'s exit status, what it wrote to stdout and what it wrote to stderr."""
    lines: list[str] = []
    errors: list[str] = []
    code = await asyncio.to_thread(function, *args, out=lines.append, err=errors.append, **kwargs)
    return code, "\n".join(lines), "\n".join(errors)


async def run_doctor(settings: Settings, number: str | None = None) -> tuple[int, str]:
    lines: list[str] = []
    code = await doctor(settings, number, out=lines.append)
    return code, "\n".join(lines)


async def test_configure_changes_exactly_the_voice_fields_and_is_idempotent() -> None:
    async with stack() as s:
        before = dataclasses.asdict(s.number(NUMBER))
        other_before = dataclasses.asdict(s.number(OTHER))
        code, output = await run(configure, s.settings, NUMBER, dry_run=False)
        assert code == 0, output
        after = dataclasses.asdict(s.number(NUMBER))
        changed = {k for k in before if before[k] != after[k]}
        assert changed <= {
            "voice_url",
            "voice_method",
            "status_callback",
            "status_callback_method",
            "date_updated",
        }
        assert after["voice_url"] == s.settings.bridge_public_url + "/twiml/inbound"
        assert after["voice_method"] == "POST"
        assert after["status_callback"] == s.settings.bridge_public_url + "/twilio/status"
        assert dataclasses.asdict(s.number(OTHER)) == other_before
        posts = s.changing_requests()
        assert len(posts) == 1
        assert set(posts[0].form) == {"VoiceUrl", "StatusCallback"}  # only what differed
        assert "→" in output
        assert "configured" in output

        code, output = await run(configure, s.settings, NUMBER, dry_run=False)
        assert code == 0
        assert "nothing to change" in output
        assert len(s.changing_requests()) == 1  # the second run made no change


async def test_dry_run_makes_no_changing_request() -> None:
    async with stack() as s:
        code, output = await run(configure, s.settings, NUMBER, dry_run=True)
        assert code == 0
        assert "would change" in output
        assert "dry run" in output
        assert s.changing_requests() == []
        assert s.number(NUMBER).voice_url != s.settings.bridge_public_url + "/twiml/inbound"


@pytest.mark.parametrize(
    ("overrides", "number", "message", "exit_code", "requests"),
    [
        ({}, "+966500000000", "is not a number of account", 1, 1),
        ({"twilio_auth_token": "wrong"}, NUMBER, "TWILIO_AUTH_TOKEN", 1, 1),
        (
            {"bridge_public_url": "http://127.0.0.1:9", "twilio_api_url": "https://api.twilio.com"},
            NUMBER,
            "is this machine, which Twilio at https://api.twilio.com cannot reach",
            2,
            0,
        ),
        ({}, "0501234567", "not an E.164 number", 2, 0),
        ({"twilio_account_sid": "AC123"}, NUMBER, "AC followed by 32 hex digits", 2, 0),
        ({"twilio_account_sid": "XY" + "c" * 32}, NUMBER, "AC followed by 32 hex digits", 2, 0),
        ({"twilio_auth_token": ""}, NUMBER, "set TWILIO_AUTH_TOKEN", 2, 0),
    ],
)
async def test_configure_failures_are_specific(
    overrides: dict[str, str], number: str, message: str, exit_code: int, requests: int
) -> None:
    async with stack() as s:
        code, output, errors = await run_split(
            configure, s.with_(**overrides), number, dry_run=False
        )
        assert code == exit_code
        assert message in errors  # on stderr, not stdout
        assert message not in output
        assert s.changing_requests() == []
        # a malformed setting or number is refused before anything is sent to Twilio
        assert len(s.twilio.state.requests) == requests


async def test_show_refuses_a_malformed_account_sid_before_asking_twilio() -> None:
    async with stack() as s:
        code, output, errors = await run_split(show, s.with_(twilio_account_sid="AC" + "g" * 32))
        assert code == 2
        assert output == ""
        assert "TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits" in errors
        assert s.twilio.state.requests == []


async def test_show_json_has_every_number_and_where_it_points() -> None:
    async with stack() as s:
        await run(configure, s.settings, NUMBER, dry_run=False)
        code, output, errors = await run_split(show, s.settings, as_json=True)
    assert code == 0, errors
    body = json.loads(output)
    assert body["account_sid"] == ACCOUNT
    assert body["bridge_webhook"] == s.settings.bridge_public_url + "/twiml/inbound"
    numbers = {n["phone_number"]: n for n in body["numbers"]}
    assert numbers[NUMBER]["points_here"] is True
    assert numbers[NUMBER]["voice_url"] == s.settings.bridge_public_url + "/twiml/inbound"
    assert numbers[OTHER]["points_here"] is False
    assert numbers[OTHER]["voice_url"] == ELSEWHERE
    assert numbers[OTHER]["how"] == f"points elsewhere: POST {ELSEWHERE}"
    assert numbers[OTHER]["friendly_name"] == "other line"


async def test_show_lists_numbers_and_where_they_point() -> None:
    async with stack() as s:
        await run(configure, s.settings, NUMBER, dry_run=False)
        code, output = await run(show, s.settings)
    assert code == 0
    assert f"{NUMBER}" in output
    assert "points here ✓" in output
    assert f"{OTHER}" in output
    assert f"points elsewhere: POST {ELSEWHERE}" in output


async def test_doctor_passes_with_a_correct_setup() -> None:
    hamsa = EmulatorConfig(custom_voices=frozenset({VOICE}))
    async with stack(hamsa, hamsa_preload_voices=(VOICE,)) as s:
        await run(configure, s.settings, NUMBER, dry_run=False)
        code, output = await run_doctor(s.settings)
    assert code == 0, output
    assert "✗" not in output
    assert "all checks passed" in output


async def test_doctor_names_each_broken_link_and_its_fix() -> None:
    async with stack() as s:
        # the number is not configured yet: points nowhere
        code, output = await run_doctor(s.settings)
        assert code == 1
        assert "✗ number points at this bridge — no voice webhook configured" in output
        assert "hamsa-bridge twilio configure --number" in output

        await run(configure, s.settings, NUMBER, dry_run=False)
        code, output = await run_doctor(s.settings, OTHER)
        assert "✗ number points at this bridge — points elsewhere" in output

        code, output = await run_doctor(s.with_(twilio_auth_token="wrong-token"))
        assert "✗ Twilio credentials" in output
        assert "TWILIO_AUTH_TOKEN" in output
        # the bridge runs with the right token: a handshake signed with the wrong one is refused
        assert "✗ signed stream handshake accepted" in output

        code, output = await run_doctor(s.with_(hamsa_api_key="rejected-key"))
        assert "✗ Hamsa key accepted — closed 4001" in output
        assert "HAMSA_API_KEY" in output

        unknown = "7d2f9c4e-1111-4222-8333-944455556666"
        code, output = await run_doctor(s.with_(hamsa_preload_voices=(unknown,)))
        assert code == 1
        assert f"✗ custom voices preload — cannot preload custom voice '{unknown}'" in output

        code, output = await run_doctor(s.with_(bridge_public_url="http://127.0.0.1:9"))
        assert "✗ public URL answers /livez" in output
        assert "start `hamsa-bridge serve`" in output


async def test_doctor_reports_missing_settings() -> None:
    code, output = await run_doctor(Settings(), None)
    assert code == 1
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "HAMSA_API_KEY", "BRIDGE_PUBLIC_URL"):
        assert f"✗ {name}" in output
    assert "✗ phone number — none given" in output


async def test_doctor_without_a_public_url_suggests_only_valid_urls() -> None:
    async with stack() as s:
        code, output = await run_doctor(s.with_(bridge_public_url=""))
    assert code == 1
    assert "✗ BRIDGE_PUBLIC_URL — not set" in output
    assert "fix: set it to the https:// URL Twilio reaches this bridge at" in output
    assert "✓ number in the account" in output
    assert "– number points at this bridge — needs a BRIDGE_PUBLIC_URL Twilio can reach" in output
    assert "– public URL answers /livez — needs BRIDGE_PUBLIC_URL" in output
    assert "/twiml/inbound" not in output  # no webhook built from a missing base URL


async def test_doctor_json_has_every_check_with_its_verdict_and_fix() -> None:
    lines: list[str] = []
    code = await doctor(Settings(), None, as_json=True, out=lines.append)
    assert code == 1
    [printed] = lines  # one JSON document, nothing else
    body = json.loads(printed)
    assert body["ok"] is False
    checks = {c["name"]: c for c in body["checks"]}
    assert len(checks) == len(body["checks"])
    assert body["passed"] + body["failed"] + body["skipped"] == len(checks)
    assert checks["TWILIO_ACCOUNT_SID"] == {
        "name": "TWILIO_ACCOUNT_SID",
        "verdict": "failed",
        "detail": "missing",
        "fix": "copy the Account SID from the Twilio console (Account info)",
    }
    assert checks["Hamsa key accepted"]["verdict"] == "skipped"
    assert checks["Hamsa key accepted"]["fix"] is None


async def test_configure_fixes_the_method_and_clears_a_twiml_app_that_would_win() -> None:
    from bridge.twilio_rest_client import TwilioApi

    async with stack() as s:
        api = TwilioApi(s.settings)
        sid = s.number(NUMBER).sid
        await asyncio.to_thread(
            api.update_number, sid, voice_method="GET", voice_application_sid="AP" + "1" * 32
        )
        code, output = await run(show, s.settings)
        assert "uses TwiML App" in output
        code, output = await run(configure, s.settings, NUMBER, dry_run=False)
        assert code == 0, output
        wired = s.number(NUMBER)
        assert wired.voice_method == "POST"
        assert wired.voice_application_sid is None
        posted = s.changing_requests()[-1].form
        assert posted["VoiceMethod"] == "POST"
        assert posted["VoiceApplicationSid"] == ""
        # and now a call to the number really reaches the bridge
        call_sid = s.twilio.state.start_inbound_call(NUMBER, "+966500000009")
        async with asyncio.timeout(HANG):
            record = await s.twilio.state.wait_for_call(call_sid)
        assert record.info.status.value == "completed"
        assert s.twilio.state.streams_for(call_sid)[0].result.heard


async def test_configure_refuses_a_number_on_a_sip_trunk() -> None:
    from bridge.twilio_rest_client import TwilioApi

    async with stack() as s:
        api = TwilioApi(s.settings)
        await asyncio.to_thread(api.update_number, s.number(NUMBER).sid, trunk_sid="TK" + "2" * 32)
        before = len(s.changing_requests())
        code, output = await run(configure, s.settings, NUMBER, dry_run=False)
        assert code == 1
        assert "SIP trunk" in output
        assert len(s.changing_requests()) == before
        code, output = await run_doctor(s.settings)
        assert "✗ number points at this bridge — routed to SIP trunk" in output


async def test_doctor_catches_a_status_callback_with_the_wrong_method() -> None:
    from bridge.twilio_rest_client import TwilioApi

    async with stack() as s:
        await run(configure, s.settings, NUMBER, dry_run=False)
        api = TwilioApi(s.settings)
        await asyncio.to_thread(
            api.update_number, s.number(NUMBER).sid, status_callback_method="GET"
        )
        code, output = await run_doctor(s.settings)
        assert code == 1
        assert "call-status callback is not this bridge's" in output


async def test_doctor_test_phrase_catches_a_refused_voice_or_balance() -> None:
    from bridge.dev.hamsa_emulator import Fault

    hamsa = EmulatorConfig(faults={1: Fault.CLOSE_4003})
    async with stack(hamsa) as s:
        await run(configure, s.settings, NUMBER, dry_run=False)
        code, output = await run_doctor(s.settings)
    assert code == 1
    assert "✓ Hamsa key accepted" in output
    assert "✗ Hamsa speaks the default voice — closed 4003: no balance" in output


async def test_doctor_tells_an_unreachable_twilio_from_bad_credentials() -> None:
    async with stack() as s:
        code, output = await run_doctor(s.with_(twilio_api_url="http://127.0.0.1:9"))
    assert "✗ Twilio credentials" in output
    assert "fix: check TWILIO_API_URL and this machine's network access to it" in output
