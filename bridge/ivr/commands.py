"""``hamsa-bridge ivr validate|graph|warm FLOW``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bridge.calls.hamsa_session import HamsaSession
from bridge.calls.prompt_cache import PromptCache
from bridge.calls.speech import Synthesizer, cache_worthy
from bridge.errors import HamsaError
from bridge.ivr.flow import Flow
from bridge.ivr.graph import render_png, to_mermaid
from bridge.ivr.load import EXAMPLES, FlowInvalid, flow_path, load_flow
from bridge.settings import Settings

__all__ = ["EXAMPLES", "flow_path", "graph", "validate", "warm"]
"""With ``EXAMPLES`` and ``flow_path`` from ``bridge.ivr.load``: a flow's name resolves as the
bridge resolves ``BRIDGE_IVR_FLOW``."""

Print = Callable[[str], None]


def validate(path: Path, *, out: Print = print) -> int:
    try:
        flow = load_flow(path)
    except FlowInvalid as exc:
        for error in exc.errors:
            out(f"✗ {error.location}: {error.message}")
        out(f"{len(exc.errors)} error(s) in {path}")
        return 1
    out(f"✓ {path}: flow {flow.name!r}, {len(flow.nodes)} nodes, start {flow.start!r}")
    return 0


def graph(path: Path, *, png: Path | None, out: Print = print) -> int:
    try:
        flow = load_flow(path)
    except FlowInvalid as exc:
        out(f"✗ {path} is invalid ({len(exc.errors)} errors): run `hamsa-bridge ivr validate`")
        return 1
    out(to_mermaid(flow))
    if png is not None:
        if render_png(flow, png):
            out(f"png: {png}")
        else:
            out("png: not written (install graphviz for `dot`)")
    return 0


async def warm(settings: Settings, path: Path, *, out: Print = print) -> int:
    """Synthesise every static prompt of the flow into ``BRIDGE_PROMPT_CACHE_DIR``."""
    if not settings.bridge_prompt_cache_dir:
        out("✗ set BRIDGE_PROMPT_CACHE_DIR: warming fills the on-disk prompt cache")
        return 2
    try:
        flow = load_flow(path)
    except FlowInvalid as exc:
        out(f"✗ {path} is invalid ({len(exc.errors)} errors): run `hamsa-bridge ivr validate`")
        return 1
    cache = PromptCache(directory=Path(settings.bridge_prompt_cache_dir))
    return await _warm(settings, flow, cache, out)


async def _warm(settings: Settings, flow: Flow, cache: PromptCache, out: Print) -> int:
    failures = 0
    async with asyncio.TaskGroup() as tasks:
        hamsa = HamsaSession(settings, tasks)
        synth = Synthesizer(settings, hamsa)
        try:
            for text, voice in flow.static_prompts(settings.voice):
                if cache.get(text, voice) is not None:
                    out(f"  cached   {text[:50]}")
                    continue
                audio = bytearray()
                retries = synth.stats.retries
                if await synth.text(text, voice, audio.extend) and cache_worthy(
                    text, len(audio), settings
                ):
                    if synth.stats.retries != retries:
                        out(f"  ✗ retried {text[:50]} (not cached: run warm again)")
                        failures += 1
                        continue
                    cache.put(text, voice, bytes(audio))
                    out(f"  warmed   {text[:50]} ({len(audio) / 8000:.1f} s)")
                else:
                    failures += 1
                    out(f"  ✗ failed {text[:50]}")
        except HamsaError as exc:
            out(f"✗ {exc}")
            failures += 1
        finally:
            await hamsa.close()
    out(f"{len(cache)} prompt(s) in {settings.bridge_prompt_cache_dir}; {failures} failed")
    return 1 if failures else 0
