"""Flow diagrams: Mermaid for GitHub, Graphviz DOT, PNG through ``dot``."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.ivr
from bridge.errors import BridgeError
from bridge.ivr.flow import Flow, Gather, Hangup, Menu, Say, Transfer, Webhook
from bridge.ivr.graph import render_png, to_dot, to_mermaid
from bridge.ivr.load import load_flow

EXAMPLE = Path(bridge.ivr.__file__).parent / "examples" / "clinic.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Every transition of the example flow: (from, label, to).
EXAMPLE_EDGES = [
    ("welcome", "next", "main_menu"),
    ("main_menu", '1 / "موعدي", "موعد", "حجز", …', "recording_notice"),
    ("main_menu", '2 / "المواعيد", "أوقات الدوام", "ساعات العمل", …', "opening_hours"),
    ("main_menu", '3 / "إنجليزي", "الإنجليزية", "English"', "english_menu"),
    ("main_menu", '0 / "الاستقبال", "موظف", "reception"', "reception"),
    ("main_menu", "timeout/invalid", "goodbye"),
    ("recording_notice", "next", "ask_file_number"),
    ("ask_file_number", "next", "lookup_appointment"),
    ("ask_file_number", "timeout/invalid", "reception"),
    ("lookup_appointment", "found", "appointment_found"),
    ("lookup_appointment", "not_found", "file_not_found"),
    ("lookup_appointment", "next", "reception"),
    ("lookup_appointment", "fallback", "reception"),
    ("appointment_found", "next", "goodbye"),
    ("file_not_found", "next", "main_menu"),
    ("opening_hours", "next", "hours_menu"),
    ("hours_menu", "9", "main_menu"),
    ("hours_menu", "timeout/invalid", "goodbye"),
    ("english_menu", "1", "english_hours"),
    ("english_menu", "0", "english_reception"),
    ("english_menu", "9", "main_menu"),
    ("english_menu", "timeout/invalid", "english_goodbye"),
    ("english_hours", "next", "english_menu"),
]

SMALL = Flow(
    start="hi",
    name="small",
    nodes={
        "hi": Say(text='Say "hi" & <b>#1</b> | `x`\nمرحبا', next="menu"),
        "menu": Menu(prompt="Press * or #", options={"*": "ask", "#": "bye"}, on_failure="bye"),
        "ask": Gather(prompt="Code?", store="code", next="hook", num_digits=4),
        "hook": Webhook(
            url="https://example.com/h", fallback="desk", branches={"vip|gold": "desk"}
        ),
        "desk": Transfer(to="sip:desk@pbx.example.com"),
        "bye": Hangup(),
    },
)


@pytest.fixture(scope="module")
def example() -> Flow:
    return load_flow(EXAMPLE)


def _mermaid_ids(text: str) -> dict[str, str]:
    """Node name → Mermaid id, read back from the node lines."""
    pattern = r'^ {4}(n\d+)\W{1,2}"([^" ]+) \(\w+(?: · speech(?: only)?)?\)<br/>'
    return {name: node_id for node_id, name in re.findall(pattern, text, re.M)}


def test_mermaid_small_flow_exactly() -> None:
    assert to_mermaid(SMALL) == (
        "flowchart TD\n"
        "    %% IVR flow small\n"
        '    start(("start"))\n'
        '    n0["hi (say)<br/>Say #quot;hi#quot; #amp; #lt;b#gt;#35;1#lt;/b#gt; '
        '#124; #96;x#96; مرحبا"]\n'
        '    n1{"menu (menu)<br/>Press * or #35;"}\n'
        '    n2[/"ask (gather)<br/>Code?"/]\n'
        '    n3{{"hook (webhook)<br/>POST https://example.com/h"}}\n'
        '    n4[["desk (transfer)<br/>→ sip:desk@pbx.example.com"]]\n'
        '    n5(["bye (hangup)<br/>(silent)"])\n'
        "    start --> n0\n"
        '    n0 -->|"next"| n1\n'
        '    n1 -->|"*"| n2\n'
        '    n1 -->|"#35;"| n5\n'
        '    n1 -->|"timeout/invalid"| n5\n'
        '    n2 -->|"next"| n3\n'
        '    n3 -->|"vip#124;gold"| n4\n'
        '    n3 -->|"fallback"| n4\n'
    )


def test_mermaid_has_every_node_and_edge_of_the_example(example: Flow) -> None:
    text = to_mermaid(example)
    assert text.startswith("flowchart TD\n")
    ids = _mermaid_ids(text)
    assert list(ids) == list(example.nodes)
    listening = {"main_menu", "ask_file_number"}
    for name, node in example.nodes.items():
        kind = type(node).__name__.lower() + (" · speech" if name in listening else "")
        assert f'"{name} ({kind})<br/>' in text
    assert f"    start --> {ids['welcome']}\n" in text
    edge_lines = [line for line in text.splitlines() if "-->|" in line]
    assert edge_lines == [
        f'    {ids[src]} -->|"{label.replace(chr(34), "#quot;")}"| {ids[dst]}'
        for src, label, dst in EXAMPLE_EDGES
    ]
    assert text.endswith(f"    class {ids['main_menu']},{ids['ask_file_number']} speech\n")


def test_mermaid_shapes_follow_the_node_type(example: Flow) -> None:
    text = to_mermaid(example)
    ids = _mermaid_ids(text)
    shapes = {
        "welcome": ('["', '"]'),
        "main_menu": ('{"', '"}'),
        "ask_file_number": ('[/"', '"/]'),
        "lookup_appointment": ('{{"', '"}}'),
        "reception": ('[["', '"]]'),
        "goodbye": ('(["', '"])'),
    }
    for name, (opening, closing) in shapes.items():
        line = next(line for line in text.splitlines() if line.startswith(f"    {ids[name]}"))
        assert line.startswith(f"    {ids[name]}{opening}")
        assert line.endswith(closing)


def test_mermaid_labels_keep_arabic_and_excerpt_long_prompts(example: Flow) -> None:
    text = to_mermaid(example)
    assert "أهلاً وسهلاً" in text  # the welcome prompt, not escaped
    assert "{appointment_date}" in text
    for line in text.splitlines()[3:]:
        if "<br/>" in line:
            excerpt = line.split("<br/>", 1)[1].rsplit('"', 1)[0]
            assert len(excerpt) <= 40


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80), st.text(min_size=1, max_size=12))
def test_any_text_or_name_keeps_each_mermaid_label_one_quoted_string(
    text: str, branch: str
) -> None:
    flow = Flow(
        start="a",
        nodes={
            "a": Say(text=text, next="b"),
            "b": Webhook(url="https://x.io", fallback="a", branches={branch: "a"}),
        },
    )
    for line in to_mermaid(flow).splitlines()[1:]:
        assert "\n" not in line
        if line.startswith("    %%"):
            continue
        # Quotes only delimit labels: two per node line, two per labelled edge.
        assert line.count('"') in (0, 2, 4)
        assert "|" not in line.replace('-->|"', "").replace('"| ', "")


def test_dot_has_every_node_and_edge_of_the_example(example: Flow) -> None:
    text = to_dot(example)
    assert text.startswith('digraph "clinic" {\n')
    assert text.rstrip().endswith("}")
    pattern = r'^ {4}(n\d+) \[shape=\w+(?:, peripheries=2)?, label="(\w+) \('
    ids = {name: node_id for node_id, name in re.findall(pattern, text, re.M)}
    assert list(ids) == list(example.nodes)
    edge_lines = [line for line in text.splitlines() if "->" in line and "[label=" in line]
    assert edge_lines == [
        f'    {ids[src]} -> {ids[dst]} [label="{label.replace(chr(34), chr(92) + chr(34))}"];'
        for src, label, dst in EXAMPLE_EDGES
    ]
    double = [line.split()[0] for line in text.splitlines() if "peripheries=2" in line]
    assert double == [ids["main_menu"], ids["ask_file_number"]]
    assert f"    start -> {ids['welcome']};" in text


def test_dot_escapes_quotes_and_backslashes() -> None:
    flow = Flow(
        start='say "x"',
        nodes={'say "x"': Hangup(text='a "quoted" C:\\path\nمع السلامة')},
    )
    text = to_dot(flow)
    assert 'label="say \\"x\\" (hangup)\\na \\"quoted\\" C:\\\\path مع السلامة"' in text
    assert "shape=octagon" in text


def test_render_png_returns_false_without_dot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, example: Flow
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "flow.png"
    assert render_png(example, out) is False
    assert not out.exists()


FAKE_DOT = """\
import pathlib, sys
dot = sys.stdin.read()
pathlib.Path(sys.argv[0]).with_name("seen.dot").write_text(dot)
pathlib.Path(sys.argv[0]).with_name("argv").write_text(" ".join(sys.argv[1:-1]))
if "FAIL" in dot:
    sys.stderr.write("Error: syntax error in line 1")
    sys.exit(1)
pathlib.Path(sys.argv[-1]).write_bytes(b"\\x89PNG\\r\\n\\x1a\\n")
"""


@pytest.fixture
def fake_dot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A stand-in ``dot`` on PATH that records its input (for machines without Graphviz)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dot"
    script.write_text(f"#!{sys.executable}\n{FAKE_DOT}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_render_png_pipes_the_dot_text_to_dot(
    fake_dot: Path, tmp_path: Path, example: Flow
) -> None:
    out = tmp_path / "flow.png"
    assert render_png(example, out) is True
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert (fake_dot / "seen.dot").read_text() == to_dot(example)
    assert (fake_dot / "argv").read_text() == "-Tpng -o"


def test_render_png_reports_a_dot_failure(fake_dot: Path, tmp_path: Path) -> None:
    flow = Flow(start="a", nodes={"a": Hangup(text="FAIL")})
    with pytest.raises(BridgeError, match="dot failed with exit code 1: Error: syntax error"):
        render_png(flow, tmp_path / "flow.png")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot is not installed")
def test_render_png_with_the_real_dot(tmp_path: Path, example: Flow) -> None:
    out = tmp_path / "flow.png"
    assert render_png(example, out) is True
    assert out.read_bytes().startswith(PNG_MAGIC)
