"""``hamsa-bridge doctor``: check the whole chain before a customer calls.

Each link is one line, ✓ or ✗, and a failed link says how to fix it. Links that depend on a
failed one are skipped (–). Exit status 0 only when every link holds.

    settings → Twilio credentials → the number is in the account → it points here
    → the public URL answers /livez → a signed stream handshake is accepted
    → the Hamsa key is accepted → custom voices preload
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx2
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bridge.console import how_it_points, public_url_problem
from bridge.errors import PreloadError
from bridge.preload import preload_voices, voices_to_preload
from bridge.settings import E164, Settings
from bridge.signatures import TwilioSignatures
from bridge.twilio_api import TwilioApi, TwilioApiError

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")


class Verdict(enum.Enum):
    OK = "✓"
    FAILED = "✗"
    SKIPPED = "–"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    verdict: Verdict
    detail: str = ""
    fix: str = ""

    def lines(self) -> list[str]:
        head = f"{self.verdict.value} {self.name}" + (f" — {self.detail}" if self.detail else "")
        return [head, f"    fix: {self.fix}"] if self.fix else [head]


def ok(name: str, detail: str = "") -> Check:
    return Check(name, Verdict.OK, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Verdict.FAILED, detail, fix)


def skipped(name: str, why: str) -> Check:
    return Check(name, Verdict.SKIPPED, why)


def check_settings(settings: Settings, number: str | None) -> list[Check]:
    checks = []
    sid = settings.twilio_account_sid
    if _ACCOUNT_SID.match(sid):
        checks.append(ok("TWILIO_ACCOUNT_SID", sid))
    else:
        checks.append(
            failed(
                "TWILIO_ACCOUNT_SID",
                "missing" if not sid else f"{sid!r} is not AC followed by 32 hex digits",
                "copy the Account SID from the Twilio console (Account info)",
            )
        )
    for name, value, where in (
        ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token, "the Twilio console (Account info)"),
        ("HAMSA_API_KEY", settings.hamsa_api_key, "your Hamsa dashboard"),
    ):
        if value.get_secret_value():
            checks.append(ok(name, "set"))
        else:
            checks.append(failed(name, "missing", f"set it from {where}"))
    problem = public_url_problem(settings)
    if problem:
        checks.append(
            failed(
                "BRIDGE_PUBLIC_URL", problem, "set the https:// URL Twilio reaches the bridge at"
            )
        )
    else:
        checks.append(ok("BRIDGE_PUBLIC_URL", settings.bridge_public_url))
    if not number:
        checks.append(
            failed("phone number", "none given", "pass --number +E164 or set TWILIO_PHONE_NUMBER")
        )
    elif not E164.match(number):
        checks.append(
            failed("phone number", f"{number!r} is not E.164", "write it as +<country><number>")
        )
    else:
        checks.append(ok("phone number", number))
    return checks


async def check_twilio(settings: Settings, number: str | None) -> list[Check]:
    names = ("Twilio credentials", "number in the account", "number points at this bridge")
    try:
        api = TwilioApi(settings)
        account = await asyncio.to_thread(api.account_name)
    except TwilioApiError as exc:
        fix = (
            "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (the primary auth token)"
            if exc.status in (None, 401) or "TWILIO_" in exc.message
            else "check TWILIO_API_URL and Twilio's status page"
        )
        return [
            failed(names[0], exc.message, fix),
            *(skipped(n, "needs Twilio credentials") for n in names[1:]),
        ]
    checks = [ok(names[0], f"account {settings.twilio_account_sid} ({account})")]
    if not number or not E164.match(number):
        return [*checks, *(skipped(n, "needs a valid phone number") for n in names[1:])]
    try:
        found = await asyncio.to_thread(api.find_number, number)
    except TwilioApiError as exc:
        return [*checks, failed(names[1], exc.message, "retry; check TWILIO_API_URL")]
    if found is None:
        return [
            *checks,
            failed(
                names[1],
                f"{number} is not in account {settings.twilio_account_sid}",
                "buy or port the number into this account, or fix --number "
                "(`hamsa-bridge twilio show` lists the account's numbers)",
            ),
            skipped(names[2], "needs the number"),
        ]
    checks.append(ok(names[1], found.sid))
    pointing = how_it_points(found, settings)
    if pointing.endswith("✓"):
        checks.append(ok(names[2], f"POST {found.voice_url}"))
    else:
        checks.append(
            failed(
                names[2],
                pointing,
                f"run `hamsa-bridge twilio configure --number {number}` (or set the number's "
                f'"A call comes in" webhook to {settings.inbound_webhook_url}, HTTP POST)',
            )
        )
    return checks


async def check_bridge(settings: Settings) -> list[Check]:
    names = ("public URL answers /livez", "signed stream handshake accepted")
    if public_url_problem(settings):
        return [skipped(n, "needs BRIDGE_PUBLIC_URL") for n in names]
    url = settings.bridge_public_url + "/livez"
    try:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            response = await http.get(url)
        alive = response.status_code == 200 and response.json().get("status") == "ok"
    except (httpx2.HTTPError, ValueError) as exc:
        return [
            failed(
                names[0],
                f"GET {url}: {type(exc).__name__}",
                "start `hamsa-bridge serve` and make BRIDGE_PUBLIC_URL reach it (DNS, TLS, proxy)",
            ),
            skipped(names[1], "needs the bridge reachable"),
        ]
    if not alive:
        return [
            failed(
                names[0],
                f"GET {url}: HTTP {response.status_code}",
                "BRIDGE_PUBLIC_URL reaches something that is not this bridge",
            ),
            skipped(names[1], "needs the bridge reachable"),
        ]
    checks = [ok(names[0], url)]
    token = settings.twilio_auth_token.get_secret_value()
    if not token:
        return [*checks, skipped(names[1], "needs TWILIO_AUTH_TOKEN")]
    signature = TwilioSignatures(token).sign(settings.stream_url, {})
    try:
        async with connect(
            settings.stream_url,
            additional_headers={"X-Twilio-Signature": signature},
            open_timeout=5,
        ):
            pass
    except InvalidStatus as exc:
        status = exc.response.status_code
        fix = (
            "the running bridge's TWILIO_AUTH_TOKEN or BRIDGE_PUBLIC_URL differs from this "
            "machine's, or a proxy rewrites the URL"
            if status == 403
            else "check BRIDGE_STREAM_PATH and that the proxy passes WebSocket upgrades"
        )
        return [*checks, failed(names[1], f"{settings.stream_url}: HTTP {status}", fix)]
    except (OSError, TimeoutError, WebSocketException) as exc:
        return [
            *checks,
            failed(
                names[1],
                f"{settings.stream_url}: {type(exc).__name__}",
                "the proxy must pass WebSocket upgrades on the stream path",
            ),
        ]
    return [*checks, ok(names[1], settings.stream_url)]


async def check_hamsa(settings: Settings) -> list[Check]:
    names = ("Hamsa key accepted", "custom voices preload")
    key = settings.hamsa_api_key.get_secret_value()
    if not key:
        return [skipped(n, "needs HAMSA_API_KEY") for n in names]
    verdict = await _hamsa_greets(settings, key)
    checks = [verdict]
    if verdict.verdict is not Verdict.OK:
        return [*checks, skipped(names[1], "needs the Hamsa key accepted")]
    voices = voices_to_preload(settings)
    if not voices:
        return [*checks, ok(names[1], "none configured")]
    try:
        await preload_voices(settings)
    except PreloadError as exc:
        return [
            *checks,
            failed(names[1], exc.message, "fix or remove that id in HAMSA_PRELOAD_VOICES"),
        ]
    return [*checks, ok(names[1], ", ".join(voices))]


async def _hamsa_greets(settings: Settings, key: str) -> Check:
    name = "Hamsa key accepted"
    fix_key = "check HAMSA_API_KEY in your Hamsa dashboard"
    try:
        async with connect(
            settings.hamsa_ws_url, additional_headers={"X-Api-Key": key}, open_timeout=10
        ) as ws:
            async with asyncio.timeout(5):
                first = await ws.recv()
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(first).get("type") == "info":
                    return ok(name, "realtime WebSocket said info")
            return failed(name, f"unexpected first frame {str(first)[:60]!r}", fix_key)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code == 4001:
            return failed(name, "closed 4001: invalid API key", fix_key)
        if code == 4003:
            return failed(name, "closed 4003: no balance", "top up the Hamsa project wallet")
        return failed(name, f"closed {code}", "retry; check HAMSA_WS_URL")
    except InvalidStatus as exc:
        status = exc.response.status_code
        fix = fix_key if status in (401, 403) else "check HAMSA_WS_URL"
        return failed(name, f"HTTP {status} at the upgrade", fix)
    except (OSError, TimeoutError, WebSocketException) as exc:
        return failed(
            name, f"{type(exc).__name__} reaching {settings.hamsa_ws_url}", "check HAMSA_WS_URL"
        )


async def run_checks(settings: Settings, number: str | None) -> list[Check]:
    steps: list[Callable[[], Awaitable[list[Check]]]] = [
        lambda: check_twilio(settings, number),
        lambda: check_bridge(settings),
        lambda: check_hamsa(settings),
    ]
    checks = check_settings(settings, number)
    for step in steps:
        checks.extend(await step())
    return checks


async def doctor(
    settings: Settings, number: str | None, *, out: Callable[[str], None] = print
) -> int:
    checks = await run_checks(settings, number or settings.twilio_phone_number or None)
    for check in checks:
        for line in check.lines():
            out(line)
    bad = [c for c in checks if c.verdict is Verdict.FAILED]
    passed = sum(c.verdict is Verdict.OK for c in checks)
    out(f"{passed} of {len(checks)} checks passed" if bad else "all checks passed")
    return 1 if bad else 0
