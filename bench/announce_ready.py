"""First audio of announcements whose audio was synthesised while the phone rang.

Question: once the callee answers, how long after Twilio's ``start`` does the first audio frame
reach them, for announcements placed through the HTTP API (``POST /v1/announcements``), when
the bridge synthesises each message during ringing (``BRIDGE_PRESYNTH_CONNECTIONS``, default 4)?
Goal: p95 ≤ 100 ms for the calls served from presynthesis.

Set-up (all on loopback, real sockets, one process): the real bridge (``create_app`` under
uvicorn, its warm Hamsa pool at the production default of 2 sockets), the Twilio emulator
placing the calls and ringing each callee for a seeded random 3–9 s (``--ring-min``,
``--ring-max``: real phones are answered after ~2–10 s), and the Hamsa emulator with the
realistic latency model (``EmulatorConfig.realistic``: connect 1.2 s, first audio 0.3–1.7 s
after a request, synthesis 2–4× faster than real time, 80 ms of audio per character). Each of
the ``--calls`` announcements (20) has its own text (personal: a name and a time), so no two
share audio; they are requested at ``--cps`` (2) calls per second; ``--connections`` sets
``BRIDGE_PRESYNTH_CONNECTIONS``.

Printed: p50/p95/max of first audio after ``start`` (the callee's timeline: its ``start``
message sent → the first media frame received), for the calls served from presynthesis and for
those streamed (a ring shorter than the synthesis: the bridge streams at once rather than wait),
and how many of each (the bridge's ``announcement_presynth_total`` counters, cross-checked
against the Hamsa emulator's records: a call that was streamed made a request after its start).

Run: ``python bench/announce_ready.py`` (about a minute); ``--smoke``: three calls with a
scaled-down model (seconds; no timing claims).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx2
from figures import quantile

from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import loopback
from bridge.dev.twilio_emulator import Outcome, TwilioEmulatorConfig
from bridge.logs import configure_logging

API_TOKEN: Final = "bench-api-token-0123456789abcdef"
NAMES: Final = ("أحمد", "سارة", "محمد", "نورة", "خالد", "ريم", "عمر", "هند", "فهد", "لمى")


def message(i: int) -> str:
    name = NAMES[i % len(NAMES)]
    return f"مرحبا {name}، نذكرك بموعدك غدا الساعة {8 + i % 9} صباحا في عيادة الأسنان. شكرا لك."


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


@dataclass
class Figures:
    served: list[float]
    streamed: list[float]
    failed: int
    counters: dict[str, float]


async def run(args: argparse.Namespace) -> Figures:
    rng = random.Random(args.seed)  # noqa: S311 - a benchmark's reproducible draws
    people = [f"+9665{i:08d}" for i in range(1, args.calls + 1)]
    rings = {p: rng.uniform(args.ring_min, args.ring_max) for p in people}
    outcomes: dict[str, Outcome | str] = {p: Outcome(ring_seconds=r) for p, r in rings.items()}
    if args.smoke:
        emulator = EmulatorConfig(
            connect_delay=0.1,
            first_byte_delay=(0.05, 0.15),
            synthesis_speed=(2.0, 4.0),
            ms_per_char=15.0,
            seed=args.seed,
            draws_per_text=True,
        )
        scaled: dict[str, Any] = {
            "hamsa_truncation_ms_per_char": 3.0,
            "bridge_prompt_cache_min_ms_per_char": 5.0,
        }
    else:
        emulator = EmulatorConfig.realistic(seed=args.seed, draws_per_text=True)
        scaled = {}
    async with (
        loopback(
            emulator,
            twilio=TwilioEmulatorConfig(outcomes=outcomes, max_call_seconds=600),
            hamsa_warm_connections=2,
            bridge_api_token=API_TOKEN,
            bridge_database_url=f"sqlite:///{args.workdir}/announce-ready.db",
            bridge_calls_per_second=args.cps,
            bridge_max_concurrent_calls=args.calls,
            bridge_presynth_connections=args.connections,
            **scaled,
        ) as rig,
        httpx2.AsyncClient(
            base_url=rig.public_url, headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as http,
    ):
        ids: dict[str, str] = {}
        for i, person in enumerate(people):
            response = await http.post("/v1/announcements", json={"to": person, "text": message(i)})
            response.raise_for_status()
            ids[person] = response.json()["id"]
        service = rig.bridge.announcements
        assert service is not None
        async with asyncio.timeout(args.ring_max + 120 + args.calls / args.cps):
            records = [await service.settled(i) for i in ids.values()]
        assert rig.twilio is not None
        served: list[float] = []
        streamed: list[float] = []
        failed = 0
        for i, record in enumerate(records):
            streams = rig.twilio.streams_for(record.call_sid) if record and record.call_sid else []
            leg = streams[0].result.leg if streams else None
            start = streams[0].result.started_at if streams else None
            if leg is None or start is None or leg.timeline.first_media_at is None:
                failed += 1
                continue
            first = leg.timeline.first_media_at - start
            late = [r for r in rig.hamsa.requests if r.text == message(i) and r.received_at > start]
            (streamed if late else served).append(first)
        registry = rig.bridge.metrics.registry
        counters = {
            event: registry.get_sample_value(
                "hamsa_bridge_announcement_presynth_total", {"event": event}
            )
            or 0.0
            for event in ("started", "completed", "failed", "skipped", "used", "streamed")
        }
    return Figures(served, streamed, failed, counters)


def report(args: argparse.Namespace, figures: Figures) -> int:
    print("# Announcements ready at answer: first audio after the stream's start\n")
    model = "smoke (scaled down)" if args.smoke else "realistic (EmulatorConfig.realistic)"
    print(
        f"{args.calls} announcements through the API at {args.cps:g} calls/s; rings "
        f"{args.ring_min:g}-{args.ring_max:g} s (seed {args.seed}); Hamsa model: {model}; "
        f"warm pool 2, BRIDGE_PRESYNTH_CONNECTIONS={args.connections}\n"
    )
    print("| served from | calls | first audio p50 | p95 | max |")
    print("|---|---|---|---|---|")
    for label, values in (("presynthesis", figures.served), ("streaming", figures.streamed)):
        print(
            f"| {label} | {len(values)} | {ms(quantile(values, 0.5))} | "
            f"{ms(quantile(values, 0.95))} | {ms(max(values) if values else None)} |"
        )
    counters = ", ".join(f"{k} {v:g}" for k, v in figures.counters.items())
    print(f"\npresynth counters: {counters}")
    p95 = quantile(figures.served, 0.95)
    verdict = "met" if p95 is not None and p95 <= 0.100 else "NOT met"
    print(f"goal p95 ≤ 100 ms (served from presynthesis): {verdict} ({ms(p95)})")
    consistent = figures.counters["used"] == len(figures.served) and figures.counters[
        "streamed"
    ] == len(figures.streamed)
    if figures.failed or not consistent:
        print(f"calls without audio: {figures.failed}; counters consistent: {consistent}")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=None, help="announcements (20)")
    parser.add_argument("--cps", type=float, default=2.0, help="calls per second (2)")
    parser.add_argument("--ring-min", type=float, default=None, help="seconds (3)")
    parser.add_argument("--ring-max", type=float, default=None, help="seconds (9)")
    parser.add_argument(
        "--connections", type=int, default=4, help="BRIDGE_PRESYNTH_CONNECTIONS (4: the default)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="3 calls, scaled-down model")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.calls = args.calls or (3 if args.smoke else 20)
    args.ring_min = args.ring_min if args.ring_min is not None else (1.0 if args.smoke else 3.0)
    args.ring_max = args.ring_max if args.ring_max is not None else (1.5 if args.smoke else 9.0)
    if args.calls < 1 or not 0 <= args.ring_min <= args.ring_max or args.cps <= 0:
        print(
            "announce_ready: --calls ≥ 1, 0 ≤ --ring-min ≤ --ring-max, --cps > 0", file=sys.stderr
        )
        return 2
    configure_logging(level="warning", fmt="console")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="announce-ready-") as workdir:
        args.workdir = workdir
        figures = asyncio.run(run(args))
    code = report(args, figures)
    print(f"run time: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
