"""Every ``hamsa-bridge`` command's ``--help`` follows ``bridge.cli_format``'s conventions.

The test walks whatever ``build_parser()`` holds (every level, every command added later
included): each parser has a description, every argument has help, every default worth showing
is shown, every subcommand ends with examples, and every example parses.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator

import pytest

from bridge.cli import build_parser
from bridge.cli_format import says_nothing
from bridge.exit_codes import EXIT_CODES_HELP
from bridge.settings import Settings

SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(command words, parser)`` for ``parser`` and every parser under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


PARSERS = list(walk(build_parser()))
SUBPARSERS = [(path, parser) for path, parser in PARSERS if path]
ARGUMENTS = [
    (path, parser, action)
    for path, parser in PARSERS
    for action in parser._actions
    if not isinstance(action, SKIPPED_ACTIONS)
]


def command(path: tuple[str, ...]) -> str:
    return " ".join(("hamsa-bridge", *path))


def argument(action: argparse.Action) -> str:
    return "/".join(action.option_strings) or str(action.metavar or action.dest)


def rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text as ``--help`` prints it (the formatter's additions and ``%(default)s``
    expanded)."""
    return parser._get_formatter()._expand_help(action)


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The shell lines of ``parser``'s ``examples:`` section."""
    lines = (parser.epilog or "").split("examples:\n", 1)[-1].split("\n\n", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", lines)  # a line continued with a backslash
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_the_walk_finds_every_level() -> None:
    found = {command(path) for path, _ in PARSERS}
    for expected in (
        "hamsa-bridge",
        "hamsa-bridge serve",
        "hamsa-bridge twilio call-in",
        "hamsa-bridge ivr warm",
        "hamsa-bridge hamsa probe",
        "hamsa-bridge emulate-hamsa",
        "hamsa-bridge campaign",
    ):
        assert expected in found


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=[command(p) for p, _ in PARSERS])
def test_every_command_has_a_description(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert (parser.description or "").strip(), f"{command(path)} has no description"


@pytest.mark.parametrize(
    ("path", "parser", "action"),
    ARGUMENTS,
    ids=[f"{command(p)} {argument(a)}" for p, _, a in ARGUMENTS],
)
def test_every_argument_has_help(
    path: tuple[str, ...], parser: argparse.ArgumentParser, action: argparse.Action
) -> None:
    assert action.help not in (None, argparse.SUPPRESS), f"{command(path)} {argument(action)}"
    assert action.help.strip(), f"{command(path)} {argument(action)}"


@pytest.mark.parametrize(
    ("path", "parser", "action"),
    ARGUMENTS,
    ids=[f"{command(p)} {argument(a)}" for p, _, a in ARGUMENTS],
)
def test_every_default_worth_showing_is_shown(
    path: tuple[str, ...], parser: argparse.ArgumentParser, action: argparse.Action
) -> None:
    if says_nothing(action.default):
        return
    assert "default" in rendered_help(parser, action), f"{command(path)} {argument(action)}"


@pytest.mark.parametrize(
    ("path", "parser", "action"),
    ARGUMENTS,
    ids=[f"{command(p)} {argument(a)}" for p, _, a in ARGUMENTS],
)
def test_a_default_from_a_setting_names_a_real_setting_and_is_empty_in_python(
    path: tuple[str, ...], parser: argparse.ArgumentParser, action: argparse.Action
) -> None:
    for name in re.findall(r"default:? ([A-Z][A-Z0-9]*_[A-Z0-9_]+)", action.help or ""):
        assert name.lower() in Settings.model_fields, f"{command(path)}: no setting {name}"
        assert says_nothing(action.default), f"{command(path)} {argument(action)}"


@pytest.mark.parametrize(("path", "parser"), SUBPARSERS, ids=[command(p) for p, _ in SUBPARSERS])
def test_every_subcommand_ends_with_examples(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    assert "example" in (parser.epilog or ""), f"{command(path)} has no examples"


@pytest.mark.parametrize(("path", "parser"), PARSERS, ids=[command(p) for p, _ in PARSERS])
def test_every_example_is_a_command_that_parses(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    """Every example parses; the first is this command (later ones may show what follows it)."""
    lines = examples(parser)
    for number, line in enumerate(lines):
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
            words.pop(0)
        if ">" in words:  # a redirection
            words = words[: words.index(">")]
        assert words[0] == "hamsa-bridge", line
        if number == 0:
            assert words[1 : len(path) + 1] == list(path), f"{command(path)}: {line}"
        build_parser().parse_args(words[1:])  # SystemExit(2) if it does not


def test_the_top_level_help_describes_the_tool_lists_the_commands_and_the_exit_codes() -> None:
    text = build_parser().format_help()
    assert "``" not in text  # no code docstring
    assert "Twilio" in text
    assert "Hamsa" in text
    assert "hamsa-bridge demo" in text  # where a new user starts
    for name in ("serve", "demo", "doctor", "announce", "campaign", "emulate-hamsa"):
        assert f"\n    {name} " in text or f"\n    {name}\n" in text, name
    assert text.rstrip().endswith(EXIT_CODES_HELP.rstrip())


def test_serve_says_it_listens_on_every_interface_port_8080_by_default() -> None:
    serve = dict(SUBPARSERS)[("serve",)]
    text = serve.format_help()
    assert "(default: 0.0.0.0)" in text
    assert "(default: 8080)" in text
    assert "0.0.0.0:8080" in text
