"""What becomes of a contact once its latest attempt is over: retry later, or done.

Computed from the contact's whole attempt history (the store's records), never from a counter,
so the answer is the same whether the runner saw the attempt end or a later ``resume`` found it
ended: only attempts that reached Twilio count against the retries; one a killed process left
``NOT_PLACED`` (recorded, never created) is simply made again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.announcements.spec import AttemptState, CallOutcome, OutcomeReason, Verdict
from bridge.store import AnnouncementRecord, ContactState

__all__ = ["Decision", "decide", "reached", "reached_twilio", "retry_key_of"]


@dataclass(frozen=True, slots=True)
class Decision:
    state: ContactState
    """``PENDING`` (call again at ``not_before``) or ``DONE``."""
    not_before: float = 0.0
    """Earliest next attempt (before the calling window is applied)."""
    outcome: CallOutcome | None = None
    error: str | None = None


def reached(attempt: AnnouncementRecord) -> bool:
    """Is, or may be, a call at Twilio: anything but ``NOT_PLACED``, and any attempt whose row
    holds evidence of a call (a CallSid, a stream start, plays) whatever its state says."""
    return (
        attempt.state is not AttemptState.NOT_PLACED
        or attempt.call_sid is not None
        or attempt.stream_started_at is not None
        or attempt.plays > 0
    )


def reached_twilio(attempts: Sequence[AnnouncementRecord]) -> int:
    """Attempts that are, or may be, calls at Twilio (:func:`reached`)."""
    return sum(1 for a in attempts if reached(a))


def retry_key_of(verdict: Verdict | None) -> CallOutcome | OutcomeReason:
    """What ``--retry-on`` must name to retry an attempt with this verdict: its error reason
    (``stream-never-connected``) if it has one, else its outcome (``None``: ``failed``)."""
    if verdict is None:
        return CallOutcome.FAILED
    if verdict.reason is not None and verdict.reason.is_error:
        return verdict.reason
    return verdict.outcome


def decide(
    attempts: Sequence[AnnouncementRecord],
    *,
    retries: int,
    retry_delay: float,
    retry_on: frozenset[CallOutcome | OutcomeReason],
    now: float,
) -> Decision:
    """The contact's next state, its latest attempt (``attempts[-1]``) being final.

    ``NOT_PLACED`` latest: call again now (the attempt never became a call). An ended call
    whose outcome is in ``retry_on``, with fewer than ``1 + retries`` attempts at Twilio:
    call again ``retry_delay`` after it ended. Otherwise done, with that outcome.
    """
    if not attempts:
        return Decision(ContactState.PENDING, now)
    last = attempts[-1]
    if not last.final:
        raise ValueError(f"attempt {last.id} is not over")
    if last.state is AttemptState.NOT_PLACED:
        return Decision(ContactState.PENDING, now)
    outcome = last.outcome or CallOutcome.FAILED
    if retry_key_of(last.verdict) in retry_on and reached_twilio(attempts) < 1 + retries:
        ended = last.ended_at if last.ended_at is not None else now
        return Decision(ContactState.PENDING, ended + retry_delay, outcome)
    return Decision(ContactState.DONE, outcome=outcome, error=last.outcome_error)
