"""The start policy against a delivery schedule, in simulated time: no sockets, no clock.

``simulate`` plays one utterance the way ``Synthesizer`` and ``StartGate`` do (a sentence is
requested when the previous reply ends; each arrival goes through ``StartPolicy``; a held
sentence is pushed when the policy lets go or at its wake-up time) and returns what a caller
would hear: first audio after the first request and every gap inside the utterance. The tests use
it for properties of the rule ("at a known pace, no gap"), and ``bench/start_policy.py`` to
compare settings over thousands of draws in a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.calls.start_policy import (
    Decision,
    HamsaPace,
    HoldRecord,
    ReplyRecord,
    StartPolicy,
)

Schedule = Sequence[tuple[float, float]]
"""One reply: (seconds after the request, seconds of audio) per frame, in order."""


@dataclass(slots=True)
class SimResult:
    first_audio: float
    """Seconds from the first request to the first audio pushed to playback."""
    gaps: list[float] = field(default_factory=list)
    """Seconds of silence inside the utterance, per gap."""
    boundary: list[bool] = field(default_factory=list)
    """Per gap: True if it came before a sentence's first audio (a pause between sentences),
    False if inside a sentence."""
    holds: list[HoldRecord] = field(default_factory=list)
    whole: float = 0.0
    """Seconds from the first request to the end of the last reply."""

    def gaps_over(self, limit: float) -> list[float]:
        return [g for g in self.gaps if g > limit]


def simulate(
    replies: Sequence[Schedule],
    chars: Sequence[int],
    pace: HamsaPace,
    *,
    max_hold: float,
    margin: float = 0.2,
    learn: bool = True,
) -> SimResult:
    """One utterance of ``len(replies)`` sentences, from time 0 (the first request)."""
    policy = StartPolicy(pace.estimate(), typical=pace.typical(), max_hold=max_hold, margin=margin)
    playout_end: float | None = None
    first_audio: float | None = None
    gaps: list[float] = []
    boundary: list[bool] = []
    fresh = True
    held = 0.0
    request_at = 0.0

    def push(now: float, seconds: float) -> None:
        nonlocal playout_end, first_audio, fresh
        if seconds <= 0:
            return
        if playout_end is None:
            first_audio = now
            playout_end = now
        elif now > playout_end:
            gaps.append(now - playout_end)
            boundary.append(fresh)
            playout_end = now
        fresh = False
        playout_end += seconds

    def ahead(now: float) -> float:
        """When what was pushed will have played: in the past once the playout ran dry."""
        return now if playout_end is None else playout_end

    wake: float | None = None
    last = 0.0

    def act(now: float, decision: Decision) -> None:
        """What ``StartGate`` does with a decision: push what is held, or wait."""
        nonlocal wake, held
        if decision.release:
            push(now, held)
            held = 0.0
            wake = None
        else:
            wake = decision.wake

    def run_until(at: float) -> None:
        while wake is not None and wake <= at:
            now = wake
            act(now, policy.due(now, ahead(now)))

    for index, schedule in enumerate(replies):
        policy.begin_sentence(chars[index], chars[index + 1 :], request_at)
        fresh = True
        record = ReplyRecord(chars=chars[index], requested_at=request_at)
        last = request_at
        for delay, seconds in schedule:
            at = request_at + delay
            run_until(at)
            record.arrivals.append((at, seconds))
            decision = policy.arrived(at, seconds, ahead(at))
            held += seconds
            act(at, decision)
            last = at
        act(last, policy.ended(last, ahead(last)))
        if learn:
            pace.observe(record)
        request_at = last
    run_until(float("inf"))
    policy.finish(last)
    push(last, held)
    return SimResult(
        first_audio=first_audio if first_audio is not None else 0.0,
        gaps=gaps,
        boundary=boundary,
        holds=list(policy.holds),
        whole=request_at,
    )
