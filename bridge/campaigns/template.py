"""A campaign's text: a template with ``{name}`` variables filled from each CSV row.

Deliberately smaller than ``str.format``: a variable is a plain identifier (no attributes,
indexes or format specs, so a CSV cannot make the template reach into anything), ``{{`` and
``}}`` are literal braces, and every mistake is reported with its position before anything is
dialled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bridge.errors import AnnouncementInvalid

__all__ = ["Template"]

_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True, slots=True)
class Template:
    """Literal text and variables, in order: ``parts`` alternate literal, name, literal, …"""

    source: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        """Raises ``AnnouncementInvalid(field="text")`` naming the bad brace and its position."""
        parts: list[str] = []
        literal: list[str] = []
        pos = 0
        for match in _TOKEN.finditer(source):
            literal.append(source[pos : match.start()])
            pos = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
                continue
            name = match.group(1)
            if name is None:
                raise AnnouncementInvalid(
                    f"text: unmatched {token!r} at character {match.start() + 1} "
                    "(write {{ or }} for a literal brace)",
                    field="text",
                )
            name = name.strip()
            if not name.isidentifier():
                raise AnnouncementInvalid(
                    f"text: {{{match.group(1)}}} at character {match.start() + 1} is not a "
                    "variable name: use a CSV column name made of letters, digits and _ "
                    "(write {{ or }} for a literal brace)",
                    field="text",
                )
            parts.append("".join(literal))
            parts.append(name)
            literal = []
        literal.append(source[pos:])
        parts.append("".join(literal))
        return cls(source, tuple(parts))

    @property
    def variables(self) -> tuple[str, ...]:
        """The variable names used, each once, in order of first use."""
        return tuple(dict.fromkeys(self.parts[1::2]))

    def render(self, values: Mapping[str, str]) -> str:
        """The text for one row. Raises ``KeyError`` (the name) for a missing variable."""
        out: list[str] = []
        for i, part in enumerate(self.parts):
            out.append(values[part] if i % 2 else part)
        return "".join(out)
