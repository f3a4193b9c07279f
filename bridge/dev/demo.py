"""``hamsa-bridge demo``: a complete simulated phone call in one process, offline.

The Hamsa emulator (with its realistic latency model), the bridge and a simulated Twilio caller
run on loopback with throwaway credentials; the caller's webhook and stream handshake are signed
and checked exactly as in production. Prints the call's timeline and writes what the caller heard
to a WAV file. With ``--flow`` the call goes through the Twilio emulator too (an inbound call to
a number wired to the bridge), so IVR transfers are real REST updates.

The emulated Hamsa speaks the text with espeak-ng's Arabic voice when espeak-ng is installed,
else one tone per character (``--speech``); the demo says which.

Offline means loopback only: the flow's webhooks to other hosts (the clinic example's booking
system, ``https://clinic.example.com/…``) are neither resolved nor called; a stand-in on
loopback answers them 503, so the flow takes their fallback, as it would with the real system
down. BRIDGE_IVR_FLOW is ignored: only ``--flow`` runs a flow.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.calls.call import CallSummary
from bridge.dev.espeak import resolve_speech
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import loopback
from bridge.dev.media_leg import StreamResult
from bridge.dev.servers import serving
from bridge.ivr.flow import Flow, Webhook
from bridge.settings import Settings

OFFLINE_STATUS = 503
"""What the loopback stand-in answers for a flow's webhook to another host."""


async def run_demo(
    settings: Settings,
    *,
    out: Path,
    text: str | None = None,
    keys: list[tuple[float, str]] | None = None,
    fast: bool = False,
    model: str = "realistic",
    flow: str | None = None,
    answers: list[str] | None = None,
    speech: str = "auto",
) -> int:
    try:
        mode, speech_line = resolve_speech(speech)
    except ValueError as exc:
        print(f"hamsa-bridge demo: --speech {speech}: {exc}", file=sys.stderr)
        return 2
    emulator = EmulatorConfig() if fast else EmulatorConfig.model(model)
    emulator = dataclasses.replace(emulator, speech=mode)
    # Only --flow runs a flow: one in the environment might call anything.
    overrides: dict[str, Any] = {"bridge_ivr_flow": ""}
    if text:
        overrides["bridge_greeting"] = text
    ivr_flow: Flow | None = None
    if flow:
        from bridge.ivr.load import load_named_flow

        ivr_flow = load_named_flow(flow, source="--flow")  # its errors name the option typed
    lines: list[str] = []
    result: StreamResult | None
    stand_in = _OfflineWebhooks()
    async with (
        serving(stand_in.app) as stand_in_url,
        loopback(
            emulator,
            settings=settings,
            hamsa_preload_voices=(),
            twilio=bool(flow),
            # The production pool (HAMSA_WARM_CONNECTIONS, default 2): the call's first request goes
            # over a socket opened before the call, as in a running bridge.
            hamsa_warm_connections=settings.hamsa_warm_connections,
            ivr_flow=stand_in.offline(ivr_flow, stand_in_url) if ivr_flow is not None else None,
            **overrides,
        ) as rig,
    ):
        if rig.twilio is not None:
            sid = await rig.call_in(keys=keys or [], answers=answers or [])
            streams = rig.twilio.streams_for(sid)
            result = streams[0].result if streams else None
            call = rig.twilio.call(sid)
            lines.append(f"call {sid}: {call.info.status.value}")
            lines += [f"transferred to {', '.join(t.targets)}" for t in rig.twilio.transfers]
        else:
            result = await rig.call(keys=keys or [])
        records = {c.id: c for c in rig.hamsa.connections}
        used = {r.connection_id for r in rig.hamsa.requests}
        # With the warm pool the emulator also holds the pool's idle sockets and its refills:
        # count the sockets the call's requests went over.
        connections = len(used) if rig.bridge.warm_pool is not None else len(records)
        requests = len(rig.hamsa.requests)
        first_byte = rig.hamsa.requests[0].first_audio_at if rig.hamsa.requests else None
        first_socket = (
            records.get(rig.hamsa.requests[0].connection_id) if rig.hamsa.requests else None
        )
        pool = rig.bridge.warm_pool
        summaries = list(rig.bridge.recent_calls)
    print("hamsa-bridge demo: Hamsa emulator + bridge + simulated Twilio caller on loopback")
    print(f"  {speech_line}")
    if result is None:
        print("demo failed: the call never reached the stream")
        return 1
    for line in [*lines, *result.timeline()]:
        print("  " + line)
    for line in stand_in.report():
        print("  " + line)
    print(f"  hamsa: {connections} connection(s), {requests} request(s)")
    if pool is None:
        print(
            "  warm Hamsa sockets: off (HAMSA_WARM_CONNECTIONS=0): the call waited for the connect"
        )
    elif first_socket is not None and result.started_at is not None:
        ahead = result.started_at - first_socket.opened_at
        when = f"opened {ahead:.2f} s before the stream started" if ahead > 0 else "opened late"
        print(f"  warm Hamsa sockets: {pool.size}; the first request's socket was {when}")
    for line in start_policy_lines(summaries):
        print("  " + line)
    first_frame = result.leg.timeline.first_media_at if result.leg is not None else None
    if first_byte is not None and first_frame is not None:
        total = (first_frame - first_byte) * 1000
        held = first_hold_ms(summaries)
        print(
            f"  Hamsa's first byte → first frame: {total:.1f} ms = the start policy's hold "
            f"{held} ms + {total - held:.1f} ms added by the bridge"
        )
    if result.leg is None:
        print("demo failed: the call never reached the stream")
        return 1
    print(f"wav: {result.write_wav(out).resolve()}")
    return 0


