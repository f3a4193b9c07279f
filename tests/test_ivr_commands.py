"""``hamsa-bridge ivr validate|graph|warm`` and ``call --answer`` as a user runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.calls.prompt_cache import PromptCache
from bridge.dev.hamsa_emulator import EmulatorConfig, create_emulator_app
from bridge.dev.loopback import loopback
from bridge.dev.servers import serving
from bridge.ivr.commands import EXAMPLES, _warm
from bridge.ivr.load import load_flow
from tests.cli_support import run_cli

pytestmark = pytest.mark.anyio


async def test_validate_accepts_the_example_and_lists_every_error_of_a_broken_flow(
    tmp_path: Path,
) -> None:
    code, output = await run_cli("ivr", "validate", "clinic")
    assert code == 0, output
    assert "15 nodes" in output
    broken = tmp_path / "broken.toml"
    broken.write_text(
        '[flow]\nstart = "menu"\n'
        '[nodes.menu]\ntype = "menu"\nprompt = ""\noptions = { "12" = "nowhere" }\n'
        '[nodes.orphan]\ntype = "hangup"\n',
        encoding="utf-8",
    )
    code, output = await run_cli("ivr", "validate", str(broken))
    assert code == 1
    assert 'nodes.menu.options."12"' in output  # bad digit, with its location
    assert "nowhere" in output  # missing option target
    assert "nodes.menu.prompt" in output  # empty prompt
    assert "nodes.orphan" in output
    assert "unreachable" in output


async def test_serve_refuses_an_invalid_flow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[flow]\nstart = "x"\n', encoding="utf-8")
    env = {
        "BRIDGE_IVR_FLOW": str(broken),
        "TWILIO_AUTH_TOKEN": "t",
        "HAMSA_API_KEY": "k",
        "BRIDGE_PUBLIC_URL": "https://bridge.example.com",
    }
    code, output = await run_cli("serve", "--port", "0", env=env)
    assert code == 2  # a configuration error: refused before listening
    assert "BRIDGE_IVR_FLOW" in output
    assert "is invalid" in output


async def test_graph_prints_mermaid() -> None:
    code, output = await run_cli("ivr", "graph", "clinic")
    assert code == 0
    assert output.startswith("flowchart TD")
    assert "main_menu" in output
    assert "reception" in output


async def test_warm_fills_the_disk_cache_and_a_call_then_needs_no_hamsa_request(
    tmp_path: Path,
) -> None:
    flow = load_flow(EXAMPLES / "clinic.toml")
    cache_dir = tmp_path / "prompts"
    overrides = {
        "bridge_prompt_cache_dir": str(cache_dir),
        "hamsa_truncation_ms_per_char": 3.0,
        "bridge_prompt_cache_min_ms_per_char": 5.0,
    }
    async with loopback(EmulatorConfig(ms_per_char=12), **overrides) as rig:
        lines: list[str] = []
        code = await _warm(rig.settings, flow, PromptCache(directory=cache_dir), lines.append)
        warmed = len(rig.hamsa.requests)
    assert code == 0, lines
    static = flow.static_prompts(rig.settings.voice)
    assert len(list(cache_dir.glob("*.ulaw"))) == len(static)
    assert warmed >= len(static)  # long prompts are several requests
    # a fresh bridge process (new memory cache) reads the warmed directory: no request at all
    path = EXAMPLES / "clinic.toml"
    async with loopback(
        EmulatorConfig(ms_per_char=12),
        bridge_ivr_flow=str(path),
        twilio=True,
        **overrides,
    ) as rig:
        sid = await rig.call_in(answers=["2", "9", "0"])
        requests = len(rig.hamsa.requests)
        assert rig.twilio is not None
        [stream] = rig.twilio.streams_for(sid)
    assert requests == 0
    assert stream.result.prompts()[-1] == "reception"


FAST_FLOW = """
[flow]
start = "welcome"

[nodes.welcome]
type = "say"
text = "أهلاً وسهلاً، حياك الله في عيادات الشفاء."
next = "goodbye"

[nodes.goodbye]
type = "hangup"
text = "شكراً لاتصالك، مع السلامة."
"""


async def test_warm_says_why_a_voice_faster_than_the_cache_rule_is_not_cached(
    tmp_path: Path,
) -> None:
    # Hamsa at 30 ms a character (every character counted): well above the live path's
    # HAMSA_TRUNCATION_MS_PER_CHAR (12), under the cache's 40 per character without spaces
    flow = tmp_path / "fast.toml"
    flow.write_text(FAST_FLOW, encoding="utf-8")
    cache_dir = tmp_path / "prompts"
    key = "warm-test-key-0123456789"
    config = EmulatorConfig(ms_per_char=30, api_keys=frozenset({key}))
    async with serving(create_emulator_app(config)) as hamsa_url:
        env = {
            "HAMSA_API_KEY": key,
            "HAMSA_WS_URL": hamsa_url.replace("http://", "ws://") + "/v1/realtime/ws",
            "BRIDGE_PROMPT_CACHE_DIR": str(cache_dir),
        }
        code, output = await run_cli("ivr", "warm", str(flow), env=env)
        assert code == 1, output
        assert list(cache_dir.glob("*.ulaw")) == []
        # one line per prompt, with where it is, the measure and the rule it failed
        # (35 and 23 characters without spaces, 41 and 26 with them, at 30 ms each)
        assert (
            "✗ welcome.text: reply 1.2 s for 35 characters (35 ms/char, spaces not counted) is "
            "shorter than BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR=40 ms/char allows; possibly "
            "truncated, not cached"
        ) in output
        assert "✗ goodbye.text: reply 0.8 s for 23 characters (34 ms/char" in output
        assert "0 prompt(s) in" in output
        assert "2 not cached" in output
        # the summary says what to do; doing it caches both
        advice = re.search(r"set BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR=(\d+) or less", output)
        assert advice is not None, output
        assert advice[1] == "33"  # the fastest reply's ms per character, rounded down
        assert "HAMSA_TRUNCATION_MS_PER_CHAR=12" in output
        env["BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR"] = advice[1]
        code, output = await run_cli("ivr", "warm", str(flow), env=env)
    assert code == 0, output
    assert "warmed   welcome.text (1.2 s)" in output
    assert "warmed   goodbye.text (0.8 s)" in output
    assert "2 prompt(s) in" in output
    assert "0 not cached" in output
    assert len(list(cache_dir.glob("*.ulaw"))) == 2
