"""PacingClock: real-time pacing with a bounded lead and no catch-up burst."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.calls.playback import PacingClock


def drive(clock: PacingClock, frames: int, arrivals: list[float]) -> list[float]:
    """Send ``frames`` frames, each available from its arrival time, as a writer would."""
    now = 0.0
    sent: list[float] = []
    for i in range(frames):
        now = max(now, arrivals[i] if i < len(arrivals) else 0.0)
        while (wait := clock.delay(now)) > 0:
            now += wait
        clock.sent(now)
        sent.append(now)
    return sent


def test_first_frames_go_at_once_up_to_the_lead() -> None:
    clock = PacingClock(lead=0.2)
    sent = drive(clock, 10, [])
    assert sent == [0.0] * 10
    assert abs(clock.ahead(0.0) - 0.2) < 1e-9


def test_six_seconds_delivered_instantly_take_about_six_seconds() -> None:
    clock = PacingClock(lead=0.2)
    sent = drive(clock, 300, [])
    assert 5.7 <= sent[-1] <= 5.85  # the last frame leaves lead-ish before its play time


@settings(max_examples=200)
@given(
    lead_ms=st.integers(min_value=20, max_value=500),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_never_more_than_lead_ahead_of_real_time(lead_ms: int, gaps: list[float]) -> None:
    clock = PacingClock(lead=lead_ms / 1000)
    arrivals, t = [], 0.0
    for gap in gaps:
        t += gap
        arrivals.append(t)
    now = 0.0
    for arrival in arrivals:
        now = max(now, arrival)
        while (wait := clock.delay(now)) > 0:
            now += wait
        clock.sent(now)
        assert clock.ahead(now) <= lead_ms / 1000 + 1e-9


def test_no_catch_up_burst_after_an_underrun() -> None:
    clock = PacingClock(lead=0.2)
    drive(clock, 5, [])  # 100 ms sent at t=0
    assert clock.sent(1.0) is True  # buffer long dry at t=1.0: an underrun
    # after the gap the clock restarts from now: the lead is one frame, not 1 s of backlog
    assert abs(clock.ahead(1.0) - 0.02) < 1e-9


def test_refill_batches_frames() -> None:
    clock = PacingClock(lead=0.2, refill=0.06)
    drive(clock, 10, [])
    wait = clock.delay(0.0)
    assert abs(wait - 0.08) < 1e-9  # sleep until 120 ms remain, then top up 4 frames
    now = wait
    sent = 0
    while clock.delay(now) == 0:
        clock.sent(now)
        sent += 1
    assert sent == 4


def test_reset_after_clear_empties_the_model() -> None:
    clock = PacingClock(lead=0.2)
    drive(clock, 10, [])
    clock.reset()
    assert clock.ahead(0.0) == 0.0
    assert clock.delay(0.0) == 0.0
