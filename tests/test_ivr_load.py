"""Flow files: TOML → ``Flow``, and every problem reported with its location."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bridge.ivr
from bridge.errors import BridgeError, FlowError, FlowInvalid
from bridge.ivr.flow import (
    Flow,
    Gather,
    Hangup,
    Menu,
    Say,
    Transfer,
    VoiceOverride,
    Webhook,
)
from bridge.ivr.load import load_flow, parse_flow, validate_flow
from bridge.voice import Voice

EXAMPLE = Path(bridge.ivr.__file__).parent / "examples" / "clinic.toml"
SRC = "t.toml"
TYPES = "say, menu, gather, transfer, webhook, hangup"
KEYPAD = "0-9, * or #"

# A small valid flow that uses every node type; each error case below breaks one thing in it.
BASE: dict[str, Any] = {
    "flow": {"name": "test", "start": "welcome"},
    "nodes": {
        "welcome": {"type": "say", "text": "Hello {from}.", "next": "menu"},
        "menu": {
            "type": "menu",
            "prompt": "Press 1, 2 or 0.",
            "options": {"1": "ask", "2": "hook", "0": "desk"},
            "retries": 1,
            "on_failure": "bye",
        },
        "ask": {
            "type": "gather",
            "prompt": "Your number?",
            "store": "num",
            "num_digits": 4,
            "next": "hook",
            "retries": 1,
            "on_failure": "bye",
        },
        "hook": {
            "type": "webhook",
            "url": "https://example.com/hook",
            "branches": {"ok": "bye"},
            "fallback": "desk",
        },
        "desk": {"type": "transfer", "to": "+966112345678"},
        "bye": {"type": "hangup", "text": "Bye {num}."},
    },
}

Mutation = Callable[[dict[str, Any]], None]


def _parent(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path[:-1]:
        data = data[key]
    return data


def put(*path: str, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        _parent(data, path)[path[-1]] = value

    return mutate


def drop(*path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        del _parent(data, path)[path[-1]]

    return mutate


def without_webhook(data: dict[str, Any]) -> None:
    """The base flow with no webhook node: prompts may then only use known variables."""
    nodes = data["nodes"]
    del nodes["hook"]
    nodes["menu"]["options"]["2"] = "bye"
    nodes["ask"]["next"] = "bye"


def both(*mutations: Mutation) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)

    return mutate


def errors_after(mutate: Mutation) -> list[FlowError]:
    data = copy.deepcopy(BASE)
    mutate(data)
    return validate_flow(data, source=SRC)


# --- valid flows ----------------------------------------------------------------------------------


def test_the_base_flow_is_valid() -> None:
    assert validate_flow(BASE, source=SRC) == []
    assert errors_after(without_webhook) == []  # {num} is a gather's store: always allowed


def test_the_example_flow_loads_and_validates_cleanly() -> None:
    assert validate_flow(tomllib.loads(EXAMPLE.read_text("utf-8")), source="clinic.toml") == []
    flow = load_flow(EXAMPLE)
    assert flow.name == "clinic"
    assert flow.start == "welcome"
    assert flow.voice == VoiceOverride("Majd", "ksa", "ar")
    assert list(flow.nodes) == [
        "welcome",
        "main_menu",
        "recording_notice",
        "ask_file_number",
        "lookup_appointment",
        "appointment_found",
        "file_not_found",
        "opening_hours",
        "hours_menu",
        "english_menu",
        "english_hours",
        "english_reception",
        "english_goodbye",
        "reception",
        "goodbye",
    ]


def test_the_example_flow_does_what_its_brief_says() -> None:
    nodes = load_flow(EXAMPLE).nodes
    main = nodes["main_menu"]
    assert isinstance(main, Menu)
    assert main.options == {
        "1": "recording_notice",
        "2": "opening_hours",
        "3": "english_menu",
        "0": "reception",
    }
    assert main.invalid
    assert main.no_input
    assert (main.retries, main.on_failure) == (2, "goodbye")
    notice = nodes["recording_notice"]
    assert isinstance(notice, Say)
    assert notice.barge_in is False
    assert notice.next == "ask_file_number"
    ask = nodes["ask_file_number"]
    assert isinstance(ask, Gather)
    assert (ask.store, ask.num_digits, ask.finish_on, ask.pattern) == (
        "file_number",
        6,
        "#",
        "[0-9]{6}",
    )
    lookup = nodes["lookup_appointment"]
    assert isinstance(lookup, Webhook)
    assert lookup.branches == {"found": "appointment_found", "not_found": "file_not_found"}
    assert lookup.fallback == "reception"
    found = nodes["appointment_found"]
    assert isinstance(found, Say)
    assert "{appointment_date}" in found.text
    assert isinstance(nodes[found.next], Hangup)
    not_found = nodes["file_not_found"]
    assert isinstance(not_found, Say)
    assert not_found.next == "main_menu"
    english = nodes["english_menu"]
    assert isinstance(english, Menu)
    assert len(english.options) >= 2
    assert english.voice == VoiceOverride("Emma", "en", "en")
    reception = nodes["reception"]
    assert isinstance(reception, Transfer)
    assert reception.to.startswith("+966")
    assert reception.message
    assert isinstance(nodes["goodbye"], Hangup)


def test_the_example_prompts_are_arabic_and_short() -> None:
    flow = load_flow(EXAMPLE)
    texts = [text for text, _ in flow.static_prompts(Voice("x", "x", "x"))]
    assert len(texts) >= 10
    assert all(len(text) <= 200 for text in texts)
    arabic = [t for t in texts if any("\u0600" <= ch <= "\u06ff" for ch in t)]
    assert len(arabic) >= 8


ROUND_TRIP = """
[flow]
name = "every-field"
start = "hello"
voice = { speaker = "Majd", dialect = "ksa", language = "ar" }

