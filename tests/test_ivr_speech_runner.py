"""Speech at a menu or gather: the pure decisions (``bridge.ivr.answers``) and the runner driven by
a scripted context (what the caller answers at each wait; what the node says and how)."""

from __future__ import annotations

import tomllib
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
import structlog

from bridge.calls.context import CallContext, Heard, Input, NotUnderstood
from bridge.calls.speech import SpeechOutcome
from bridge.ivr.answers import Answer, gather_answer, gather_valid, menu_answer
from bridge.ivr.flow import Gather, Menu
from bridge.ivr.load import parse_flow
from bridge.ivr.runner import FlowRunner
from bridge.voice import Voice

pytestmark = pytest.mark.anyio

FLOW = """
[flow]
name = "speech"
start = "menu"

[nodes.menu]
type = "menu"
input = {input}
prompt = "P"
keys_prompt = "K"
invalid = "I"
no_input = "N"
timeout = 4
retries = 1
on_failure = "bye"
speech_barge_in = true

[nodes.menu.options]
"1" = {{ next = "ask", say = ["موعدي", "appointment"] }}
"2" = {{ next = "hours", say = ["المواعيد", "hours"] }}

[nodes.ask]
type = "gather"
input = {input}
prompt = "G"
keys_prompt = "GK"
store = "file"
num_digits = 3
pattern = "[0-9]{{3}}"
invalid = "GI"
timeout = 6
retries = 1
next = "done"
on_failure = "bye"

[nodes.hours]
type = "hangup"
text = "H"

[nodes.done]
type = "hangup"
text = "D {{file}}"

[nodes.bye]
type = "hangup"
text = "B"
"""

KEYS_ONLY = """
[flow]
start = "menu"

[nodes.menu]
type = "menu"
prompt = "P"
options = { "1" = "ask", "2" = "hours" }
invalid = "I"
retries = 1
on_failure = "hours"

[nodes.ask]
type = "gather"
prompt = "G"
store = "file"
num_digits = 3
next = "hours"

[nodes.hours]
type = "hangup"
text = "H {file}"
"""

BOTH = '["dtmf", "speech"]'


def flow_runner(text: str = FLOW, *, input: str = BOTH) -> FlowRunner:
    source = text.format(input=input) if "{input}" in text else text
    return FlowRunner(parse_flow(tomllib.loads(source), source="t.toml"))


@dataclass
class Said:
    label: str
    text: str
    barge_in: bool
    speech_barge_in: bool | None


@dataclass
class Caller:
    """A ``CallContext`` stand-in: each wait takes the next scripted answer (None: silence)."""

    script: list[Input | None]
    said: list[Said] = field(default_factory=list)
    waits: list[str] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    settings: Any = field(default_factory=lambda: SimpleNamespace(voice=Voice("Majd", "ksa", "ar")))
    parameters: dict[str, str] = field(default_factory=dict)
    call_sid: str = "CA0"
    keys_pressed: list[str] = field(default_factory=list)
    prompt_cache: None = None
    outcome: str | None = None
    reason: str = ""
    details: dict[str, object] = field(default_factory=dict)
    typed_ahead: deque[str] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.queue: deque[Input | None] = deque(self.script)

    async def say(self, text: str, voice: Voice | None = None, **kw: Any) -> SpeechOutcome:
        self.said.append(Said(kw["label"], text, kw["barge_in"], kw.get("speech_barge_in")))
        return SpeechOutcome.PLAYED

    def has_key(self) -> bool:
        return bool(self.typed_ahead)

    def _next(self) -> Input | None:
        got = self.queue.popleft() if self.queue else None
        if isinstance(got, str):
            self.keys_pressed.append(got)
        return got

    async def key(self, within: float) -> str | None:
        self.waits.append(f"key {within:g}")
        if self.typed_ahead:
            return self.typed_ahead.popleft()
        got = self._next()
        assert got is None or isinstance(got, str), f"key() must never see {got!r}"
        return got

    async def next_input(self, within: float, *, speech: bool) -> Input | None:
        assert speech
        self.waits.append(f"speech {within:g}")
        return self._next()

    def unread(self, digit: str) -> None:
        self.typed_ahead.appendleft(digit)

    def record_match(self, result: str) -> None:
        self.matches.append(result)

    async def hung_up(self, within: float) -> bool:
        return True


