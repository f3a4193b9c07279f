"""``hamsa-bridge twilio configure|show|call-in`` and ``hamsa-bridge twiml inbound``.

Wiring a number to the bridge means exactly four fields of its IncomingPhoneNumber:
``VoiceUrl`` = ``{BRIDGE_PUBLIC_URL}/twiml/inbound``, ``VoiceMethod`` = ``POST``, and the
call-status callback ``StatusCallback`` = ``{BRIDGE_PUBLIC_URL}/twilio/status`` with
``StatusCallbackMethod`` = ``POST``. ``configure`` changes only those that differ (a second run
changes nothing) and shows them before and after; ``--dry-run`` makes no changing request.

Results go to ``out`` (stdout), failures to ``err`` (stderr). Exit status (codes of
:mod:`bridge.exit_codes`): 0 done; 2 refused before anything is sent to Twilio (a missing or
malformed setting or number: credentials, ``TWILIO_ACCOUNT_SID`` that is not ``AC`` and 32 hex
digits, a number that is not E.164, ``BRIDGE_PUBLIC_URL``); 1 Twilio refused or could not be
reached, or the call did not complete.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2

from bridge.errors import TwilioApiError
from bridge.exit_codes import ExitCode
from bridge.protocols.twilio_ids import E164
from bridge.settings import EXAMPLE_PUBLIC_URL, Settings, is_loopback
from bridge.twilio_rest_client import PhoneNumber, TwilioApi, credentials_problem
from twiml.inbound import webhook_redirect

Print = Callable[[str], None]


def print_error(line: str) -> None:
    """The commands' default ``err``: a line on stderr."""
    print(line, file=sys.stderr)


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    """twilio-python's name (``voice_url``)."""
    api_name: str
    """Twilio's name (``VoiceUrl``)."""
    before: str
    after: str


FIELDS = (
    ("voice_url", "VoiceUrl"),
    ("voice_method", "VoiceMethod"),
    ("status_callback", "StatusCallback"),
    ("status_callback_method", "StatusCallbackMethod"),
)


def wanted_wiring(settings: Settings) -> dict[str, str]:
    return {
        "voice_url": settings.inbound_webhook_url,
        "voice_method": "POST",
        "status_callback": settings.status_callback_url,
        "status_callback_method": "POST",
    }


def changes_needed(number: PhoneNumber, settings: Settings) -> list[Change]:
    """The field changes that make ``number`` reach this bridge (empty: it already does).

    A TwiML App on the number takes precedence over ``VoiceUrl`` (Twilio then never calls the
    webhook), so it is cleared too; a SIP trunk is not touched (see ``blocked_by_trunk``).
    """
    wanted = wanted_wiring(settings)
    out = []
    if number.voice_application_sid:
        out.append(
            Change("voice_application_sid", "VoiceApplicationSid", number.voice_application_sid, "")
        )
    for field, api_name in FIELDS:
        before = getattr(number, field)
        if field.endswith("method"):
            same = before.upper() == wanted[field]
        else:
            same = before == wanted[field]
        if not same:
            out.append(Change(field, api_name, before, wanted[field]))
    return out


def blocked_by_trunk(number: PhoneNumber) -> str | None:
    if number.trunk_sid:
        return (
            f"{number.phone_number} belongs to SIP trunk {number.trunk_sid}: Twilio sends its "
            "calls to the trunk and never calls a Voice webhook; remove it from the trunk first "
            "(Elastic SIP Trunking → the trunk → Numbers)"
        )
    return None


