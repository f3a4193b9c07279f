"""Speech at an IVR menu or gather, end to end on loopback: the simulated caller ↔ the bridge
running the flow ↔ the Hamsa emulator, over real sockets.

The caller answers each prompt that waits for input (``CallerBehaviour.answers``): keys, or
``say:PHRASE`` spoken as tone audio on its media stream; the bridge cuts the utterance out,
sends it to the emulator's speech-to-text on the call's one Hamsa socket, and the emulator hears
the tones back as text. So each test runs the whole path: the caller's μ-law, the detector, the
``stt`` request, the transcript, the node's decision (``bridge.ivr.answers``, unit-tested in
``tests/test_ivr_answers.py``) and what the flow says next.

What a test reads: the prompts heard (marks), the Hamsa emulator's requests in the order they
arrived (TTS texts and STT requests: a node speaks, then listens), the log lines the flow writes
(``ivr_summary``, ``ivr_retry``, ``ivr_speech_fallback``) and the call's summary.

Timing: the caller answers 0.3 s after a prompt ended and speaks 80 ms a character; each
node's ``timeout`` only bounds the wait for the *start* of an answer, and leaves a busy machine
several times ``tests.timing.LATE`` past that. Nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from bridge.dev.caller import CallResult
from bridge.dev.hamsa_emulator import EmulatorConfig, SttFault, SttRecord
from bridge.dev.loopback import loopback
from bridge.dev.tone import synthesize
from tests.test_e2e_ivr import FAST
from tests.timing import HANG, LATE

pytestmark = pytest.mark.anyio

# What each node says: short, so calls are quick (25 ms of audio a character).
PROMPT = "اختر."
KEYS_PROMPT = "اضغط."
INVALID = "خطأ."
NO_INPUT = "لم نسمع."
GATHER = "الرقم؟"
GATHER_KEYS = "اكتب الرقم."
GATHER_INVALID = "رقم خطأ."
HOURS = "الدوام."
BYE = "وداعا."

TIMEOUT = 2.5
"""A node's wait for the start of an answer: the caller starts 0.3 s after the prompt ended and
the detector needs ~160 ms of voice; the rest is room for a busy machine."""
assert TIMEOUT >= 0.3 + 0.2 + 2 * LATE

FLOW = f"""
[flow]
name = "speech"
start = "menu"

[nodes.menu]
type = "menu"
input = INPUT
prompt = "{PROMPT}"
keys_prompt = "{KEYS_PROMPT}"
invalid = "{INVALID}"
no_input = "{NO_INPUT}"
timeout = {TIMEOUT}
retries = 1
on_failure = "bye"

[nodes.menu.options]
"1" = {{ next = "ask", say = ["موعدي", "appointment"] }}
"2" = {{ next = "hours", say = ["المواعيد", "hours"] }}
"9" = "menu"

[nodes.ask]
type = "gather"
input = INPUT
prompt = "{GATHER}"
keys_prompt = "{GATHER_KEYS}"
store = "file"
num_digits = 3
invalid = "{GATHER_INVALID}"
timeout = {TIMEOUT}
inter_digit_timeout = 1.0
retries = 1
next = "done"
on_failure = "bye"

[nodes.hours]
type = "hangup"
text = "{HOURS}"

[nodes.done]
type = "hangup"
text = "رقمك {{file}}."

[nodes.bye]
type = "hangup"
text = "{BYE}"
"""

BOTH = '["dtmf", "speech"]'
SPEECH_ONLY = '["speech"]'

KEYS_ONLY = f"""
[flow]
name = "keys"
start = "menu"

[nodes.menu]
type = "menu"
prompt = "{PROMPT}"
options = {{ "1" = "ask", "2" = "hours" }}
invalid = "{INVALID}"
timeout = {TIMEOUT}
retries = 1
on_failure = "hours"

[nodes.ask]
type = "gather"
prompt = "{GATHER}"
store = "file"
num_digits = 3
timeout = {TIMEOUT}
inter_digit_timeout = 1.0
next = "done"

[nodes.hours]
type = "hangup"
text = "{HOURS}"