async def run(caller: Caller, runner: FlowRunner | None = None) -> list[str]:
    await (runner or flow_runner())(cast(CallContext, caller))
    return [s.text for s in caller.said]


# --- the runner ----------------------------------------------------------------------------------


async def test_a_phrase_reaches_its_option() -> None:
    caller = Caller([Heard("المواعيد")])
    assert await run(caller) == ["P", "H"]
    assert caller.waits == ["speech 4"]
    assert caller.matches == ["matched"]
    assert caller.said[0] == Said("menu:menu", "P", True, True)  # voice barge-in: the node's
    assert caller.outcome == "completed"


async def test_a_key_still_answers_a_speech_menu() -> None:
    caller = Caller(["2"])
    assert await run(caller) == ["P", "H"]
    assert caller.matches == []


async def test_no_match_is_invalid_and_a_retry() -> None:
    caller = Caller([Heard("مرحبا"), Heard("opening hours please")])
    assert await run(caller) == ["P", "I", "P", "H"]
    assert caller.matches == ["no_match", "matched"]


async def test_silence_is_no_input_and_gives_up_after_the_retries() -> None:
    caller = Caller([None, None])
    assert await run(caller) == ["P", "N", "P", "B"]
    assert caller.waits == ["speech 4", "speech 4"]


async def test_speech_failure_falls_back_to_keys_without_counting_a_failure() -> None:
    caller = Caller([NotUnderstood("timeout"), "5", None])
    assert await run(caller) == ["P", "K", "I", "K", "B"]
    # keys only after the fallback, and the keys prompt is not interrupted by speech
    assert caller.waits == ["speech 4", "key 4", "key 4"]
    assert [s.speech_barge_in for s in caller.said[:4]] == [True, False, False, False]
    assert caller.matches == []


async def test_the_fallback_lasts_for_one_visit_only() -> None:
    caller = Caller([NotUnderstood("error"), "1", Heard("واحد اثنين ثلاثة")])
    assert await run(caller) == ["P", "K", "G", "D 123"]
    assert caller.waits == ["speech 4", "key 4", "speech 6"]
    assert caller.matches == ["digits"]


async def test_a_gather_reads_spoken_digits_and_checks_them_like_keys() -> None:
    caller = Caller([Heard("موعدي"), Heard("واحد"), Heard("٤ خمسة six")])
    assert await run(caller) == ["P", "G", "GI", "G", "D 456"]
    assert caller.matches == ["matched", "invalid", "digits"]


async def test_a_gather_takes_its_first_key_by_next_input_and_the_rest_by_key() -> None:
    caller = Caller(["1", "7", "8", "9", None])
    assert await run(caller) == ["P", "G", "D 789"]
    assert caller.waits == ["speech 4", "speech 6", "key 3", "key 3", "key 0.7"]


async def test_a_gather_falls_back_to_keys_on_a_speech_failure() -> None:
    caller = Caller(["1", NotUnderstood("thinking"), "1", "2", "3"])
    assert await run(caller) == ["P", "G", "GK", "D 123"]
    assert caller.waits[:3] == ["speech 4", "speech 6", "key 6"]


async def test_a_speech_only_menu_ignores_keys() -> None:
    caller = Caller(["2", "1", Heard("hours")])
    assert await run(caller, flow_runner(input='["speech"]')) == ["P", "H"]
    # one window: each wait after an ignored key has what is left of the timeout
    assert [w.split()[0] for w in caller.waits] == ["speech"] * 3
    lefts = [float(w.split()[1]) for w in caller.waits]
    assert lefts[0] == 4
    assert lefts == sorted(lefts, reverse=True)
    assert caller.said[0].barge_in is False  # a key does not interrupt a speech-only prompt


async def test_a_speech_only_menu_takes_keys_after_the_fallback() -> None:
    caller = Caller([NotUnderstood("error"), "2"])
    assert await run(caller, flow_runner(input='["speech"]')) == ["P", "K", "H"]
    assert caller.said[1].barge_in is True


async def test_keys_only_flows_never_listen_and_speak_as_before() -> None:
    caller = Caller(["1", "1", "2", "3"])
    runner = flow_runner(KEYS_ONLY)
    assert runner.flow.takes_speech is False
    assert await run(caller, runner) == ["P", "G", "H 123"]
    assert all(w.startswith("key") for w in caller.waits)
    assert all(s.speech_barge_in is None for s in caller.said)  # the keyword is not even passed


