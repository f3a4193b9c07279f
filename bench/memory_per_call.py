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

``--waves N``: what stays per *ended* call (a leak, a cache, a bounded set filling). N waves of
``--calls`` calls, each wave over (the bridge idle) before the next; a snapshot once wave
``--first-wave`` (2) is over and once the last is, each after a full ``gc.collect()``, which
reports what it freed (cyclic garbage that the bridge's rare full collections would leave
lying). Per ended call = (last - first) / calls ended between them: traced bytes and blocks by
line and traceback, GC-tracked live objects by type, RSS, pymalloc's bytes in use and arenas, and
glibc's bytes in use and free (``mallinfo2``); ``--trim`` also calls ``malloc_trim(0)`` after
each collection. ``--depth 0`` runs without tracemalloc: the RSS figures are then the bridge's
own. E.g. ``--waves 8 --calls 200 --duration 30 --depth 0`` (1,200 calls ended between the
snapshots, ~5 min); ``PYTHONMALLOC=malloc`` in the environment reaches the bridge too.

Cost: the bridge runs 2-3x slower under tracemalloc; 100 calls fit one core of a quiet machine.
Run: ``python bench/memory_per_call.py [--calls 100] [--duration 20]``; ``--smoke``: 3 short
calls (CI: it runs and prints, no figure is judged).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx2
    from _common import ServedBridge
    from capacity import Bench, LeanCall, Ticker

SCRIPT: Final = Path(__file__).resolve()
GLIBC: Final = "libc.so.6"
"""For ``malloc_trim`` and ``mallinfo2`` (``--waves``: Linux with glibc)."""
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


def child(snapshots: Path, depth: int, argv: Sequence[str], *, trim: bool = False) -> int:
    """``bridge.cli serve`` with tracemalloc; SIGUSR1 writes ``snapshots/N.snap`` and
    ``N.json`` (RSS, tracemalloc's own memory), N counting from 1; SIGUSR2 the same after a
    full ``gc.collect()`` (the idle and after snapshots: the steady one keeps its garbage, RSS
    does too), and the JSON says what that collection found (objects per generation before it,
    objects collected, the commonest types among them) and the RSS after it. ``depth`` 0: no
    tracemalloc (RSS as the bridge runs it; no snapshot). ``trim``: after the collection,
    glibc's ``malloc_trim(0)`` and the RSS after it (fragmentation: free memory glibc kept)."""
    if depth:
        tracemalloc.start(depth)
    taken = 0

    def dump(signum: int, frame: object) -> None:
        nonlocal taken
        taken += 1
        info: dict[str, object] = {
            "rss": rss(os.getpid()),
            "tracemalloc": tracemalloc.get_tracemalloc_memory() if depth else 0,
        }
        if signum == signal.SIGUSR2:
            # idle and after: no garbage of the warm-up call or the step left; what the
            # collection finds is garbage that only a full collection frees
            info["objects"] = [len(gc.get_objects(generation)) for generation in range(3)]
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                info["collected"] = gc.collect()
                kinds: dict[str, int] = {}
                for item in gc.garbage:
                    name = f"{type(item).__module__}.{type(item).__qualname__}"
                    kinds[name] = kinds.get(name, 0) + 1
                info["garbage_types"] = sorted(kinds.items(), key=lambda kv: -kv[1])[:25]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            gc.collect()
            info["rss_collected"] = rss(os.getpid())
            info |= heap_figures()
            live: dict[str, int] = {}
            for item in gc.get_objects():
                name = f"{type(item).__module__}.{type(item).__qualname__}"
                live[name] = live.get(name, 0) + 1
            info["live_types"] = live
            if trim:
                ctypes.CDLL(GLIBC).malloc_trim(0)
                info["rss_trimmed"] = rss(os.getpid())
        if depth:
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(str(snapshots / f"{taken}.snap"))
        (snapshots / f"{taken}.json.tmp").write_text(json.dumps(info))
        (snapshots / f"{taken}.json.tmp").rename(snapshots / f"{taken}.json")

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, dump)
    from bridge.cli import main as bridge_main

    return bridge_main(list(argv))


