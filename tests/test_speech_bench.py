"""``bench/listening.py --smoke``: the listening-cost benchmark runs and prints every figure
(none judged: the figures are ``BENCHMARKS.md``'s business)."""

from __future__ import annotations

from tests.test_bench_smoke import run_smoke


def test_listening_cost_smoke() -> None:
    done = run_smoke("listening.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for kind in ("silence", "speech", "noise"):
        rows = [line for line in lines if line.startswith(kind)]
        assert len(rows) == 3, done.stdout
        assert all("% " in row or "%" in row for row in rows)
    assert any(line.startswith("stt_wav of a 10 s utterance") for line in lines)


def test_speech_turn_smoke() -> None:
    """``bench/speech_turn.py --smoke``: two calls answer a speech menu by voice; every figure of
    the turn (end of words → next prompt) is printed, none judged."""
    done = run_smoke("speech_turn.py")
    assert done.returncode == 0, done.stderr
    for row in (
        "turn: end of words → next prompt's first frame",
        "Hamsa STT (the emulator's answer time)",
        "the bridge's own (turn − Hamsa STT)",
        "beyond the end-of-speech wait",
    ):
        assert any(line.startswith(row) for line in done.stdout.splitlines()), done.stdout
