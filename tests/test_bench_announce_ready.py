"""``bench/announce_ready.py --smoke`` completes and reports (no timing asserted: the figures
are the benchmark's business). Kept apart from ``test_bench_smoke.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.log_audit import record_output

ROOT = Path(__file__).resolve().parent.parent


def test_announce_ready_smoke() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "announce_ready.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    record_output(output)
    assert done.returncode == 0, output  # non-zero: a call had no audio, or counters disagree
    # how many were served from presynthesis depends on the machine's speed: not asserted
    assert "| presynthesis |" in done.stdout, output
    assert "| streaming |" in done.stdout, output
    assert "presynth counters: started 3," in done.stdout, output
    assert "goal p95 ≤ 100 ms" in done.stdout, output
