"""Where a speaking call's memory goes: tracemalloc at steady state minus idle, per call, by area.

Method
------

* ``hamsa-bridge serve`` runs in a subprocess exactly as ``bench/capacity.py`` starts it (same
  environment, greeting, Hamsa emulator and lean Twilio callers), except that this script is its
  entry point (``--child``): it starts ``tracemalloc`` (``--depth`` frames per allocation) and
  dumps a snapshot on ``SIGUSR1`` (https://docs.python.org/3/library/tracemalloc.html), then runs
  ``bridge.cli serve``. The snapshot pauses the bridge's event loop while it is written (a second
  or so at 100 calls): harmless for memory, so nothing here is a timing figure.
* Snapshots: **idle** (warmed up by one short call, every call gone), **steady** (every call
  playing: ``--settle`` seconds after the last call's first audio, then every ``--every``
  seconds while all calls still play; the largest of these is used), **after** (every call
  gone again: what is left is a leak or a cache).
* Per call = (steady - idle) / N, grouped three ways:

  - by **area**: what the allocation is for, from the innermost frame of its traceback that lies
    in the bridge (``bridge/...``) or, failing that, in a library (uvicorn, websockets,
    starlette, asyncio, structlog ...);
  - by **line**: the innermost frame (``file:line``);
  - by **traceback**: the allocation's call stack (top entries, ``--tracebacks``).

* RSS: the bridge's ``VmRSS`` at each snapshot is printed, but under tracemalloc it is not the
  figure to quote: tracemalloc's own tables (``tracemalloc.get_tracemalloc_memory()``, ~150 KB
  per call at depth 10) and the idle snapshot's freed objects live in the same heap. RSS per
  call is ``bench/capacity.py``'s (peak growth over idle, no tracemalloc). Traced bytes are what
  Python asked for; "as allocated" adds the allocators' rounding (pymalloc size classes of 16
  bytes up to 512 bytes, glibc's chunk header above), estimated from each block's size. What
  neither sees: partly used pymalloc pools and arenas, glibc free lists, C allocations outside
  Python's allocators (uvloop/libuv handles and transports, soxr). Kernel socket buffers are
  not in RSS at all.

Cost: the bridge runs 2-3x slower under tracemalloc; 100 calls fit one core of a quiet machine.
Run: ``python bench/memory_per_call.py [--calls 100] [--duration 20]``; ``--smoke``: 3 short
calls (CI: it runs and prints, no figure is judged).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from capacity import LeanCall, Ticker

SCRIPT: Final = Path(__file__).resolve()
BENCH_DIR: Final = SCRIPT.parent
ROOT: Final = BENCH_DIR.parent


PROJECT_DIRS: Final = ("/bridge/", "/twiml/", "/bench/")
"""A file in one of these (and not in ``site-packages``) is the project's: of this checkout or
of another one whose interpreter runs this script."""


def package(filename: str) -> str | None:
    """The library a file belongs to (``websockets``, ``uvicorn``, ``asyncio`` ...), or None
    for the project's own files."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if any(d in filename for d in PROJECT_DIRS):
        return None
    parts = Path(filename).parts
    if "asyncio" in parts:
        return "asyncio"
    return Path(filename).stem if filename.startswith("/") else filename


def area_of(trace: tracemalloc.Traceback) -> str:
    """The area of one allocation: the innermost project file on its stack (who it is for) and,
    when the allocation itself happened deeper, in a library, that library
    (``bridge/calls/hamsa_session.py > websockets``). No project frame at all (callbacks from
    the event loop: a socket's ``data_received``): the library alone."""
    frames = list(trace)[::-1]  # tracemalloc orders them oldest first
    if not frames:
        return "?"
    library = package(frames[0].filename)
    for frame in frames:
        if package(frame.filename) is None:
            own = short(frame.filename)
            return own if library is None else f"{own} > {library}"
    return f"{library} (no project frame)"


# --- the child: the bridge under tracemalloc ---------------------------------------------------


