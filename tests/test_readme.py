"""The README as a newcomer meets it.

- Its exit-status table is ``bridge/exit_codes.py``'s, word for word.
- Every relative link in the README and in ``docs/`` leads to a file of the repository.
- The code blocks of the offline path (marked ``<!-- readme-test: NAME -->``) run exactly as
  written, in this order, in a copy of the repository with a fresh virtual environment: the
  quick start's demo, then the whole product offline (``examples/offline.sh``, ``.env``,
  configure, doctor, an inbound call, an announcement). This is the slow test of the suite
  (a ``pip install`` and two simulated calls): about a minute and a half.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from bridge.exit_codes import MEANING

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKED_BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```sh\n(.*?)\n```", re.DOTALL)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_the_exit_status_table_is_the_code_table() -> None:
    text = readme()
    table = text.split("<!-- exit-codes:", 1)[1].split("<!-- /exit-codes -->", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", table, re.MULTILINE)
    assert [(int(code), meaning) for code, meaning in rows] == [
        (code.value, meaning) for code, meaning in MEANING.items()
    ]


@pytest.mark.parametrize(
    "document",
    [README, *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda path: path.name,
)
def test_every_relative_link_leads_to_a_file(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (document.parent / path).exists():
            broken.append(target)
    assert broken == []


def test_the_offline_blocks_are_marked_in_reading_order() -> None:
    assert [name for name, _ in MARKED_BLOCK.findall(readme())] == ["quick-start", "offline"]


def _copy_of_the_repository(destination: Path) -> None:
    """What a fresh clone holds: the tracked files and the new ones git would not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the work tree
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _private_loopback_works() -> bool:
    """Whether ``unshare -rn`` gives this process a network namespace of its own (Linux, with
    user namespaces or as root) whose loopback can be brought up."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, check=False
    )
    return probe.returncode == 0


def _on_a_private_loopback(command: list[str], *, stop: str) -> list[str]:
    """``command`` in a network namespace with only a loopback (its servers' ports are its own),
    followed by ``stop`` in the same namespace whatever the command did; ``command`` unchanged
    where no such namespace can be made."""
    if not _private_loopback_works():
        return command
    script = 'ip link set lo up && { "$@"; status=$?; ' + stop + "; exit $status; }"
    return ["unshare", "-rn", "bash", "-c", script, "bash", *command]


@pytest.mark.timeout(900)
def test_the_offline_path_runs_as_written(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to copy")
    checkout = tmp_path / "hamsa-bridge"
    _copy_of_the_repository(checkout)
    blocks = dict(MARKED_BLOCK.findall(readme()))
    # A newcomer's shell: no settings of ours, no venv active, python3 on PATH.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("HAMSA_", "TWILIO_", "BRIDGE_", "VIRTUAL_ENV", "PYTHON"))
    }
    outputs = {}
    try:
        for name in ("quick-start", "offline"):
            command = ["bash", "-e", "-c", blocks[name]]
            if name == "offline":
                # The walkthrough's fixed ports (examples/offline.env) would clash with another
                # checkout's copy of this test: run it on a loopback of its own when possible.
                command = _on_a_private_loopback(command, stop="bash examples/offline.sh stop")
            done = subprocess.run(
                command,
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            outputs[name] = done.stdout + done.stderr
            assert done.returncode == 0, f"README block {name!r} failed:\n{outputs[name]}"
    finally:
        subprocess.run(["bash", "examples/offline.sh", "stop"], cwd=checkout, env=env, check=False)
    with wave.open(str(checkout / "hamsa-demo.wav")) as demo:
        assert demo.getnframes() > 8000  # more than a second of what the caller heard
    with wave.open(str(checkout / "heard.wav")) as heard:
        assert heard.getnframes() > 8000
    assert "all checks passed" in outputs["offline"]
    assert "outcome: heard" in outputs["offline"]


def test_the_speech_settings_in_the_readme_are_the_defaults() -> None:
    """The README's speech section lists each setting with its default: they are the code's."""
    from bridge.settings import Settings

    section = readme().split("### Callers may speak instead of pressing keys", 1)[1]
    section = section.split("\n## ", 1)[0]
    listed = re.findall(r"`((?:BRIDGE|HAMSA)_[A-Z_]+)` \(`?([^`)]+?)`?(?::[^)]*)?\)", section)
    assert {name for name, _ in listed} >= {
        "BRIDGE_SPEECH_START_PAD_MS",
        "BRIDGE_SPEECH_END_SILENCE_MS",
        "BRIDGE_SPEECH_MAX_SECONDS",
        "BRIDGE_SPEECH_VAD_MODE",
        "BRIDGE_SPEECH_NO_INPUT_SECONDS",
        "HAMSA_STT_TIMEOUT",
        "HAMSA_STT_LANGUAGE",
    }
    fields = Settings.model_fields
    for name, default in listed:
        expected = fields[name.lower()].default
        assert str(expected).removesuffix(".0") == default, name
