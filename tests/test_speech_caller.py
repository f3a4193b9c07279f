"""The simulated caller's speech on the command line: ``hamsa-bridge call --say``."""

from __future__ import annotations

import pytest

from bridge.cli import build_parser


def test_say_takes_seconds_and_a_phrase_and_repeats() -> None:
    args = build_parser().parse_args(
        ["call", "--url", "http://127.0.0.1:8080/twiml/inbound", "--say", "2.0:المواعيد"]
        + ["--say", "5:نعم: غدا", "--answer", "say:المواعيد", "--answer", "12"]
    )
    assert args.say == [(2.0, "المواعيد"), (5.0, "نعم: غدا")]
    assert args.answer == ["say:المواعيد", "12"]


@pytest.mark.parametrize("value", ["المواعيد", "x:المواعيد", "-1:نعم", "2.0:", "2.0: "])
def test_say_refuses_what_is_not_seconds_and_a_phrase(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["call", "--url", "http://x/twiml/inbound", "--say", value])
    assert exit_info.value.code == 2
    assert "SECONDS:PHRASE" in capsys.readouterr().err
