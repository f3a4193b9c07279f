"""Draw a flow: Mermaid (renders on GitHub), Graphviz DOT, and a PNG through ``dot``.

One graph node per flow node, shaped by type, labelled with its name, its type and a short
excerpt of what it says (or where it transfers / posts to). Edges carry the keypad digit, the
webhook branch name, ``next``, ``fallback``, or ``timeout/invalid`` for the path taken after
the last failed attempt of a menu or gather (``on_failure``).

Speech: a menu option's phrases follow its key on the edge (``2 / "المواعيد", "hours"``; at
most ``PHRASES_SHOWN`` of them, then ``…``), and a node that takes speech says so after its type
(``main_menu (menu · speech)``; ``speech only`` when it takes no keys) — in Mermaid it also gets
the ``speech`` class, in DOT a double outline.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import BridgeError
from bridge.ivr.flow import Flow, Gather, Hangup, Menu, Node, Say, Transfer, Webhook

__all__ = ["Edge", "edges", "render_png", "to_dot", "to_mermaid"]

EXCERPT_CHARS = 40
FAILURE_LABEL = "timeout/invalid"
PHRASES_SHOWN = 3
_SPACE = re.compile(r"\s+")

# Mermaid shapes: (open, close) around the quoted label.
_MERMAID_SHAPES: dict[type, tuple[str, str]] = {
    Say: ("[", "]"),
    Menu: ("{", "}"),
    Gather: ("[/", "/]"),
    Transfer: ("[[", "]]"),
    Webhook: ("{{", "}}"),
    Hangup: ("([", "])"),
}
_DOT_SHAPES: dict[type, str] = {
    Say: "box",
    Menu: "diamond",
    Gather: "parallelogram",
    Transfer: "cds",
    Webhook: "hexagon",
    Hangup: "octagon",
}
# Mermaid entity codes (``#name;``) for every character that could end or confuse a label.
_MERMAID_ENTITIES = {
    "#": "#35;",
    "&": "#amp;",
    '"': "#quot;",
    "<": "#lt;",
    ">": "#gt;",
    "|": "#124;",
    "`": "#96;",
}


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    label: str


def edges(flow: Flow) -> list[Edge]:
    """Every transition of the flow, in node order, labelled as the diagrams show them."""
    out: list[Edge] = []
    for name, node in flow.nodes.items():
        for label, target in _transitions(node):
            if target:
                out.append(Edge(name, target, label))
    return out


def _transitions(node: Node) -> list[tuple[str, str]]:
    match node:
        case Say(next=next_):
            return [("next", next_)]
        case Menu(options=options, phrases=phrases, on_failure=on_failure):
            labelled = [(_option_label(key, phrases.get(key, ())), t) for key, t in options.items()]
            return [*labelled, (FAILURE_LABEL, on_failure)]
        case Gather(next=next_, on_failure=on_failure):
            return [("next", next_), (FAILURE_LABEL, on_failure)]
        case Webhook(branches=branches, next=next_, fallback=fallback):
            return [*branches.items(), ("next", next_), ("fallback", fallback)]
        case Transfer() | Hangup():
            return []


def _option_label(key: str, phrases: tuple[str, ...]) -> str:
    if not phrases:
        return key
    shown = ", ".join(f'"{_SPACE.sub(" ", p).strip()}"' for p in phrases[:PHRASES_SHOWN])
    return f"{key} / {shown}" + (", …" if len(phrases) > PHRASES_SHOWN else "")


def _listens(node: Node) -> bool:
    return isinstance(node, Menu | Gather) and node.takes_speech


def _kind(node: Node) -> str:
    kind = type(node).__name__.lower()
    if isinstance(node, Menu | Gather) and node.takes_speech:
        return f"{kind} · speech" + ("" if node.takes_keys else " only")
    return kind


def _excerpt(node: Node) -> str:
    match node:
        case Say(text=text) | Hangup(text=text):
            words = text or "(silent)"
        case Menu(prompt=prompt) | Gather(prompt=prompt):
            words = prompt
        case Transfer(to=to, message=message):
            words = f"→ {to}" + (f" · {message}" if message else "")
        case Webhook(url=url):
            words = f"POST {url}"
    words = _SPACE.sub(" ", words).strip()
    return words if len(words) <= EXCERPT_CHARS else words[: EXCERPT_CHARS - 1].rstrip() + "…"


def _ids(flow: Flow) -> dict[str, str]:
    # Positional ids: node names may hold any character (or be a Mermaid keyword like "end").
    return {name: f"n{index}" for index, name in enumerate(flow.nodes)}


# --- Mermaid -----------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    text = _SPACE.sub(" ", text)
    return "".join(_MERMAID_ENTITIES.get(ch, ch) for ch in text)


def to_mermaid(flow: Flow) -> str:
    """A Mermaid ``flowchart TD`` of the flow (paste into a ```mermaid block on GitHub)."""
    ids = _ids(flow)
    lines = [
        "flowchart TD",
        f"    %% IVR flow {_SPACE.sub(' ', flow.name)}",
        '    start(("start"))',
    ]
    for name, node in flow.nodes.items():
        opening, closing = _MERMAID_SHAPES[type(node)]
        label = "<br/>".join(
            _mermaid_text(part) for part in (f"{name} ({_kind(node)})", _excerpt(node))
        )
        lines.append(f'    {ids[name]}{opening}"{label}"{closing}')
    lines.append(f"    start --> {ids[flow.start]}")
    for edge in edges(flow):
        source, target = ids[edge.source], ids[edge.target]
        lines.append(f'    {source} -->|"{_mermaid_text(edge.label)}"| {target}')
    listening = [ids[name] for name, node in flow.nodes.items() if _listens(node)]
    if listening:
        lines.append("    classDef speech stroke-width:3px,stroke-dasharray:6 3")
        lines.append(f"    class {','.join(listening)} speech")
    return "\n".join(lines) + "\n"


# --- Graphviz ----------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    text = _SPACE.sub(" ", text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_dot(flow: Flow) -> str:
    """A Graphviz ``digraph`` of the flow (``dot -Tpng``, ``dot -Tsvg``)."""
    ids = _ids(flow)
    lines = [
        f"digraph {_dot_string(flow.name)} {{",
        "    rankdir=TB;",
        '    node [fontname="sans-serif", fontsize=11];',
        '    edge [fontname="sans-serif", fontsize=10];',
        '    start [shape=circle, label="start", style=filled, fillcolor="#dddddd"];',
    ]
    for name, node in flow.nodes.items():
        # A DOT "\n" inside a quoted label is a line break: join after escaping.
        label = "\\n".join(
            _dot_string(part)[1:-1] for part in (f"{name} ({_kind(node)})", _excerpt(node))
        )
        extra = ", peripheries=2" if _listens(node) else ""
        lines.append(f'    {ids[name]} [shape={_DOT_SHAPES[type(node)]}{extra}, label="{label}"];')
    lines.append(f"    start -> {ids[flow.start]};")
    for edge in edges(flow):
        source, target = ids[edge.source], ids[edge.target]
        lines.append(f"    {source} -> {target} [label={_dot_string(edge.label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_png(flow: Flow, path: Path) -> bool:
    """Write the flow as a PNG with Graphviz ``dot``; False when ``dot`` is not installed."""
    dot = shutil.which("dot")
    if dot is None:
        return False
    try:
        subprocess.run(  # noqa: S603 - a fixed argv (no shell); the input is our own DOT text
            [dot, "-Tpng", "-o", str(path)],
            input=to_dot(flow).encode(),
            capture_output=True,
            check=True,
            timeout=60,
        )
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip()
        raise BridgeError(f"dot failed with exit code {exc.returncode}: {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BridgeError("dot did not finish within 60 s") from exc
    return True
