"""Where settings come from: ``./.env``, ``--env-file PATH`` and the process environment (which
wins), as ``hamsa-bridge`` reads them at its entry point."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.settings import Settings, environment

FILE_URL = "https://from-file.example.com"
ENV_URL = "https://from-env.example.com"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures the root logger for its command: give the next test the original."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def twiml_url(
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    environ: dict[str, str],
    cwd: Path | None = None,
) -> str:
    """``hamsa-bridge [ARGV] twiml inbound`` in this process: the webhook URL it redirects to."""
    code = main([*argv, "twiml", "inbound"], environ, cwd)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.split('<Redirect method="POST">')[1].split("</Redirect>")[0]


def test_dotenv_in_the_working_directory_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text(
        f"# a comment\n\nBRIDGE_PUBLIC_URL={FILE_URL}\nexport HAMSA_SPEAKER=Layla\n",
        encoding="utf-8",
    )
    assert twiml_url(capsys, environ={}, cwd=tmp_path) == FILE_URL + "/twiml/inbound"
    settings = Settings.from_env(environment({}, cwd=tmp_path))
    assert settings.hamsa_speaker == "Layla"


def test_the_process_environment_wins_over_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text(
        f"bridge_public_url={FILE_URL}\nHAMSA_SPEAKER=Layla\n", encoding="utf-8"
    )
    environ = {"BRIDGE_PUBLIC_URL": ENV_URL}
    assert twiml_url(capsys, environ=environ, cwd=tmp_path) == ENV_URL + "/twiml/inbound"
    settings = Settings.from_env(environment(environ, cwd=tmp_path))
    assert settings.bridge_public_url == ENV_URL  # whatever the case of the file's name
    assert settings.hamsa_speaker == "Layla"  # the rest of the file still applies
    # an empty variable in the environment is still the environment's: it wins too
    assert Settings.from_env(environment({"HAMSA_SPEAKER": ""}, cwd=tmp_path)).hamsa_speaker == ""


def test_env_file_chooses_another_file_instead_of_dotenv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("BRIDGE_PUBLIC_URL=https://dotenv.example.com\n")
    (tmp_path / "prod.env").write_text(f"BRIDGE_PUBLIC_URL={FILE_URL}\n")
    url = twiml_url(capsys, "--env-file", "prod.env", environ={}, cwd=tmp_path)
    assert url == FILE_URL + "/twiml/inbound"
    absolute = str(tmp_path / "prod.env")
    assert twiml_url(capsys, "--env-file", absolute, environ={}) == FILE_URL + "/twiml/inbound"


def test_a_missing_env_file_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--env-file", "prod.env", "twiml", "inbound"], {}, cwd=tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    assert f"hamsa-bridge: --env-file prod.env: no such file ({tmp_path / 'prod.env'})" in err
    code = main(["--env-file", str(tmp_path), "twiml", "inbound"], {})
    assert code == 2
    assert f"--env-file {tmp_path}: is not a file" in capsys.readouterr().err


def test_a_malformed_line_is_a_usage_error_naming_the_file_and_line_but_not_its_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / ".env"
    path.write_text(
        f"BRIDGE_PUBLIC_URL={FILE_URL}\n# fine\nHAMSA_API_KEY sk-live-secret\n", encoding="utf-8"
    )
    code = main(["twiml", "inbound"], {}, cwd=tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    assert f"hamsa-bridge: {path}: line 3 is not NAME=value" in err
    assert "sk-live-secret" not in err
    path.write_text("=x\nBRIDGE_PUBLIC_URL=ok\nnot a line\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"lines 1, 3 are not NAME=value"):
        environment({}, cwd=tmp_path)


def test_values_are_read_literally_and_bare_names_set_nothing(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "BRIDGE_GREETING=أهلا ${USER} بكم\nHAMSA_SPEAKER\nHAMSA_DIALECT='egy'\n",
        encoding="utf-8",
    )
    values = environment({"USER": "someone"}, cwd=tmp_path)
    assert values["BRIDGE_GREETING"] == "أهلا ${USER} بكم"  # no expansion, as systemd and docker
    assert "HAMSA_SPEAKER" not in values
    assert values["HAMSA_DIALECT"] == "egy"


def test_main_given_an_environment_reads_no_stray_dotenv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests pass ``environ``: a ``.env`` in the working directory must not reach them."""
    (tmp_path / ".env").write_text("BRIDGE_PUBLIC_URL=https://stray.example.com\nnot a line\n")
    monkeypatch.chdir(tmp_path)
    assert twiml_url(capsys, environ={"BRIDGE_PUBLIC_URL": ENV_URL}) == ENV_URL + "/twiml/inbound"


def test_the_console_script_reads_dotenv_from_its_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"BRIDGE_PUBLIC_URL={FILE_URL}\n", encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "twiml", "inbound"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert FILE_URL + "/twiml/inbound" in done.stdout
