"""The start policy, pure: decisions on arrival times and sizes, in simulated time.

``bridge.dev.start_sim.simulate`` plays an utterance exactly as ``StartGate`` feeds the policy
(a sentence requested when the previous reply ended), so these tests say what a caller would hear
without a socket or a clock.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.calls.start_policy import (
    PRIOR,
    HamsaPace,
    PaceEstimate,
    ReplyRecord,
    StartPolicy,
    StartState,
)
from bridge.dev.start_sim import Schedule, simulate

EXACT = PaceEstimate(
    pace=1.0, spacing=0.5, first_spacing=0.5, first_byte=0.5, first_chunk=0.25, ms_per_char=80.0
)


def regular(first_byte: float, first: float, chunk: float, spacing: float, n: int) -> Schedule:
    """A reply: ``first`` seconds of audio after ``first_byte``, then ``n - 1`` chunks of
    ``chunk`` seconds every ``spacing`` seconds."""
    return [(first_byte, first)] + [(first_byte + k * spacing, chunk) for k in range(1, n)]


def learned(replies: list[Schedule], chars: list[int], times: int = 4) -> HamsaPace:
    pace = HamsaPace()
    for _ in range(times):
        simulate(replies, chars, pace, max_hold=0.0)
    return pace


def exactly(
    first_byte: float, first: float, chunk: float, spacing: float, chars: int, duration: float
) -> HamsaPace:
    """An estimate that knows a regular delivery exactly: its prior is it, and it has seen one
    such reply (so later sentences are predicted too)."""
    pace = HamsaPace(
        prior=PaceEstimate(
            pace=chunk / spacing,
            spacing=spacing,
            first_spacing=spacing,
            first_byte=first_byte,
            first_chunk=first,
            ms_per_char=duration * 1000 / chars,
        )
    )
    frames = round((duration - first) / chunk) + 1
    pace.observe(
        ReplyRecord(
            chars=chars,
            requested_at=0.0,
            arrivals=list(regular(first_byte, first, chunk, spacing, frames)),
        )
    )
    return pace


def oracle_hold(replies: list[Schedule]) -> float:
    """The shortest hold after the first byte that plays the whole utterance without a gap."""
    t, position, need = 0.0, 0.0, 0.0
    for schedule in replies:
        for delay, seconds in schedule:
            need = max(need, t + delay - position)
            position += seconds
        t += schedule[-1][0]
    return need - replies[0][0][0]


# --- single decisions ------------------------------------------------------------------------


def test_a_first_frame_that_covers_the_wait_plays_at_once() -> None:
    policy = StartPolicy(EXACT, max_hold=3.0, margin=0.1)
    policy.begin_sentence(25, [], 9.5)  # 2 s of audio expected
    decision = policy.arrived(10.0, 1.5, playout_end=10.0)  # 1.5 s on hand > 0.5 s wait
    assert decision.release
    assert policy.state is StartState.PLAYING
    assert [(h.reason, h.held) for h in policy.holds] == [("immediate", 0.0)]


def test_a_small_first_frame_is_held_until_the_predicted_wait_is_covered() -> None:
    policy = StartPolicy(EXACT, max_hold=3.0, margin=0.1)
    policy.begin_sentence(50, [], 9.5)  # 4 s expected at real time, frames every 0.5 s
    decision = policy.arrived(10.0, 0.2, playout_end=10.0)
    assert not decision.release
    assert decision.wake is not None
    # the next 0.5 s frame is due at 10.5: start once 0.2 s on hand lasts until then (+ margin)
    assert decision.wake == pytest.approx(10.5 - 0.2 + 0.1)
    assert policy.state is StartState.HOLDING
    assert policy.due(decision.wake, playout_end=decision.wake).release
    assert policy.holds[0].reason == "covered"
    assert policy.holds[0].held == pytest.approx(0.4)


def test_audio_already_playing_counts_as_on_hand() -> None:
    policy = StartPolicy(EXACT, max_hold=3.0, margin=0.1)
    policy.begin_sentence(50, [], 9.5)
    # the previous sentence plays until 12.0: the next frame (10.5) comes long before that
    assert policy.arrived(10.0, 0.2, playout_end=12.0).release


def test_a_stalled_reply_is_released_at_the_cap() -> None:
    slow = PaceEstimate(
        pace=0.3, spacing=2.0, first_spacing=2.0, first_byte=1.0, first_chunk=0.2, ms_per_char=80
    )
    policy = StartPolicy(slow, max_hold=0.8, margin=0.1)
    policy.begin_sentence(200, [], 9.5)  # 16 s expected: far more than 0.2 s on hand can cover
    decision = policy.arrived(10.0, 0.2, playout_end=10.0)
    while not decision.release:
        assert decision.wake is not None
        assert decision.wake <= 10.8 + 1e-9
        decision = policy.due(decision.wake, playout_end=decision.wake)
    hold = policy.holds[0]
    assert hold.reason == "cap"
    assert hold.released == pytest.approx(10.8)


def test_the_end_of_the_reply_releases_what_is_held() -> None:
    policy = StartPolicy(EXACT, max_hold=3.0)
    policy.begin_sentence(50, [], 9.5)
    assert not policy.arrived(10.0, 0.2, playout_end=10.0).release
    assert policy.ended(10.1, playout_end=10.1).release
    assert policy.holds[0].reason == "ended"
    assert policy.state is StartState.IDLE


def test_a_failed_reply_releases_what_is_held_and_its_retry_streams() -> None:
    policy = StartPolicy(EXACT, max_hold=3.0)
    policy.begin_sentence(50, [], 9.5)
    assert not policy.arrived(10.0, 0.2, playout_end=10.0).release
    assert policy.failed(10.2).release
    policy.restart_reply(10.3)
    assert policy.arrived(11.0, 0.5, playout_end=11.0).release  # still playing: streams


def test_a_dry_playout_mid_sentence_holds_the_rest_once() -> None:
    policy = StartPolicy(EXACT, max_hold=3.0, margin=0.1)
    policy.begin_sentence(100, [], 9.5)  # 8 s expected
    assert policy.arrived(10.0, 2.0, playout_end=10.0).release  # covered at once
    # a frame comes after the playout ran dry (at 12.0): hold the rest instead of stuttering
    decision = policy.arrived(12.5, 0.3, playout_end=12.0)
    assert not decision.release
    assert policy.state is StartState.HOLDING
    while not decision.release:
        assert decision.wake is not None
        decision = policy.due(decision.wake, playout_end=12.0)
    assert policy.holds[-1].rebuffer
    # the second time it runs dry the audio just streams: one pause, not a hold per frame
    assert policy.arrived(20.0, 0.3, playout_end=19.0).release
    assert sum(h.rebuffer for h in policy.holds) == 1


def test_later_sentences_lengthen_the_first_hold() -> None:
    alone = StartPolicy(EXACT, max_hold=10.0, margin=0.0)
    alone.begin_sentence(50, [], 0.0)
    followed = StartPolicy(EXACT, max_hold=10.0, margin=0.0)
    followed.begin_sentence(50, [50, 50], 0.0)
    slow = PaceEstimate(
        pace=0.8, spacing=0.5, first_spacing=0.5, first_byte=1.0, first_chunk=0.25, ms_per_char=80
    )
    alone.estimate = alone.typical = slow
    followed.estimate = followed.typical = slow
    a = alone.arrived(0.0, 0.25, playout_end=0.0)
    b = followed.arrived(0.0, 0.25, playout_end=0.0)
    assert a.wake is not None
    assert b.wake is not None
    assert b.wake > a.wake  # the later sentences' first bytes and slow pace need more on hand


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_hold"):
        StartPolicy(EXACT, max_hold=-1.0)


# --- the per-process estimate ----------------------------------------------------------------


def test_the_prior_holds_until_replies_are_seen() -> None:
    pace = HamsaPace()
    assert pace.estimate() == PRIOR
    assert pace.typical() == PRIOR


def test_the_estimate_follows_the_replies_seen() -> None:
    pace = HamsaPace()
    for _ in range(40):
        record = ReplyRecord(chars=50, requested_at=0.0)
        record.arrivals = [(0.4, 0.3), (0.6, 1.2), (0.8, 1.2), (1.0, 1.3)]  # 4 s at 3x
        pace.observe(record)
    est = pace.estimate()
    assert est.pace == pytest.approx(3.7 / 0.6 * 40 / 41 + PRIOR.pace / 41)
    assert est.first_byte == pytest.approx((0.4 * 40 + PRIOR.first_byte) / 41)
    assert est.ms_per_char == pytest.approx((80.0 * 40 + PRIOR.ms_per_char) / 41)
    assert est.first_spacing == pytest.approx((0.2 * 40 + PRIOR.first_spacing) / 41)


def test_a_reply_without_audio_teaches_nothing() -> None:
    pace = HamsaPace()
    pace.observe(ReplyRecord(chars=10, requested_at=0.0))
    assert pace.replies == 0
    assert pace.estimate() == PRIOR


# --- what the caller hears -------------------------------------------------------------------


def test_fast_delivery_is_not_held_once_a_reply_was_seen() -> None:
    # 3x real time with a large first frame: once one reply was seen, the first frame alone
    # covers every wait (the very first reply of a process is judged by the real-time prior)
    replies = [regular(0.3, 1.2, 0.75, 0.25, 5) for _ in range(3)]
    chars = [50, 50, 50]
    pace = HamsaPace()
    first = simulate(replies, chars, pace, max_hold=3.0)
    assert first.gaps == []
    assert first.first_audio > 0.3  # the prior held it back a little
    result = simulate(replies, chars, pace, max_hold=3.0)
    assert result.first_audio == pytest.approx(0.3)
    assert result.gaps == []
    assert all(h.reason == "immediate" for h in result.holds)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    first_byte=st.floats(0.05, 2.0),
    first=st.floats(0.05, 1.0),
    chunk=st.floats(0.1, 1.5),
    spacing=st.floats(0.05, 1.5),
    frames=st.integers(2, 8),
    sentences=st.integers(1, 3),
    margin=st.floats(0.0, 0.3),
)
def test_at_a_known_steady_pace_nothing_gaps(
    first_byte: float,
    first: float,
    chunk: float,
    spacing: float,
    frames: int,
    sentences: int,
    margin: float,
) -> None:
    """Property: when Hamsa's delivery is known (a steady pace, frames at a fixed spacing), an
    utterance whose gap-free start fits within the cap plays without a single gap, and starts
    no later than that gap-free start plus the margin."""
    replies = [regular(first_byte, first, chunk, spacing, frames) for _ in range(sentences)]
    duration = first + (frames - 1) * chunk
    chars = [50] * sentences
    cap = 6.0
    needed = oracle_hold(replies)
    assume(needed < cap - margin - 0.01)
    pace = exactly(first_byte, first, chunk, spacing, 50, duration)
    result = simulate(replies, chars, pace, max_hold=cap, margin=margin, learn=False)
    assert result.gaps_over(1e-6) == [], (result.gaps, result.holds)
    assert result.first_audio <= first_byte + needed + margin + 1e-6


def test_slower_than_real_time_pauses_between_sentences_not_inside_them() -> None:
    # 0.8x real time: the utterance needs a 4 s hold, one sentence 1.75 s; the cap allows 2 s
    replies = [regular(0.5, 0.25, 0.8, 1.0, 6) for _ in range(3)]
    duration = 0.25 + 5 * 0.8
    chars = [50] * 3
    pace = exactly(0.5, 0.25, 0.8, 1.0, 50, duration)
    result = simulate(replies, chars, pace, max_hold=2.0, learn=False)
    assert result.gaps_over(0.04), "a pause is unavoidable here"
    inside = [g for g, b in zip(result.gaps, result.boundary, strict=True) if not b]
    assert inside == []
    assert result.first_audio <= 0.5 + 2.0 + 1e-6  # the cap


def test_a_gap_free_start_waits_less_than_the_whole_reply() -> None:
    # 1.25x real time, ~1 s frames after a 0.25 s first frame: start well before the end
    replies = [regular(0.4, 0.25, 1.0, 0.8, 6)]
    chars = [round(5.25 * 1000 / 80)]
    pace = learned(replies, chars)
    result = simulate(replies, chars, pace, max_hold=3.0, learn=False)
    assert result.gaps == []
    assert result.first_audio < replies[0][-1][0] - 2.0


def test_a_stall_after_the_start_gives_one_pause_not_one_per_frame() -> None:
    # learned: a fast Hamsa (3x, big first frames); this reply then stalls for 2.5 s and
    # trickles small frames: the first late frame finds the playout dry and the rest of the
    # sentence is held once more, so the caller hears one pause
    fast = [regular(0.3, 1.2, 0.75, 0.25, 5)]
    pace = learned(fast, [50], times=8)
    reply = [(0.3, 1.2), (3.0, 0.3), (3.4, 0.3), (3.8, 0.3), (4.2, 0.3), (4.6, 0.3), (5.0, 0.3)]
    result = simulate([reply], [40], pace, max_hold=3.0, learn=False)
    assert len(result.gaps) == 1, result.gaps
    assert [h.rebuffer for h in result.holds] == [False, True]
