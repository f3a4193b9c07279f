"""``hamsa-bridge ivr validate|graph|warm FLOW``.

Results go to ``out`` (stdout; ``validate``'s findings are its result), failures to ``err``
(stderr). Exit status (codes of :mod:`bridge.exit_codes`): 0 done; 1 an invalid flow, a prompt
that could not be synthesised, or ``graph --png`` without graphviz; 2 ``warm`` without
``BRIDGE_PROMPT_CACHE_DIR`` or ``HAMSA_API_KEY``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import bridge.ivr
from bridge.calls.hamsa_session import HamsaSession
from bridge.calls.prompt_cache import PromptCache
from bridge.calls.speech import Synthesizer, cache_worthy
from bridge.errors import HamsaError
from bridge.exit_codes import ExitCode
from bridge.ivr.flow import Flow
from bridge.ivr.graph import render_png, to_mermaid
from bridge.ivr.load import FlowInvalid, load_flow
from bridge.settings import Settings

Print = Callable[[str], None]
EXAMPLES = Path(bridge.ivr.__file__).parent / "examples"


def print_error(line: str) -> None:
    """The commands' default ``err``: a line on stderr."""
    print(line, file=sys.stderr)


def flow_path(name: str) -> Path:
    """A flow file, or the name of a shipped example (``clinic``)."""
    path = Path(name)
    if not path.exists() and (EXAMPLES / f"{name}.toml").exists():
        return EXAMPLES / f"{name}.toml"
    return path


def validate(path: Path, *, out: Print = print) -> int:
    try:
        flow = load_flow(path)
    except FlowInvalid as exc:
        for error in exc.errors:
            out(f"✗ {error.location}: {error.message}")
        out(f"{len(exc.errors)} error(s) in {path}")
        return ExitCode.FAILURE
    out(f"✓ {path}: flow {flow.name!r}, {len(flow.nodes)} nodes, start {flow.start!r}")
    return ExitCode.OK


def graph(path: Path, *, png: Path | None, out: Print = print, err: Print = print_error) -> int:
    """Print the flow as Mermaid; with ``png`` also draw it with graphviz (1 without it)."""
    try:
        flow = load_flow(path)
    except FlowInvalid as exc:
        err(f"✗ {path} is invalid ({len(exc.errors)} errors): run `hamsa-bridge ivr validate`")
        return ExitCode.FAILURE
    out(to_mermaid(flow))
    if png is not None:
        if not render_png(flow, png):
            err(
                f"✗ {png} not written: the PNG needs graphviz's `dot`; install graphviz "
                "(e.g. apt install graphviz, brew install graphviz)"
            )
            return ExitCode.FAILURE
        out(f"png: {png}")
    return ExitCode.OK


async def warm(
    settings: Settings, path: Path, *, out: Print = print, err: Print = print_error
) -> int:
    """Synthesise every static prompt of the flow into ``BRIDGE_PROMPT_CACHE_DIR``."""
    if not settings.bridge_prompt_cache_dir:
        err("✗ set BRIDGE_PROMPT_CACHE_DIR: warming fills the on-disk prompt cache")
        return ExitCode.USAGE
    if not settings.hamsa_api_key.get_secret_value():
        err("✗ set HAMSA_API_KEY: warming synthesises the prompts with Hamsa")
        return ExitCode.USAGE
    try:
        flow = load_flow(path)
    except FlowInvalid as exc:
        err(f"✗ {path} is invalid ({len(exc.errors)} errors): run `hamsa-bridge ivr validate`")
        return ExitCode.FAILURE
    cache = PromptCache(directory=Path(settings.bridge_prompt_cache_dir))
    return await _warm(settings, flow, cache, out, err)


async def _warm(
    settings: Settings, flow: Flow, cache: PromptCache, out: Print, err: Print = print_error
) -> int:
    failures = warmed = 0
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
                    warmed += 1
                    out(f"  warmed   {text[:50]} ({len(audio) / 8000:.1f} s)")
                else:
                    failures += 1
                    out(f"  ✗ failed {text[:50]}")
                    if not warmed:
                        # Not one reply yet, retries spent: the next prompts would wait as long
                        # for the same failure (an unreachable HAMSA_WS_URL, a refused key).
                        err(
                            "✗ Hamsa gave no usable reply: check HAMSA_WS_URL, HAMSA_API_KEY and "
                            "the log above, then run warm again"
                        )
                        break
        except HamsaError as exc:
            err(f"✗ {exc}")
            failures += 1
        finally:
            await hamsa.close()
    out(f"{len(cache)} prompt(s) in {settings.bridge_prompt_cache_dir}; {failures} failed")
    return ExitCode.FAILURE if failures else ExitCode.OK
