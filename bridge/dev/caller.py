"""``hamsa-bridge call``: a simulated Twilio caller, doing what Twilio does for an inbound call.

1. POST the signed Voice webhook (``CallSid``, ``AccountSid``, ``From``, ``To``, …) and parse the
   TwiML it returns; find ``<Connect><Stream url>`` and its ``<Parameter>``s.
2. Run the media stream as Twilio does (``media_leg.run_media_stream``): signed handshake,
   ``connected``, ``start``, caller audio every 20 ms (phrases said at given times, ``--say``),
   keys at given times, Twilio's playout buffer and mark echoes, ``stop`` when the caller hangs
   up.
3. Write what the caller heard to a WAV and report a timeline: time to first audio, underruns,
   marks, clears, protocol warnings.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import xml.etree.ElementTree as ET  # noqa: S405 - parsing TwiML from the server under test
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

from bridge.dev.media_leg import CallerBehaviour, StreamResult, run_media_stream
from bridge.dev.tone import synthesize
from bridge.exit_codes import ExitCode
from bridge.settings import Settings
from bridge.signatures import TwilioSignatures


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(slots=True, kw_only=True)
class CallPlan(CallerBehaviour):
    """Who calls whom, where the webhook is, and what the caller does."""

    webhook_url: str
    """Where to POST the Voice webhook (for example ``https://bridge.example.com/twiml/inbound``)."""
    auth_token: str
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    from_number: str = "+966500000001"
    to_number: str = "+966110000000"
    sign_webhook: bool = True


@dataclass(slots=True, kw_only=True)
class CallResult(StreamResult):
    plan: CallPlan
    twiml: str
    webhook_status: int

    def timeline(self) -> list[str]:
        """Human-readable report of the call, times in ms from ``start``."""
        return [f"webhook: HTTP {self.webhook_status}", *StreamResult.timeline(self)]


def parse_connect_stream(twiml: str) -> tuple[str, dict[str, str]] | None:
    """The ``<Connect><Stream url>`` and its parameters, or None if the TwiML has none."""
    root = ET.fromstring(twiml)  # noqa: S314 - TwiML from the server under test
    stream = root.find("./Connect/Stream")
    if stream is None:
        return None
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


async def place_call(
    plan: CallPlan,
    *,
    http: httpx2.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CallResult:
    """Run one simulated inbound call to its end and return what happened."""
    signer = TwilioSignatures(plan.auth_token)
    form = {
        "AccountSid": plan.account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": plan.call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": plan.from_number,
        "To": plan.to_number,
    }
    headers = (
        {"X-Twilio-Signature": signer.sign(plan.webhook_url, form)} if plan.sign_webhook else {}
    )
    owns = http is None
    client = http or httpx2.AsyncClient(timeout=plan.patience)
    try:
        response = await client.post(plan.webhook_url, data=form, headers=headers)
    finally:
        if owns:
            await client.aclose()
    result = CallResult(plan=plan, twiml=response.text, webhook_status=response.status_code)
    if response.status_code != 200:
        return result
    found = parse_connect_stream(response.text)
    if found is None:
        return result
    stream_url, parameters = found
    await run_media_stream(
        stream_url,
        parameters,
        auth_token=plan.auth_token,
        call_sid=plan.call_sid,
        account_sid=plan.account_sid,
        stream_sid=plan.stream_sid,
        behaviour=plan,
        result=result,
        clock=clock,
    )
    return result


async def run_call_command(settings: Settings, args: argparse.Namespace) -> int:
    """``hamsa-bridge call``: one simulated call against the bridge at ``--url``. Exit status:
    0 the call reached the stream, 1 it did not, 2 no ``TWILIO_AUTH_TOKEN`` to sign with."""
    token = settings.twilio_auth_token.get_secret_value()
    if not token:
        print(
            "hamsa-bridge call: set TWILIO_AUTH_TOKEN to the bridge's auth token to sign requests",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    plan = CallPlan(
        webhook_url=args.url,
        auth_token=token,
        from_number=args.from_number,
        to_number=args.to_number,
        keys=list(args.press),
        hangup_after=args.hangup_after,
        answers=list(args.answer),
        speech=[(at, synthesize(phrase, mulaw=True)) for at, phrase in args.say],
        max_duration=args.max_duration,
        sign_handshake=not args.no_sign_handshake,
        connect_url=args.connect_url,
    )
    if settings.twilio_account_sid:
        plan.account_sid = settings.twilio_account_sid
    try:
        result = await place_call(plan)
    except (httpx2.HTTPError, OSError) as exc:
        print(f"hamsa-bridge call: cannot reach {args.url}: {type(exc).__name__}", file=sys.stderr)
        return ExitCode.FAILURE
    for line in result.timeline():
        print(line)
    if result.leg is None:
        return ExitCode.FAILURE
    print(f"wav: {result.write_wav(args.out)}")
    return ExitCode.OK
