"""A flow is named the same way everywhere — a file, or a shipped example (``clinic``) — and an
error names where the user wrote it: ``BRIDGE_IVR_FLOW`` or ``demo --flow``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.ivr.feature import load_ivr_script
from bridge.ivr.load import EXAMPLES, load_flow
from bridge.ivr.runner import FlowRunner
from bridge.settings import Settings

SERVING = {
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "auth-token",
    "HAMSA_API_KEY": "hamsa-key",
    "BRIDGE_PUBLIC_URL": "https://bridge.example.com",
}
BROKEN = '[flow]\nstart = "nowhere"\n'


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures the root logger for its command: give the next test the original."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def run(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]
) -> tuple[int, str]:
    code = main(argv, env)
    return code, capsys.readouterr().err


def test_bridge_ivr_flow_takes_the_name_of_a_shipped_example() -> None:
    settings = Settings.from_env({**SERVING, "BRIDGE_IVR_FLOW": "clinic"})
    script = load_ivr_script(settings)
    assert isinstance(script, FlowRunner)
    assert script.flow == load_flow(EXAMPLES / "clinic.toml")


def test_a_file_wins_over_an_example_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = '[flow]\nname = "mine"\nstart = "bye"\n[nodes.bye]\ntype = "hangup"\n'
    (tmp_path / "clinic").write_text(own, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    script = load_ivr_script(Settings.from_env({**SERVING, "BRIDGE_IVR_FLOW": "clinic"}))
    assert isinstance(script, FlowRunner)
    assert script.flow.name == "mine"


def test_an_unknown_name_in_bridge_ivr_flow_names_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run(capsys, ["serve", "--port", "0"], {**SERVING, "BRIDGE_IVR_FLOW": "clinc"})
    assert code == 2
    assert err.startswith("hamsa-bridge: BRIDGE_IVR_FLOW clinc: no such flow file (")
    assert "no shipped example of that name (the examples: clinic)" in err
    assert "--flow" not in err


def test_an_invalid_flow_in_bridge_ivr_flow_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN, encoding="utf-8")
    code, err = run(capsys, ["serve", "--port", "0"], {**SERVING, "BRIDGE_IVR_FLOW": str(path)})
    assert code == 2
    assert err.startswith(f"hamsa-bridge: BRIDGE_IVR_FLOW {path} is invalid:\n  {path}")
    assert "missing [nodes]" in err


def test_demo_flow_errors_name_the_option_even_with_bridge_ivr_flow_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"BRIDGE_IVR_FLOW": "clinic"}  # valid, and not what the user asked the demo for
    code, err = run(capsys, ["demo", "--fast", "--flow", "clinc"], env)
    assert code == 2
    assert err.startswith("hamsa-bridge: --flow clinc: no such flow file (")
    assert "BRIDGE_IVR_FLOW" not in err
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN, encoding="utf-8")
    code, err = run(capsys, ["demo", "--fast", "--flow", str(path)], env)
    assert code == 2
    assert err.startswith(f"hamsa-bridge: --flow {path} is invalid:\n  {path}")
    assert "BRIDGE_IVR_FLOW" not in err
