"""``TWILIO_API_KEY``/``TWILIO_API_SECRET``: REST requests authenticate with an API key (the
account SID stays in the path); signatures stay the auth token's. The Twilio emulator accepts
the account's keys as Twilio does (https://www.twilio.com/docs/iam/api-keys)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest

from bridge.cli import main
from bridge.console import configure, show
from bridge.dev.loopback import Loopback, loopback
from bridge.dev.twilio_emulator import ApiKey, TwilioEmulatorConfig, TwilioEmulatorServer
from bridge.dev.twilio_emulator.rest_model import basic_auth_header
from bridge.doctor import doctor
from bridge.settings import Settings

pytestmark = pytest.mark.anyio

ACCOUNT = "AC" + "d" * 32
TOKEN = "api-key-test-auth-token"
KEY = "SK" + "0123456789abcdef" * 2
SECRET = "api-key-test-secret-value"
MAIN_KEY = "SK" + "f" * 32
NUMBER = "+966501234599"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures the root logger for its command: give the next test the original."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


# --- the settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TWILIO_API_KEY": "not-a-sid-but-a-pasted-secret", "TWILIO_API_SECRET": SECRET},
            "  TWILIO_API_KEY: is not an API key SID (SK followed by 32 hex digits: the key's SID "
            "in the Twilio console, API keys & tokens); the key's secret goes in TWILIO_API_SECRET",
        ),
        (
            {"TWILIO_API_KEY": "SK" + "0" * 31, "TWILIO_API_SECRET": SECRET},
            "  TWILIO_API_KEY: is not an API key SID (SK followed by 32 hex digits",
        ),
        (
            {"TWILIO_API_KEY": KEY},
            "  TWILIO_API_KEY and TWILIO_API_SECRET go together: set TWILIO_API_SECRET too, or "
            "neither (REST requests then use TWILIO_AUTH_TOKEN)",
        ),
        (
            {"TWILIO_API_SECRET": SECRET},
            "  TWILIO_API_KEY and TWILIO_API_SECRET go together: set TWILIO_API_KEY too",
        ),
    ],
)
def test_a_bad_api_key_setting_is_a_usage_error_that_shows_no_value(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["twilio", "show"], {"TWILIO_ACCOUNT_SID": ACCOUNT, **env}) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "pasted-secret" not in err
    assert SECRET not in err


def test_the_api_secret_is_a_secret() -> None:
    settings = Settings.from_env(
        {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_API_KEY": KEY, "TWILIO_API_SECRET": SECRET}
    )
    assert SECRET in settings.secret_values()  # the log redactor removes it from any output
    assert SECRET not in repr(settings)
    assert settings.twilio_rest_auth == (KEY, SECRET)
    assert Settings(twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN).twilio_rest_auth == (
        ACCOUNT,
        TOKEN,
    )


# --- the emulator accepts the account's keys, as Twilio does ------------------------------------


async def test_the_emulator_accepts_the_accounts_api_keys_as_twilio_does() -> None:
    config = TwilioEmulatorConfig(
        account_sid=ACCOUNT,
        auth_token=TOKEN,
        api_keys={KEY: SECRET, MAIN_KEY: ApiKey("main-secret", main=True)},
        numbers={NUMBER: {}},
    )
    base = f"/2010-04-01/Accounts/{ACCOUNT}"
    async with TwilioEmulatorServer(config) as twilio, httpx2.AsyncClient() as http:

        async def get(path: str, user: str, password: str) -> tuple[int, Any]:
            headers = {"Authorization": basic_auth_header(user, password)}
            response = await http.get(twilio.http_url + base + path, headers=headers)
            return response.status_code, response.json()

        numbers = "/IncomingPhoneNumbers.json"
        assert (await get(numbers, KEY, SECRET))[0] == 200
        assert (await get(numbers, MAIN_KEY, "main-secret"))[0] == 200
        assert (await get(numbers, ACCOUNT, TOKEN))[0] == 200
        for user, password in ((KEY, "wrong"), ("SK" + "1" * 32, SECRET), (KEY, TOKEN)):
            status, body = await get(numbers, user, password)
            assert (status, body["code"]) == (401, 20003)
        # a Standard key may not use the Account resource; a Main key and the token may
        status, body = await get(".json", KEY, SECRET)
        assert (status, body["code"]) == (401, 20003)
        assert (await get(".json", MAIN_KEY, "main-secret"))[0] == 200
        assert (await get(".json", ACCOUNT, TOKEN))[0] == 200
        assert [r.auth_user for r in twilio.state.requests][:3] == [KEY, MAIN_KEY, ACCOUNT]


def test_emulator_config_refuses_a_malformed_key() -> None:
    with pytest.raises(ValueError, match="not 'SK' followed by 32 hex digits"):
        TwilioEmulatorConfig(api_keys={"AK" + "0" * 32: SECRET})
    with pytest.raises(ValueError, match="the secret must not be empty"):
        TwilioEmulatorConfig(api_keys={KEY: ""})


# --- the bridge's REST client uses the key; signatures stay the auth token's -------------------


@asynccontextmanager
async def stack(secret: str = SECRET) -> AsyncIterator[tuple[TwilioEmulatorServer, Loopback]]:
    config = TwilioEmulatorConfig(
        account_sid=ACCOUNT, auth_token=TOKEN, api_keys={KEY: SECRET}, numbers={NUMBER: {}}
    )
    async with (
        TwilioEmulatorServer(config) as twilio,
        loopback(
            auth_token=TOKEN,
            twilio_account_sid=ACCOUNT,
            twilio_api_key=KEY,
            twilio_api_secret=secret,
            twilio_api_url=twilio.http_url,
            twilio_phone_number=NUMBER,
            bridge_greeting="مرحبا بك.",
        ) as rig,
    ):
        yield twilio, rig


async def run(function: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    """``function``'s exit status and everything it printed, results and errors alike."""
    lines: list[str] = []
    code = await asyncio.to_thread(function, *args, out=lines.append, err=lines.append, **kwargs)
    return code, "\n".join(lines)


