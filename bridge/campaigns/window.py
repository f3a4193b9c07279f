"""The calling window: the local hours in which a contact may be dialled (nobody at night).

Pure functions of an instant (Unix seconds), a window and a time zone, so they can be
property-tested across DST changes. A window is ``HH:MM-HH:MM`` in the contact's local time, end
exclusive; an end before the start wraps past midnight (``20:00-08:00``). Instants are
converted with :mod:`zoneinfo`, so a day that skips or repeats the opening hour (a DST change)
still yields an instant inside the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["CallingWindow", "is_open", "next_opening", "zone"]

_WINDOW: Final = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_SEARCH_DAYS: Final = 8
"""Openings are looked for this many days ahead (a DST gap can swallow one day's window)."""


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Asia/Riyadh``); ``ValueError`` naming it when unknown."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected e.g. Asia/Riyadh or UTC)") from None


@dataclass(frozen=True, slots=True)
class CallingWindow:
    start: time
    end: time
    """Exclusive. Before ``start``: the window wraps past midnight."""

    @classmethod
    def parse(cls, text: str) -> CallingWindow:
        """``09:00-20:00``; ``ValueError`` saying what is expected."""
        match = _WINDOW.match(text)
        if match is None:
            raise ValueError(f"calling window {text!r}: expected HH:MM-HH:MM, e.g. 09:00-20:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"calling window {text!r}: hours are 00-23, minutes 00-59")
        start, end = time(h1, m1), time(0, 0) if h2 == 24 else time(h2, m2)
        if start == end and h2 != 24:
            raise ValueError(
                f"calling window {text!r} is empty: start and end must differ "
                "(leave --window out to call at any hour)"
            )
        return cls(start, end)

    def contains(self, local: time) -> bool:
        """Is this local wall-clock time inside the window?"""
        local = local.replace(tzinfo=None, fold=0)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _local(at: float, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(at, UTC).astimezone(tz)


def is_open(window: CallingWindow | None, at: float, tz: tzinfo) -> bool:
    """May a contact in ``tz`` be dialled at instant ``at``? (No window: always.)"""
    return window is None or window.contains(_local(at, tz).time())


def next_opening(window: CallingWindow | None, at: float, tz: tzinfo) -> float:
    """The first instant not before ``at`` at which the window is open in ``tz``: ``at`` itself
    when it is open, else the window's next opening.

    The opening is the start time on some local day; on a day a DST change skips it, the same
    wall time resolves (``fold``) to an instant just after the change, still inside the window.
    """
    if is_open(window, at, tz):
        return at
    assert window is not None
    today = _local(at, tz).date()
    for offset in range(-1, _SEARCH_DAYS):
        day = today + timedelta(days=offset)
        candidates = []
        for fold in (0, 1):
            opening = datetime.combine(day, window.start, tzinfo=tz).replace(fold=fold)
            instant = opening.timestamp()
            if instant >= at and is_open(window, instant, tz):
                candidates.append(instant)
        if candidates:
            return min(candidates)
    raise AssertionError(f"no opening of {window} within {_SEARCH_DAYS} days of {at}")
