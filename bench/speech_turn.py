"""How long a caller waits after speaking: from the end of their words to the first frame of the
next prompt, and how much of it is the bridge's own.

Method
------

The real bridge, the Hamsa emulator and the simulated caller on loopback, over real sockets
(``bridge.dev.loopback``). The flow is a speech menu whose answer leads to a static prompt::

    menu (input = ["dtmf", "speech"]) ──"المواعيد"──▶ hours (say, static: from the prompt cache)

One unmeasured call fills the prompt cache, then ``--calls`` (20) calls in a row each say
"المواعيد" (tone speech, which the emulator's STT hears back) 0.3 s after the menu's prompt
ended. Per call:

* **turn**: the caller's last voiced sample → the first frame of the hours prompt at the
  caller (``Timeline.media_arrivals``), on one monotonic clock (every part runs in this process);
* **Hamsa STT**: the emulator's time from the ``stt`` request to its answer (``--stt-delay``,
  0.3 s by default);
* **the bridge's own**: turn − Hamsa STT. It holds the detector's end-of-speech wait
  (``BRIDGE_SPEECH_END_SILENCE_MS``, 700 ms: the silence that says the caller has finished,
  plus webrtcvad's hangover of up to ~100 ms), the 16 kHz WAV, the match and the playback start;
* **beyond the end-of-speech wait**: the bridge's own − ``BRIDGE_SPEECH_END_SILENCE_MS``.

The next prompt comes from the prompt cache, so no TTS time is in the turn. Figures are
printed, never judged. Run: ``python bench/speech_turn.py``; ``--smoke``: 2 calls (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.dev.hamsa_emulator import EmulatorConfig  # noqa: E402
from bridge.dev.loopback import Loopback, loopback  # noqa: E402
from bridge.logs import configure_logging  # noqa: E402

PHRASE = "المواعيد"
FLOW = """
[flow]
name = "turn"
start = "menu"

[nodes.menu]
type = "menu"
input = ["dtmf", "speech"]
prompt = "قل المواعيد أو اضغط اثنين."
timeout = 8
retries = 0
on_failure = "bye"

[nodes.menu.options]
"2" = {{ next = "hours", say = ["{phrase}"] }}

[nodes.hours]
type = "hangup"
text = "نعمل من التاسعة صباحا حتى الخامسة مساء."

[nodes.bye]
type = "hangup"
text = "مع السلامة."
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_turn(rig: Loopback) -> tuple[float, float]:
    """One call; (turn seconds, Hamsa STT seconds)."""
    before = len(rig.hamsa.stt_requests)
    result = await rig.call(answers=[f"say:{PHRASE}"], max_duration=60)
    assert result.leg is not None
    [(spoke_at, seconds)] = result.speech_sent
    spoken_end = spoke_at + seconds
    arrivals = result.leg.timeline.media_arrivals
    first = next(t for t in arrivals if t > spoken_end)
    [stt] = rig.hamsa.stt_requests[before:]
    if stt.recognized != PHRASE or stt.answered_at is None:
        raise RuntimeError(f"the emulator heard {stt.recognized!r}: not the phrase")
    return first - spoken_end, stt.answered_at - stt.received_at


async def measure(calls: int, stt_delay: float, end_silence_ms: int) -> int:
    with tempfile.TemporaryDirectory(prefix="speech-turn-") as workdir:
        path = Path(workdir) / "flow.toml"
        path.write_text(FLOW.format(phrase=PHRASE), encoding="utf-8")
        emulator = EmulatorConfig(ms_per_char=40, stt_delay=stt_delay)
        async with loopback(
            emulator,
            bridge_ivr_flow=str(path),
            bridge_prompt_cache_dir=str(Path(workdir) / "cache"),
            bridge_speech_end_silence_ms=end_silence_ms,
        ) as rig:
            await one_turn(rig)  # fills the prompt cache: the hours prompt is cached from now on
            turns: list[float] = []
            hamsa: list[float] = []
            for _ in range(calls):
                turn, stt = await one_turn(rig)
                turns.append(turn)
                hamsa.append(stt)
    own = [t - h for t, h in zip(turns, hamsa, strict=True)]
    beyond = [o - end_silence_ms / 1000 for o in own]

    def row(name: str, values: list[float]) -> str:
        p50, p95 = statistics.median(values), percentile(values, 0.95)
        return f"{name:<44} {p50 * 1000:7.0f} {p95 * 1000:7.0f} {max(values) * 1000:7.0f}"

    print(f"{calls} calls, Hamsa STT {stt_delay:g} s, end of speech after {end_silence_ms} ms")
    print(f"{'ms':<44} {'p50':>7} {'p95':>7} {'max':>7}")
    print(row("turn: end of words → next prompt's first frame", turns))
    print(row("Hamsa STT (the emulator's answer time)", hamsa))
    print(row("the bridge's own (turn − Hamsa STT)", own))
    print(row("beyond the end-of-speech wait", beyond))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--calls", type=int, default=20, help="measured calls in a row")
    parser.add_argument("--stt-delay", type=float, default=0.3, help="the emulator's STT time, s")
    parser.add_argument(
        "--end-silence-ms", type=int, default=700, help="BRIDGE_SPEECH_END_SILENCE_MS"
    )
    parser.add_argument("--smoke", action="store_true", help="2 calls: it runs (CI)")
    args = parser.parse_args(argv)
    calls = 2 if args.smoke else args.calls
    configure_logging(level="warning", fmt="console")
    return asyncio.run(measure(calls, args.stt_delay, args.end_silence_ms))


if __name__ == "__main__":
    sys.exit(main())