async def test_takes_speech() -> None:
    assert flow_runner().flow.takes_speech is True
    assert flow_runner(KEYS_ONLY).flow.takes_speech is False


async def test_the_summary_says_speech_results_and_never_the_transcript() -> None:
    secret = "رقمي السري المواعيد"
    caller = Caller([Heard("no idea"), Heard(secret)])
    with structlog.testing.capture_logs() as logs:
        await run(caller)
    summary = next(e for e in logs if e["event"] == "ivr_summary")
    assert summary["speech"] == "menu:no_match menu:matched"
    retry = next(e for e in logs if e["event"] == "ivr_retry")
    assert (retry["via"], retry["match"]) == ("speech", "no_match")
    for entry in logs:
        if entry["log_level"] != "debug":
            assert secret not in repr(entry), entry
            assert "no idea" not in repr(entry), entry
    heard = [e for e in logs if e["event"] == "ivr_heard"]
    assert [e["log_level"] for e in heard] == ["debug", "debug"]


async def test_the_summary_of_a_keys_only_flow_is_unchanged() -> None:
    with structlog.testing.capture_logs() as logs:
        await run(Caller(["2"]), flow_runner(KEYS_ONLY))
    summary = next(e for e in logs if e["event"] == "ivr_summary")
    assert "speech" not in summary


# --- the pure decisions ------------------------------------------------------------------------


MENU = Menu(
    prompt="P",
    options={"1": "a", "2": "b", "3": "c"},
    input=("dtmf", "speech"),
    phrases={"1": ("appointment",), "2": ("hours",)},
)


@pytest.mark.parametrize(
    ("got", "listening", "expected"),
    [
        (None, True, Answer("no_input")),
        ("2", True, Answer("next", next="b", value="2")),
        ("9", True, Answer("invalid", value="9")),
        (Heard("hours please"), True, Answer("next", next="b", value="2", match="matched")),
        (Heard("three"), True, Answer("next", next="c", value="3", match="matched")),
        (Heard("what?"), True, Answer("invalid", match="no_match")),
        (NotUnderstood("error"), True, Answer("fallback")),
        ("2", False, Answer("next", next="b", value="2")),
    ],
)
def test_menu_answer(got: Input | None, listening: bool, expected: Answer) -> None:
    assert menu_answer(MENU, got, listening=listening) == expected


def test_a_speech_only_menu_ignores_keys_until_it_falls_back() -> None:
    menu = Menu(prompt="P", options={"1": "a"}, input=("speech",), phrases={"1": ("a",)})
    assert menu_answer(menu, "1", listening=True) == Answer("ignore", value="1")
    assert menu_answer(menu, "1", listening=False) == Answer("next", next="a", value="1")


GATHER = Gather(prompt="G", store="f", next="n", num_digits=4, input=("dtmf", "speech"))


@pytest.mark.parametrize(
    ("got", "expected"),
    [
        (None, Answer("no_input")),
        ("7", Answer("collect", value="7")),
        (Heard("١٢ three four"), Answer("next", next="n", value="1234", match="digits")),
        (Heard("one two three"), Answer("invalid", match="invalid")),
        (Heard("twenty"), Answer("invalid", match="invalid")),
        (NotUnderstood("empty"), Answer("fallback")),
    ],
)
def test_gather_answer(got: Input | None, expected: Answer) -> None:
    assert gather_answer(GATHER, got, listening=True) == expected


@pytest.mark.parametrize(
    ("num_digits", "pattern", "entered", "valid"),
    [
        (4, None, "1234", True),
        (4, None, "123", False),
        (None, None, "1", True),
        (None, None, "", False),
        (4, "[0-9]{2,6}", "12", True),  # the pattern decides when there is one
        (None, "[0-9]*", "", True),
        (None, "1[0-9]", "21", False),
    ],
)
def test_gather_valid_is_the_rule_keys_always_had(
    num_digits: int | None, pattern: str | None, entered: str, valid: bool
) -> None:
    node = Gather(prompt="G", store="f", next="n", num_digits=num_digits, pattern=pattern)
    assert gather_valid(node, entered) is valid
