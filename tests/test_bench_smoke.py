"""Smoke runs of the benchmarks in ``bench/``: they complete and report, so they never rot.

No timing is asserted: the figures are the benchmarks' business (``BENCHMARKS.md``). What a smoke
run proves is what the code controls: every mode ran, every figure was printed, no call failed
and no frame was malformed (the benchmarks exit 1 for those, and only those). Whether a timing
goal was met depends on the machine (a capacity step fails its jitter goal on a busy one), so the
verdict is only required to be printed, whichever it is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.log_audit import record_output

ROOT = Path(__file__).resolve().parent.parent
RUN_LIMIT = 280
"""Seconds a smoke run may take: ~15 s (first audio) and ~45 s (capacity) alone, several times
that while the suite and other jobs share the machine; a capacity step that misses its goal on
a busy machine is run twice (``--retries``). A bound on a hang, not a figure."""


def run_smoke(script: str) -> subprocess.CompletedProcess[str]:
    """``bench/SCRIPT --smoke`` in a process group of its own, whose processes (the bridges the
    benchmark starts) must all be gone when it exits; on a timeout the whole group is killed,
    not the benchmark alone (its bridges would live on)."""
    with subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), "--smoke"],
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
    jitter the machine allows (loop lag, writer and frame lateness within 10 ms)."""
    done = run_smoke("capacity.py")
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