[nodes.hello]
type = "say"
text = "مرحبا {from}"
next = "menu"
barge_in = false
voice = { speaker = "Emma" }

[nodes.menu]
type = "menu"
prompt = "Press 1"
options = { "1" = "ask", "*" = "hook", "#" = "bye" }
timeout = 7
invalid = "Wrong key"
no_input = "Nothing?"
retries = 3
on_failure = "bye"
voice = { language = "en", dialect = "en" }
barge_in = false

[nodes.ask]
type = "gather"
prompt = "Number then star"
store = "account"
num_digits = 8
finish_on = "*"
timeout = 2.5
inter_digit_timeout = 1
pattern = "[0-9]{8}"
invalid = "Not {account}"
retries = 0
next = "hook"
on_failure = "desk"
voice = { dialect = "egy" }
barge_in = false

[nodes.hook]
type = "webhook"
url = "http://127.0.0.1:8080/x?y=1"
fallback = "desk"
branches = { vip = "desk", normal = "bye" }
next = "bye"
timeout = 1.5

[nodes.desk]
type = "transfer"
to = "sip:desk@pbx.example.com"
message = "Connecting {account}"
caller_id = "+966500000000"
voice = { speaker = "Hala" }

[nodes.bye]
type = "hangup"
text = "Bye"
voice = { language = "en" }
"""


def test_every_field_round_trips_into_the_dataclasses() -> None:
    flow = parse_flow(tomllib.loads(ROUND_TRIP), source="rt.toml")
    assert flow == Flow(
        start="hello",
        name="every-field",
        voice=VoiceOverride("Majd", "ksa", "ar"),
        nodes={
            "hello": Say(
                text="مرحبا {from}",
                next="menu",
                voice=VoiceOverride(speaker="Emma"),
                barge_in=False,
            ),
            "menu": Menu(
                prompt="Press 1",
                options={"1": "ask", "*": "hook", "#": "bye"},
                timeout=7.0,
                invalid="Wrong key",
                no_input="Nothing?",
                retries=3,
                on_failure="bye",
                voice=VoiceOverride(dialect="en", language="en"),
                barge_in=False,
            ),
            "ask": Gather(
                prompt="Number then star",
                store="account",
                next="hook",
                num_digits=8,
                finish_on="*",
                timeout=2.5,
                inter_digit_timeout=1.0,
                pattern="[0-9]{8}",
                invalid="Not {account}",
                retries=0,
                on_failure="desk",
                voice=VoiceOverride(dialect="egy"),
                barge_in=False,
            ),
            "hook": Webhook(
                url="http://127.0.0.1:8080/x?y=1",
                fallback="desk",
                branches={"vip": "desk", "normal": "bye"},
                next="bye",
                timeout=1.5,
            ),
            "desk": Transfer(
                to="sip:desk@pbx.example.com",
                message="Connecting {account}",
                caller_id="+966500000000",
                voice=VoiceOverride(speaker="Hala"),
            ),
            "bye": Hangup(text="Bye", voice=VoiceOverride(language="en")),
        },
    )
    menu = flow.nodes["menu"]
    assert isinstance(menu, Menu)
    assert type(menu.timeout) is float


def test_omitted_fields_take_the_dataclass_defaults() -> None:
    flow = parse_flow(BASE, source=SRC)
    assert flow.name == "test"
    assert flow.voice == VoiceOverride()
    assert flow.nodes["welcome"] == Say(text="Hello {from}.", next="menu")
    assert flow.nodes["ask"] == Gather(
        prompt="Your number?",
        store="num",
        next="hook",
        num_digits=4,
        retries=1,
        on_failure="bye",
    )
    assert flow.nodes["desk"] == Transfer(to="+966112345678")
    hook = flow.nodes["hook"]
    assert isinstance(hook, Webhook)
    assert (hook.next, hook.timeout) == ("", 3.0)


def test_the_flow_name_defaults_to_the_file_stem() -> None:
    data = copy.deepcopy(BASE)
    del data["flow"]["name"]
    assert parse_flow(data, source="flows/reception.toml").name == "reception"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(put("nodes", "bye", "text", value=""), id="silent-hangup"),
        pytest.param(put("nodes", "desk", "message", value=""), id="silent-transfer"),
        pytest.param(put("nodes", "menu", "invalid", value=""), id="empty-invalid"),
        pytest.param(put("nodes", "welcome", "text", value="x" * 2000), id="exactly-2000"),
        pytest.param(put("nodes", "ask", "finish_on", value=""), id="no-finish-key-with-count"),
        pytest.param(
            both(drop("nodes", "ask", "num_digits"), put("nodes", "ask", "finish_on", value="#")),
            id="finish-key-only",
        ),
        pytest.param(drop("nodes", "menu", "retries"), id="no-retries-no-on-failure-ok"),
        pytest.param(put("nodes", "welcome", "text", value="{anything}"), id="webhook-vars"),
        pytest.param(put("nodes", "desk", "to", value="{agent_number}"), id="to-from-webhook"),
        pytest.param(put("nodes", "desk", "to", value="sip:100@10.0.0.1"), id="to-sip"),
        pytest.param(put("nodes", "menu", "timeout", value=0.5), id="float-timeout"),
        pytest.param(put("nodes", "hook", "branches", value={}), id="no-branches"),
    ],
)
def test_edge_cases_that_are_valid(mutate: Mutation) -> None:
    assert errors_after(mutate) == []


# --- one test per error class -------------------------------------------------------------------


def at(where: str) -> str:
    return f"{SRC}: {where}" if where else SRC


NEVER_SET = (
    "(variables: from, to, call_sid, digits, num; a webhook's answer could set others, "
    "but this flow has no webhook node)"
)
NOT_A_DIAL = (
    "is neither an E.164 number (like +966112345678) nor a SIP address "
    "(like sip:reception@pbx.example.com)"
)
TOO_LONG = (
    "is 2001 characters long: over Hamsa's limit of 2000 per request, so it would be split "
    "into several requests — and far too long for a phone prompt; keep it to a sentence or two"
)
UNREACHABLE = 'unreachable: no path from the start node "welcome" leads to this node'

ERROR_CASES = [
    # [flow] and start
    pytest.param(
        drop("flow"),
        "",
        'missing [flow] table: it must name the start node, e.g. [flow] start = "welcome"',
        id="missing-flow",
    ),
    pytest.param(drop("flow", "start"), "flow", 'missing required field "start"', id="no-start"),
    pytest.param(
        put("flow", "start", value="welcom"),
        "flow.start",
        'the start node "welcom" is not in [nodes] — did you mean "welcome"?',
        id="start-unknown",
    ),
    pytest.param(
        put("flow", "start", value=5), "flow.start", "must be a node name, not 5", id="start-int"
    ),
    pytest.param(
        put("flow", "name", value=""),
        "flow.name",
        'must be a non-empty string, not the string ""',
        id="flow-name-empty",
    ),
    pytest.param(
        put("flow", "voice", value="Majd"),
        "flow.voice",
        'must be a table with speaker, dialect and/or language, not the string "Majd"',
        id="flow-voice-not-table",
    ),
    # [nodes]
    pytest.param(
        drop("nodes"),
        "",
        "missing [nodes]: a flow needs at least one node, e.g. [nodes.welcome]",
        id="missing-nodes",
    ),
    pytest.param(
        put("nodes", value={}),
        "nodes",
        "[nodes] is empty: a flow needs at least one node",
        id="empty-nodes",
    ),
    pytest.param(
        put("nodes", value=["welcome"]),
        "nodes",
        "must be a table of nodes, not an array",
        id="nodes-not-table",
    ),
    pytest.param(
        put("nodes", "bye", value="hangup"),
        "nodes.bye",
        'must be a table with type = "say", "menu", …, not the string "hangup"',
        id="node-not-table",
    ),
    # node types
    pytest.param(
        put("nodes", "bye", "type", value="hangpu"),
        "nodes.bye.type",
        f'unknown node type "hangpu" — did you mean "hangup"? (types: {TYPES})',
        id="unknown-type",
    ),
    pytest.param(
        put("nodes", "bye", "type", value="ivr"),
        "nodes.bye.type",
        f'unknown node type "ivr" (types: {TYPES})',
        id="unknown-type-no-suggestion",
    ),
    pytest.param(
        drop("nodes", "bye", "type"),
        "nodes.bye",
        f'missing required field "type" (one of {TYPES})',
        id="missing-type",
    ),
    pytest.param(
        put("nodes", "bye", "type", value=1),
        "nodes.bye.type",
        f"must be one of {TYPES}, not 1",
        id="type-not-string",
    ),
    # missing required fields
    pytest.param(
        drop("nodes", "hook", "url"), "nodes.hook", 'missing required field "url"', id="no-url"
    ),
    pytest.param(
        drop("nodes", "welcome", "next"),
        "nodes.welcome",
        'missing required field "next"',
        id="no-next",
    ),
    pytest.param(
        drop("nodes", "menu", "options"),
        "nodes.menu",
        'missing required field "options"',
        id="no-options",
    ),
    pytest.param(
        drop("nodes", "ask", "store"), "nodes.ask", 'missing required field "store"', id="no-store"
    ),
    pytest.param(
        drop("nodes", "desk", "to"), "nodes.desk", 'missing required field "to"', id="no-to"
    ),
    pytest.param(
        drop("nodes", "hook", "fallback"),
        "nodes.hook",
        'missing required field "fallback"',
        id="no-fallback",
    ),
    # wrong types and values
    pytest.param(
        put("nodes", "menu", "timeout", value="5"),
        "nodes.menu.timeout",
        'must be a number of seconds greater than 0, not the string "5"',
        id="timeout-string",
    ),
    pytest.param(
        put("nodes", "ask", "inter_digit_timeout", value=0),
        "nodes.ask.inter_digit_timeout",
        "must be a number of seconds greater than 0, not 0",
        id="timeout-zero",
    ),
    pytest.param(
        put("nodes", "hook", "timeout", value=float("inf")),
        "nodes.hook.timeout",
        "must be a number of seconds greater than 0, not inf",
        id="timeout-inf",
    ),
    pytest.param(
        put("nodes", "menu", "timeout", value=True),
        "nodes.menu.timeout",
        "must be a number of seconds greater than 0, not the boolean true",
        id="timeout-bool",
    ),
    pytest.param(
        put("nodes", "menu", "retries", value=-1),
        "nodes.menu.retries",
        "must be a whole number >= 0, not -1",
        id="retries-negative",
    ),
    pytest.param(
        put("nodes", "ask", "retries", value=1.5),
        "nodes.ask.retries",
        "must be a whole number >= 0, not 1.5",
        id="retries-float",
    ),
    pytest.param(
        put("nodes", "menu", "options", value=["ask"]),
        "nodes.menu.options",
        'must be a table of keypad key = "node", not an array',
        id="options-not-table",
    ),
    pytest.param(
        put("nodes", "menu", "options", value={}),
        "nodes.menu.options",
        'a menu needs at least one option, e.g. options = { "1" = "sales" }',
        id="options-empty",
    ),
    pytest.param(
        put("nodes", "hook", "branches", value="bye"),
        "nodes.hook.branches",
        'must be a table of branch name = "node", not the string "bye"',
        id="branches-not-table",
    ),
    pytest.param(
        put("nodes", "welcome", "barge_in", value="no"),
        "nodes.welcome.barge_in",
        'must be true or false, not the string "no"',
        id="barge-in-string",
    ),
    pytest.param(
        put("nodes", "welcome", "text", value=42),
        "nodes.welcome.text",
        "must be a string, not 42",
        id="text-not-string",
    ),
    pytest.param(
        put("nodes", "welcome", "next", value=""),
        "nodes.welcome.next",
        'must be a node name, not the string ""',
        id="next-empty",
    ),
    pytest.param(
        put("nodes", "welcome", "voice", value={"speaker": ""}),
        "nodes.welcome.voice.speaker",
        'must be a non-empty string, not the string ""',
        id="voice-speaker-empty",
    ),
    # references to unknown nodes
    pytest.param(
        put("nodes", "welcome", "next", value="menuu"),
        "nodes.welcome.next",
        'no node named "menuu" in [nodes] — did you mean "menu"?',
        id="unknown-next",
    ),
    pytest.param(
        put("nodes", "menu", "options", "7", value="nowhere"),
        'nodes.menu.options."7"',
        'no node named "nowhere" in [nodes]',
        id="unknown-option-target",
    ),
    pytest.param(
        put("nodes", "menu", "on_failure", value="byee"),
        "nodes.menu.on_failure",
        'no node named "byee" in [nodes] — did you mean "bye"?',
        id="unknown-on-failure",
    ),
    pytest.param(
        put("nodes", "hook", "branches", "vip", value="nobody"),
        "nodes.hook.branches.vip",
        'no node named "nobody" in [nodes]',
        id="unknown-branch-target",
    ),
    pytest.param(
        put("nodes", "hook", "fallback", value="dsk"),
        "nodes.hook.fallback",
        'no node named "dsk" in [nodes] — did you mean "desk"?',
        id="unknown-fallback",
    ),
    pytest.param(
        put("nodes", "hook", "next", value="good bye"),
        "nodes.hook.next",
        'no node named "good bye" in [nodes]',
        id="unknown-webhook-next",
    ),
    # reachability
    pytest.param(
        put("nodes", "orphan", value={"type": "say", "text": "Hi", "next": "bye"}),
        "nodes.orphan",
        UNREACHABLE,
        id="unreachable",
    ),
    # keypad keys
    pytest.param(
        put("nodes", "menu", "options", "12", value="bye"),
        'nodes.menu.options."12"',
        f'option key "12" is not a single keypad key ({KEYPAD})',
        id="option-key-two-digits",
    ),
    pytest.param(
        put("nodes", "menu", "options", "a", value="bye"),
        "nodes.menu.options.a",
        f'option key "a" is not a single keypad key ({KEYPAD})',
        id="option-key-letter",
    ),
    pytest.param(
        put("nodes", "ask", "finish_on", value="##"),
        "nodes.ask.finish_on",
        f'finish_on "##" is not a single keypad key ({KEYPAD})',
        id="finish-on-two-keys",
    ),
    pytest.param(
        put("nodes", "ask", "finish_on", value=3),
        "nodes.ask.finish_on",
        f"must be a keypad key ({KEYPAD}) as a string, not 3",
        id="finish-on-int",
    ),
    # empty and over-long text
    pytest.param(
        put("nodes", "welcome", "text", value="  "),
        "nodes.welcome.text",
        "must not be empty: the caller would hear silence",
        id="empty-say-text",
    ),
    pytest.param(
        put("nodes", "menu", "prompt", value=""),
        "nodes.menu.prompt",
        "must not be empty: the caller would hear silence",
        id="empty-menu-prompt",
    ),
    pytest.param(
        put("nodes", "ask", "prompt", value="\n"),
        "nodes.ask.prompt",
        "must not be empty: the caller would hear silence",
        id="empty-gather-prompt",
    ),
    pytest.param(
        put("nodes", "bye", "text", value=" \n"),
        "nodes.bye.text",
        'is only whitespace: write what to say, or "" for nothing',
        id="whitespace-only-optional-text",
    ),
    pytest.param(
        put("nodes", "welcome", "text", value="ا" * 2001),
        "nodes.welcome.text",
        TOO_LONG,
        id="too-long-say",
    ),
    pytest.param(
        put("nodes", "menu", "no_input", value="x" * 2001),
        "nodes.menu.no_input",
        TOO_LONG,
        id="too-long-no-input",
    ),
    # gather specifics
    pytest.param(
        put("nodes", "ask", "pattern", value="[0-9"),
        "nodes.ask.pattern",
        "invalid regular expression: unterminated character set at position 0",
        id="bad-pattern",
    ),
    pytest.param(
        drop("nodes", "ask", "num_digits"),
        "nodes.ask",
        "a gather needs num_digits or finish_on: without either it cannot tell when the "
        "caller has finished",
        id="gather-no-end",
    ),
    pytest.param(
        both(drop("nodes", "ask", "num_digits"), put("nodes", "ask", "finish_on", value="")),
        "nodes.ask",
        "a gather needs num_digits or finish_on: without either it cannot tell when the "
        "caller has finished",
        id="gather-no-end-empty-finish-on",
    ),
    pytest.param(
        put("nodes", "ask", "num_digits", value=0),
        "nodes.ask.num_digits",
        "must be a whole number >= 1, not 0",
        id="num-digits-zero",
    ),
    pytest.param(
        put("nodes", "ask", "store", value="file-number"),
        "nodes.ask.store",
        "must be a variable name (letters, digits and _, not starting with a digit), "
        'not the string "file-number"',
        id="store-not-identifier",
    ),
    pytest.param(
        put("nodes", "ask", "store", value="digits"),
        "nodes.ask.store",
        '"digits" is a built-in variable ({from}, {to}, {call_sid}, {digits}): choose another name',
        id="store-builtin",
    ),
    # transfer and webhook addresses
    pytest.param(
        put("nodes", "desk", "to", value="0112345678"),
        "nodes.desk.to",
        f'"0112345678" {NOT_A_DIAL}',
        id="to-local-number",
    ),
    pytest.param(
        put("nodes", "desk", "to", value="+966 11 234 5678"),
        "nodes.desk.to",
        f'"+966 11 234 5678" {NOT_A_DIAL}',
        id="to-with-spaces",
    ),
    pytest.param(
        put("nodes", "desk", "to", value="sip:"),
        "nodes.desk.to",
        f'"sip:" {NOT_A_DIAL}',
        id="to-empty-sip",
    ),
    pytest.param(
        put("nodes", "desk", "to", value="+966112345678\n"),
        "nodes.desk.to",
        f'"+966112345678\\n" {NOT_A_DIAL}',
        id="to-trailing-newline",
    ),
    pytest.param(
        put("nodes", "desk", "caller_id", value="clinic"),
        "nodes.desk.caller_id",
        f'"clinic" {NOT_A_DIAL}',
        id="caller-id",
    ),
    pytest.param(
        put("nodes", "hook", "url", value="example.com/hook"),
        "nodes.hook.url",
        '"example.com/hook" is not an absolute http(s) URL (like https://example.com/ivr)',
        id="url-relative",
    ),
    pytest.param(
        put("nodes", "hook", "url", value="ftp://example.com/hook"),
        "nodes.hook.url",
        '"ftp://example.com/hook" is not an absolute http(s) URL (like https://example.com/ivr)',
        id="url-ftp",
    ),
    pytest.param(
        put("nodes", "hook", "url", value="https://"),
        "nodes.hook.url",
        '"https://" is not an absolute http(s) URL (like https://example.com/ivr)',
        id="url-no-host",
    ),
    # unknown fields (typos)
    pytest.param(
        both(drop("nodes", "menu", "prompt"), put("nodes", "menu", "promt", value="Press 1")),
        "nodes.menu.promt",
        'unknown field "promt" — did you mean "prompt"?',
        id="typo-promt",
    ),
    pytest.param(
        put("nodes", "desk", "colour", value="red"),
        "nodes.desk.colour",
        'unknown field "colour" (a transfer node has: type, to, message, caller_id, voice)',
        id="unknown-field-no-suggestion",
    ),
    pytest.param(
        put("nodes", "welcome", "voice", value={"speakr": "Majd"}),
        "nodes.welcome.voice.speakr",
        'unknown field "speakr" — did you mean "speaker"?',
        id="typo-in-voice",
    ),
    pytest.param(
        both(drop("flow", "start"), put("flow", "strat", value="welcome")),
        "flow.strat",
        'unknown field "strat" — did you mean "start"?',
        id="typo-in-flow",
    ),
    pytest.param(
        lambda data: data.update(node=data.pop("nodes")),
        "node",
        'unknown field "node" — did you mean "nodes"?',
        id="typo-top-level",
    ),
    # failure paths
    pytest.param(
        drop("nodes", "menu", "on_failure"),
        "nodes.menu.retries",
        "retries is set but on_failure is missing: name the node to go to after the last "
        "failed attempt",
        id="retries-without-on-failure",
    ),
    pytest.param(
        drop("nodes", "ask", "on_failure"),
        "nodes.ask.retries",
        "retries is set but on_failure is missing: name the node to go to after the last "
        "failed attempt",
        id="gather-retries-without-on-failure",
    ),
    # placeholders
    pytest.param(
        both(without_webhook, put("nodes", "welcome", "text", value="Your visit: {date}")),
        "nodes.welcome.text",
        f"placeholder {{date}} is never set {NEVER_SET}",
        id="placeholder-never-set",
    ),
    pytest.param(
        both(without_webhook, put("nodes", "bye", "text", value="Bye {nmu}")),
        "nodes.bye.text",
        f"placeholder {{nmu}} is never set — did you mean {{num}}? {NEVER_SET}",
        id="placeholder-typo",
    ),
    pytest.param(
        both(without_webhook, put("nodes", "desk", "to", value="{agent}")),
        "nodes.desk.to",
        f"placeholder {{agent}} is never set {NEVER_SET}",
        id="placeholder-in-transfer-to",
    ),
]


@pytest.mark.parametrize(("mutate", "where", "message"), ERROR_CASES)
def test_each_error_is_reported_alone_with_its_location(
    mutate: Mutation, where: str, message: str
) -> None:
    assert errors_after(mutate) == [FlowError(at(where), message)]
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(FlowInvalid) as caught:
        parse_flow(data, source=SRC)
    assert caught.value.errors == [FlowError(at(where), message)]


def test_each_unreachable_node_is_reported() -> None:
    errors = errors_after(
        both(
            put("nodes", "island_a", value={"type": "say", "text": "A", "next": "island_b"}),
            put("nodes", "island_b", value={"type": "say", "text": "B", "next": "island_a"}),
            put("nodes", "menu", "options", value={"1": "ask", "2": "hook"}),  # desk: via hook
        )
    )
    assert errors == [
        FlowError(at("nodes.island_a"), UNREACHABLE),
        FlowError(at("nodes.island_b"), UNREACHABLE),
    ]


def test_a_typo_in_a_reference_does_not_make_its_target_unreachable() -> None:
    # "menuu" is surely "menu": the nodes after it are not reported unreachable as well.
    errors = errors_after(put("nodes", "welcome", "next", value="menuu"))
    assert [e.location for e in errors] == [at("nodes.welcome.next")]


def test_a_bad_node_type_does_not_make_its_successors_unreachable() -> None:
    errors = errors_after(put("nodes", "menu", "type", value="menuu"))
    assert [e.location for e in errors] == [at("nodes.menu.type")]


SEVERAL = """\
[flow]
start = "welcom"

