"""``serve``'s underrun warning says what it means and where to read on, and is logged only for
silence inside speech: never for the silence between two utterances (an IVR waiting for a key).
The bridge, the Hamsa emulator and the simulated caller on loopback."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from bridge.calls.call import UNDERRUN_DOC
from bridge.calls.context import CallContext
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import loopback
from tests.timing import assert_gapless, stall_watch

pytestmark = pytest.mark.anyio

LONG = "ع" * 50  # one sentence, 4 s of audio at the emulator's 80 ms a character
SLOW_START = EmulatorConfig(
    first_byte_delay=0.1, first_chunk_seconds=0.25, chunk_seconds=1.0, synthesis_speed=1.25
)
"""Played from its first byte, the caller hears the first frame and then silence."""


def underrun_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "playback_underruns"]


async def test_a_gap_inside_speech_is_logged_with_its_meaning() -> None:
    with structlog.testing.capture_logs() as logs:
        # the start policy off: the bridge plays Hamsa's first byte at once and runs dry
        async with loopback(SLOW_START, bridge_greeting=LONG, bridge_start_hold_max_ms=0) as rig:
            result = await rig.call()
    assert result.gaps(), "the caller heard no gap: the test proves nothing"
    [event] = underrun_events(logs)
    assert event["log_level"] == "warning"
    assert event["underruns"] >= 1
    assert len(event["gaps_ms"]) == event["underruns"]
    assert all(gap > 0 for gap in event["gaps_ms"])
    assert "silence inside speech" in event["meaning"]
    assert "Hamsa's audio arrived later than playback needed it" in event["meaning"]
    assert event["see"] == UNDERRUN_DOC == "docs/start-policy.md"


async def test_silence_between_utterances_is_not_an_underrun() -> None:
    async def prompt_then_wait(ctx: CallContext) -> None:
        await ctx.say("للمواعيد اضغط واحد.")
        await ctx.key(1.5)  # nobody presses anything: 1.5 s of silence
        await ctx.say("مع السلامة.")

    with structlog.testing.capture_logs() as logs:
        async with (
            loopback(EmulatorConfig(), script=prompt_then_wait) as rig,
            stall_watch() as watch,
        ):
            result = await rig.call()
    silences = [s for s in result.silences() if s.kind != "underrun"]
    assert [s.kind for s in silences] == ["between"]
    assert silences[0].duration >= 1.4
    # inside speech no gap, and no underrun nor its warning, unless the machine stalled
    assert_gapless(result, watch)
    [summary] = [e for e in logs if e["event"] == "call_summary"]
    assert len(underrun_events(logs)) == (summary["underruns"] > 0)
    assert watch.stalled or summary["underruns"] == 0
