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

from bridge.calls.hamsa_session import HamsaSession
from bridge.calls.prompt_cache import PromptCache
from bridge.calls.speech import Synthesizer, cache_refusal
from bridge.errors import FlowInvalid, HamsaError
from bridge.exit_codes import ExitCode
from bridge.ivr.flow import Flow, Gather, Menu
from bridge.ivr.graph import render_png, to_mermaid
from bridge.ivr.load import EXAMPLES, flow_path, load_flow
from bridge.metrics import Metrics
from bridge.settings import Settings

__all__ = ["EXAMPLES", "flow_path", "graph", "validate", "warm"]
"""With ``EXAMPLES`` and ``flow_path`` from ``bridge.ivr.load``: a flow's name resolves as the
bridge resolves ``BRIDGE_IVR_FLOW``."""

Print = Callable[[str], None]


def print_error(line: str) -> None:
    """The commands' default ``err``: a line on stderr."""
    print(line, file=sys.stderr)


def validate(path: Path, *, out: Print = print) -> int:
    try:
        flow = load_flow(path)
    except FlowInvalid as exc:
        for error in exc.errors:
            out(f"✗ {error.location}: {error.message}")
        out(f"{len(exc.errors)} error(s) in {path}")
        return ExitCode.FAILURE
    listening = [
        name
        for name, node in flow.nodes.items()
        if isinstance(node, Menu | Gather) and node.takes_speech
    ]
    speech = f"; takes speech at {', '.join(listening)}" if listening else ""
    out(f"✓ {path}: flow {flow.name!r}, {len(flow.nodes)} nodes, start {flow.start!r}{speech}")
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
    """Synthesise each static prompt not cached yet; one line per prompt, saying why when it
    was not cached, and a summary that says what to do; 1 if any prompt was not cached."""
    short: list[float] = []  # ms/char of the replies too short to cache
    unclean = 0
    aborted = False
    warmed = 0
    async with asyncio.TaskGroup() as tasks:
        metrics = Metrics()  # ``ivr warm`` exports no metrics: a registry of its own
        hamsa = HamsaSession(settings, tasks, metrics=metrics)
        synth = Synthesizer(settings, hamsa, metrics=metrics)
        try:
            for where, text, voice in flow.static_prompt_sources(settings.voice):
                if cache.get(text, voice) is not None:
                    out(f"  cached   {where}")
                    continue
                audio = bytearray()
                troubles = (synth.stats.truncated, synth.stats.retries, synth.stats.resumed)
                complete = await synth.text(text, voice, audio.extend)
                stats = synth.stats
                if not complete:
                    unclean += 1
                    out(
                        f"  ✗ {where}: a part could not be synthesised (Hamsa failed or kept "
                        "truncating it: see hamsa_gave_up in the log), not cached"
                    )
                    if not warmed:
                        # Not one reply yet, retries spent: the next prompts would wait as long
                        # for the same failure (an unreachable HAMSA_WS_URL, a refused key).
                        err(
                            "✗ Hamsa gave no usable reply: check HAMSA_WS_URL, HAMSA_API_KEY and "
                            "the log above, then run warm again"
                        )
                        aborted = True
                        break
                    continue
                if troubles != (stats.truncated, stats.retries, stats.resumed):
                    unclean += 1
                    out(f"  ✗ {where}: Hamsa's reply needed a retry, not cached (clean ones only)")
                    continue
                refusal = cache_refusal(text, len(audio), settings)
                if refusal is not None:
                    short.append(len(audio) / 8 / max(1, len(text.replace(" ", ""))))
                    out(f"  ✗ {where}: {refusal}")
                    continue
                cache.put(text, voice, bytes(audio))
                warmed += 1
                out(f"  warmed   {where} ({len(audio) / 8000:.1f} s)")
        except HamsaError as exc:
            err(f"✗ {exc}")
            aborted = True
        finally:
            await hamsa.close()
    failures = len(short) + unclean + aborted
    out(
        f"{len(cache)} prompt(s) in {settings.bridge_prompt_cache_dir}; "
        f"{len(short) + unclean} not cached" + ("; stopped early" if aborted else "")
    )
    for line in _warm_advice(settings, short, unclean, aborted):
        out(line)
    return ExitCode.FAILURE if failures else ExitCode.OK


def _warm_advice(settings: Settings, short: list[float], unclean: int, aborted: bool) -> list[str]:
    """What to do about the prompts ``warm`` did not cache."""
    advice: list[str] = []
    if short:
        minimum = settings.bridge_prompt_cache_min_ms_per_char
        fastest = int(min(short))
        truncation = settings.hamsa_truncation_ms_per_char
        advice += [
            f"{len(short)} prompt(s) had less audio than BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR="
            f"{minimum:g} ms per character (spaces not counted).",
            "  A cached prompt is replayed to every caller, so one possibly cut short is not "
            "cached (calls still play it, synthesised each time).",
            "  If the voice really speaks that fast (listen to a call; `hamsa-bridge hamsa probe` "
            "measures it),",
            f"  set BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR={fastest} or less (above "
            f"HAMSA_TRUNCATION_MS_PER_CHAR={truncation:g}) for warm and serve, and warm again.",
            "  Otherwise Hamsa cut them short: warm again.",
        ]
    if unclean:
        advice.append(f"{unclean} prompt(s) failed or needed a retry: run warm again.")
    if aborted:
        advice.append("Hamsa failed (above): fix it and run warm again.")
    return advice
