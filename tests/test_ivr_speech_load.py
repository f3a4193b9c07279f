"""Speech fields of flow files: loading, every new error with its location, the graph, the
clinic example."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import FlowError
from bridge.ivr import commands
from bridge.ivr.flow import Flow, Gather, Hangup, Menu
from bridge.ivr.graph import edges, to_dot, to_mermaid
from bridge.ivr.load import load_flow, parse_flow, validate_flow
from bridge.ivr.speech_match import match_option, spoken_digits
from bridge.voice import Voice
from tests.test_ivr_load import BASE, EXAMPLE, SRC, Mutation, at, both, drop, put

SPEECH = ["dtmf", "speech"]
ONLY_SPEECH_HAS_IT = 'only a node that takes speech has it: add input = ["dtmf", "speech"], or '


def listening(data: dict[str, Any]) -> None:
    """The base flow with a speech menu (phrases on options 1 and 2) and a speech gather."""
    menu = data["nodes"]["menu"]
    menu["input"] = list(SPEECH)
    menu["options"]["1"] = {"next": "ask", "say": ["موعدي", "appointment"]}
    menu["options"]["2"] = {"next": "hook", "say": ["المواعيد", "opening hours"]}
    data["nodes"]["ask"]["input"] = list(SPEECH)


def speech_errors(mutate: Mutation) -> list[FlowError]:
    data = copy.deepcopy(BASE)
    listening(data)
    mutate(data)
    return validate_flow(data, source=SRC)


def test_a_speech_flow_is_valid_and_loads_its_fields() -> None:
    data = copy.deepcopy(BASE)
    listening(data)
    data["nodes"]["menu"] |= {"speech_barge_in": True, "keys_prompt": "Press 1 or 2."}
    data["nodes"]["ask"] |= {"keys_prompt": "Type your number."}
    flow = parse_flow(data, source=SRC)
    menu, ask = flow.nodes["menu"], flow.nodes["ask"]
    assert isinstance(menu, Menu)
    assert isinstance(ask, Gather)
    assert menu.options == {"1": "ask", "2": "hook", "0": "desk"}  # targets as before
    assert menu.phrases == {"1": ("موعدي", "appointment"), "2": ("المواعيد", "opening hours")}
    assert (menu.input, menu.speech_barge_in, menu.keys_prompt) == (
        ("dtmf", "speech"),
        True,
        "Press 1 or 2.",
    )
    assert menu.takes_speech
    assert menu.takes_keys
    assert (ask.input, ask.speech_barge_in, ask.keys_prompt) == (
        ("dtmf", "speech"),
        False,
        "Type your number.",
    )
    assert flow.takes_speech
    where = [w for w, _, _ in flow.static_prompt_sources(Voice("a", "b", "c"))]
    assert "menu.keys_prompt" in where
    assert "ask.keys_prompt" in where


def test_old_flows_take_the_defaults() -> None:
    flow = parse_flow(BASE, source=SRC)
    menu = flow.nodes["menu"]
    assert isinstance(menu, Menu)
    assert (menu.input, menu.phrases, menu.speech_barge_in, menu.keys_prompt) == (
        ("dtmf",),
        {},
        False,
        "",
    )
    assert not flow.takes_speech


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(put("nodes", "menu", "input", value=["speech"]), id="speech-only-menu"),
        pytest.param(put("nodes", "ask", "input", value=["speech", "dtmf"]), id="any-order"),
        pytest.param(
            put("nodes", "menu", "options", "0", value={"next": "desk"}), id="table-without-say"
        ),
        pytest.param(
            both(
                drop("nodes", "ask", "num_digits"),
                put("nodes", "ask", "pattern", value="1+"),
                put("nodes", "ask", "finish_on", value="#"),
            ),
            id="gather-pattern-only",
        ),
        pytest.param(
            put("nodes", "menu", "options", "1", value={"next": "ask", "say": ["a", "A", "ا"]}),
            id="same-phrase-twice-in-one-option",
        ),
        pytest.param(put("nodes", "menu", "keys_prompt", value=""), id="empty-keys-prompt"),
    ],
)
def test_speech_edge_cases_that_are_valid(mutate: Mutation) -> None:
    assert speech_errors(mutate) == []


def test_keys_only_menus_may_use_the_option_table_without_say() -> None:
    data = copy.deepcopy(BASE)
    data["nodes"]["menu"]["options"]["1"] = {"next": "ask"}
    flow = parse_flow(data, source=SRC)
    assert flow.nodes["menu"] == parse_flow(BASE, source=SRC).nodes["menu"]


SPEECH_ERRORS = [
    pytest.param(
        put("nodes", "menu", "input", value="speech"),
        "nodes.menu.input",
        'must be an array of "dtmf", "speech" (either or both), not the string "speech"',
        id="input-not-an-array",
    ),
    pytest.param(
        put("nodes", "menu", "input", value=[]),
        "nodes.menu.input",
        'must not be empty: list "dtmf", "speech" or both (default ["dtmf"])',
        id="input-empty",
    ),
    pytest.param(
        put("nodes", "ask", "input", value=["dtmf", "speach"]),
        "nodes.ask.input[1]",
        'unknown input "speach" — did you mean "speech"? (inputs: "dtmf", "speech")',
        id="input-typo",
    ),
    pytest.param(
        put("nodes", "ask", "input", value=["speech", "speech"]),
        "nodes.ask.input[1]",
        '"speech" is listed twice',
        id="input-twice",
    ),
    pytest.param(
        put("nodes", "ask", "input", value=[1]),
        "nodes.ask.input[0]",
        'must be one of "dtmf", "speech", not 1',
        id="input-not-a-string",
    ),
    pytest.param(
        put("nodes", "menu", "speech_barge_in", value="yes"),
        "nodes.menu.speech_barge_in",
        'must be true or false, not the string "yes"',
        id="speech-barge-in-type",
    ),
    pytest.param(
        put("nodes", "ask", "keys_prompt", value=5),
        "nodes.ask.keys_prompt",
        "must be a string, not 5",
        id="keys-prompt-type",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"say": ["x"]}),
        'nodes.menu.options."1"',
        'missing required field "next"',
        id="option-table-without-next",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "ask", "sey": ["x"]}),
        'nodes.menu.options."1".sey',
        'unknown field "sey" — did you mean "say"?',
        id="option-table-typo",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "aks", "say": ["x"]}),
        'nodes.menu.options."1".next',
        'no node named "aks" in [nodes] — did you mean "ask"?',
        id="option-table-bad-target",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "ask", "say": "x"}),
        'nodes.menu.options."1".say',
        'must be an array of phrases, e.g. say = ["المواعيد", "hours"], not the string "x"',
        id="say-not-an-array",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "ask", "say": []}),
        'nodes.menu.options."1".say',
        "is empty: list what a caller may say for this option, or remove say",
        id="say-empty",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "ask", "say": ["x", 2]}),
        'nodes.menu.options."1".say[1]',
        "must be a string, not 2",
        id="phrase-not-a-string",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "ask", "say": ["ـ؟ً!"]}),
        'nodes.menu.options."1".say[0]',
        '"ـ؟ً!" has no words once normalised (punctuation and diacritics do not count): write '
        "what a caller would say",
        id="phrase-empty-once-normalised",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "ask", "say": ["x" * 101]}),
        'nodes.menu.options."1".say[0]',
        "is over 100 characters: a phrase is a few words",
        id="phrase-too-long",
    ),
    pytest.param(
        put("nodes", "menu", "options", "0", value={"next": "desk", "say": ["مَواعيد"]}),
        'nodes.menu.options."0".say[0]',
        '"مَواعيد" is also a phrase of option "2" (phrases compare normalised: case, '
        'diacritics, hamza forms and "ال" do not count): a caller saying it would choose '
        "neither",
        id="same-phrase-two-options",
    ),
    pytest.param(
        put("nodes", "menu", "options", "1", value={"next": "ask", "say": ["Two"]}),
        'nodes.menu.options."1".say[0]',
        '"Two" says the key of option "2": a caller saying it would reach option "1", not "2"',
        id="phrase-is-another-key",
    ),
    pytest.param(
        both(
            put("nodes", "menu", "options", "1", value="ask"),
            put("nodes", "menu", "options", "2", value="hook"),
        ),
        "nodes.menu.options",
        'a menu that takes speech needs phrases: give its options say = ["…"], what a caller '
        'says to choose each (e.g. options."2" = { next = "hours", say = ["المواعيد", '
        '"hours"] })',
        id="speech-menu-without-phrases",
    ),
    pytest.param(
        both(drop("nodes", "ask", "num_digits"), put("nodes", "ask", "finish_on", value="#")),
        "nodes.ask",
        "a gather that takes speech needs num_digits or pattern: the digits a caller says are "
        "checked against them (speech has no finish key)",
        id="speech-gather-without-count-or-pattern",
    ),
    pytest.param(
        drop("nodes", "menu", "input"),
        'nodes.menu.options."1".say',
        ONLY_SPEECH_HAS_IT + "remove say",
        id="say-without-speech",
    ),
    pytest.param(
        both(drop("nodes", "ask", "input"), put("nodes", "ask", "keys_prompt", value="Type")),
        "nodes.ask.keys_prompt",
        ONLY_SPEECH_HAS_IT + "remove keys_prompt",
        id="keys-prompt-without-speech",
    ),
    pytest.param(
        both(
            put("nodes", "ask", "input", value=["dtmf"]),
            put("nodes", "ask", "speech_barge_in", value=True),
        ),
        "nodes.ask.speech_barge_in",
        ONLY_SPEECH_HAS_IT + "remove speech_barge_in",
        id="speech-barge-in-without-speech",
    ),
]


@pytest.mark.parametrize(("mutate", "where", "message"), SPEECH_ERRORS)
def test_each_speech_error_is_reported_alone_with_its_location(
    mutate: Mutation, where: str, message: str
) -> None:
    errors = speech_errors(mutate)
    if message == ONLY_SPEECH_HAS_IT + "remove say":
        # both options with phrases are reported, each at its own say
        assert errors == [
            FlowError(at(where), message),
            FlowError(at('nodes.menu.options."2".say'), message),
        ]
        return
    assert errors == [FlowError(at(where), message)]


def test_a_bad_node_type_follows_option_tables_to_their_targets() -> None:
    errors = speech_errors(put("nodes", "menu", "type", value="menuu"))
    assert [e.location for e in errors] == [at("nodes.menu.type")]  # nothing unreachable


SPEECH_FILE = """\
[flow]
start = "menu"