[nodes.done]
type = "hangup"
text = "رقمك {{file}}."
"""


def stt(heard: str) -> str:
    """An ``stt`` request in :attr:`Call.hamsa`, by what the emulator heard in it."""
    return f"stt: {heard}"


@dataclass
class Call:
    """One call through a flow, and what every side recorded of it."""

    result: CallResult
    logs: list[MutableMapping[str, Any]]
    hamsa: list[str]
    """The Hamsa emulator's requests in the order they arrived: a TTS request's text, an STT
    request as ``stt: <what the emulator heard>`` (``stt: <fault>`` for an injected fault)."""
    sockets: list[int]
    """The Hamsa connection (1, 2, …) each of :attr:`hamsa` came on."""
    stt: list[SttRecord]
    connections: int
    utterances: float
    """The bridge's ``speech_utterances_total``: utterances it cut out (sent or not)."""
    matches: dict[str, float]
    """The bridge's ``speech_matches_total`` by result."""

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.logs if e["event"] == name]

    @property
    def summary(self) -> MutableMapping[str, Any]:
        [line] = self.events("ivr_summary")
        return line

    @property
    def details(self) -> dict[str, Any]:
        [line] = self.events("call_summary")
        details: dict[str, Any] = line["details"]
        return details

    @property
    def marks(self) -> list[str]:
        """Each prompt sent to the caller, as ``kind:node`` (one mark per prompt)."""
        assert self.result.leg is not None
        return [m.name.rsplit(":", 1)[0] for m in self.result.leg.timeline.marks]

    def retries(self) -> list[dict[str, Any]]:
        keep = ("node", "failures", "via", "match", "key", "entered")
        return [{k: e[k] for k in keep if k in e} for e in self.events("ivr_retry")]


async def call(
    tmp_path: Path,
    answers: Sequence[str] = (),
    *,
    flow: str = FLOW,
    input: str = BOTH,
    emulator: EmulatorConfig | None = None,
    speech: Sequence[tuple[float, bytes]] = (),
    **settings: Any,
) -> Call:
    """Run one call through ``flow`` (``INPUT`` replaced by ``input``) on a fresh loopback."""
    path = tmp_path / "flow.toml"
    path.write_text(flow.replace("INPUT", input), encoding="utf-8")
    emulator = emulator or EmulatorConfig(ms_per_char=25)
    async with loopback(emulator, bridge_ivr_flow=str(path), **{**FAST, **settings}) as rig:
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(HANG):
                result = await rig.call(
                    answers=list(answers), speech=list(speech), max_duration=HANG
                )
        requests = sorted(
            [*rig.hamsa.requests, *rig.hamsa.stt_requests], key=lambda record: record.number
        )
        registry = rig.bridge.metrics.registry
        return Call(
            result=result,
            logs=logs,
            hamsa=[
                stt(r.recognized if r.fault is None else r.fault.value)
                if isinstance(r, SttRecord)
                else str(r.text)
                for r in requests
            ],
            sockets=[r.connection_id for r in requests],
            stt=list(rig.hamsa.stt_requests),
            connections=len(rig.hamsa.connections),
            utterances=sum(
                registry.get_sample_value("hamsa_bridge_speech_utterances_total", {"end": end})
                or 0.0
                for end in ("silence", "cut")
            ),
            matches={
                name: value
                for name in ("matched", "no_match", "digits", "invalid")
                if (
                    value := registry.get_sample_value(
                        "hamsa_bridge_speech_matches_total", {"result": name}
                    )
                )
            },
        )


# --- a menu --------------------------------------------------------------------------------------


@pytest.mark.parametrize("phrase", ["المواعيد", "hours please"])
async def test_a_spoken_phrase_reaches_its_option(tmp_path: Path, phrase: str) -> None:
    c = await call(tmp_path, [f"say:{phrase}"])
    assert c.result.prompts() == ["menu", "hours"]
    assert c.hamsa == [PROMPT, stt(phrase), HOURS]  # spoke, listened, spoke: in that order
    assert c.connections == 1  # the prompts and the transcript on the call's one socket
    assert c.summary["speech"] == "menu:matched"
    assert c.summary["keys"] == ""
    assert c.details["speech"] == {"utterances": 1, "transcribed": 1}
    assert c.matches == {"matched": 1}
    assert c.result.close_code == 1000


