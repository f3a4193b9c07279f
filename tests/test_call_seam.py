"""The seam between the call and its features (``bridge.calls.context``): the context module
stands alone, and a feature of one's own plugs in through ``create_app`` like the bridge's own
(greeting, IVR, announcements), with the call's checks applying to it too."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import pytest
import structlog.testing

from bridge.calls.context import Admission, CallContext, Rejection
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import Loopback, loopback
from bridge.dev.media_leg import CallerBehaviour, run_media_stream
from bridge.protocols.twilio_stream_server import Started
from tests.timing import HANG

pytestmark = pytest.mark.anyio

GREETING = "مرحبا بك."
OWN_WORDS = "أهلا من ميزة أخرى."
BLOCKED = "+966500000666"
HEAVY = ("starlette", "bridge.store", "bridge.app", "bridge.calls.call")
FEATURES = ("bridge.announcements", "bridge.ivr", "bridge.campaigns")


def modules_after_import(module: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter once it imported ``module`` alone."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(out.stdout)
    return loaded


def loaded_from(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


def test_the_call_context_imports_no_web_framework_store_or_feature() -> None:
    modules = modules_after_import("bridge.calls.context")
    assert "bridge.calls.context" in modules
    assert loaded_from(modules, HEAVY + FEATURES + ("websockets",)) == []


def test_the_ivr_runner_imports_neither_the_call_nor_the_store_nor_announcements() -> None:
    modules = modules_after_import("bridge.ivr.runner")
    assert loaded_from(modules, HEAVY + ("bridge.announcements", "bridge.campaigns")) == []


# --- a feature of one's own -------------------------------------------------------------------


class Blocklist:
    """Refuses the streams of calls from these numbers; leaves every other to the next hook.

    (``from`` is not MACed: refusing on it is safe, admitting on it would not be.)"""

    def __init__(self, *numbers: str) -> None:
        self.numbers = set(numbers)
        self.asked = 0

    def admit(self, start: Started) -> Admission | Rejection | None:
        self.asked += 1
        if start.custom_parameters.get("from") in self.numbers:
            return Rejection("caller blocked")
        return None


class Passes:
    """Admits streams of kind ``pass`` whose token is ``pass-<CallSid>`` and speaks its own words.

    A toy credential, to exercise the seam: a real feature verifies a MAC."""

    def __init__(self) -> None:
        self.closed = False

    def admit(self, start: Started) -> Admission | Rejection | None:
        params = start.custom_parameters
        if params.get("kind") != "pass":
            return None
        token = params.get("token", "")
        if token != f"pass-{start.call_sid}":
            return Rejection.token("not a pass for this call")
        return Admission(self.speak, token, time.time() + 60, call_started={"direction": "pass"})

    async def speak(self, ctx: CallContext) -> None:
        await ctx.say(OWN_WORDS)
        ctx.outcome, ctx.reason = "completed", "own words said"

    async def aclose(self) -> None:
        self.closed = True


@contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        yield logs


def calls_total(rig: Loopback, outcome: str) -> float:
    value = rig.bridge.metrics.registry.get_sample_value(
        "hamsa_bridge_calls_total", {"outcome": outcome}
    )
    return value or 0.0


async def stream(rig: Loopback, call_sid: str, params: dict[str, str]) -> int | None:
    """Open the bridge's stream as Twilio would (signed handshake); the close code."""
    result = await run_media_stream(
        rig.settings.stream_url,
        params,
        auth_token=rig.auth_token,
        call_sid=call_sid,
        account_sid="AC" + secrets.token_hex(16),
        stream_sid="MZ" + secrets.token_hex(16),
        behaviour=CallerBehaviour(max_duration=10),
    )
    assert result.leg is not None
    return result.close_code


async def test_a_hook_of_ones_own_refuses_a_stream_before_anything_is_allocated() -> None:
    blocklist = Blocklist(BLOCKED)
    async with loopback(EmulatorConfig(), admission=[blocklist], bridge_greeting=GREETING) as rig:
        with captured_logs() as logs:
            blocked = await rig.call(from_number=BLOCKED)
            async with asyncio.timeout(HANG):
                await rig.bridge.streams.wait_empty()
            connections = len(rig.hamsa.connections)
            other = await rig.call()
            async with asyncio.timeout(HANG):
                await rig.bridge.streams.wait_empty()
        rejected = calls_total(rig, "rejected")
        completed = calls_total(rig, "completed")
    assert blocked.close_code == 1008
    assert blocked.leg is not None
    assert blocked.leg.received == b""
    assert connections == 0  # no Hamsa socket for the refused stream
    [line] = [e for e in logs if e["event"] == "stream_rejected"]
    assert (line["reason"], line["call_sid"]) == ("caller blocked", blocked.plan.call_sid)
    assert rejected == 1
    # any other stream goes on to the bridge's own hooks: the greeting plays
    assert blocklist.asked == 2
    assert other.close_code == 1000
    assert other.leg is not None
    assert len(other.leg.received) > 0
    assert completed == 1


async def test_a_hook_of_ones_own_admits_a_stream_under_the_calls_own_checks() -> None:
    passes = Passes()
    async with loopback(EmulatorConfig(), admission=[passes], bridge_greeting=GREETING) as rig:
        call_sid = "CA" + secrets.token_hex(16)
        with captured_logs() as logs:
            admitted = await stream(rig, call_sid, {"kind": "pass", "token": f"pass-{call_sid}"})
            replayed = await stream(rig, call_sid, {"kind": "pass", "token": f"pass-{call_sid}"})
            forged = await stream(rig, "CA" + secrets.token_hex(16), {"kind": "pass", "token": "x"})
            # the bridge's own hooks still answer for streams that are not passes
            unknown = await stream(rig, "CA" + secrets.token_hex(16), {"token": "v1.1.x.y"})
            async with asyncio.timeout(HANG):
                await rig.bridge.streams.wait_empty()
        said = [r.text for r in rig.hamsa.requests]
        closed_while_serving = passes.closed
    assert admitted == 1000
    assert said == [OWN_WORDS]
    [started] = [e for e in logs if e["event"] == "call_started"]
    assert (started["direction"], started["call_sid"]) == ("pass", call_sid)
    [summary] = [e for e in logs if e["event"] == "call_summary"]
    assert (summary["outcome"], summary["reason"]) == ("completed", "own words said")
    assert (replayed, forged, unknown) == (1008, 1008, 1008)
    reasons = [e["reason"] for e in logs if e["event"] == "stream_rejected"]
    assert reasons == [
        "stream token already used (replay)",  # the call's single-use check applies to it too
        "stream token rejected: not a pass for this call",
        "stream token rejected: stream token malformed",
    ]
    assert not closed_while_serving
    assert passes.closed  # the app closed its hook at shutdown