[nodes.menu]
type = "menu"
input = ["dtmf", "speach"]
prompt = "P"

[nodes.menu.options]
"1" = { next = "bye", say = ["bye", "؟"] }

[nodes.bye]
type = "hangup"
"""


def test_ivr_validate_reports_speech_errors_with_the_file_location(tmp_path: Path) -> None:
    path = tmp_path / "speech.toml"
    path.write_text(SPEECH_FILE, encoding="utf-8")
    lines: list[str] = []
    assert commands.validate(path, out=lines.append) == 1
    assert lines == [  # in the order of a menu's fields (options before input), as always
        f'✗ {path}: nodes.menu.options."1".say[1]: "؟" has no words once normalised '
        "(punctuation and diacritics do not count): write what a caller would say",
        f'✗ {path}: nodes.menu.input[1]: unknown input "speach" — did you mean "speech"? '
        '(inputs: "dtmf", "speech")',
        f"2 error(s) in {path}",
    ]
    path.write_text(SPEECH_FILE.replace("speach", "speech").replace(', "؟"', ""), "utf-8")
    lines.clear()
    assert commands.validate(path, out=lines.append) == 0
    assert lines == [f"✓ {path}: flow 'speech', 2 nodes, start 'menu'; takes speech at menu"]


# --- the graph ---------------------------------------------------------------------------------

SPOKEN = Flow(
    start="menu",
    name="spoken",
    nodes={
        "menu": Menu(
            prompt="Say it",
            options={"1": "ask", "2": "bye", "0": "bye"},
            input=("dtmf", "speech"),
            phrases={"1": ('say "a"',), "2": ("المواعيد", "hours", "x", "y")},
        ),
        "ask": Gather(prompt="Code?", store="c", next="bye", num_digits=4, input=("speech",)),
        "bye": Hangup(),
    },
)


def test_speech_phrases_label_the_option_edges() -> None:
    assert [(e.source, e.label, e.target) for e in edges(SPOKEN)][:3] == [
        ("menu", '1 / "say "a""', "ask"),
        ("menu", '2 / "المواعيد", "hours", "x", …', "bye"),
        ("menu", "0", "bye"),
    ]


def test_mermaid_marks_speech_nodes_and_shows_phrases() -> None:
    assert to_mermaid(SPOKEN) == (
        "flowchart TD\n"
        "    %% IVR flow spoken\n"
        '    start(("start"))\n'
        '    n0{"menu (menu · speech)<br/>Say it"}\n'
        '    n1[/"ask (gather · speech only)<br/>Code?"/]\n'
        '    n2(["bye (hangup)<br/>(silent)"])\n'
        "    start --> n0\n"
        '    n0 -->|"1 / #quot;say #quot;a#quot;#quot;"| n1\n'
        '    n0 -->|"2 / #quot;المواعيد#quot;, #quot;hours#quot;, #quot;x#quot;, …"| n2\n'
        '    n0 -->|"0"| n2\n'
        '    n1 -->|"next"| n2\n'
        "    classDef speech stroke-width:3px,stroke-dasharray:6 3\n"
        "    class n0,n1 speech\n"
    )


def test_dot_marks_speech_nodes_and_shows_phrases() -> None:
    text = to_dot(SPOKEN)
    assert '    n0 [shape=diamond, peripheries=2, label="menu (menu · speech)\\nSay it"];' in text
    assert "    n1 [shape=parallelogram, peripheries=2," in text
    assert '    n2 [shape=octagon, label="bye (hangup)\\n(silent)"];' in text
    assert '    n0 -> n1 [label="1 / \\"say \\"a\\"\\""];' in text


# --- the clinic example ------------------------------------------------------------------------


def test_the_clinic_takes_speech_where_its_brief_says() -> None:
    flow = load_flow(EXAMPLE)
    main, ask = flow.nodes["main_menu"], flow.nodes["ask_file_number"]
    assert isinstance(main, Menu)
    assert isinstance(ask, Gather)
    assert main.input == ask.input == ("dtmf", "speech")
    assert main.keys_prompt
    assert ask.keys_prompt
    assert "أو قل" in main.prompt  # the caller is told they may speak
    # the acceptance phrase: "المواعيد" reaches the opening hours, and only option 2 has it
    assert "المواعيد" in main.phrases["2"]
    assert main.options[match_option("المواعيد", main.phrases) or ""] == "opening_hours"
    assert all("المواعيد" not in p for k, p in main.phrases.items() if k != "2")
    assert set(main.phrases) == set(main.options)
    assert any(p.isascii() for p in main.phrases["2"])  # English synonyms too
    assert main.options[match_option("I need an appointment", main.phrases) or ""] == (
        "recording_notice"
    )
    assert spoken_digits("واحد اثنين ثلاثة أربعة خمسة ستة") == "123456"
    assert (ask.num_digits, ask.pattern) == (6, "[0-9]{6}")
    raw = tomllib.loads(EXAMPLE.read_text("utf-8"))
    assert validate_flow(raw, source="clinic.toml") == []