async def test_a_key_still_answers_a_speech_menu(tmp_path: Path) -> None:
    c = await call(tmp_path, ["2"])
    assert c.result.prompts() == ["menu", "hours"]
    assert c.hamsa == [PROMPT, HOURS]
    assert c.connections == 1
    assert c.summary["keys"] == "2"
    assert c.summary["speech"] == ""  # a key is no speech result
    assert c.details["speech"] == {"utterances": 0, "transcribed": 0}  # the call did listen


@pytest.mark.parametrize(
    ("second", "end", "results"),
    [
        ("say:hours", "hours", "menu:no_match menu:matched"),
        ("say:شكرا", "bye", "menu:no_match menu:no_match"),  # the retry spent: on_failure
    ],
)
async def test_a_phrase_of_no_option_is_the_invalid_prompt_and_a_retry(
    tmp_path: Path, second: str, end: str, results: str
) -> None:
    # the menu's prompt; "مرحبا"; the invalid prompt (nothing said); the prompt again; `second`
    c = await call(tmp_path, ["say:مرحبا", "", second])
    assert c.marks == ["menu:menu", "menu:menu", "menu:menu", f"hangup:{end}"]
    # the prompt said again came from the call's prompt cache: no second TTS request
    assert c.hamsa == [
        PROMPT,
        stt("مرحبا"),
        INVALID,
        stt(second[4:]),
        HOURS if end == "hours" else BYE,
    ]
    assert c.connections == 1
    assert c.summary["speech"] == results
    retries = [{"node": "menu", "failures": 1, "via": "speech", "match": "no_match"}]
    if end == "bye":  # a no-match is a failure like an invalid key: retries = 1, then give up
        retries.append({"node": "menu", "failures": 2, "via": "speech", "match": "no_match"})
    assert c.retries() == retries


async def test_silence_is_the_no_input_prompt_a_retry_then_on_failure(tmp_path: Path) -> None:
    c = await call(tmp_path)
    assert c.marks == ["menu:menu", "menu:menu", "menu:menu", "hangup:bye"]
    assert c.hamsa == [PROMPT, NO_INPUT, BYE]  # the prompt again came from the cache
    assert c.stt == []
    assert c.connections == 1
    assert c.retries() == [
        {"node": "menu", "failures": 1, "via": "none", "key": None},
        {"node": "menu", "failures": 2, "via": "none", "key": None},
    ]
    assert c.summary["speech"] == ""


# --- speech-to-text failing: keys for the rest of the visit --------------------------------------


async def test_an_stt_error_falls_back_to_keys_without_counting_a_failure(
    tmp_path: Path,
) -> None:
    emulator = EmulatorConfig(ms_per_char=25, stt_faults={1: SttFault.ERROR})
    # spoken (error) → the keys prompt; spoken again: not heard, the node waits for keys only,
    # so its timeout runs out (no input) → the no-input prompt → the keys prompt again (no
    # speech since the fallback) → a wrong key → on_failure
    c = await call(tmp_path, ["say:المواعيد", "say:المواعيد", "", "5"], emulator=emulator)
    assert c.hamsa == [PROMPT, stt("error"), KEYS_PROMPT, NO_INPUT, BYE]  # one stt request
    assert c.marks == ["menu:menu"] * 4 + ["hangup:bye"]  # prompt, keys, no input, keys
    assert c.utterances == 2  # the second utterance was cut out, and never sent
    [fallback] = c.events("ivr_speech_fallback")
    assert (fallback["node"], fallback["reason"]) == ("menu", "error")
    # the fallback was no failure: the silence is the first (were it one, the silence would have
    # been the second and ended the menu at once: retries = 1), the wrong key the second
    assert c.retries() == [
        {"node": "menu", "failures": 1, "via": "none", "key": None},
        {"node": "menu", "failures": 2, "key": "5"},
    ]
    assert c.summary["speech"] == "menu:fallback"
    # an error frame ends the request and leaves nothing behind it: unlike after a TTS error,
    # the call keeps its one socket (docs/hamsa-ws.md §10.2)
    assert c.sockets == [1, 1, 1, 1, 1]
    assert c.connections == 1
    assert c.details["speech"] == {"utterances": 2, "transcribed": 1}