PYMALLOC_FIGURES: Final = {
    "# arenas allocated current": "pymalloc_arenas",
    "# bytes in allocated blocks": "pymalloc_used",
    "# bytes in available blocks": "pymalloc_free_blocks",
}


def heap_figures() -> dict[str, int]:
    """This process's heaps: pymalloc's arenas and blocks (``sys._debugmallocstats``, which
    writes to file descriptor 2: caught in a file) and glibc's ``mallinfo2`` (bytes in use,
    free in its heaps, mmapped chunks), to tell memory Python holds from allocator slack."""
    figures: dict[str, int] = {}
    with tempfile.TemporaryFile("w+") as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        for line in out:
            for prefix, name in PYMALLOC_FIGURES.items():
                if prefix in line and name not in figures:
                    number = line.split("=")[1] if "=" in line else line.split()[0]
                    figures[name] = int(number.strip().replace(",", "").split()[0])

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    libc = ctypes.CDLL(GLIBC)
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    figures |= {
        "glibc_in_use": info.uordblks + info.hblkhd,
        "glibc_free": info.fordblks,
        "glibc_mmapped": info.hblkhd,
    }
    return figures


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- the parent: calls, snapshots, the breakdown -------------------------------------------------


@dataclass
class Taken:
    label: str
    snapshot: tracemalloc.Snapshot | None
    """None without tracemalloc (``--depth 0``)."""
    rss: int
    tracemalloc: int
    calls_playing: int
    streams: int
    """Calls whose stream was open (playing or not yet)."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the bridge wrote with the snapshot (``child``)."""


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
    if idle.snapshot is None or steady.snapshot is None or after.snapshot is None:
        raise ValueError("the steady-state breakdown needs tracemalloc (--depth > 0)")
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
        Ticker,
        bench_emulator_config,
        expected_frames,
        greeting_for,
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
                **dict(setting.split("=", 1) for setting in args.set),
            )
            command = [
                sys.executable,
                str(SCRIPT),
                "--child",
                str(snapdir),
                "--depth",
                str(args.depth),
                *(["--trim"] if args.trim else []),
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
                    snapshot = None
                    if args.depth:
                        snapshot = tracemalloc.Snapshot.load(str(path))
                        if args.keep:
                            path.rename(Path(args.keep) / f"{label}-{count}.snap")
                        else:
                            path.unlink()
                    return Taken(
                        label, snapshot, info["rss"], info["tracemalloc"], playing, streams, info
                    )

                if args.waves:
                    return await waves(args, bench, bridge, http, take)

                idle = await take("idle", 0)
                ticker = Ticker()
                ticker.start()
                ramp = max(2.0, calls / 50)
                started: list[LeanCall | str] = []

                async def one(i: int) -> LeanCall | str:
                    return await staggered_call(
                        bench,
                        bridge,
                        http,
                        ticker,
                        index=i,
                        calls=calls,
                        ramp=ramp,
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


async def staggered_call(
    bench: Bench,
    bridge: ServedBridge,
    http: httpx2.AsyncClient,
    ticker: Ticker,
    *,
    index: int,
    calls: int,
    ramp: float,
    max_duration: float,
) -> LeanCall | str:
    """Call ``index`` of ``calls`` arriving evenly over ``ramp`` seconds: one lean call to the
    bridge under test, run to its end."""
    from capacity import Tally, lean_call

    await asyncio.sleep(ramp * index / calls)
    return await lean_call(
        bridge.url + "/twiml/inbound",
        http=http,
        ticker=ticker,
        tally=Tally(),
        plan_margin=bench.plan_margin,
        max_duration=max_duration,
    )


async def waves(
    args: argparse.Namespace,
    bench: Bench,
    bridge: ServedBridge,
    http: httpx2.AsyncClient,
    take: Callable[[str, int], Awaitable[Taken]],
) -> int:
    """``--waves N``: N waves of ``--calls`` short calls, each wave over (every call gone, the
    bridge idle) before the next starts; a snapshot after a full collection once wave
    ``--first-wave`` is over and once the last is. What grew between them, divided by the calls
    that ended between them, is what the bridge keeps per ended call (a leak, a cache filling, a
    set of used tokens until they expire: each names its line); the RSS growth without
    ``--depth 0``'s tracemalloc is what the process really grew."""
    from capacity import Ticker, wait_idle

    first_wave = min(args.first_wave, args.waves - 1)
    ramp = max(2.0, args.calls / 50)
    first: Taken | None = None
    ended = failed = 0
    rows: list[tuple[int, int, int]] = []
    started = time.monotonic()
    for wave in range(1, args.waves + 1):
        ticker = Ticker()
        ticker.start()

        calls = [
            staggered_call(
                bench,
                bridge,
                http,
                ticker,
                index=i,
                calls=args.calls,
                ramp=ramp,
                max_duration=args.duration + 120,
            )
            for i in range(args.calls)
        ]
        try:
            results = await asyncio.gather(*calls)
        finally:
            await ticker.stop()
        failed += sum(1 for r in results if isinstance(r, str) or r.close_code != 1000)
        await wait_idle(bridge, http)
        await asyncio.sleep(1.0)  # the closed sockets reaped, the calls' last tasks done
        if first is not None:
            ended += args.calls
        now_rss = rss(bridge.pid)
        rows.append((wave, ended, now_rss))
        print(
            f"wave {wave}: {args.calls} calls, {failed} failed so far, RSS {kb(now_rss)} KB, "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
        if wave == first_wave:
            first = await take("first", 0)
            print(f"  first snapshot: {json.dumps(summary(first))}", flush=True)
        # Hamsa emulator's own records grow per call in this process, not in the bridge's
        bench.hamsa.requests.clear()
        bench.hamsa.connections.clear()
    assert first is not None
    last = await take("last", 0)
    print(f"  last snapshot: {json.dumps(summary(last))}", flush=True)
    print()
    print(
        f"{args.waves} waves of {args.calls} calls ({args.duration:g} s of audio each); "
        f"snapshots after wave {first_wave} and wave {args.waves}: {ended} calls ended between "
        f"them; failed calls: {failed}; tracemalloc depth {args.depth}"
    )
    print()
    print("| wave | calls ended since the first snapshot | RSS KB (idle, no collection) |")
    print("|---|---|---|")
    for wave, count, value in rows:
        print(f"| {wave} | {count} | {kb(value)} |")
    print()
    report_waves(first, last, ended, args.top, args.tracebacks)
    return 0


def summary(taken: Taken) -> dict[str, Any]:
    """The snapshot's figures besides the traces (RSS in KB, what the full collection found)."""
    info = {key: value for key, value in taken.info.items() if key != "live_types"}
    for key in ("rss", "rss_collected", "rss_trimmed", "tracemalloc"):
        if key in info:
            info[key] = round(info[key] / 1024)
    return info


def report_waves(first: Taken, last: Taken, ended: int, top: int, tracebacks: int) -> None:
    """Per ended call: RSS growth, what each full collection found, the traced growth by line
    and by traceback."""
    per = max(1, ended)
    print("| per ended call, first -> last snapshot | value |")
    print("|---|---|")
    for key, what in (
        ("rss", "RSS growth before the collection (KB)"),
        ("rss_collected", "RSS growth after the collection (KB)"),
        ("rss_trimmed", "RSS growth after malloc_trim (KB)"),
        ("tracemalloc", "of which tracemalloc's own tables (KB)"),
        ("pymalloc_used", "pymalloc: bytes in allocated blocks (KB)"),
        ("glibc_in_use", "glibc: bytes in use, mallinfo2 uordblks + hblkhd (KB)"),
        ("glibc_free", "glibc: free bytes in its heaps, fordblks (KB)"),
    ):
        if key in first.info and key in last.info:
            print(f"| {what} | {kb((last.info[key] - first.info[key]) / per)} |")
    gens_first, gens_last = first.info.get("objects"), last.info.get("objects")
    if "pymalloc_arenas" in first.info and "pymalloc_arenas" in last.info:
        print(
            "| pymalloc arenas (1 MiB each), first -> last | "
            f"{first.info['pymalloc_arenas']} -> {last.info['pymalloc_arenas']} |"
        )
    if gens_first and gens_last:
        grown = [b - a for a, b in zip(gens_first, gens_last, strict=True)]
        print(
            f"| GC-tracked objects grown per generation (0, 1, 2), per call | "
            f"{', '.join(f'{g / per:.2f}' for g in grown)} |"
        )
    live_first, live_last = first.info.get("live_types"), last.info.get("live_types")
    if live_first is not None and live_last is not None:
        grown_types = {
            name: live_last.get(name, 0) - live_first.get(name, 0)
            for name in set(live_first) | set(live_last)
        }
        top_types = sorted(grown_types.items(), key=lambda kv: -abs(kv[1]))[:8]
        print(
            "| GC-tracked live objects grown (not frozen, after the collection), per call | "
            f"{sum(grown_types.values()) / per:.2f}: "
            + ", ".join(f"{name} {count / per:+.2f}" for name, count in top_types if count)
            + " |"
        )
    print(
        f"| objects the last full collection freed, per call | "
        f"{last.info.get('collected', 0) / per:.2f} |"
    )
    if first.snapshot is None or last.snapshot is None:
        return
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    first_s = first.snapshot.filter_traces(filters)
    last_s = last.snapshot.filter_traces(filters)
    t_first, b_first, a_first = totals(first_s)
    t_last, b_last, a_last = totals(last_s)
    print(f"| traced growth (KB) | {kb((t_last - t_first) / per)} |")
    print(f"| traced growth as allocated (KB) | {kb((a_last - a_first) / per)} |")
    print(f"| traced blocks | {(b_last - b_first) / per:.2f} |")
    print()
    print(f"top {top} lines (innermost frame), whole growth and per ended call:")
    print("| line | KB | blocks | bytes per call | blocks per call |")
    print("|---|---|---|---|---|")
    for stat in last_s.compare_to(first_s, "lineno")[:top]:
        frame = stat.traceback[0]
        print(
            f"| {short(frame.filename)}:{frame.lineno} | {kb(stat.size_diff)} | "
            f"{stat.count_diff} | {stat.size_diff / per:.0f} | {stat.count_diff / per:.2f} |"
        )
    print()
    print(f"top {tracebacks} tracebacks (innermost first):")
    for stat in last_s.compare_to(first_s, "traceback")[:tracebacks]:
        print(
            f"- {kb(stat.size_diff)} KB, {stat.count_diff} blocks "
            f"({stat.size_diff / per:.0f} B per call): "
            + " < ".join(f"{short(f.filename)}:{f.lineno}" for f in list(stat.traceback)[::-1][:10])
        )


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
    parser.add_argument(
        "--waves",
        type=int,
        default=0,
        metavar="N",
        help="what stays per ended call: N waves of --calls calls of --duration s, one after "
        "the other; snapshots after wave --first-wave and after the last, each after a full "
        "collection with every call gone (0: the steady-state breakdown instead)",
    )
    parser.add_argument(
        "--first-wave", type=int, default=2, help="--waves: the first snapshot's wave (2)"
    )
    parser.add_argument(
        "--trim",
        action="store_true",
        help="--waves: after each snapshot's collection, malloc_trim(0) and the RSS after it",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the bridge (BRIDGE_*/HAMSA_*, repeatable)",
    )
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
        return child(Path(args.child), args.depth, rest, trim=args.trim)
    if args.depth == 0 and not args.waves:
        print("memory_per_call: --depth 0 (no tracemalloc) needs --waves", file=sys.stderr)
        return 2
    if args.waves and args.waves < 2:
        print("memory_per_call: --waves needs at least 2 waves", file=sys.stderr)
        return 2
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
