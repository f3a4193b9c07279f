"""How every ``hamsa-bridge`` command's ``--help`` looks: one formatter and one way to add a
subcommand, so the conventions (a description, help on every option, defaults shown, an example
epilog) hold for all of them. ``tests/test_cli_help.py`` walks the parser and checks them."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs printed as written; ``(default: …)`` after every option that has
    a default. An option whose default comes from a setting says so in its help text instead
    (``default: TWILIO_PHONE_NUMBER``), and its Python default stays ``None``.

    Nothing is added for a default that says nothing (``None``, a flag's ``False``, a repeatable
    option's ``[]``) nor to a help text that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if says_nothing(action.default) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def says_nothing(default: object) -> bool:
    """A default not worth showing: ``None``, ``False``, ``[]`` or ``SUPPRESS`` (``0`` is shown)."""
    return default is None or default is False or default == [] or default == argparse.SUPPRESS


def add_command(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    *,
    summary: str,
    description: str = "",
    examples: str = "",
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Add subcommand ``name``: ``summary`` is the one line in the parent's list and the first
    line of its own ``--help``; ``description`` follows it; ``examples`` (shell lines, one a
    line; a common indentation is removed) end it."""
    epilog = kwargs.pop("epilog", "")
    if examples:
        epilog = (
            "examples:\n"
            + "\n".join(f"  {line}" for line in textwrap.dedent(examples).strip().splitlines())
            + ("\n\n" + epilog if epilog else "")
        )
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=summary + ("\n\n" + description.strip() if description else ""),
        epilog=epilog or None,
        formatter_class=HelpFormatter,
        **kwargs,
    )
    return parser
