"""The IVR flow model: what a flow file describes, as frozen dataclasses.

A flow is a start node and a mapping of node names to nodes. Every node that continues names the
next node(s) by name. Prompts may use ``{variables}``: ``{from}``, ``{to}``, ``{call_sid}``,
``{digits}`` (the last keys collected), any ``gather.store`` name, and any value a webhook
answered with. A prompt without ``{…}`` is *static*: its audio is cached and replayed.

A ``menu`` or ``gather`` may also take speech (``input = ["dtmf", "speech"]``): a menu option
then carries the phrases a caller may say for it (``phrases``), matched by
``bridge.ivr.speech_match``; a gather reads the digits said.

Loading and validation live in ``bridge.ivr.load`` (file → ``Flow`` or a list of located
errors); running a flow lives in ``bridge.ivr.runner``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from bridge.voice import Voice

InputKind = Literal["dtmf", "speech"]
INPUT_KINDS: tuple[InputKind, ...] = ("dtmf", "speech")
KEYS_ONLY: tuple[InputKind, ...] = ("dtmf",)

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(text: str) -> list[str]:
    """The ``{name}`` variables a prompt uses."""
    return _PLACEHOLDER.findall(text)


def is_static(text: str) -> bool:
    """True when a prompt has no variables: the same audio every time (cacheable)."""
    return not placeholders(text)


@dataclass(frozen=True, slots=True)
class VoiceOverride:
    """Per-flow or per-node voice fields; ``None`` inherits."""

    speaker: str | None = None
    dialect: str | None = None
    language: str | None = None

    def apply(self, base: Voice) -> Voice:
        return Voice(
            self.speaker or base.speaker,
            self.dialect or base.dialect,
            self.language or base.language,
        )


@dataclass(frozen=True, slots=True)
class Say:
    """Speak ``text``, then go to ``next``."""

    text: str
    next: str
    voice: VoiceOverride = VoiceOverride()
    barge_in: bool = True


class _TakesInput:
    """What a node that waits for the caller (a menu, a gather) answers about its ``input``."""

    __slots__ = ()
    input: tuple[InputKind, ...]

    @property
    def takes_speech(self) -> bool:
        return "speech" in self.input

    @property
    def takes_keys(self) -> bool:
        return "dtmf" in self.input


@dataclass(frozen=True, slots=True)
class Menu(_TakesInput):
    """A prompt and keypad options (digit → node); re-prompts on no input or an invalid key."""

    prompt: str
    options: dict[str, str]
    timeout: float = 5.0
    """Seconds to wait for a key after the prompt has played."""
    invalid: str = ""
    """Said after a key that is not an option (then the prompt again)."""
    no_input: str = ""
    """Said when no key came within ``timeout`` (then the prompt again)."""
    retries: int = 2
    """How many times the prompt is repeated after a failure before ``on_failure``."""
    on_failure: str = ""
    voice: VoiceOverride = VoiceOverride()
    barge_in: bool = True
    input: tuple[InputKind, ...] = KEYS_ONLY
    """What the caller may answer with: keys (``dtmf``), speech, or both."""
    phrases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Option key → what a caller may say to choose it (``options."2".say``); keys without
    phrases are absent."""
    speech_barge_in: bool = False
    """Caller speech during the prompt interrupts it (a speech node only)."""
    keys_prompt: str = ""
    """Said when speech-to-text fails and the node falls back to keys ("": the prompt)."""


@dataclass(frozen=True, slots=True)
class Gather(_TakesInput):
    """Collect digits (a fixed count, or until ``finish_on``), check them, store them."""

    prompt: str
    store: str
    next: str
    num_digits: int | None = None
    finish_on: str = "#"
    timeout: float = 5.0
    """Seconds to wait for the first key after the prompt has played."""
    inter_digit_timeout: float = 3.0
    pattern: str | None = None
    """A regular expression the whole input must match (``re.fullmatch``)."""
    invalid: str = ""
    retries: int = 2
    on_failure: str = ""
    voice: VoiceOverride = VoiceOverride()
    barge_in: bool = True
    input: tuple[InputKind, ...] = KEYS_ONLY
    """What the caller may answer with: keys (``dtmf``), spoken digits (``speech``), or both."""
    speech_barge_in: bool = False
    """Caller speech during the prompt interrupts it (a speech node only)."""
    keys_prompt: str = ""
    """Said when speech-to-text fails and the node falls back to keys ("": the prompt)."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """Say ``message``, then connect the caller to ``to`` (E.164 or ``sip:``) with ``<Dial>``."""

    to: str
    message: str = ""
    caller_id: str | None = None
    voice: VoiceOverride = VoiceOverride()


@dataclass(frozen=True, slots=True)
class Webhook:
    """POST the call's variables as JSON to ``url``; branch on the answer.

    The answer is JSON ``{"branch": NAME, "vars": {…}}``: ``branches[NAME]`` is next (``next``
    when the branch is absent or unknown); ``vars`` are merged into the call's variables. A
    timeout, a non-2xx status or a malformed answer goes to ``fallback``.
    """

    url: str
    fallback: str
    branches: dict[str, str] = field(default_factory=dict)
    next: str = ""
    timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class Hangup:
    """Say ``text`` (a goodbye), wait until it has been heard, end the call."""

    text: str = ""
    voice: VoiceOverride = VoiceOverride()


Node = Say | Menu | Gather | Transfer | Webhook | Hangup


@dataclass(frozen=True, slots=True)
class Flow:
    start: str
    nodes: dict[str, Node]
    voice: VoiceOverride = VoiceOverride()
    name: str = "flow"

    @property
    def takes_speech(self) -> bool:
        """A node of the flow listens to what the caller says (its calls decode inbound audio)."""
        return any(isinstance(n, Menu | Gather) and n.takes_speech for n in self.nodes.values())

    def static_prompts(self, base: Voice) -> list[tuple[str, Voice]]:
        """Every static text the flow can speak, with its voice (for warming the cache)."""
        return [(text, voice) for _, text, voice in self.static_prompt_sources(base)]

    def static_prompt_sources(self, base: Voice) -> list[tuple[str, str, Voice]]:
        """``static_prompts`` with where each text is first used (``main_menu.prompt``)."""
        out: list[tuple[str, str, Voice]] = []
        seen: set[tuple[str, Voice]] = set()
        for name, node in self.nodes.items():
            if isinstance(node, Webhook):
                continue
            voice = node.voice.apply(self.voice.apply(base))
            for field_name, text in _texts(node):
                if text and is_static(text) and (text, voice) not in seen:
                    seen.add((text, voice))
                    out.append((f"{name}.{field_name}", text, voice))
        return out


def _texts(node: Node) -> list[tuple[str, str]]:
    """A node's spoken texts, each with its field name."""
    match node:
        case Say(text=text):
            return [("text", text)]
        case Menu(prompt=prompt, invalid=invalid, no_input=no_input, keys_prompt=keys):
            return [
                ("prompt", prompt),
                ("invalid", invalid),
                ("no_input", no_input),
                ("keys_prompt", keys),
            ]
        case Gather(prompt=prompt, invalid=invalid, keys_prompt=keys):
            return [("prompt", prompt), ("invalid", invalid), ("keys_prompt", keys)]
        case Transfer(message=message):
            return [("message", message)]
        case Hangup(text=text):
            return [("text", text)]
        case Webhook():
            return []
