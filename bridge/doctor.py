"""``hamsa-bridge doctor``: check the whole chain before a customer calls.

Each link is one line, ✓ or ✗, and a failed link says how to fix it. Links that depend on a
failed one are skipped (–). Exit status 0 only when every link holds.

    settings → Twilio credentials → the number is in the account → it points here
    → the public URL answers /livez → a signed stream handshake is accepted
    → the Hamsa key is accepted → custom voices preload → a test phrase in the default voice
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from bridge.console import how_it_points, public_url_check
from bridge.errors import PreloadError, TwilioApiError
from bridge.exit_codes import ExitCode
from bridge.preload import preload_voices, voices_to_preload
from bridge.protocols.hamsa_client import (
    Audio,
    ConnectRefusal,
    End,
    HamsaProtocol,
    Info,
    ReplyError,
    classify_connect_error,
)
from bridge.protocols.twilio_ids import ACCOUNT_SID, API_KEY_SID, E164
from bridge.settings import Settings
from bridge.signatures import TwilioSignatures
from bridge.twilio_rest_client import TwilioApi, credentials_hint


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

    def to_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "verdict": self.verdict.name.lower(),
            "detail": self.detail or None,
            "fix": self.fix or None,
        }


def ok(name: str, detail: str = "") -> Check:
    return Check(name, Verdict.OK, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Verdict.FAILED, detail, fix)


def skipped(name: str, why: str) -> Check:
    return Check(name, Verdict.SKIPPED, why)


def check_settings(settings: Settings, number: str | None) -> list[Check]:
    checks = []
    sid = settings.twilio_account_sid
    if ACCOUNT_SID.match(sid):
        checks.append(ok("TWILIO_ACCOUNT_SID", sid))
    else:
        fix = "copy the Account SID from the Twilio console (Account info)"
        if API_KEY_SID.fullmatch(sid):
            fix += "; an SK… SID is an API key's: it goes in TWILIO_API_KEY"
        checks.append(
            failed(
                "TWILIO_ACCOUNT_SID",
                "missing" if not sid else f"{sid!r} is not AC followed by 32 hex digits",
                fix,
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
    if settings.twilio_api_key:  # its form and its secret are checked by Settings
        checks.append(ok("TWILIO_API_KEY", f"{settings.twilio_api_key} (REST requests)"))
    problem = public_url_check(settings)
    if problem:
        checks.append(failed("BRIDGE_PUBLIC_URL", *problem))
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
        if exc.status == 401 or (exc.status is None and "TWILIO_ACCOUNT_SID" in exc.message):
            fix = "check " + credentials_hint(settings)
        elif exc.status is None:
            fix = "check TWILIO_API_URL and this machine's network access to it"
        else:
            fix = "check TWILIO_API_URL and Twilio's status page"
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
    if public_url_check(settings):
        return [*checks, skipped(names[2], "needs a BRIDGE_PUBLIC_URL Twilio can reach")]
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
    if not settings.bridge_public_url:
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


TEST_PHRASE = "مرحبا."
"""What doctor asks Hamsa to say: short, so it costs next to nothing."""


async def check_hamsa(settings: Settings) -> list[Check]:
    """The key (``info``, not 4001/4003), custom voices preload, and a test phrase in the
    configured voice (proves balance, speaker, dialect and language are accepted too)."""
    names = ("Hamsa key accepted", "custom voices preload", "Hamsa speaks the default voice")
    key = settings.hamsa_api_key.get_secret_value()
    if not key:
        return [skipped(n, "needs HAMSA_API_KEY") for n in names]
    fix_key = HAMSA_KEY_FIX
    try:
        async with connect(
            settings.hamsa_ws_url, additional_headers={"X-Api-Key": key}, open_timeout=10
        ) as ws:
            protocol = HamsaProtocol()
            async with asyncio.timeout(5):
                events = protocol.receive_text(str(await ws.recv()))
            if not any(isinstance(e, Info) for e in events):
                return [
                    failed(names[0], "the realtime WebSocket did not say info", fix_key),
                    *(skipped(n, "needs the Hamsa key accepted") for n in names[1:]),
                ]
            checks = [ok(names[0], "realtime WebSocket said info")]
            voices = voices_to_preload(settings)
            try:
                await preload_voices(settings)
            except PreloadError as exc:
                return [
                    *checks,
                    failed(names[1], exc.message, "fix or remove that id in HAMSA_PRELOAD_VOICES"),
                    skipped(names[2], "needs the custom voices"),
                ]
            checks.append(ok(names[1], ", ".join(voices) if voices else "none configured"))
            return [*checks, await _test_phrase(ws, protocol, settings, names[2])]
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        return [_closed(names[0], code), *(skipped(n, "needs the Hamsa key") for n in names[1:])]
    except InvalidStatus as exc:
        status = exc.response.status_code
        detail, fix = hamsa_refusal(status) or (
            f"HTTP {status} at the upgrade",
            "check HAMSA_WS_URL",
        )
        return [
            failed(names[0], detail, fix),
            *(skipped(n, "needs the Hamsa key") for n in names[1:]),
        ]
    except (OSError, TimeoutError, WebSocketException) as exc:
        return [
            failed(
                names[0],
                f"{type(exc).__name__} reaching {settings.hamsa_ws_url}",
                "check HAMSA_WS_URL",
            ),
            *(skipped(n, "needs Hamsa reachable") for n in names[1:]),
        ]


HAMSA_KEY_FIX = "check HAMSA_API_KEY in your Hamsa dashboard"
HAMSA_BALANCE_FIX = "top up the Hamsa project wallet"


def hamsa_refusal(code: int | None) -> tuple[str, str] | None:
    """``(what happened, how to fix it)`` when Hamsa refused us for the key or the balance
    (:func:`~bridge.protocols.hamsa_client.classify_connect_error` of a close code or the HTTP
    status of the upgrade); ``None`` for any other code. Shared by doctor and ``hamsa probe``."""
    refusal = classify_connect_error(code)
    if refusal is ConnectRefusal.OTHER:
        return None
    if refusal is ConnectRefusal.NO_BALANCE:
        return f"closed {code}: no balance", HAMSA_BALANCE_FIX
    if code is not None and code >= 1000:  # a close code; HTTP statuses are below 1000
        return f"closed {code}: invalid API key", HAMSA_KEY_FIX
    return f"HTTP {code} at the upgrade", HAMSA_KEY_FIX


def _closed(name: str, code: int | None) -> Check:
    refusal = hamsa_refusal(code)
    if refusal is not None:
        return failed(name, *refusal)
    return failed(name, f"closed {code}", "retry; check HAMSA_WS_URL")


async def _test_phrase(
    ws: ClientConnection, protocol: HamsaProtocol, settings: Settings, name: str
) -> Check:
    voice = settings.voice
    what = f"{voice.speaker}/{voice.dialect}/{voice.language}"
    fix_voice = "check HAMSA_SPEAKER, HAMSA_DIALECT and HAMSA_LANGUAGE"
    await ws.send(protocol.request(TEST_PHRASE, voice))
    audio = 0
    try:
        async with asyncio.timeout(15):
            async for message in ws:
                events = (
                    protocol.receive_bytes(message)
                    if isinstance(message, bytes)
                    else protocol.receive_text(message)
                )
                for event in events:
                    if isinstance(event, Audio):
                        audio += len(event.data)
                    elif isinstance(event, ReplyError):
                        return failed(name, f"{what}: Hamsa said {event.message!r}", fix_voice)
                    elif isinstance(event, End):
                        if not audio:
                            return failed(name, f"{what}: no audio", fix_voice)
                        return ok(name, f"{what}: {audio} bytes of audio")
    except TimeoutError:
        return failed(name, f"{what}: no complete reply in 15 s", "retry; Hamsa may be slow")
    except ConnectionClosed as exc:
        return _closed(name, exc.rcvd.code if exc.rcvd is not None else None)
    return _closed(name, ws.close_code)


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
    settings: Settings,
    number: str | None,
    *,
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Run every check and print them (``as_json``: one JSON object); 0 when all passed, else 1.

    A missing or invalid setting is a failed check here (doctor's job is to report it), not a
    refusal to start."""
    checks = await run_checks(settings, number or settings.twilio_phone_number or None)
    bad = [c for c in checks if c.verdict is Verdict.FAILED]
    passed = sum(c.verdict is Verdict.OK for c in checks)
    if as_json:
        report: dict[str, Any] = {
            "ok": not bad,
            "passed": passed,
            "failed": len(bad),
            "skipped": len(checks) - passed - len(bad),
            "checks": [check.to_json() for check in checks],
        }
        out(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        for check in checks:
            for line in check.lines():
                out(line)
        out(f"{passed} of {len(checks)} checks passed" if bad else "all checks passed")
    return ExitCode.FAILURE if bad else ExitCode.OK
