"""Smoke runs of the benchmarks in ``bench/``: they complete and report, so they never rot.

No timing is asserted: the figures are the benchmarks' business (``BENCHMARKS.md``). What a smoke
run proves is what the code controls: every mode ran, every figure was printed, no call failed
and no frame was malformed (the benchmarks exit 1 for those, and only those). Whether a timing
goal was met depends on the machine (a capacity step fails its jitter goal on a busy one), so the
verdict is only required to be printed, whichever it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.log_audit import record_output

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 280
"""Seconds a smoke run may take: ~15 s (first audio) and ~45 s (capacity) alone, several times
that while the suite and other jobs share the machine; a capacity step that misses its goal on
a busy machine is run twice (``--retries``). A bound on a hang, not a figure."""


def run_smoke(script: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``bench/SCRIPT --smoke`` in a process group of its own, whose processes (the bridges the
    benchmark starts) must all be gone when it exits; on a timeout the whole group is killed,
    not the benchmark alone (its bridges would live on)."""
    with subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=RUN_LIMIT)
        except BaseException:  # the timeout, or pytest's
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    record_output(stdout + stderr)  # the suite's log audit reads every subprocess' output too
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing left behind
    else:
        raise AssertionError(f"{script} left processes behind: {stdout + stderr}")
    return done


