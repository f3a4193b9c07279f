"""Whether a recorded attempt became a call: the rule, from evidence alone (no I/O).

An attempt is recorded ``PLANNED`` before ``calls.create`` is sent, so a process killed while the
request was in flight leaves an attempt that may or may not be a call at Twilio. Every fact the
bridge holds counts as evidence that the call exists, and any one of them means "placed,
reconcile its outcome", never "not placed":

==========================================  =================================================
evidence                                    verdict
==========================================  =================================================
a CallSid in the attempt's row              ``PLACED`` (that CallSid)
a listed call in the attempt's window,      ``PLACED`` (the oldest such call)
not attributed to another attempt
the bridge saw its stream (start or plays)  ``PLACED`` (CallSid unknown: no call to ask about)
none, the attempt younger than ``settle``   ``WAIT`` (a request just sent may still be
                                            being processed: list again at ``until``)
none                                        ``NOT_PLACED``
==========================================  =================================================

The window opens at the attempt's recorded time less ``skew``: Twilio's ``date_created`` has
whole seconds (a call created 0.9 s after the attempt was recorded may carry an earlier date),
and Twilio's clock is not ours. A listed call whose CallSid is the attempt's own is its own
call, not another attempt's: that mistake is how a row holding a CallSid, a stream start and
``plays=1`` was once marked "not placed" and the number dialled again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CLOCK_SKEW",
    "RECONCILE_SETTLE",
    "AttemptFacts",
    "ListedCall",
    "Verdict",
    "VerdictKind",
    "in_window",
    "reconcile",
]

RECONCILE_SETTLE: Final = 3.0
"""An attempt without evidence younger than this is left to settle before it is judged: a
request sent just before the process died may still be being processed."""
CLOCK_SKEW: Final = 120.0
"""Seconds of disagreement allowed between our clock and Twilio's ``date_created``."""


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    """What the store holds of one attempt."""

    created_at: float
    """When it was recorded (before ``calls.create`` was sent): Unix seconds."""
    call_sid: str | None = None
    stream_started: bool = False
    plays: int = 0


@dataclass(frozen=True, slots=True)
class ListedCall:
    """A call in Twilio's Calls list (same To and From as the attempt)."""

    sid: str
    date_created: float | None
    """Unix seconds, whole (as Twilio gives it); ``None`` if Twilio gave none."""


class VerdictKind(enum.StrEnum):
    PLACED = "placed"
    NOT_PLACED = "not_placed"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str
    call_sid: str | None = None
    """``PLACED``: the attempt's call (``None``: it exists but its CallSid is unknown)."""
    until: float | None = None
    """``WAIT``: when to list the calls again."""


def in_window(facts: AttemptFacts, date_created: float | None, *, skew: float) -> bool:
    """Could a call Twilio dates ``date_created`` have been created by this attempt?"""
    if date_created is None:
        return False
    return date_created >= math.floor(facts.created_at) - skew


def reconcile(
    facts: AttemptFacts,
    listed: Iterable[ListedCall],
    *,
    taken: frozenset[str],
    now: float,
    settle: float = RECONCILE_SETTLE,
    skew: float = CLOCK_SKEW,
) -> Verdict:
    """The attempt's verdict (see the module's table). ``taken``: CallSids attributed to
    attempts (this attempt's own among them, if it has one: then rule 1 decides first)."""
    if facts.call_sid:
        return Verdict(VerdictKind.PLACED, "its CallSid is recorded", call_sid=facts.call_sid)
    candidates = sorted(
        (c for c in listed if c.sid not in taken and in_window(facts, c.date_created, skew=skew)),
        key=lambda c: (c.date_created or 0.0, c.sid),
    )
    if candidates:
        return Verdict(
            VerdictKind.PLACED, "Twilio lists a call in its window", call_sid=candidates[0].sid
        )
    if facts.stream_started or facts.plays > 0:
        return Verdict(VerdictKind.PLACED, "the bridge saw its stream")
    if now < facts.created_at + settle:
        return Verdict(VerdictKind.WAIT, "too recent to judge", until=facts.created_at + settle)
    return Verdict(VerdictKind.NOT_PLACED, "no evidence of a call")
