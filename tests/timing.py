"""Time in the suite's assertions: what the code decides, and the slack a busy machine needs.

Tests assert what the code controls: bytes, order, states, counts, and the schedule it chose (a
frame's due time, a limiter's slot, a backoff delay). A busy machine runs every scheduled event
late, never early, so "not before its time" is exact; "not long after" needs slack, and gets
:data:`LATE` only where a real-time bound is the behaviour itself (a clear "at once", a frame
played at its time). How fast things go is a figure for ``bench/``, not a test.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["LATE", "most_within"]

LATE: Final = 0.75
"""How late a busy machine may run an event the code scheduled (a frame at its time, a reply
"at once"): the suite runs beside other jobs on two cores, and a stall of a few hundred
milliseconds is ordinary there."""


def most_within(spans: Iterable[tuple[float, float]], seconds: float = 1.0) -> int:
    """The most ``(planned, arrived)`` spans that fit inside one window of ``seconds``.

    A rate limiter books each ``calls.create`` a slot, the slots at least ``s`` apart; a slot
    comes after its attempt was planned and before its request arrived at Twilio. So whatever
    the machine's speed, at most ``1 + seconds / s`` spans fit in any window of ``seconds``:
    a late hand-off or a slow request only stretches its own span. (Counting arrivals alone
    would judge the machine: two requests sent a slot apart can arrive closer together.)
    """
    ordered = sorted(spans)
    return max(
        (
            sum(1 for planned, arrived in ordered[i:] if arrived <= start + seconds)
            for i, (start, _) in enumerate(ordered)
        ),
        default=0,
    )
