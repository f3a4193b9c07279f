"""``hamsa-bridge demo``: a complete simulated phone call in one process, offline.

The Hamsa emulator (with its realistic latency model), the bridge and a simulated Twilio caller
run on loopback with throwaway credentials; the caller's webhook and stream handshake are signed
and checked exactly as in production. Prints the call's timeline and writes what the caller heard
to a WAV file. With ``--flow`` the call goes through the Twilio emulator too (an inbound call to
a number wired to the bridge), so IVR transfers are real REST updates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.calls.call import CallSummary
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import loopback
from bridge.dev.media_leg import StreamResult
from bridge.settings import Settings


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
) -> int:
    emulator = EmulatorConfig() if fast else EmulatorConfig.model(model)
    overrides: dict[str, Any] = {"bridge_greeting": text} if text else {}
    if flow:
        from bridge.ivr.load import load_named_flow

        load_named_flow(flow, source="--flow")  # its errors name the option the user typed
        overrides["bridge_ivr_flow"] = flow
    lines: list[str] = []
    result: StreamResult | None
    async with loopback(
        emulator,
        settings=settings,
        hamsa_preload_voices=(),
        twilio=bool(flow),
        # The production pool (HAMSA_WARM_CONNECTIONS, default 2): the call's first request goes
        # over a socket opened before the call, as in a running bridge.
        hamsa_warm_connections=settings.hamsa_warm_connections,
        **overrides,
    ) as rig:
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
    if result is None:
        print("demo failed: the call never reached the stream")
        return 1
    for line in [*lines, *result.timeline()]:
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