[nodes.welcome]
type = "say"
text = ""
next = "menu"

[nodes.menu]
type = "menu"
promt = "Press 1"
options = { "1" = "nowhere", "12" = "bye" }
timeout = "5"
retries = 2

[nodes.bye]
type = "hangup"
text = "Bye {name}"

[nodes.orphan]
type = "transfer"
to = "0112345678"
"""


def test_a_flow_with_several_errors_reports_all_of_them(tmp_path: Path) -> None:
    path = tmp_path / "several.toml"
    path.write_text(SEVERAL, encoding="utf-8")
    with pytest.raises(FlowInvalid) as caught:
        load_flow(path)
    expected = [
        ("flow.start", 'the start node "welcom" is not in [nodes] — did you mean "welcome"?'),
        ("nodes.welcome.text", "must not be empty"),
        ("nodes.menu.promt", 'unknown field "promt" — did you mean "prompt"?'),
        ('nodes.menu.options."1"', 'no node named "nowhere" in [nodes]'),
        ('nodes.menu.options."12"', 'option key "12" is not a single keypad key (0-9, * or #)'),
        ("nodes.menu.timeout", 'must be a number of seconds greater than 0, not the string "5"'),
        ("nodes.menu.retries", "retries is set but on_failure is missing"),
        ("nodes.bye.text", "placeholder {name} is never set (variables"),
        ("nodes.orphan.to", f'"0112345678" {NOT_A_DIAL}'),
        ("nodes.orphan", "unreachable"),
    ]
    errors = caught.value.errors
    assert [e.location for e in errors] == [f"{path}: {where}" for where, _ in expected]
    for error, (_, message) in zip(errors, expected, strict=True):
        assert error.message.startswith(message)
    assert isinstance(caught.value, BridgeError)
    text = str(caught.value)
    assert text.startswith("invalid IVR flow (10 errors):\n")
    assert all(str(error) in text for error in caught.value.errors)


# --- reading files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        pytest.param(
            "[flow\nstart = 1\n",
            "line 1, column 6",
            "invalid TOML: Expected ']' at the end of a table declaration",
            id="unclosed-table",
        ),
        pytest.param(
            '[flow]\nstart = "welcome"\nname = \n',
            "line 3, column 8",
            "invalid TOML: Invalid value",
            id="missing-value",
        ),
        pytest.param(
            '[flow]\nstart = "a"\nstart = "b"\n',
            "line 3, column 12",
            "invalid TOML: Cannot overwrite a value",
            id="duplicate-key",
        ),
    ],
)
def test_toml_syntax_errors_carry_line_and_column(
    tmp_path: Path, content: str, where: str, message: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FlowInvalid) as caught:
        load_flow(path)
    assert caught.value.errors == [FlowError(f"{path}: {where}", message)]


def test_a_missing_file_is_a_flow_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(FlowInvalid) as caught:
        load_flow(path)
    assert caught.value.errors == [
        FlowError(str(path), "cannot read the flow file: No such file or directory")
    ]


def test_a_file_that_is_not_utf8_is_a_flow_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[flow]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(FlowInvalid) as caught:
        load_flow(path)
    assert caught.value.errors == [
        FlowError(str(path), "not UTF-8 text (byte 18): save the flow file as UTF-8")
    ]


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.read_bytes())
    assert load_flow(path) == load_flow(EXAMPLE)


# --- robustness: random damage never crashes the validator ----------------------------------------

EXAMPLE_DATA: dict[str, Any] = tomllib.loads(EXAMPLE.read_text("utf-8"))
EXAMPLE_TEXT = EXAMPLE.read_text("utf-8")

any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["", "#", "12", "welcome", "goodbye", "{x}", "https://x.io", "+966112345678"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=10), max_size=3),
    st.dictionaries(st.sampled_from(["1", "#", "x"]), st.sampled_from(["welcome", "nope"])),
)
mutations = st.lists(
    st.tuples(
        st.sampled_from(["delete", "replace", "rename"]),
        st.integers(0, 10_000),
        any_value,
        st.text(max_size=12),
    ),
    min_size=1,
    max_size=4,
)


def _paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in table.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(_paths(value, (*prefix, key)))
    return out


def _mutate(data: dict[str, Any], ops: list[tuple[str, int, Any, str]]) -> None:
    for op, index, value, new_name in ops:
        if op == "rename":
            nodes = data.get("nodes")
            if isinstance(nodes, dict) and nodes:
                old = list(nodes)[index % len(nodes)]
                data["nodes"] = {(new_name if k == old else k): v for k, v in nodes.items()}
            continue
        paths = _paths(data)
        if not paths:
            continue
        path = paths[index % len(paths)]
        parent = _parent(data, path)
        if op == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = value


@settings(max_examples=200, deadline=None)
@given(mutations)
def test_random_damage_gives_errors_or_a_valid_flow(ops: list[tuple[str, int, Any, str]]) -> None:
    data = copy.deepcopy(EXAMPLE_DATA)
    _mutate(data, ops)
    errors = validate_flow(data, source="m.toml")
    assert all(isinstance(e, FlowError) and e.location.startswith("m.toml") for e in errors)
    assert all(e.message for e in errors)
    if errors:
        with pytest.raises(FlowInvalid) as caught:
            parse_flow(data, source="m.toml")
        assert caught.value.errors == errors
    else:
        assert parse_flow(data, source="m.toml").start in data["nodes"]


def _load(path: Path) -> Flow | list[FlowError]:
    try:
        return load_flow(path)
    except FlowInvalid as exc:
        return exc.errors


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, len(EXAMPLE_TEXT)),
    st.integers(0, 40),
    st.one_of(st.text(max_size=10), st.sampled_from(["[", "]", '"', "=", "\n", "{", "}"])),
    st.binary(max_size=3),
)
def test_random_damage_to_the_file_raises_only_flow_invalid(
    tmp_path: Path, start: int, length: int, insert: str, raw: bytes
) -> None:
    damaged = EXAMPLE_TEXT[:start] + insert + EXAMPLE_TEXT[start + length :]
    path = tmp_path / "damaged.toml"
    path.write_bytes(damaged.encode("utf-8", "surrogatepass") + raw)
    result = _load(path)
    if isinstance(result, list):
        assert result
        assert all(e.location.startswith(str(path)) for e in result)
    else:
        assert isinstance(result, Flow)
