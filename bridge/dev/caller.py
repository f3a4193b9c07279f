"""``hamsa-bridge call``: a simulated Twilio caller, doing what Twilio does for an inbound call.

1. POST the signed Voice webhook (``CallSid``, ``AccountSid``, ``From``, ``To``, …) and parse the
   TwiML it returns; find ``<Connect><Stream url>`` and its ``<Parameter>``s.
2. Open the stream WebSocket with ``X-Twilio-Signature`` over the exact ``wss://`` URL.
3. Send ``connected``, ``start``, then caller audio every 20 ms (silence), ``dtmf`` keys at the
   given times, and ``stop`` when the caller hangs up.
4. Model Twilio's playout buffer (``TwilioMediaLeg``: 8000 bytes/s, marks echoed when reached,
   ``clear`` flushes and echoes pending marks), record what the caller heard, write it to a WAV
   and report a timeline: time to first audio, underruns, marks, clears, protocol warnings.

The media leg is the same code the Twilio emulator uses: one implementation of Twilio's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
import wave
import xml.etree.ElementTree as ET  # noqa: S405 - parsing TwiML from the server under test
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.audio.codec import ulaw_to_lin16
from bridge.protocols.twilio_leg import TwilioMediaLeg
from bridge.settings import Settings
from bridge.signatures import TwilioSignatures

SILENCE_FRAME = b"\xff" * 160


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(slots=True)
class CallPlan:
    """What the simulated caller does."""

    webhook_url: str
    """Where to POST the Voice webhook (for example ``https://bridge.example.com/twiml/inbound``)."""
    auth_token: str
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    from_number: str = "+966500000001"
    to_number: str = "+966110000000"
    keys: list[tuple[float, str]] = field(default_factory=list)
    """(seconds after ``start``, digit) pairs."""
    raw: list[tuple[float, str | bytes]] = field(default_factory=list)
    """(seconds after ``start``, message) sent as is: malformed frames, to test robustness."""
    echo_marks: bool = True
    """False: never echo marks (to test a Twilio whose echoes are lost)."""
    hangup_after: float | None = None
    """The caller hangs up (``stop``) this long after ``start``; None: wait for the bridge."""
    max_duration: float = 300.0
    sign_webhook: bool = True
    sign_handshake: bool = True
    handshake_token: str | None = None
    """Sign the handshake with this auth token instead (to test a forged signature)."""
    token_override: str | None = None
    """Replace the ``token`` Parameter (to test stream authentication)."""
    connect_url: str | None = None
    """Connect here instead of the TwiML's stream URL (same path; e.g. behind a tunnel)."""


@dataclass(slots=True)
class CallResult:
    plan: CallPlan
    twiml: str
    webhook_status: int
    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    leg: TwilioMediaLeg | None = None
    started_at: float | None = None
    ended_at: float | None = None
    close_code: int | None = None
    handshake_status: int | None = None
    keys_sent: list[tuple[float, str]] = field(default_factory=list)
    hung_up: bool = False

    @property
    def heard(self) -> bytes:
        return self.leg.heard() if self.leg is not None else b""

    def write_wav(self, path: Path) -> Path:
        """What the caller heard, as 8 kHz 16-bit PCM WAV (plays anywhere)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(ulaw_to_lin16(self.heard))
        return path

    def gaps(self) -> list[tuple[float, float]]:
        """Underruns the caller heard as gaps: playout ran dry and audio came again later.

        The buffer running dry after the last audio (the end of the call) is not a gap.
        """
        if self.leg is None:
            return []
        return [(u.at, u.duration) for u in self.leg.timeline.underruns if u.duration is not None]

    def timeline(self) -> list[str]:
        """Human-readable report of the call, times in ms from ``start``."""
        lines = [f"webhook: HTTP {self.webhook_status}"]
        leg, t0 = self.leg, self.started_at
        if leg is None or t0 is None:
            if self.handshake_status is not None:
                lines.append(f"stream handshake refused: HTTP {self.handshake_status}")
            return lines

        def ms(t: float | None) -> str:
            return "-" if t is None else f"{(t - t0) * 1000:8.1f} ms"

        tl = leg.timeline
        lines.append(f"stream: {self.stream_url}  parameters: {sorted(self.parameters)}")
        lines.append(f"first audio:        {ms(tl.first_media_at)}")
        for at, digit in self.keys_sent:
            lines.append(f"key {digit!r} pressed:     {ms(at)}")
        for mark in tl.marks:
            state = "cleared" if mark.cleared else "played"
            lines.append(
                f"mark {mark.name!r}: sent {ms(mark.received_at)}, "
                f"echoed {ms(mark.echoed_at)} ({state})"
            )
        for clear in tl.clears:
            lines.append(f"clear:              {ms(clear.at)} dropped {clear.dropped_bytes} bytes")
        gaps = self.gaps()
        for at, duration in gaps:
            lines.append(f"underrun:           {ms(at)} for {duration * 1000:.1f} ms")
        lines.append(
            f"frames received: {tl.frames_received}  audio heard: {len(leg.played) / 8000:.2f} s  "
            f"max lead: {tl.max_lead_ms:.0f} ms  underruns: {len(gaps)}"
        )
        if leg.warnings:
            lines.append(
                f"protocol warnings: {leg.warnings[:5]}{' …' if len(leg.warnings) > 5 else ''}"
            )
        else:
            lines.append("protocol warnings: none")
        end = (
            "caller hung up"
            if self.hung_up
            else f"bridge closed the stream (code {self.close_code})"
        )
        lines.append(f"end:                {ms(self.ended_at)} {end}")
        return lines


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
    client = http or httpx2.AsyncClient(timeout=15.0)
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
    result.stream_url, result.parameters = found
    parameters = dict(result.parameters)
    if plan.token_override is not None:
        parameters["token"] = plan.token_override
    target = plan.connect_url or result.stream_url
    handshake_signer = TwilioSignatures(plan.handshake_token) if plan.handshake_token else signer
    ws_headers = (
        {"X-Twilio-Signature": handshake_signer.sign(result.stream_url, {})}
        if plan.sign_handshake
        else {}
    )
    try:
        ws = await connect(target, additional_headers=ws_headers, open_timeout=10, max_size=2**20)
    except InvalidStatus as exc:
        result.handshake_status = exc.response.status_code
        return result
    leg = TwilioMediaLeg(plan.stream_sid, plan.call_sid, plan.account_sid, parameters)
    result.leg = leg
    async with ws:
        await _run_stream(ws, leg, plan, result, clock)
    result.close_code = ws.close_code
    return result


async def _run_stream(
    ws: ClientConnection,
    leg: TwilioMediaLeg,
    plan: CallPlan,
    result: CallResult,
    clock: Callable[[], float],
) -> None:
    outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
    bridge_closed = asyncio.Event()

    async def writer() -> None:
        while (message := await outbox.get()) is not None:
            try:
                await ws.send(message)
            except ConnectionClosed:
                return
        with contextlib.suppress(ConnectionClosed):
            await ws.close()

    async def reader() -> None:
        try:
            async for message in ws:
                for reply in leg.receive(message, clock()):
                    if plan.echo_marks:
                        outbox.put_nowait(reply)
        except ConnectionClosed:
            pass
        finally:
            bridge_closed.set()

    async def ticker() -> None:
        """Caller audio every 20 ms, keys on time, playout and mark echoes, hang-up."""
        outbox.put_nowait(leg.connected())
        t0 = clock()
        result.started_at = t0
        outbox.put_nowait(leg.start())
        keys = sorted(plan.keys)
        raw = sorted(plan.raw, key=lambda item: item[0])
        frame = 0
        deadline = t0 + (plan.hangup_after if plan.hangup_after is not None else plan.max_duration)
        while not bridge_closed.is_set():
            now = clock()
            for reply in leg.advance(now):
                if plan.echo_marks:
                    outbox.put_nowait(reply)
            while keys and t0 + keys[0][0] <= now:
                _, digit = keys.pop(0)
                result.keys_sent.append((now, digit))
                outbox.put_nowait(leg.dtmf(digit))
            while raw and t0 + raw[0][0] <= now:
                outbox.put_nowait(raw.pop(0)[1])
            next_media = t0 + 0.020 * (frame + 1)
            if now >= next_media:
                frame += 1
                outbox.put_nowait(leg.media(SILENCE_FRAME, int(frame * 20)))
                continue
            if now >= deadline:
                result.hung_up = True
                outbox.put_nowait(leg.stop())
                return
            wake = min(next_media, deadline)
            due = leg.next_due()
            if due is not None:
                wake = min(wake, due)
            if keys:
                wake = min(wake, t0 + keys[0][0])
            if raw:
                wake = min(wake, t0 + raw[0][0])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - clock())):
                    await bridge_closed.wait()

    async with asyncio.TaskGroup() as tasks:
        write = tasks.create_task(writer())
        tasks.create_task(reader())
        await ticker()
        result.ended_at = clock()
        for reply in leg.advance(result.ended_at):
            outbox.put_nowait(reply)
        outbox.put_nowait(None)
        await write
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await bridge_closed.wait()


async def run_call_command(settings: Settings, args: argparse.Namespace) -> int:
    """``hamsa-bridge call``: one simulated call against the bridge at ``--url``."""
    token = settings.twilio_auth_token.get_secret_value()
    if not token:
        print(
            "hamsa-bridge call: set TWILIO_AUTH_TOKEN to the bridge's auth token to sign requests"
        )
        return 2
    plan = CallPlan(
        webhook_url=args.url,
        auth_token=token,
        from_number=args.from_number,
        to_number=args.to_number,
        keys=list(args.press),
        hangup_after=args.hangup_after,
        max_duration=args.max_duration,
        sign_handshake=not args.no_sign_handshake,
        connect_url=args.connect_url,
    )
    if settings.twilio_account_sid:
        plan.account_sid = settings.twilio_account_sid
    result = await place_call(plan)
    for line in result.timeline():
        print(line)
    if result.leg is None:
        return 1
    print(f"wav: {result.write_wav(args.out)}")
    return 0
