"""What a menu's or a gather's answer means: the runner's decisions, pure (no I/O, no time).

The runner waits for an answer (``CallContext.key`` for a keys-only node; ``next_input`` for a
node that takes speech), asks ``menu_answer`` / ``gather_answer`` what it means, and acts:

========== ================================================================================
action     what the runner does
========== ================================================================================
next       go to ``Answer.next`` (a menu's option; a gather stores ``Answer.value`` first)
collect    a gather's first key: read the rest of the digits from the keypad, as before
invalid    a key that is no option, a transcript that names none or holds no valid digits:
           the node's ``invalid`` text and a retry (a failure)
no_input   nothing within ``timeout``: the ``no_input`` text (a menu) and a retry (a failure)
fallback   speech-to-text failed (``NotUnderstood``): speech off for the rest of this visit,
           ``keys_prompt`` (or the prompt) said again, keys only; not a failure
ignore     a key at a node that takes speech only, while it still listens: dropped
========== ================================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bridge.calls.context import Heard, Input, NotUnderstood
from bridge.ivr.flow import Gather, Menu
from bridge.ivr.speech_match import match_option, spoken_digits

__all__ = [
    "Action",
    "Answer",
    "MatchResult",
    "accepts_keys",
    "gather_answer",
    "gather_valid",
    "menu_answer",
]

Action = Literal["next", "collect", "invalid", "no_input", "fallback", "ignore"]
MatchResult = Literal["matched", "no_match", "digits", "invalid"]
"""What a speech answer came to (``CallContext.record_match``; logs and metrics, never the
transcript): a menu ``matched`` an option or found ``no_match``; a gather read valid ``digits``
or an ``invalid`` answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    action: Action
    next: str | None = None
    """The node to go to (``next`` only)."""
    value: str | None = None
    """The key pressed or chosen by speech (a menu), the key or the digits said (a gather)."""
    match: MatchResult | None = None
    """Set for a speech answer (``Heard``) only."""

    @property
    def spoken(self) -> bool:
        return self.match is not None


def accepts_keys(node: Menu | Gather, *, listening: bool) -> bool:
    """Keys answer the node: it takes ``dtmf``, or it stopped listening (the speech fallback)."""
    return node.takes_keys or not listening


def menu_answer(node: Menu, got: Input | None, *, listening: bool) -> Answer:
    """What ``got`` means at ``node``; ``listening``: speech is still on for this visit."""
    if got is None:
        return Answer("no_input")
    if isinstance(got, NotUnderstood):
        return Answer("fallback")
    if isinstance(got, Heard):
        choices = {key: node.phrases.get(key, ()) for key in node.options}
        key = match_option(got.text, choices)
        if key is None:
            return Answer("invalid", match="no_match")
        return Answer("next", next=node.options[key], value=key, match="matched")
    if not accepts_keys(node, listening=listening):
        return Answer("ignore", value=got)
    if got in node.options:
        return Answer("next", next=node.options[got], value=got)
    return Answer("invalid", value=got)


def gather_valid(node: Gather, entered: str) -> bool:
    """Digits the gather accepts: its ``pattern`` matches all of them (without one: any digits,
    exactly ``num_digits`` of them when set). The same rule for keys and for speech."""
    if node.pattern:
        return re.fullmatch(node.pattern, entered) is not None
    return bool(entered) and (node.num_digits is None or len(entered) == node.num_digits)


def gather_answer(node: Gather, got: Input | None, *, listening: bool) -> Answer:
    """What ``got`` (the first answer after the prompt) means at ``node``."""
    if got is None:
        return Answer("no_input")
    if isinstance(got, NotUnderstood):
        return Answer("fallback")
    if isinstance(got, Heard):
        digits = spoken_digits(got.text)
        if gather_valid(node, digits):
            return Answer("next", next=node.next, value=digits, match="digits")
        return Answer("invalid", match="invalid")
    if not accepts_keys(node, listening=listening):
        return Answer("ignore", value=got)
    return Answer("collect", value=got)