def child(snapshots: Path, depth: int, argv: Sequence[str]) -> int:
    """``bridge.cli serve`` with tracemalloc; SIGUSR1 writes ``snapshots/N.snap`` and
    ``N.json`` (RSS, tracemalloc's own memory), N counting from 1; SIGUSR2 the same after a
    full ``gc.collect()`` (the idle and after snapshots: the steady one keeps its garbage, RSS
    does too)."""
    tracemalloc.start(depth)
    taken = 0

    def dump(signum: int, frame: object) -> None:
        nonlocal taken
        taken += 1
        info = {"rss": rss(os.getpid()), "tracemalloc": tracemalloc.get_tracemalloc_memory()}
        if signum == signal.SIGUSR2:
            gc.collect()  # idle and after: no garbage of the warm-up call or the step left
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(str(snapshots / f"{taken}.snap"))
        (snapshots / f"{taken}.json.tmp").write_text(json.dumps(info))
        (snapshots / f"{taken}.json.tmp").rename(snapshots / f"{taken}.json")

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, dump)
    from bridge.cli import main as bridge_main

    return bridge_main(list(argv))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- the parent: calls, snapshots, the breakdown -------------------------------------------------


@dataclass
class Taken:
    label: str
    snapshot: tracemalloc.Snapshot
    rss: int
    tracemalloc: int
    calls_playing: int
    streams: int
    """Calls whose stream was open (playing or not yet)."""


