"""Speech input through a whole call: the simulated caller speaks on its media stream, the
bridge's call decodes it (only for a script that ``Listens``), cuts it into utterances and asks
for transcripts; the script hears them through ``next_input`` and may be interrupted by them.

Hamsa's speech-to-text is the emulator's: it hears the caller's tones back as text
(``bridge.dev.stt_tones``), so the phrase goes through the whole path: μ-law on the stream, the
detector, the 16 kHz WAV, the ``stt`` request on the call's one socket, the transcript.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog.testing

from bridge.calls.context import CallContext, Heard
from bridge.calls.speech import SpeechOutcome
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import loopback
from bridge.dev.tone import synthesize
from tests.timing import HANG

pytestmark = pytest.mark.anyio

PHRASE = "المواعيد"
SHORT_PROMPT = "اختر من القائمة."
LONG_PROMPT = "مرحبا بك في عيادة همسة، " * 8


class ListeningScript:
    """Says a prompt that waits for input, then listens; records what it got (the test's
    own list: the transcript never goes into the call's summary)."""

    def __init__(self, prompt: str, *, speech_barge_in: bool, within: float = 8.0) -> None:
        self.prompt = prompt
        self.speech_barge_in = speech_barge_in
        self.within = within
        self.said: list[SpeechOutcome] = []
        self.got: list[object] = []

    def takes_speech(self, ctx: CallContext) -> bool:
        return True

    async def __call__(self, ctx: CallContext) -> None:
        self.said.append(
            await ctx.say(self.prompt, label="menu:start", speech_barge_in=self.speech_barge_in)
        )
        answer = await ctx.next_input(self.within, speech=True)
        self.got.append(answer)
        ctx.details["answer"] = type(answer).__name__
        ctx.outcome = "completed"


def summary(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    [line] = [line for line in logs if line["event"] == "call_summary"]
    return line


def metric(rig: Any, name: str, **labels: str) -> float:
    value = rig.bridge.metrics.registry.get_sample_value(f"hamsa_bridge_{name}", labels)
    return float(value or 0.0)


async def test_the_caller_answers_a_prompt_by_voice() -> None:
    script = ListeningScript(SHORT_PROMPT, speech_barge_in=False)
    async with loopback(EmulatorConfig(), script=script) as rig:
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(HANG):
                result = await rig.call(answers=[f"say:{PHRASE}"], max_duration=HANG)
        requests = metric(rig, "stt_requests_total")
        heard = metric(rig, "stt_results_total", outcome="text")
        stt = list(rig.hamsa.stt_requests)
        connections = len(rig.hamsa.connections)
    assert script.said == [SpeechOutcome.PLAYED]
    assert script.got == [Heard(PHRASE)]
    assert [r.recognized for r in stt] == [PHRASE]
    assert connections == 1  # the prompt and the transcript on the call's one socket
    assert (requests, heard) == (1, 1)
    assert len(result.speech_sent) == 1
    line = summary(logs)
    assert line["details"]["speech"] == {"utterances": 1, "transcribed": 1}
    assert line["details"]["answer"] == "Heard"
    assert all(PHRASE not in repr(e) for e in logs if e["log_level"] != "debug")


@pytest.mark.parametrize("barge_in", [True, False])
async def test_speech_over_a_prompt_interrupts_it_only_with_speech_barge_in(
    barge_in: bool,
) -> None:
    script = ListeningScript(LONG_PROMPT, speech_barge_in=barge_in, within=0.5)
    speech = [(1.5, synthesize(PHRASE, mulaw=True))]
    async with loopback(EmulatorConfig(), script=script) as rig:
        async with asyncio.timeout(HANG):
            result = await rig.call(speech=speech, max_duration=HANG)
        utterances = metric(rig, "speech_utterances_total", end="silence")
        stt = list(rig.hamsa.stt_requests)
    assert result.leg is not None
    assert utterances == 1
    if barge_in:
        assert script.said == [SpeechOutcome.INTERRUPTED]
        assert len(result.leg.timeline.clears) == 1
        (clear,) = result.leg.timeline.clears
        (spoke_at, _) = result.speech_sent[0]
        # after the caller began (how long after is the start rule's, 8 voiced frames of 10:
        # tests/test_speech_utterances.py; a stalled caller may send its frames in a burst)
        assert clear.at > spoke_at
        assert script.got == [Heard(PHRASE)]  # the utterance that interrupted is the answer
        assert [r.recognized for r in stt] == [PHRASE]
    else:
        assert script.said == [SpeechOutcome.PLAYED]
        assert result.leg.timeline.clears == []
        assert script.got == [None]  # nothing said while it listened
        assert stt == []  # speech over the prompt was never sent


async def test_a_call_whose_script_does_not_listen_never_decodes_the_caller() -> None:
    speech = [(0.2, synthesize(PHRASE, mulaw=True))]
    async with loopback(EmulatorConfig(), bridge_greeting=SHORT_PROMPT) as rig:
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(HANG):
                await rig.call(speech=speech, max_duration=HANG)
        utterances = metric(rig, "speech_utterances_total", end="silence")
        stt = list(rig.hamsa.stt_requests)
    assert utterances == 0
    assert "speech" not in summary(logs)["details"]
    assert stt == []
