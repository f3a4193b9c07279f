"""No Hamsa socket for a cached call: an IVR call whose first prompts are all in the prompt cache
opens (or takes from the warm pool) its Hamsa socket only when a prompt first needs synthesis;
a call that never needs one never takes one. Loopback, real sockets, the warm pool on."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.calls.prompt_cache import PromptCache, prompt_key
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import Loopback, loopback
from bridge.ivr.commands import _warm
from bridge.ivr.load import load_flow
from bridge.settings import Settings

pytestmark = pytest.mark.anyio

FAST = {"hamsa_truncation_ms_per_char": 3.0, "bridge_prompt_cache_min_ms_per_char": 10.0}
NEWS = "لدينا خدمة جديدة للمواعيد عبر الإنترنت."
FLOW = f"""
[flow]
name = "lazy"
start = "welcome"

[nodes.welcome]
type = "say"
text = "مرحبا بكم في العيادة."
next = "menu"

[nodes.menu]
type = "menu"
prompt = "لساعات العمل اضغط واحد، للأخبار اضغط اثنين."
options = {{ "1" = "hours", "2" = "news" }}
timeout = 2.0
no_input = "لم نسمع اختيارك."
invalid = "خيار غير صحيح."
retries = 1
on_failure = "hours"

[nodes.hours]
type = "hangup"
text = "نعمل من التاسعة صباحا حتى الخامسة مساء."

[nodes.news]
type = "hangup"
text = "{NEWS}"
"""


async def warmed(tmp_path: Path) -> tuple[Path, Path]:
    """The flow file and a cache directory holding every static prompt of it."""
    flow_path = tmp_path / "flow.toml"
    flow_path.write_text(FLOW, encoding="utf-8")
    cache_dir = tmp_path / "prompts"
    async with loopback(EmulatorConfig(ms_per_char=25), **FAST) as rig:
        lines: list[str] = []
        flow = load_flow(flow_path)
        code = await _warm(rig.settings, flow, PromptCache(directory=cache_dir), lines.append)
    assert code == 0, lines
    return flow_path, cache_dir


def pool_taken(rig: Loopback) -> int:
    pool = rig.bridge.warm_pool
    assert pool is not None
    return pool.taken


async def test_a_call_with_every_prompt_cached_takes_no_hamsa_socket(tmp_path: Path) -> None:
    flow_path, cache_dir = await warmed(tmp_path)
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        bridge_ivr_flow=str(flow_path),
        bridge_prompt_cache_dir=str(cache_dir),
        hamsa_warm_connections=1,
        **FAST,
    ) as rig:
        before = len(rig.hamsa.connections)  # the pool's socket
        result = await rig.call(answers=["1"])
        connections = len(rig.hamsa.connections)
        requests = len(rig.hamsa.requests)
        taken = pool_taken(rig)
    assert result.prompts() == ["welcome", "menu", "hours"]
    assert result.close_code == 1000
    assert before == 1
    assert connections == 1  # none during the call
    assert requests == 0
    assert taken == 0  # and the warm socket is still there for the next call


async def test_an_uncached_prompt_takes_a_socket_when_the_call_reaches_it(
    tmp_path: Path,
) -> None:
    flow_path, cache_dir = await warmed(tmp_path)
    flow = load_flow(flow_path)
    [(_, voice)] = [(t, v) for t, v in flow.static_prompts(Settings().voice) if t == NEWS]
    (cache_dir / f"{prompt_key(NEWS, voice)}.ulaw").unlink()  # NEWS is not cached any more
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        bridge_ivr_flow=str(flow_path),
        bridge_prompt_cache_dir=str(cache_dir),
        hamsa_warm_connections=1,
        **FAST,
    ) as rig:
        [pooled] = list(rig.hamsa.connections)
        result = await rig.call(answers=["2"])
        requests = list(rig.hamsa.requests)
        taken = pool_taken(rig)
    assert result.prompts() == ["welcome", "menu", "news"]
    [request] = requests
    assert request.text == NEWS
    assert request.connection_id == pooled.id  # the warm socket, taken when needed
    assert taken == 1
    assert result.leg is not None
    [menu_mark] = [m for m in result.leg.timeline.marks if m.name.startswith("menu:")]
    assert menu_mark.echoed_at is not None
    assert request.received_at > menu_mark.echoed_at  # not before the call reached it


@pytest.mark.parametrize(("cached", "opened"), [(True, "on_demand"), (False, None)])
async def test_the_call_summary_says_when_the_socket_was_left_for_later(
    tmp_path: Path, cached: bool, opened: str | None
) -> None:
    flow_path, cache_dir = await warmed(tmp_path)
    if not cached:
        for path in cache_dir.glob("*.ulaw"):
            path.unlink()  # nothing cached: the socket opens as the stream starts
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        bridge_ivr_flow=str(flow_path),
        bridge_prompt_cache_dir=str(cache_dir),
        **FAST,
    ) as rig:
        result = await rig.call(answers=["1"])
        connections = len(rig.hamsa.connections)
    # the rig's shutdown waited for the call's handler: its summary is in the app's state (the
    # same summary the call_summary log line carries)
    [summary] = list(rig.bridge.recent_calls)
    assert result.prompts() == ["welcome", "menu", "hours"]
    assert summary.details.get("hamsa_socket") == opened
    assert connections == (0 if cached else 1)