async def test_configure_show_and_doctor_authenticate_with_the_api_key() -> None:
    async with stack() as (twilio, rig):
        code, output = await run(configure, rig.settings, NUMBER, dry_run=False)
        assert code == 0, output
        code, output = await run(show, rig.settings)
        assert code == 0, output
        assert f"account {ACCOUNT} (API key {KEY}): 1 number(s)" in output
        lines: list[str] = []
        code = await doctor(rig.settings, None, out=lines.append)
        output = "\n".join(lines)
        assert code == 0, output
        assert f"✓ Twilio credentials — account {ACCOUNT} (API key {KEY})" in output
        assert f"✓ TWILIO_API_KEY — {KEY} (REST requests)" in output
        # the handshake doctor signs with the auth token is accepted by the bridge
        assert "✓ signed stream handshake accepted" in output
        requests = list(twilio.state.requests)
    assert requests
    assert {r.auth_user for r in requests} == {KEY}  # never the account SID and auth token
    assert all(r.path.startswith(f"/2010-04-01/Accounts/{ACCOUNT}/") for r in requests)
    assert all(r.status in (200, 201) for r in requests)


async def test_a_rejected_api_key_names_the_key_settings() -> None:
    async with stack(secret="not-the-secret") as (_, rig):
        code, output = await run(show, rig.settings)
        assert code == 1
        assert "Twilio rejected the credentials (HTTP 401, code 20003)" in output
        assert "check TWILIO_API_KEY and TWILIO_API_SECRET" in output
        lines: list[str] = []
        await doctor(rig.settings, None, out=lines.append)
    output = "\n".join(lines)
    assert "✗ Twilio credentials" in output
    assert "fix: check TWILIO_API_KEY and TWILIO_API_SECRET" in output
