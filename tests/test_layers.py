"""The import layers (``[tool.importlinter]`` in ``pyproject.toml``), checked by ``lint-imports``
as CI does, and shown to bite: a forbidden import in a copy of the tree breaks the contract, and
every module of ``bridge`` must sit in a layer (a layer line removed leaves modules unplaced)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_of_the_tree(tmp_path: Path) -> Path:
    for name in ("bridge", "twiml"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return list(contract["layers"])


def test_the_contracts_hold() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" not in done.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "line", "complaint"),
    [
        (
            "bridge/protocols/hamsa_client.py",
            "import bridge.app",
            "bridge.protocols is not allowed to import bridge.app",
        ),
        ("bridge/calls/speech.py", "import bridge.ivr.flow", "bridge.calls is not allowed"),
        ("bridge/app.py", "import bridge.dev.tone", "bridge.app is not allowed to import"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tmp_path: Path, module: str, line: str, complaint: str
) -> None:
    tree = copy_of_the_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    done = lint(tree)
    assert done.returncode != 0
    assert complaint in done.stdout.replace("\n", " ")


def test_every_module_of_bridge_is_in_a_layer() -> None:
    placed = {
        name.strip()
        for layer in layers()
        for name in layer.replace("|", ":").split(":")
        if name.strip()
    }
    modules = {
        f"bridge.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "bridge").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__")
        or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert modules - placed == set()
    assert placed - modules - {"twiml"} == set()  # no stale names either