async def test_thinking_past_the_stt_timeout_falls_back_to_keys(tmp_path: Path) -> None:
    emulator = EmulatorConfig(ms_per_char=25, stt_faults={1: SttFault.THINKING})
    c = await call(
        tmp_path,
        ["say:المواعيد", "2"],
        emulator=emulator,
        hamsa_stt_timeout=1.0,
        hamsa_drain_timeout=0.2,
    )
    assert c.hamsa == [PROMPT, stt("thinking"), KEYS_PROMPT, HOURS]
    assert c.result.prompts() == ["menu", "hours"]
    [fallback] = c.events("ivr_speech_fallback")
    assert fallback["reason"] == "thinking"
    assert c.retries() == []
    assert c.summary["speech"] == "menu:fallback"
    # [THINKING] and nothing more: the request never ends, so its socket cannot carry the next
    # one (an answer arriving late would be taken for the next request's): the keys prompt
    # went on a fresh socket after HAMSA_DRAIN_TIMEOUT, and the first was closed by the bridge
    assert c.sockets == [1, 1, 2, 2]
    assert c.connections == 2


async def test_the_fallback_lasts_for_that_visit_only(tmp_path: Path) -> None:
    emulator = EmulatorConfig(ms_per_char=25, stt_faults={1: SttFault.ERROR})
    # spoken (error) → keys prompt; "9" comes back to the menu: a new visit listens again
    c = await call(tmp_path, ["say:المواعيد", "9", "say:المواعيد"], emulator=emulator)
    assert c.summary["path"] == "menu > menu > hours"
    assert c.hamsa == [PROMPT, stt("error"), KEYS_PROMPT, stt("المواعيد"), HOURS]
    assert c.summary["speech"] == "menu:fallback menu:matched"
    assert c.sockets == [1, 1, 1, 1, 1]  # an STT error keeps the socket (docs/hamsa-ws.md §10.2)


# --- a gather ------------------------------------------------------------------------------------


async def test_a_gather_reads_spoken_digits_and_stores_them(tmp_path: Path) -> None:
    c = await call(tmp_path, ["say:موعدي", "say:واحد اثنين ثلاثة"])
    assert c.result.prompts() == ["menu", "ask", "done"]
    assert c.hamsa == [PROMPT, stt("موعدي"), GATHER, stt("واحد اثنين ثلاثة"), "رقمك 123."]
    assert c.summary["speech"] == "menu:matched ask:digits"
    assert c.matches == {"matched": 1, "digits": 1}
    assert c.connections == 1


async def test_invalid_spoken_digits_are_the_invalid_prompt_and_a_retry(tmp_path: Path) -> None:
    # one digit of three; the invalid prompt (nothing said); the prompt again; digits in three
    # scripts
    c = await call(tmp_path, ["say:موعدي", "say:واحد", "", "say:٤ خمسة six"])
    assert c.hamsa == [
        PROMPT,
        stt("موعدي"),
        GATHER,
        stt("واحد"),
        GATHER_INVALID,
        stt("٤ خمسة six"),
        "رقمك 456.",
    ]
    assert c.marks == ["menu:menu", "gather:ask", "gather:ask", "gather:ask", "hangup:done"]
    assert c.retries() == [{"node": "ask", "failures": 1, "via": "speech", "match": "invalid"}]
    assert c.summary["speech"] == "menu:matched ask:invalid ask:digits"
    assert c.connections == 1


async def test_a_gather_takes_its_first_key_in_the_speech_wait_and_the_rest_as_keys(
    tmp_path: Path,
) -> None:
    c = await call(tmp_path, ["1", "123"])
    assert c.result.prompts() == ["menu", "ask", "done"]
    assert c.hamsa == [PROMPT, GATHER, "رقمك 123."]
    assert c.summary["keys"] == "1123"
    assert c.summary["speech"] == ""
    assert c.stt == []
    assert c.connections == 1


# --- a node that takes speech only ---------------------------------------------------------------


async def test_a_speech_only_menu_ignores_keys(tmp_path: Path) -> None:
    # "1" (option ask) pressed while the menu listens does not answer it, nor end its wait:
    # the timeout runs out (no input), and what is said after the prompt again answers
    c = await call(tmp_path, ["1", "", "say:hours"], input=SPEECH_ONLY)
    assert c.summary["path"] == "menu > hours"
    assert c.summary["keys"] == "1"  # pressed (and heard by the bridge), ignored
    assert c.hamsa == [PROMPT, NO_INPUT, stt("hours"), HOURS]
    assert c.retries() == [{"node": "menu", "failures": 1, "via": "none", "key": None}]
    assert c.summary["speech"] == "menu:matched"
    assert c.connections == 1