def allocated(size: int) -> int:
    """What the allocator really takes for a block of ``size`` bytes (an estimate): pymalloc
    rounds up to 16 bytes up to 512 bytes; above, glibc adds an 8-byte header, 16-aligned."""
    if size <= 512:
        return max(16, (size + 15) // 16 * 16)
    return (size + 8 + 15) // 16 * 16


def totals(snapshot: tracemalloc.Snapshot) -> tuple[int, int, int]:
    """(traced bytes, blocks, bytes as allocated: see ``allocated``)."""
    size = blocks = alloc = 0
    for trace in snapshot.traces:
        size += trace.size
        blocks += 1
        alloc += allocated(trace.size)
    return size, blocks, alloc


def kb(value: float) -> str:
    return f"{value / 1024:.1f}"


def report(idle: Taken, steady: Taken, after: Taken, calls: int, top: int, tracebacks: int) -> None:
    """Print the breakdown per call."""
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    idle_s = idle.snapshot.filter_traces(filters)
    steady_s = steady.snapshot.filter_traces(filters)
    after_s = after.snapshot.filter_traces(filters)
    t_idle, b_idle, a_idle = totals(idle_s)
    t_steady, b_steady, a_steady = totals(steady_s)
    t_after, _, _ = totals(after_s)
    rss_growth = steady.rss - idle.rss
    own_growth = steady.tracemalloc - idle.tracemalloc
    print(
        f"at the steady snapshot: {steady.calls_playing} calls playing, {steady.streams} "
        f"streams open; per call = / {calls}"
    )
    print()
    print("| per call | KB |")
    print("|---|---|")
    print(f"| traced growth (tracemalloc, steady - idle) | {kb((t_steady - t_idle) / calls)} |")
    print(f"| traced blocks per call | {(b_steady - b_idle) / calls:.0f} |")
    print(
        "| traced growth as allocated (pymalloc/glibc rounding estimated) | "
        f"{kb((a_steady - a_idle) / calls)} |"
    )
    print(
        "| RSS growth under tracemalloc (its tables and the snapshots' garbage inflate it: "
        f"RSS per call is bench/capacity.py's) | {kb(rss_growth / calls)} |"
    )
    print(f"| of which tracemalloc's own tables | {kb(own_growth / calls)} |")
    print(f"| left after the calls (after - idle) | {kb((t_after - t_idle) / calls)} |")
    print()

    by_area: dict[str, list[int]] = {}
    for stat in steady_s.compare_to(idle_s, "traceback"):
        entry = by_area.setdefault(area_of(stat.traceback), [0, 0])
        entry[0] += stat.size_diff
        entry[1] += stat.count_diff
    print("| area | KB per call | blocks per call |")
    print("|---|---|---|")
    for name, (size, count) in sorted(by_area.items(), key=lambda item: -item[1][0]):
        if abs(size) / calls >= 50:
            print(f"| {name} | {kb(size / calls)} | {count / calls:.1f} |")
    print()

    print(f"top {top} lines (innermost frame), per call:")
    print("| line | KB per call | blocks per call |")
    print("|---|---|---|")
    for stat in steady_s.compare_to(idle_s, "lineno")[:top]:
        frame = stat.traceback[0]
        where = f"{short(frame.filename)}:{frame.lineno}"
        print(f"| {where} | {kb(stat.size_diff / calls)} | {stat.count_diff / calls:.1f} |")
    print()

    print(f"top {tracebacks} tracebacks, per call (innermost first):")
    for stat in steady_s.compare_to(idle_s, "traceback")[:tracebacks]:
        print(
            f"- {kb(stat.size_diff / calls)} KB, {stat.count_diff / calls:.1f} blocks: "
            + " < ".join(f"{short(f.filename)}:{f.lineno}" for f in list(stat.traceback)[::-1][:8])
        )


def short(filename: str) -> str:
    """``filename`` from its package or project directory on."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    for d in PROJECT_DIRS:
        if d in filename:
            return d[1:] + filename.split(d, 1)[1]
    if "/lib/python3" in filename:
        return filename.split("/lib/python3", 1)[1].split("/", 1)[1]
    return filename


async def measure(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(BENCH_DIR))
    import httpx2
    from _common import KEY, TOKEN, free_port, serve_env, served_bridge
    from capacity import (
        Bench,
        Tally,
        Ticker,
        bench_emulator_config,
        expected_frames,
        greeting_for,
        lean_call,
        wait_idle,
        wait_ready,
        warm_up,
    )

    from bridge.dev.hamsa_emulator import create_emulator_app
    from bridge.dev.servers import serving

    greeting = greeting_for(args.duration)
    emulator = create_emulator_app(bench_emulator_config())
    calls = args.calls
    with tempfile.TemporaryDirectory(prefix="hamsa-mem-") as workdir:
        snapdir = Path(workdir) / "snapshots"
        snapdir.mkdir()
        async with (
            serving(emulator) as hamsa_url,
            httpx2.AsyncClient(
                timeout=30.0,
                limits=httpx2.Limits(max_connections=100, max_keepalive_connections=100),
            ) as http,
        ):
            port = free_port()
            env = serve_env(
                hamsa_url,
                hamsa_key=KEY,
                auth_token=TOKEN,
                public_url=f"http://127.0.0.1:{port}",
                clean=True,
                BRIDGE_GREETING=greeting,
                BRIDGE_LOG_LEVEL="warning",
                BRIDGE_MAX_CALLS=str(calls + 10),
                BRIDGE_DATABASE_URL=f"sqlite:///{workdir}/bench.db",
            )
            command = [
                sys.executable,
                str(SCRIPT),
                "--child",
                str(snapdir),
                "--depth",
                str(args.depth),
                "--",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            async with served_bridge(
                port, env, graceful=True, cwd=workdir, command=command
            ) as bridge:
                await wait_ready(bridge, http)
                bench = Bench(
                    hamsa=emulator.state.emulator,
                    hamsa_url=hamsa_url,
                    http=http,
                    greeting=greeting,
                    frames_per_call=expected_frames(greeting),
                    duration=args.duration,
                    cpus=(None, None),
                    log_level="warning",
                )
                problem = await warm_up(bench, bridge)
                if problem is not None:
                    print(f"memory_per_call: warm-up call failed: {problem}", file=sys.stderr)
                    return 1
                count = 0

                async def take(label: str, playing: int, streams: int = 0) -> Taken:
                    nonlocal count
                    count += 1
                    os.kill(bridge.pid, signal.SIGUSR1 if label == "steady" else signal.SIGUSR2)
                    info_path = snapdir / f"{count}.json"
                    async with asyncio.timeout(300):
                        while not info_path.exists():  # noqa: ASYNC110 - written by the other process
                            await asyncio.sleep(0.1)
                    info = json.loads(info_path.read_text())
                    path = snapdir / f"{count}.snap"
                    snapshot = tracemalloc.Snapshot.load(str(path))
                    if args.keep:
                        path.rename(Path(args.keep) / f"{label}-{count}.snap")
                    else:
                        path.unlink()
                    return Taken(
                        label, snapshot, info["rss"], info["tracemalloc"], playing, streams
                    )

                idle = await take("idle", 0)
                ticker = Ticker()
                ticker.start()
                ramp = max(2.0, calls / 50)
                started: list[LeanCall | str] = []

                async def one(i: int) -> LeanCall | str:
                    await asyncio.sleep(ramp * i / calls)
                    return await lean_call(
                        bridge.url + "/twiml/inbound",
                        http=http,
                        ticker=ticker,
                        tally=Tally(),
                        plan_margin=bench.plan_margin,
                        max_duration=args.duration + 300,
                    )

                tasks = [asyncio.create_task(one(i)) for i in range(calls)]
                steadies: list[Taken] = []
                try:
                    # every call playing: each has its first media frame, none has ended
                    begin = time.monotonic()
                    while time.monotonic() - begin < ramp + args.duration / 2:
                        await asyncio.sleep(0.2)
                        if playing_calls(ticker) == calls or all(t.done() for t in tasks):
                            break
                    await asyncio.sleep(args.settle)
                    while True:
                        playing = playing_calls(ticker)
                        steadies.append(await take("steady", playing, len(open_calls(ticker))))
                        print(
                            f"steady snapshot {len(steadies)}: {playing} calls playing, "
                            f"RSS {kb(steadies[-1].rss)} KB",
                            flush=True,
                        )
                        if len(steadies) >= args.snapshots:
                            break
                        await asyncio.sleep(args.every)
                    started = list(await asyncio.gather(*tasks))
                finally:
                    await ticker.stop()
                    for task in tasks:
                        task.cancel()
                failed = [r for r in started if isinstance(r, str) or r.close_code != 1000]
                await wait_idle(bridge, http)
                with contextlib.suppress(Exception):
                    await asyncio.sleep(1.0)
                after = await take("after", 0)
    # The first: a snapshot stalls the bridge's loop for seconds, and the Twilio messages that
    # arrive meanwhile wait in uvicorn's queue at the next one (a backlog, not a cost per call).
    steady = steadies[0]
    print()
    print(
        f"{calls} calls, {len(greeting)} chars each ({expected_frames(greeting)} frames); "
        f"tracemalloc depth {args.depth}; failed calls: {len(failed)}"
    )
    per = steady.streams or calls
    if steady.calls_playing < calls:
        print(
            f"note: only {steady.calls_playing} of {calls} calls were playing at the snapshot "
            f"(a busy machine delays first audio): figures are per open stream ({per})"
        )
    report(idle, steady, after, per, args.top, args.tracebacks)
    return 1 if failed and args.smoke else 0


def open_calls(ticker: Ticker) -> set[LeanCall]:
    """The calls whose stream is open (the ticker holds each from its connect to its end)."""
    return set().union(*ticker.groups)


def playing_calls(ticker: Ticker) -> int:
    """Calls whose first frame was heard and that have not ended."""
    calls = open_calls(ticker)
    return sum(1 for call in calls if call.first_media_at and call.ended_at is None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Memory per speaking call of hamsa-bridge serve, by area (tracemalloc).",
    )
    parser.add_argument("--calls", type=int, default=40, help="calls at once (40)")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of audio per call (20)"
    )
    parser.add_argument("--depth", type=int, default=10, help="tracemalloc frames (10)")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds after every call plays (2)"
    )
    parser.add_argument(
        "--every", type=float, default=2.0, help="seconds between steady snapshots (2)"
    )
    parser.add_argument(
        "--snapshots", type=int, default=1, help="steady snapshots (1; the first is reported)"
    )
    parser.add_argument("--top", type=int, default=25, help="lines to list (25)")
    parser.add_argument("--tracebacks", type=int, default=12, help="tracebacks to list (12)")
    parser.add_argument("--keep", metavar="DIR", help="keep the snapshots in DIR (to explore)")
    parser.add_argument("--smoke", action="store_true", help="3 short calls (CI)")
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, rest = argv[:at], argv[at + 1 :]
    args = build_parser().parse_args(argv)
    if args.child:
        return child(Path(args.child), args.depth, rest)
    if args.smoke:
        args.calls, args.duration, args.settle, args.snapshots = 3, 4.0, 0.5, 1
    started = time.monotonic()
    sys.path.insert(0, str(BENCH_DIR))
    from _common import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        code = runner.run(measure(args))
    print(f"run time: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
