"""Smoke runs of the benchmarks in ``bench/``: they complete and report, so they never rot.

No timing is asserted: the figures are the benchmarks' business (``BENCHMARKS.md``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.log_audit import record_output

ROOT = Path(__file__).resolve().parent.parent


def test_first_audio_smoke() -> None:
    """``bench/first_audio.py --smoke``: one call per variant and scenario, every call complete."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "first_audio.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    output = done.stdout + done.stderr
    record_output(output)  # the suite's log audit reads every subprocess' output too
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


def test_capacity_smoke() -> None:
    """``bench/capacity.py --smoke``: the 1-call latency pass, a capacity step and a soak, each
    for seconds with a handful of calls; every call complete, every figure printed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "capacity.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = done.stdout + done.stderr
    record_output(output)  # the suite's log audit reads every subprocess' output too
    assert done.returncode == 0, output  # non-zero: a call failed, a frame was malformed, a crash
    for label in ("| 1 (3 in a row) | 0 |", "| 3 (unloaded) | 0 |", "| 2 | 0 |"):
        assert label in done.stdout, output
    for figure in (
        "CPU/call",
        "writer lateness p50/p99/max ms",
        "bridge-added p50/p99 ms (n)",
        "largest passing step:",
        "| idle before | 0 |",
        "| idle after | 0 |",
        "RSS at full load:",
        "frame lateness beyond the plan p50/p99/max:",
    ):
        assert figure in done.stdout, output