class _OfflineWebhooks:
    """The loopback stand-in for a flow's webhooks to other hosts: answers each POST 503."""

    def __init__(self) -> None:
        self.urls: dict[str, Webhook] = {}
        """Node name → the node as the flow wrote it."""
        self.called: list[str] = []
        """The nodes whose webhook ran, in order."""

        async def answer(request: Request) -> Response:
            self.called.append(request.path_params["node"])
            return JSONResponse(
                {"error": "offline demo: this webhook's host is not called"},
                status_code=OFFLINE_STATUS,
            )

        self.app = Starlette(routes=[Route("/webhook/{node}", answer, methods=["POST"])])

    def offline(self, flow: Flow, base_url: str) -> Flow:
        """``flow`` with every webhook to a host other than loopback pointed at the stand-in."""
        nodes = dict(flow.nodes)
        for name, node in flow.nodes.items():
            if isinstance(node, Webhook) and not _loopback(node.url):
                self.urls[name] = node
                nodes[name] = dataclasses.replace(node, url=f"{base_url}/webhook/{name}")
        return dataclasses.replace(flow, nodes=nodes)

    def report(self) -> list[str]:
        """What became of the flow's webhooks to other hosts, one line per call of one."""
        lines: list[str] = []
        for name in self.called:
            node = self.urls[name]
            lines.append(
                f"webhook {name}: {node.url} not called (offline); the demo answered "
                f"{OFFLINE_STATUS}, so the flow took its fallback, {node.fallback}"
            )
        return lines


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_REASONS = {
    "immediate": "the first audio already covered the predicted wait",
    "covered": "the audio on hand then covered the predicted wait for the rest",
    "cap": "BRIDGE_START_HOLD_MAX_MS reached",
    "ended": "the whole reply had arrived",
}


def start_policy_lines(summaries: list[CallSummary]) -> list[str]:
    """What the start policy decided in the demo's call, one line per held sentence."""
    lines: list[str] = []
    for summary in summaries:
        holds = summary.details.get("start_holds")
        if not isinstance(holds, list):
            continue
        for hold in holds:
            again = " again (the playout had run dry)" if hold["rebuffer"] else ""
            lines.append(
                f"start policy: sentence {hold['sentence']} held{again} {hold['held_ms']} ms "
                f"({_REASONS.get(hold['reason'], hold['reason'])})"
            )
    return lines


def first_hold_ms(summaries: list[CallSummary]) -> int:
    """How long the start policy held the first sentence of the demo's call (0 if not held)."""
    for summary in summaries:
        holds = summary.details.get("start_holds")
        if isinstance(holds, list) and holds:
            return int(holds[0]["held_ms"])
    return 0
