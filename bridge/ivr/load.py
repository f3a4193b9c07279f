"""Load and validate IVR flow files (TOML) into the ``bridge.ivr.flow`` dataclasses.

``load_flow(path)`` reads a file; ``parse_flow(data, source=...)`` takes an already-parsed
mapping; both raise ``FlowInvalid`` carrying *every* problem found. ``validate_flow`` returns the
same list without raising (empty when the flow is valid).

Each problem is a ``FlowError(location, message)`` (both in ``bridge.errors``). The location is
the source and the dotted TOML path of the offending spot, keys quoted when they are not bare
identifiers::

    clinic.toml: nodes.main_menu.options."7": no node named "apointments" in [nodes] — ...
    clinic.toml: line 12, column 9: invalid TOML: Invalid value

A missing field is located at the table that should hold it (``nodes.main_menu``).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import ConfigError, FlowError, FlowInvalid
from bridge.ivr.flow import (
    INPUT_KINDS,
    Flow,
    Gather,
    Hangup,
    Menu,
    Node,
    Say,
    Transfer,
    VoiceOverride,
    Webhook,
    placeholders,
)
from bridge.ivr.speech_match import DIGIT_WORDS, normalise, phrase_key
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS
from bridge.protocols.twilio_ids import E164
from bridge.protocols.twilio_stream_server import is_dtmf_key

__all__ = [
    "BUILTIN_VARIABLES",
    "EXAMPLES",
    "MAX_TEXT_CHARS",
    "NODE_TYPES",
    "flow_path",
    "load_flow",
    "load_named_flow",
    "parse_flow",
    "validate_flow",
]

BUILTIN_VARIABLES = ("from", "to", "call_sid", "digits")
"""Variables every call has; prompts may also use ``gather.store`` names and webhook answers."""
NODE_TYPES = ("say", "menu", "gather", "transfer", "webhook", "hangup")

_KEYPAD = "0-9, * or #"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SIP = re.compile(r"sip:\S+")
_TOML_POSITION = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$", re.S
)
_REF_FIELDS = ("next", "on_failure", "fallback")
MAX_PHRASE_CHARS = 100
_BAD: Any = object()
"""Returned by a field parser for an invalid value (the error is already recorded)."""

Loc = tuple[object, ...]


EXAMPLES = Path(__file__).parent / "examples"
"""The shipped example flows: ``clinic`` names ``examples/clinic.toml``."""


def flow_path(name: str) -> Path:
    """A flow file, or the name of a shipped example (``clinic``)."""
    path = Path(name)
    if not path.exists() and (EXAMPLES / f"{name}.toml").exists():
        return EXAMPLES / f"{name}.toml"
    return path


def load_named_flow(name: str, *, source: str) -> Flow:
    """The flow ``name`` names (a file, or a shipped example: ``flow_path``), loaded and valid.

    ``source`` is where the user wrote the name (``--flow``, ``BRIDGE_IVR_FLOW``): a
    ``ConfigError`` starts with it, then says what is wrong (every problem of an invalid flow).
    """
    path = flow_path(name)
    if not path.exists():
        examples = ", ".join(sorted(p.stem for p in EXAMPLES.glob("*.toml")))
        raise ConfigError(
            f"{source} {name}: no such flow file ({path.absolute()}) and no shipped example of "
            f"that name (the examples: {examples})"
        )
    try:
        return load_flow(path)
    except FlowInvalid as exc:
        problems = "\n".join(f"  {e.location}: {e.message}" for e in exc.errors)
        raise ConfigError(f"{source} {name} is invalid:\n{problems}") from None


def load_flow(path: Path) -> Flow:
    """Read, parse and validate a TOML flow file; raise ``FlowInvalid`` on any problem."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise FlowInvalid([FlowError(source, f"cannot read the flow file: {reason}")]) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start}): save the flow file as UTF-8"
        raise FlowInvalid([FlowError(source, message)]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FlowInvalid([_toml_error(source, exc)]) from exc
    return parse_flow(data, source=source)


def parse_flow(data: Mapping[str, Any], *, source: str) -> Flow:
    """Build a ``Flow`` from parsed TOML; raise ``FlowInvalid`` listing every problem."""
    checker = _Checker(source)
    flow = checker.run(data)
    if checker.errors or flow is None:
        raise FlowInvalid(checker.errors)
    return flow


def validate_flow(data: Mapping[str, Any], *, source: str) -> list[FlowError]:
    """Every problem in parsed flow data, in file order; ``[]`` when the flow is valid."""
    checker = _Checker(source)
    checker.run(data)
    return checker.errors


def _toml_error(source: str, exc: tomllib.TOMLDecodeError) -> FlowError:
    match = _TOML_POSITION.match(str(exc))
    if match is None:
        return FlowError(source, f"invalid TOML: {exc}")
    where = f"line {match['line']}, column {match['col']}" if match["line"] else "end of document"
    return FlowError(f"{source}: {where}", f"invalid TOML: {match['msg']}")


# --- formatting --------------------------------------------------------------------------------


def _key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _quote(text: str, limit: int = 40) -> str:
    return json.dumps(text if len(text) <= limit else text[:limit] + "…", ensure_ascii=False)


def _describe(value: object) -> str:
    """A value as the error message names it: ``the string "5"``, ``-1``, ``a table``."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        return f"the string {_quote(value)}"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, datetime | date | time):
        return f"the date/time {value.isoformat()}"
    return f"a {type(value).__name__}"


def _suggest(word: object, candidates: Iterable[object]) -> str | None:
    names = [c for c in candidates if isinstance(c, str)]
    matches = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _did_you_mean(suggestion: str | None, wrap: str = '"{}"') -> str:
    return f" — did you mean {wrap.format(suggestion)}?" if suggestion is not None else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the checker ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    parse: Callable[[_Checker, Loc, Any], Any]
    required: bool = False


class _Checker:
    """One validation pass: records errors, collects edges, builds the flow if all is well."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[FlowError] = []
        self.names: list[Any] = []
        self.edges: dict[Any, list[Any]] = {}
        self.current: Any = None
        self.open_ended: set[Any] = set()
        """Nodes whose successors are unknown (a missing or malformed reference)."""
        self.variables: tuple[str, ...] | None = BUILTIN_VARIABLES
        """Variables a prompt may use; ``None`` when a webhook may set any variable."""

    def error(self, loc: Loc, message: str) -> None:
        where = "".join(
            f"[{part}]" if isinstance(part, int) else ("." if i else "") + _key(part)
            for i, part in enumerate(loc)
        )
        self.errors.append(FlowError(f"{self.source}: {where}" if where else self.source, message))

    def edge(self, target: Any) -> None:
        self.edges.setdefault(self.current, []).append(target)

    def open_end(self) -> None:
        """The current node may lead anywhere: do not call nodes after it unreachable."""
        self.open_ended.add(self.current)

    # --- whole file ---------------------------------------------------------------------------

    def run(self, data: object) -> Flow | None:
        if not isinstance(data, Mapping):
            self.error((), f"a flow must be a table with [flow] and [nodes], not {_describe(data)}")
            return None
        hints = self.fields((), data, ("flow", "nodes"), (), "a flow file has: [flow], [nodes]")
        raw_nodes = data.get("nodes")
        if isinstance(raw_nodes, Mapping):
            self.names = list(raw_nodes)
            self.prepare_variables(raw_nodes)
        elif "nodes" in data:
            self.error(("nodes",), f"must be a table of nodes, not {_describe(raw_nodes)}")
        elif "nodes" not in hints:
            self.error((), "missing [nodes]: a flow needs at least one node, e.g. [nodes.welcome]")

        start, name, voice = self.flow_table(data, hints)
        nodes: dict[Any, Node] = {}
        if isinstance(raw_nodes, Mapping):
            if not raw_nodes:
                self.error(("nodes",), "[nodes] is empty: a flow needs at least one node")
            for node_name, raw in raw_nodes.items():
                node = self.node(node_name, raw)
                if node is not None:
                    nodes[node_name] = node
        if start is not None:
            self.reachability(start)
        if self.errors or start is None or len(nodes) != len(self.names):
            return None
        flow = Flow(start=start, nodes=nodes, voice=voice, name=name)
        self.loops_without_input(flow)
        return None if self.errors else flow

    def loops_without_input(self, flow: Flow) -> None:
        """A cycle of say/webhook nodes never waits for the caller: the call would spin (e.g. a
        webhook whose fallback leads back to it while the service is down)."""
        graph: dict[str, list[str]] = {}
        for name, node in flow.nodes.items():
            if isinstance(node, Say):
                graph[name] = [node.next]
            elif isinstance(node, Webhook):
                graph[name] = [*node.branches.values(), node.next, node.fallback]
        reported: set[str] = set()
        for first in graph:
            stack, seen = [(first, [first])], {first}
            while stack:
                name, path = stack.pop()
                for target in graph.get(name, []):
                    if target == first and first not in reported:
                        reported.update(path)
                        self.error(
                            ("nodes", first),
                            "loop that never waits for the caller: "
                            + " → ".join([*path, first])
                            + " (put a menu or gather in it, or end it)",
                        )
                    elif target in graph and target not in seen:
                        seen.add(target)
                        stack.append((target, [*path, target]))

    def prepare_variables(self, raw_nodes: Mapping[Any, Any]) -> None:
        stores: list[str] = []
        for raw in raw_nodes.values():
            if not isinstance(raw, Mapping):
                continue
            if raw.get("type") == "webhook":
                self.variables = None
                return
            store = raw.get("store")
            if raw.get("type") == "gather" and isinstance(store, str) and store not in stores:
                stores.append(store)
        self.variables = BUILTIN_VARIABLES + tuple(s for s in stores if s not in BUILTIN_VARIABLES)

    def flow_table(
        self, data: Mapping[str, Any], hints: set[str]
    ) -> tuple[str | None, str, VoiceOverride]:
        """Check ``[flow]``; return the start node to walk from (or None), the name, the voice."""
        default_name = Path(self.source).stem or "flow"
        table = data.get("flow")
        if table is None:
            if "flow" not in hints:
                self.error(
                    (),
                    "missing [flow] table: it must name the start node, "
                    'e.g. [flow] start = "welcome"',
                )
            return None, default_name, VoiceOverride()
        if not isinstance(table, Mapping):
            self.error(("flow",), f'must be a table with start = "node", not {_describe(table)}')
            return None, default_name, VoiceOverride()
        loc: Loc = ("flow",)
        self.fields(
            loc, table, _FLOW_FIELDS, ("start",), "the [flow] table has: name, start, voice"
        )
        name = table.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            self.error((*loc, "name"), f"must be a non-empty string, not {_describe(name)}")
            name = default_name
        voice = _voice(self, (*loc, "voice"), table["voice"]) if "voice" in table else None
        if voice is None or voice is _BAD:
            voice = VoiceOverride()
        if "start" not in table:
            return None, name, voice
        start = table["start"]
        if not isinstance(start, str) or not start:
            self.error((*loc, "start"), f"must be a node name, not {_describe(start)}")
            return None, name, voice
        if start in self.names:
            return start, name, voice
        if not self.names:  # no usable [nodes]: already reported, nothing to compare with
            return None, name, voice
        suggestion = _suggest(start, self.names)
        self.error(
            (*loc, "start"),
            f"the start node {_quote(start)} is not in [nodes]{_did_you_mean(suggestion)}",
        )
        return suggestion, name, voice

    def fields(
        self,
        loc: Loc,
        table: Mapping[Any, Any],
        known: Sequence[str],
        required: Sequence[str],
        has: str,
    ) -> set[str]:
        """Report unknown keys (with the closest known one) and missing required keys.

        Returns the known names that an unknown key looks like a typo of: a missing field that
        is explained by a typo is not reported a second time.
        """
        hints: set[str] = set()
        for key in table:
            if key in known:
                continue
            suggestion = _suggest(key, known)
            if suggestion is not None:
                hints.add(suggestion)
                self.error(
                    (*loc, key), f"unknown field {_quote(str(key))}{_did_you_mean(suggestion)}"
                )
            else:
                self.error((*loc, key), f"unknown field {_quote(str(key))} ({has})")
        for name in required:
            if name not in table and name not in hints:
                self.error(loc, f"missing required field {_quote(name)}")
        return hints

    # --- nodes --------------------------------------------------------------------------------

    def node(self, name: Any, raw: object) -> Node | None:
        loc: Loc = ("nodes", name)
        self.current = name
        if not isinstance(name, str) or not name:
            self.error(loc, "a node name must be a non-empty string")
        if not isinstance(raw, Mapping):
            self.error(loc, f'must be a table with type = "say", "menu", …, not {_describe(raw)}')
            self.open_end()
            return None
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in _SPECS:
            self.bad_type(loc, raw)
            return None
        spec = _SPECS[kind]
        required = tuple(field for field, f in spec.items() if f.required)
        known = ("type", *spec)
        before = len(self.errors)
        hints = self.fields(loc, raw, known, required, f"a {kind} node has: {', '.join(known)}")
        values: dict[str, Any] = {}
        for field, f in spec.items():
            if field in raw:
                values[field] = f.parse(self, (*loc, field), raw[field])
            elif f.required and field in ("next", "fallback", "options"):
                self.open_end()
        if kind == "gather" and "num_digits" not in raw and raw.get("finish_on", "") == "":
            self.error(
                loc,
                "a gather needs num_digits or finish_on: without either it cannot tell when the "
                "caller has finished",
            )
        if (
            kind in ("menu", "gather")
            and "retries" in raw
            and "on_failure" not in raw
            and "on_failure" not in hints
        ):
            self.error(
                (*loc, "retries"),
                "retries is set but on_failure is missing: name the node to go to after the "
                "last failed attempt",
            )
        if kind in ("menu", "gather"):
            self.speech_rules(loc, kind, raw, values)
        if len(self.errors) != before:
            return None
        if isinstance(values.get("options"), _Options):
            options: _Options = values.pop("options")
            values["options"] = options.targets
            if options.said:
                values["phrases"] = options.said
        return _CLASSES[kind](**values)

    def speech_rules(
        self, loc: Loc, kind: str, raw: Mapping[Any, Any], values: dict[str, Any]
    ) -> None:
        """The fields of speech input that depend on each other (``input`` decides)."""
        kinds = values.get("input", ("dtmf",))
        if kinds is _BAD:
            return  # already reported: whether the node listens is unknown
        options = values.get("options")
        said = options.said if isinstance(options, _Options) else {}
        if "speech" not in kinds:
            why = 'only a node that takes speech has it: add input = ["dtmf", "speech"], or '
            for field in ("speech_barge_in", "keys_prompt"):
                if field in raw:
                    self.error((*loc, field), why + f"remove {field}")
            for key in said:
                self.error((*loc, "options", key, "say"), why + "remove say")
            return
        if kind == "gather" and "num_digits" not in raw and "pattern" not in raw:
            self.error(
                loc,
                "a gather that takes speech needs num_digits or pattern: the digits a caller "
                "says are checked against them (speech has no finish key)",
            )
        if kind != "menu" or not isinstance(options, _Options):
            return
        if not said:
            self.error(
                (*loc, "options"),
                'a menu that takes speech needs phrases: give its options say = ["…"], what a '
                'caller says to choose each (e.g. options."2" = { next = "hours", say = '
                '["المواعيد", "hours"] })',
            )
            return
        owner: dict[tuple[str, ...], str] = {}
        for key, phrases in said.items():
            for index, phrase in enumerate(phrases):
                where = (*loc, "options", key, "say", index)
                words = phrase_key(phrase)
                first = owner.setdefault(words, key)
                if first != key:
                    self.error(
                        where,
                        f"{_quote(phrase)} is also a phrase of option {_quote(first)} (phrases "
                        'compare normalised: case, diacritics, hamza forms and "ال" do not '
                        "count): a caller saying it would choose neither",
                    )
                digit = DIGIT_WORDS.get(normalise(phrase), normalise(phrase))
                if digit != key and digit in options.targets:
                    self.error(
                        where,
                        f"{_quote(phrase)} says the key of option {_quote(digit)}: a caller "
                        f"saying it would reach option {_quote(key)}, not {_quote(digit)}",
                    )

    def bad_type(self, loc: Loc, raw: Mapping[Any, Any]) -> None:
        kind = raw.get("type")
        types = ", ".join(NODE_TYPES)
        if "type" not in raw:
            self.error(loc, f'missing required field "type" (one of {types})')
        elif not isinstance(kind, str):
            self.error((*loc, "type"), f"must be one of {types}, not {_describe(kind)}")
        else:
            suggestion = _suggest(kind, NODE_TYPES)
            self.error(
                (*loc, "type"),
                f"unknown node type {_quote(kind)}{_did_you_mean(suggestion)} (types: {types})",
            )
        # Keep walking through the node's likely references so that its successors are not all
        # reported unreachable because of one bad type.
        for field in _REF_FIELDS:
            self.edge(raw.get(field))
        for field in ("options", "branches"):
            table = raw.get(field)
            if isinstance(table, Mapping):
                for target in table.values():
                    self.edge(target.get("next") if isinstance(target, Mapping) else target)

    def reachability(self, start: str) -> None:
        seen = {start}
        todo = [start]
        while todo:
            name = todo.pop()
            if name in self.open_ended:
                return  # a reachable node may lead anywhere: nothing is surely unreachable
            for target in self.edges.get(name, []):
                if isinstance(target, str) and target in self.names and target not in seen:
                    seen.add(target)
                    todo.append(target)
        for name in self.names:
            if name not in seen:
                self.error(
                    ("nodes", name),
                    f"unreachable: no path from the start node {_quote(start)} leads to this node",
                )


# --- field parsers: each records its errors and returns the value or _BAD -----------------------


def _ref(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        c.error(loc, f"must be a node name, not {_describe(value)}")
        c.open_end()
        return _BAD
    if value in c.names:
        c.edge(value)
        return value
    suggestion = _suggest(value, c.names)
    c.edge(suggestion)
    c.error(loc, f"no node named {_quote(value)} in [nodes]{_did_you_mean(suggestion)}")
    return _BAD


def _text(c: _Checker, loc: Loc, value: Any, *, required: bool = False) -> Any:
    if not isinstance(value, str):
        c.error(loc, f"must be a string, not {_describe(value)}")
        return _BAD
    ok = True
    if required and not value.strip():
        c.error(loc, "must not be empty: the caller would hear silence")
        ok = False
    elif value and not value.strip():
        c.error(loc, 'is only whitespace: write what to say, or "" for nothing')
        ok = False
    if len(value) > MAX_TEXT_CHARS:
        c.error(
            loc,
            f"is {len(value)} characters long: over Hamsa's limit of {MAX_TEXT_CHARS} per "
            "request, so it would be split into several requests — and far too long for a "
            "phone prompt; keep it to a sentence or two",
        )
        ok = False
    if c.variables is not None:
        for name in dict.fromkeys(placeholders(value)):
            if name not in c.variables:
                ok = False
                known = ", ".join(c.variables)
                hint = _did_you_mean(_suggest(name, c.variables), "{{{}}}")
                c.error(
                    loc,
                    f"placeholder {{{name}}} is never set{hint} (variables: {known}; a webhook's "
                    "answer could set others, but this flow has no webhook node)",
                )
    return value if ok else _BAD


def _spoken(c: _Checker, loc: Loc, value: Any) -> Any:
    return _text(c, loc, value, required=True)


def _optional_text(c: _Checker, loc: Loc, value: Any) -> Any:
    return _text(c, loc, value)


def _seconds(c: _Checker, loc: Loc, value: Any) -> Any:
    if _is_number(value) and math.isfinite(value) and value > 0:
        return float(value)
    c.error(loc, f"must be a number of seconds greater than 0, not {_describe(value)}")
    return _BAD


def _whole(minimum: int) -> Callable[[_Checker, Loc, Any], Any]:
    def parse(c: _Checker, loc: Loc, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        c.error(loc, f"must be a whole number >= {minimum}, not {_describe(value)}")
        return _BAD

    return parse


def _flag(c: _Checker, loc: Loc, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    c.error(loc, f"must be true or false, not {_describe(value)}")
    return _BAD


@dataclass(frozen=True, slots=True)
class _Options:
    """A menu's parsed options: key → node, and key → phrases for those that have ``say``."""

    targets: dict[str, str]
    said: dict[str, tuple[str, ...]]


def _options(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, Mapping):
        c.error(loc, f'must be a table of keypad key = "node", not {_describe(value)}')
        c.open_end()
        return _BAD
    if not value:
        c.error(loc, 'a menu needs at least one option, e.g. options = { "1" = "sales" }')
        c.open_end()
        return _BAD
    out: dict[str, str] = {}
    said: dict[str, tuple[str, ...]] = {}
    for key, target in value.items():
        ok = True
        if not is_dtmf_key(key):
            c.error(
                (*loc, key), f"option key {_quote(str(key))} is not a single keypad key ({_KEYPAD})"
            )
            ok = False
        if isinstance(target, Mapping):
            ref, phrases = _option_table(c, (*loc, key), target)
            if phrases is _BAD:
                ok = False
            elif phrases:
                said[key] = phrases
        else:
            ref = _ref(c, (*loc, key), target)
        if ok and ref is not _BAD:
            out[key] = ref
    return _Options(out, said) if len(out) == len(value) else _BAD


def _option_table(c: _Checker, loc: Loc, value: Mapping[Any, Any]) -> tuple[Any, Any]:
    """``{ next = "node", say = ["phrase", …] }``: the target, and the phrases (or ``()``)."""
    c.fields(loc, value, _OPTION_FIELDS, ("next",), "an option has: next, say")
    if "next" in value:
        ref = _ref(c, (*loc, "next"), value["next"])
    else:
        c.open_end()
        ref = _BAD
    if "say" not in value:
        return ref, ()
    return ref, _phrases(c, (*loc, "say"), value["say"])


def _phrases(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, list):
        c.error(
            loc,
            f'must be an array of phrases, e.g. say = ["المواعيد", "hours"], not '
            f"{_describe(value)}",
        )
        return _BAD
    if not value:
        c.error(loc, "is empty: list what a caller may say for this option, or remove say")
        return _BAD
    out: list[str] = []
    for index, phrase in enumerate(value):
        if not isinstance(phrase, str):
            c.error((*loc, index), f"must be a string, not {_describe(phrase)}")
        elif not phrase_key(phrase):
            c.error(
                (*loc, index),
                f"{_quote(phrase)} has no words once normalised (punctuation and diacritics "
                "do not count): write what a caller would say",
            )
        elif len(phrase) > MAX_PHRASE_CHARS:
            c.error(
                (*loc, index), f"is over {MAX_PHRASE_CHARS} characters: a phrase is a few words"
            )
        else:
            out.append(phrase)
    return tuple(out) if len(out) == len(value) else _BAD


def _input(c: _Checker, loc: Loc, value: Any) -> Any:
    kinds = ", ".join(f'"{kind}"' for kind in INPUT_KINDS)
    if not isinstance(value, list):
        c.error(loc, f"must be an array of {kinds} (either or both), not {_describe(value)}")
        return _BAD
    if not value:
        c.error(loc, f'must not be empty: list {kinds} or both (default ["dtmf"])')
        return _BAD
    out: list[str] = []
    for index, kind in enumerate(value):
        if not isinstance(kind, str):
            c.error((*loc, index), f"must be one of {kinds}, not {_describe(kind)}")
        elif kind not in INPUT_KINDS:
            hint = _did_you_mean(_suggest(kind, INPUT_KINDS))
            c.error((*loc, index), f"unknown input {_quote(kind)}{hint} (inputs: {kinds})")
        elif kind in out:
            c.error((*loc, index), f"{_quote(kind)} is listed twice")
        else:
            out.append(kind)
    return tuple(out) if len(out) == len(value) else _BAD


def _branches(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, Mapping):
        c.error(loc, f'must be a table of branch name = "node", not {_describe(value)}')
        c.open_end()
        return _BAD
    out: dict[str, str] = {}
    for key, target in value.items():
        ref = _ref(c, (*loc, key), target)
        if ref is not _BAD and isinstance(key, str):
            out[key] = ref
    return out if len(out) == len(value) else _BAD


def _voice(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, Mapping):
        c.error(
            loc, f"must be a table with speaker, dialect and/or language, not {_describe(value)}"
        )
        return _BAD
    c.fields(loc, value, _VOICE_FIELDS, (), "a voice has: speaker, dialect, language")
    out: dict[str, str] = {}
    for field in _VOICE_FIELDS:
        if field not in value:
            continue
        item = value[field]
        if isinstance(item, str) and item.strip():
            out[field] = item
        else:
            c.error((*loc, field), f"must be a non-empty string, not {_describe(item)}")
    if len(out) != sum(field in value for field in _VOICE_FIELDS):
        return _BAD
    return VoiceOverride(**out)


def _store(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        c.error(
            loc,
            "must be a variable name (letters, digits and _, not starting with a digit), "
            f"not {_describe(value)}",
        )
        return _BAD
    if value in BUILTIN_VARIABLES:
        builtins = ", ".join(f"{{{name}}}" for name in BUILTIN_VARIABLES)
        c.error(loc, f"{_quote(value)} is a built-in variable ({builtins}): choose another name")
        return _BAD
    return value


def _finish_on(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, str):
        c.error(loc, f"must be a keypad key ({_KEYPAD}) as a string, not {_describe(value)}")
        return _BAD
    if value == "" or is_dtmf_key(value):
        return value
    c.error(loc, f"finish_on {_quote(value)} is not a single keypad key ({_KEYPAD})")
    return _BAD


def _pattern(c: _Checker, loc: Loc, value: Any) -> Any:
    if not isinstance(value, str):
        c.error(loc, f"must be a regular expression as a string, not {_describe(value)}")
        return _BAD
    try:
        re.compile(value)
    except re.error as exc:
        c.error(loc, f"invalid regular expression: {exc}")
        return _BAD
    return value


def _dial_to(c: _Checker, loc: Loc, value: Any) -> Any:
    """``transfer.to``: the runner fills placeholders in it (a number a webhook answered)."""
    if isinstance(value, str) and placeholders(value) and not E164.fullmatch(value):
        return _text(c, loc, value, required=True)
    return _dial(c, loc, value)


def _dial(c: _Checker, loc: Loc, value: Any) -> Any:
    if isinstance(value, str) and (E164.fullmatch(value) or _SIP.fullmatch(value)):
        return value
    what = _quote(value) if isinstance(value, str) else _describe(value)
    c.error(
        loc,
        f"{what} is neither an E.164 number (like +966112345678) nor a SIP address "
        "(like sip:reception@pbx.example.com)",
    )
    return _BAD


def _url(c: _Checker, loc: Loc, value: Any) -> Any:
    if isinstance(value, str) and not any(ch.isspace() for ch in value):
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if ok:
            return value
    what = _quote(value) if isinstance(value, str) else _describe(value)
    c.error(loc, f"{what} is not an absolute http(s) URL (like https://example.com/ivr)")
    return _BAD


_FLOW_FIELDS = ("name", "start", "voice")
_OPTION_FIELDS = ("next", "say")
_VOICE_FIELDS = ("speaker", "dialect", "language")
_VOICE = _Field(_voice)
_BARGE_IN = _Field(_flag)
_SECONDS = _Field(_seconds)
_RETRIES = _Field(_whole(0))
_INPUT = _Field(_input)
_SPEECH_BARGE_IN = _Field(_flag)
_KEYS_PROMPT = _Field(_optional_text)
_SPECS: dict[str, dict[str, _Field]] = {
    "say": {
        "text": _Field(_spoken, required=True),
        "next": _Field(_ref, required=True),
        "voice": _VOICE,
        "barge_in": _BARGE_IN,
    },
    "menu": {
        "prompt": _Field(_spoken, required=True),
        "options": _Field(_options, required=True),
        "timeout": _SECONDS,
        "invalid": _Field(_optional_text),
        "no_input": _Field(_optional_text),
        "retries": _RETRIES,
        "on_failure": _Field(_ref),
        "voice": _VOICE,
        "barge_in": _BARGE_IN,
        "input": _INPUT,
        "speech_barge_in": _SPEECH_BARGE_IN,
        "keys_prompt": _KEYS_PROMPT,
    },
    "gather": {
        "prompt": _Field(_spoken, required=True),
        "store": _Field(_store, required=True),
        "next": _Field(_ref, required=True),
        "num_digits": _Field(_whole(1)),
        "finish_on": _Field(_finish_on),
        "timeout": _SECONDS,
        "inter_digit_timeout": _SECONDS,
        "pattern": _Field(_pattern),
        "invalid": _Field(_optional_text),
        "retries": _RETRIES,
        "on_failure": _Field(_ref),
        "voice": _VOICE,
        "barge_in": _BARGE_IN,
        "input": _INPUT,
        "speech_barge_in": _SPEECH_BARGE_IN,
        "keys_prompt": _KEYS_PROMPT,
    },
    "transfer": {
        "to": _Field(_dial_to, required=True),
        "message": _Field(_optional_text),
        "caller_id": _Field(_dial),
        "voice": _VOICE,
    },
    "webhook": {
        "url": _Field(_url, required=True),
        "fallback": _Field(_ref, required=True),
        "branches": _Field(_branches),
        "next": _Field(_ref),
        "timeout": _SECONDS,
    },
    "hangup": {
        "text": _Field(_optional_text),
        "voice": _VOICE,
    },
}
_CLASSES: dict[str, Callable[..., Node]] = {
    "say": Say,
    "menu": Menu,
    "gather": Gather,
    "transfer": Transfer,
    "webhook": Webhook,
    "hangup": Hangup,
}