def how_it_points(number: PhoneNumber, settings: Settings) -> str:
    """One phrase: whether and how a number reaches this bridge (ends with ✓ when it does)."""
    if number.trunk_sid:
        return f"routed to SIP trunk {number.trunk_sid} (never calls a webhook)"
    todo = {c.field: c for c in changes_needed(number, settings)}
    if not todo:
        return "points here ✓"
    if "voice_application_sid" in todo:
        return f"uses TwiML App {number.voice_application_sid} (not this bridge's webhook)"
    if not number.voice_url:
        return "no voice webhook configured"
    if "voice_url" in todo:
        return f"points elsewhere: {number.voice_method or 'POST'} {redact_url(number.voice_url)}"
    if "voice_method" in todo:
        return f"points here but with HTTP {number.voice_method}; needs POST"
    return "points here, but the call-status callback is not this bridge's (POST /twilio/status)"


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` (Twilio allows credentials in webhook URLs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def public_url_check(settings: Settings) -> tuple[str, str] | None:
    """``(what is wrong, how to fix it)`` when ``BRIDGE_PUBLIC_URL`` can't be given to Twilio.

    Its form is ``Settings``' business (scheme and host only: ``https://`` on 443, or ``http://``
    on a loopback host), so an invalid one never gets here. Left to check: it is set, and a
    loopback URL (this machine) goes only to a Twilio on this machine — the emulator, at a
    loopback ``TWILIO_API_URL``: the real Twilio cannot reach it. Every fix given is valid.
    """
    url = settings.bridge_public_url
    if not url:
        return (
            "not set",
            f"set it to the https:// URL Twilio reaches this bridge at, e.g. {EXAMPLE_PUBLIC_URL}",
        )
    api = settings.twilio_api_url
    if is_loopback(urlsplit(url).hostname or "") and not is_loopback(urlsplit(api).hostname or ""):
        return (
            f"{url} is this machine, which Twilio at {api} cannot reach",
            "give the public https:// URL Twilio reaches this bridge at, or point "
            "TWILIO_API_URL at `hamsa-bridge emulate-twilio`",
        )
    return None


def public_url_problem(settings: Settings) -> str | None:
    """``public_url_check`` as one sentence (``None``: Twilio can be given the URL)."""
    check = public_url_check(settings)
    return None if check is None else f"BRIDGE_PUBLIC_URL {check[0]}: {check[1]}"


def configure(
    settings: Settings,
    number: str,
    *,
    dry_run: bool,
    out: Print = print,
    err: Print = print_error,
) -> int:
    """Point ``number``'s Voice webhook and status callback at this bridge. Exit status."""
    if not E164.match(number):
        err(f"✗ {number!r} is not an E.164 number (e.g. +966501234567)")
        return ExitCode.USAGE
    problem = credentials_problem(settings) or public_url_problem(settings)
    if problem:
        err(f"✗ {problem}")
        return ExitCode.USAGE
    try:
        api = TwilioApi(settings)
        current = api.find_number(number)
        if current is None:
            err(
                f"✗ {number} is not a number of account {settings.twilio_account_sid}; "
                "`hamsa-bridge twilio show` lists the account's numbers"
            )
            return ExitCode.FAILURE
        blocked = blocked_by_trunk(current)
        if blocked:
            err(f"✗ {blocked}")
            return ExitCode.FAILURE
        todo = changes_needed(current, settings)
        out(f"{current.phone_number} ({current.sid}) {current.friendly_name}")
        _print_wiring(current, out)
        if not todo:
            out("already points at this bridge: nothing to change")
            return ExitCode.OK
        verb = "would change" if dry_run else "changing"
        for change in todo:
            before, after = redact_url(change.before) or "-", change.after or "(cleared)"
            out(f"  {verb}: {change.api_name}: {before} → {after}")
        if dry_run:
            out("dry run: nothing was changed")
            return ExitCode.OK
        updated = api.update_number(current.sid, **{c.field: c.after for c in todo})
    except TwilioApiError as exc:
        err(f"✗ {exc}")
        return ExitCode.FAILURE
    out("after:")
    _print_wiring(updated, out)
    left = changes_needed(updated, settings)
    if left:
        err(f"✗ Twilio did not apply: {', '.join(c.api_name for c in left)}")
        return ExitCode.FAILURE
    out("✓ configured: calls to this number now reach the bridge")
    return ExitCode.OK


def _print_wiring(number: PhoneNumber, out: Print) -> None:
    if number.voice_application_sid:
        out(f"  {'VoiceApplicationSid':22} {number.voice_application_sid}")
    for field, api_name in FIELDS:
        out(f"  {api_name:22} {redact_url(getattr(number, field)) or '-'}")


def show(
    settings: Settings, *, as_json: bool = False, out: Print = print, err: Print = print_error
) -> int:
    """List the account's numbers and whether they point at this bridge (``as_json``: as one
    JSON object)."""
    problem = credentials_problem(settings)
    if problem:
        err(f"✗ {problem}")
        return ExitCode.USAGE
    try:
        api = TwilioApi(settings)
        name = api.account_name()
        numbers = api.numbers()
    except TwilioApiError as exc:
        err(f"✗ {exc}")
        return ExitCode.FAILURE
    if as_json:
        out(json.dumps(_show_json(settings, name, numbers), ensure_ascii=False, indent=2))
        return ExitCode.OK
    out(f"account {settings.twilio_account_sid} ({name}): {len(numbers)} number(s)")
    if settings.bridge_public_url:
        out(f"this bridge: {settings.inbound_webhook_url}")
    for number in numbers:
        out(f"  {number.phone_number:16} {number.sid}  {how_it_points(number, settings)}")
    return ExitCode.OK


def _show_json(settings: Settings, name: str, numbers: list[PhoneNumber]) -> dict[str, Any]:
    """``twilio show --json``: the account, this bridge's webhook and each number's wiring
    (URLs without credentials; ``points_here``: calls to it reach this bridge)."""
    here = bool(settings.bridge_public_url)
    return {
        "account_sid": settings.twilio_account_sid,
        "account_name": name,
        "bridge_webhook": settings.inbound_webhook_url if here else None,
        "numbers": [
            {
                "phone_number": number.phone_number,
                "sid": number.sid,
                "friendly_name": number.friendly_name,
                "points_here": here
                and not number.trunk_sid
                and not changes_needed(number, settings),
                "how": how_it_points(number, settings),
                "voice_url": redact_url(number.voice_url) or None,
                "voice_method": number.voice_method or None,
                "status_callback": redact_url(number.status_callback) or None,
                "status_callback_method": number.status_callback_method or None,
                "voice_application_sid": number.voice_application_sid or None,
                "trunk_sid": number.trunk_sid or None,
            }
            for number in numbers
        ],
    }


def twiml_for_bin(settings: Settings) -> str:
    """TwiML to paste into a TwiML Bin: redirect the call to this bridge's signed webhook
    (:func:`twiml.inbound.webhook_redirect`)."""
    return webhook_redirect(settings.inbound_webhook_url)


async def call_in(
    settings: Settings,
    number: str,
    *,
    from_number: str,
    keys: list[tuple[float, str]],
    hangup_after: float | None,
    out_path: Path,
    answers: list[str] | None = None,
    max_seconds: float = 600.0,
    out: Print = print,
    err: Print = print_error,
) -> int:
    """Someone dials ``number`` — on the Twilio emulator at ``TWILIO_API_URL`` only.

    The emulator requests the number's Voice webhook (signed), runs the TwiML and the media
    stream, sends the status callbacks (signed); this writes what the caller heard to a WAV and
    prints what happened on each hop.
    """
    if not E164.match(number):
        err(f"✗ {number!r} is not an E.164 number (e.g. +966501234567)")
        return ExitCode.USAGE
    base = settings.twilio_api_url.rstrip("/")
    body = {
        "to": number,
        "from": from_number,
        "keys": keys,
        "answers": answers or [],
        "hangup_after": hangup_after,
    }
    async with httpx2.AsyncClient(timeout=max_seconds + 10) as http:
        try:
            started = await http.post(base + "/_emulator/inbound", json=body)
        except httpx2.HTTPError as exc:
            err(f"✗ cannot reach {base}: {type(exc).__name__}; check TWILIO_API_URL")
            return ExitCode.FAILURE
        if started.status_code != 201:
            try:
                reason = str(started.json()["error"])
            except (ValueError, KeyError, TypeError):
                reason = "`twilio call-in` needs TWILIO_API_URL to be `hamsa-bridge emulate-twilio`"
            err(f"✗ {base} did not start a call (HTTP {started.status_code}): {reason}")
            return ExitCode.FAILURE
        call_sid = started.json()["call_sid"]
        out(f"calling {number} from {from_number}: {call_sid}")
        heard = await http.get(f"{base}/_emulator/calls/{call_sid}/heard.wav?wait={max_seconds}")
        log = (await http.get(base + "/_emulator/log")).json()
    if heard.status_code != 200:
        err(f"✗ the call did not end within {max_seconds:g} s")
        return ExitCode.FAILURE
    for webhook in log.get("webhooks", []):
        if webhook.get("call_sid") == call_sid:
            out(f"  webhook {webhook['method']} {webhook['url']}: HTTP {webhook.get('status')}")
    for stream in log.get("streams", []):
        if stream.get("call_sid") == call_sid:
            out(
                f"  stream {stream['url']}: {stream['heard_bytes'] / 8000:.2f} s heard, "
                f"ended by {stream['ended_by']}, warnings {len(stream['warnings'])}"
            )
            nodes = [m.split(":")[1] for m in stream["marks"] if m.count(":") == 2]
            if nodes:
                out(f"  IVR prompts heard: {' > '.join(nodes)}")
    for transfer in log.get("transfers", []):
        if transfer.get("call_sid") == call_sid:
            out(f"  transferred to {', '.join(transfer['targets'])}")
    for callback in log.get("callbacks", []):
        if callback.get("call_sid") == call_sid:
            out(f"  status callback {callback['event']}: HTTP {callback.get('status')}")
    status = heard.headers.get("x-call-status", "?")
    written = await asyncio.to_thread(_write, out_path, heard.content)
    out(f"call {status}; wav: {written}")
    return ExitCode.OK if status == "completed" else ExitCode.FAILURE


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.resolve()