@pytest.mark.timeout(RUN_LIMIT + 20)
def test_first_audio_smoke() -> None:
    """``bench/first_audio.py --smoke``: one call per variant and scenario, every call complete."""
    done = run_smoke("first_audio.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output  # non-zero: a call failed or the run crashed
    for scenario in ("3-sentence announcement", "IVR menu prompt"):
        assert scenario in done.stdout, output
    for variant in (
        "| (a) hamsa-bridge |",
        "| (a) hamsa-bridge, prompt cache warm |",
        "| (b) new socket per request, whole reply |",
        "| (c) FAQ: persistent socket, whole reply |",
    ):
        assert variant in done.stdout, output
    assert done.stdout.count("| (b) new socket per request, whole reply |") == 2, output
    assert "goal (a) first audio" in done.stdout, output


@pytest.mark.timeout(RUN_LIMIT + 20)
def test_capacity_smoke() -> None:
    """``bench/capacity.py --smoke``: the 1-call latency pass, the unloaded step, a step of 2
    calls and a soak, each for seconds with a handful of calls; every call complete, every
    figure printed. The verdict is printed but not required to pass: a step passes on the
    jitter the machine allows (loop lag, writer and frame lateness within 10 ms). With the
    bridge's stall report on, each step and the soak end with their stalls and the GC runs."""
    done = run_smoke("capacity.py", "--stall-report", "--set", "BRIDGE_LOOKAHEAD_SECONDS=8")
    output = done.stdout + done.stderr
    # non-zero: a call failed, a frame was malformed, or the run crashed; a missed goal is 0
    assert done.returncode == 0, output
    # every mode ran, and its calls completed (the second column: failed calls)
    for label in ("| 1 (3 in a row) | 0 |", "| 3 (unloaded) | 0 |", "| 2 | 0 |"):
        assert label in done.stdout, output
    for figure in (
        "CPU/call",
        "writer lateness p50/p99/max ms",
        "bridge-added p50/p99 ms (n)",
        "| idle before | 0 |",
        "| idle after | 0 |",
        "RSS at full load:",
        "frame lateness beyond the plan p50/p99/max:",
        "run time:",
        "bridge settings (--set): BRIDGE_LOOKAHEAD_SECONDS=8",
        "event-loop stalls during the step",
        "bridge GC over its life (runs, total ms, longest ms, collected, longest CPU ms): gen0 ",
        "generator: loop lag p99/max ",
        "arrived while the generator's own loop stalled",
    ):
        assert figure in done.stdout, output
    # the verdict, whichever it is: passing a step is the machine's business, not the code's
    verdicts = re.findall(
        r"^(?:largest passing step: 2 calls|capacity per core: below the smallest step) ",
        done.stdout,
        flags=re.MULTILINE,
    )
    assert len(verdicts) == 1, output
    # the soak: its calls completed, none failed, no malformed frame (gaps are timing)
    soak = re.search(
        r"^calls: (\d+) \((\d+) completed, 0 failed\); gaps \d+, underruns \d+, "
        r"malformed frames 0$",
        done.stdout,
        flags=re.MULTILINE,
    )
    assert soak is not None, output
    assert int(soak[1]) == int(soak[2]) >= 3, output


@pytest.mark.timeout(180)
def test_capacity_floor_smoke() -> None:
    """``bench/capacity.py --smoke --target floor``: the same steps and soak against the floor
    server (``bench/floor_server.py``); every call complete, every figure printed (none judged)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "capacity.py"), "--smoke", "--target", "floor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = done.stdout + done.stderr
    record_output(output)
    assert done.returncode == 0, output  # non-zero: a call failed, a frame was malformed, a crash
    assert "\n| bridge " not in done.stdout, output  # floor only: no bridge step, no latency pass
    for figure in (
        "targets: floor",
        "| floor 3 (unloaded) | 0 |",
        "| floor 2 | 0 |",
        "| machine CPU | other CPU |",
        "CPU steady: floor process",
        "soak (floor): 3 calls",
        "| elapsed s | active calls | RSS MB | open fds | floor CPU |",
        "| idle before | 0 |",
        "| idle after | 0 |",
        "RSS at full load:",
        "frame lateness beyond the plan p50/p99/max:",
    ):
        assert figure in done.stdout, output


@pytest.mark.skipif(
    importlib.util.find_spec("pipecat") is not None, reason="pipecat is installed here"
)
def test_capacity_pipecat_missing_says_how_to_install() -> None:
    """``--target pipecat`` with an interpreter that has no Pipecat: exit 2 and the install
    commands, before any server starts."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "capacity.py"),
            "--compare-pipecat",
            "--pipecat-python",
            sys.executable,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    record_output(done.stdout + done.stderr)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install -r bench/pipecat-requirements.txt" in done.stderr
    assert done.stdout == ""


def test_capacity_comparison_table() -> None:
    """The side-by-side table: one row per step, each target's figures, the ratios to the
    floor (figures made up: what is tested is the arithmetic and the layout)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        capacity = importlib.import_module("capacity")
    finally:
        sys.path.remove(str(ROOT / "bench"))

    def step(target: str, calls: int, cpu: float, rss_per_call_kb: int) -> Any:
        return capacity.StepResult(
            label=f"{target} {calls}",
            calls=calls,
            target=target,
            bridge_cpu=cpu,
            rss_idle=0,
            rss_peak=rss_per_call_kb * 1024 * calls,
            audio_rate=1.0,
        )

    lines = capacity.comparison(
        {
            "bridge": [step("bridge", 3, 3.0, 150), step("bridge", 200, 60.0, 186)],
            "floor": [step("floor", 3, 1.5, 10), step("floor", 200, 20.0, 8)],
        }
    )
    assert lines[0] == "per call, side by side (ratios: ÷ floor):"
    assert "| bridge ÷ floor CPU/call | bridge ÷ floor KB/call |" in lines[1]
    assert lines[3].startswith("| 3 (unloaded) | 1.000% (100) | 0.500% (200) | 150 | 10 |")
    assert lines[3].endswith("| 2.00 | 15.00 |")
    assert lines[4].startswith("| 200 | 0.300% (333) | 0.100% (1000) | 186 | 8 |")
    assert lines[4].endswith("| 3.00 | 23.25 |")
    assert len(lines) == 5


def test_soak_late_frames_are_split_by_the_generators_stalls() -> None:
    """A late frame that arrived during (or just after) a stall of the generator's own loop is
    counted for the generator; frames at most the threshold late are not counted at all."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        capacity = importlib.import_module("capacity")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    gen_lag = [(10.0, 0.0), (10.15, 0.1), (20.0, 0.005), (30.0, 0.03)]  # stalls end 10.15, 30.0
    late = [
        (10.1, 0.09),  # inside the 100 ms stall: the generator's
        (10.16, 0.05),  # just after it: the generator's
        (15.0, 0.05),  # no stall near: the server's (or the wire's)
        (19.99, 0.05),  # a 5 ms lag is no stall
        (29.98, 0.025),  # inside the 30 ms stall
        (30.5, 0.015),  # not later than the threshold: not counted
    ]
    assert capacity.late_causes(late, gen_lag, 0.020) == (5, 3)
    assert capacity.late_causes([], gen_lag, 0.020) == (0, 0)
    assert capacity.late_causes(late, [], 0.020) == (5, 0)


@pytest.mark.timeout(RUN_LIMIT + 20)
def test_memory_per_call_smoke() -> None:
    """``bench/memory_per_call.py --smoke``: 3 short calls through a bridge under tracemalloc,
    the snapshots taken and the breakdown printed (no figure judged)."""
    done = run_smoke("memory_per_call.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output  # non-zero: a call failed or the run crashed
    for figure in (
        "3 calls, ",
        "| traced growth (tracemalloc, steady - idle) |",
        "| left after the calls (after - idle) |",
        "| area | KB per call | blocks per call |",
        "lines (innermost frame), per call:",
        "tracebacks, per call (innermost first):",
        "run time:",
    ):
        assert figure in done.stdout, output


def test_inbound_frames_smoke() -> None:
    """``bench/inbound_frames.py --smoke``: both parsers give the same text and are timed."""
    done = run_smoke("inbound_frames.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for row in ("| websockets parser |", "| frame reader |"):
        assert row in done.stdout, output
