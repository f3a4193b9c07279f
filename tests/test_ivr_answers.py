"""What an answer means at a menu or a gather (``bridge.ivr.answers``): the runner's decisions,
pure. How a whole call acts on them (the caller speaking, pressing keys, speech-to-text failing)
is tested end to end in ``tests/test_e2e_ivr_speech.py``."""

from __future__ import annotations

import pytest

from bridge.calls.context import Heard, Input, NotUnderstood
from bridge.ivr.answers import Answer, gather_answer, gather_valid, menu_answer
from bridge.ivr.flow import Gather, Menu

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