async def test_a_speech_only_node_takes_keys_after_the_fallback(tmp_path: Path) -> None:
    emulator = EmulatorConfig(ms_per_char=25, stt_faults={1: SttFault.ERROR})
    # spoken (error) → keys prompt → "1" answers it; the gather (speech only) listens again
    c = await call(
        tmp_path, ["say:hours", "1", "say:واحد اثنين ثلاثة"], input=SPEECH_ONLY, emulator=emulator
    )
    assert c.summary["path"] == "menu > ask > done"
    assert c.hamsa == [
        PROMPT,
        stt("error"),
        KEYS_PROMPT,
        GATHER,
        stt("واحد اثنين ثلاثة"),
        "رقمك 123.",
    ]
    assert c.summary["speech"] == "menu:fallback ask:digits"
    assert c.sockets == [1, 1, 1, 1, 1, 1]  # an STT error keeps the socket (docs/hamsa-ws.md §10.2)


# --- voice barge-in ------------------------------------------------------------------------------

LONG_PROMPT = "اختر من القائمة، " * 7
"""About 3 s of audio: the caller's voice surely starts while it plays."""


@pytest.mark.parametrize("barge_in", [True, False])
async def test_speech_over_a_prompt_answers_it_only_with_speech_barge_in(
    tmp_path: Path, barge_in: bool
) -> None:
    flow = FLOW.replace(f'prompt = "{PROMPT}"', f'prompt = "{LONG_PROMPT}"', 1).replace(
        'on_failure = "bye"', f'on_failure = "bye"\nspeech_barge_in = {str(barge_in).lower()}', 1
    )
    # a wrong key, so the invalid prompt ends just before the long prompt is said again; the
    # caller speaks 0.3 s after the invalid prompt ended: over the long prompt; then "2"
    c = await call(tmp_path, ["7", "say:المواعيد", "2"], flow=flow)
    assert c.result.leg is not None
    assert c.summary["path"] == "menu > hours"
    assert c.utterances == 1  # the caller's one utterance, cut out either way
    if barge_in:
        assert len(c.result.leg.timeline.clears) == 1  # the voice interrupted the prompt
        assert [r.recognized for r in c.stt] == ["المواعيد"]  # and was the answer
        assert c.summary["speech"] == "menu:matched"
        assert c.summary["keys"] == "7"
    else:
        assert c.result.leg.timeline.clears == []  # the prompt played to its end
        assert c.stt == []  # what was said over it was never sent
        assert c.summary["speech"] == ""
        assert c.summary["keys"] == "72"
    assert c.connections == 1


# --- keys-only flows, and what the logs say ------------------------------------------------------


async def test_a_keys_only_flow_never_listens(tmp_path: Path) -> None:
    said = [(0.1, synthesize("المواعيد", mulaw=True))]  # the caller talks over the first prompt
    c = await call(tmp_path, ["1", "123"], flow=KEYS_ONLY, speech=said)
    assert c.result.prompts() == ["menu", "ask", "done"]
    assert c.hamsa == [PROMPT, GATHER, "رقمك 123."]  # no stt request
    assert c.utterances == 0  # the caller's audio was never even decoded
    assert "speech" not in c.details
    assert "speech" not in c.summary
    assert c.summary["keys"] == "1123"
    assert c.connections == 1


async def test_the_summary_says_the_match_results_and_never_the_transcript(
    tmp_path: Path,
) -> None:
    secret = "رقمي السري المواعيد"  # names option 2, among words of the caller's own
    c = await call(tmp_path, ["say:no idea", "", f"say:{secret}"])
    assert c.hamsa == [PROMPT, stt("no idea"), INVALID, stt(secret), HOURS]
    assert c.summary["speech"] == "menu:no_match menu:matched"
    assert c.retries() == [{"node": "menu", "failures": 1, "via": "speech", "match": "no_match"}]
    assert c.connections == 1
    # what was heard reaches the debug log only
    heard = [(e["log_level"], e["text"]) for e in c.events("ivr_heard")]
    assert heard == [("debug", "no idea"), ("debug", secret)]
    above_debug = [e for e in c.logs if e["log_level"] != "debug"]
    assert above_debug
    for entry in above_debug:
        for words in ("no idea", secret, "السري"):
            assert words not in repr(entry), entry
