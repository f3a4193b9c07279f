"""``hamsa-bridge demo --flow`` is offline: loopback only, no DNS lookup of anything else, even
for a flow whose webhook names a host on the internet (the clinic example's booking system)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from bridge.dev.demo import run_demo
from bridge.settings import Settings

pytestmark = pytest.mark.anyio

FLOW = """
[flow]
name = "offline"
start = "ask"

[nodes.ask]
type = "gather"
prompt = "أدخل الرقم."
store = "number"
num_digits = 2
timeout = 3
next = "lookup"
on_failure = "bye"

[nodes.lookup]
type = "webhook"
url = "https://booking.example.org/lookup"
timeout = 3
fallback = "bye"

[nodes.bye]
type = "hangup"
text = "مع السلامة."
"""


def _is_loopback(host: object) -> bool:
    if host is None:
        return True
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def test_the_demo_with_a_flow_resolves_no_name_but_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = tmp_path / "offline.toml"
    flow.write_text(FLOW, encoding="utf-8")
    looked_up: list[object] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        if not _is_loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"the offline demo looked up {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    code = await run_demo(
        Settings.from_env({}),
        out=tmp_path / "heard.wav",
        fast=True,
        flow=str(flow),
        answers=["42"],
        speech="tones",
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert [host for host in looked_up if not _is_loopback(host)] == []
    assert "IVR nodes heard:    ask > bye" in output
    # the webhook ran (against the loopback stand-in) and the flow took its fallback
    assert (
        "webhook lookup: https://booking.example.org/lookup not called (offline); the demo "
        "answered 503, so the flow took its fallback, bye" in output
    )


async def test_a_flow_in_the_environment_is_not_run_by_the_plain_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = tmp_path / "offline.toml"
    flow.write_text(FLOW, encoding="utf-8")
    settings = Settings.from_env({"BRIDGE_IVR_FLOW": str(flow)})
    code = await run_demo(settings, out=tmp_path / "heard.wav", fast=True, speech="tones")
    output = capsys.readouterr().out
    assert code == 0, output
    assert "IVR nodes heard" not in output  # the greeting, not the flow of BRIDGE_IVR_FLOW


async def test_the_readme_speech_demo_reaches_the_hours_by_voice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: ``hamsa-bridge demo --flow clinic --answer say:المواعيد`` — the caller says the
    phrase at the clinic's main menu and hears the opening hours (``--fast`` here)."""
    code = await run_demo(
        Settings.from_env({}),
        out=tmp_path / "heard.wav",
        fast=True,
        flow="clinic",
        answers=["say:المواعيد"],
        speech="tones",
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert "IVR nodes heard:    welcome > main_menu > opening_hours" in output
    assert "caller spoke:" in output
