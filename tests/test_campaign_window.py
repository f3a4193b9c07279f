"""Calling windows: nobody is called outside local hours, across midnight and DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.campaigns.window import CallingWindow, is_open, next_opening, zone

DST_ZONES = [
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "America/Santiago",  # southern hemisphere, midnight transitions
    "America/Havana",  # DST change at midnight local time
    "Asia/Tehran",  # DST until 2022
    "Pacific/Apia",  # skipped a whole day (2011-12-30)
]
FIXED_ZONES = ["UTC", "Asia/Riyadh", "Asia/Kolkata", "Pacific/Kiritimati"]

instants = st.floats(
    min_value=datetime(2005, 1, 1, tzinfo=UTC).timestamp(),
    max_value=datetime(2035, 1, 1, tzinfo=UTC).timestamp(),
    allow_nan=False,
)
minutes = st.integers(min_value=0, max_value=24 * 60 - 1)


@st.composite
def windows(draw: st.DrawFn) -> CallingWindow:
    start = draw(minutes)
    end = draw(minutes.filter(lambda m: m != start))
    return CallingWindow(time(start // 60, start % 60), time(end // 60, end % 60))


def local(at: float, name: str) -> datetime:
    return datetime.fromtimestamp(at, ZoneInfo(name))


def test_parse() -> None:
    assert CallingWindow.parse("09:00-20:00") == CallingWindow(time(9), time(20))
    assert CallingWindow.parse(" 8:30 - 17:45 ") == CallingWindow(time(8, 30), time(17, 45))
    assert str(CallingWindow.parse("20:00-08:00")) == "20:00-08:00"
    assert CallingWindow.parse("00:00-24:00").contains(time(23, 59, 59))
    for bad in ("9-17", "09:00", "25:00-26:00", "09:60-10:00", "10:00-10:00", "10:00-24:30"):
        with pytest.raises(ValueError, match="calling window"):
            CallingWindow.parse(bad)


def test_end_is_exclusive_and_overnight_windows_wrap() -> None:
    day = CallingWindow.parse("09:00-20:00")
    assert [day.contains(time(h, m)) for h, m in [(9, 0), (19, 59), (20, 0), (8, 59)]] == [
        True,
        True,
        False,
        False,
    ]
    night = CallingWindow.parse("20:00-08:00")
    hours = [(20, 0), (2, 0), (7, 59), (8, 0), (12, 0)]
    assert [night.contains(time(h, m)) for h, m in hours] == [True, True, True, False, False]


def test_examples_in_riyadh() -> None:
    riyadh = zone("Asia/Riyadh")  # UTC+3, no DST
    window = CallingWindow.parse("09:00-20:00")
    evening = datetime(2026, 3, 1, 21, 30, tzinfo=riyadh).timestamp()
    assert not is_open(window, evening, riyadh)
    assert local(next_opening(window, evening, riyadh), "Asia/Riyadh") == datetime(
        2026, 3, 2, 9, 0, tzinfo=riyadh
    )
    morning = datetime(2026, 3, 1, 6, 0, tzinfo=riyadh).timestamp()
    assert local(next_opening(window, morning, riyadh), "Asia/Riyadh").hour == 9
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=riyadh).timestamp()
    assert next_opening(window, noon, riyadh) == noon
    assert next_opening(None, evening, riyadh) == evening


def test_an_opening_skipped_by_spring_forward_lands_inside_the_window() -> None:
    new_york = zone("America/New_York")
    window = CallingWindow.parse("02:30-04:00")  # 02:00-03:00 does not exist on 2026-03-08
    before = datetime(2026, 3, 8, 1, 0, tzinfo=new_york).timestamp()
    opening = next_opening(window, before, new_york)
    assert is_open(window, opening, new_york)
    assert local(opening, "America/New_York").date().day == 8
    gone = CallingWindow.parse("02:05-02:55")  # entirely inside the gap: the next day's
    opening = next_opening(gone, before, new_york)
    assert local(opening, "America/New_York").replace(tzinfo=None) == datetime(2026, 3, 9, 2, 5)


def test_unknown_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        zone("Mars/Base")


@settings(max_examples=400, deadline=None)
@given(at=instants, window=windows(), name=st.sampled_from(DST_ZONES + FIXED_ZONES))
def test_the_next_opening_is_inside_the_window_and_never_earlier(
    at: float, window: CallingWindow, name: str
) -> None:
    tz = zone(name)
    opening = next_opening(window, at, tz)
    assert opening >= at
    assert window.contains(local(opening, name).time())
    assert is_open(window, opening, tz)
    assert opening - at < 3 * 86400  # within a couple of days, whatever the DST
    if is_open(window, at, tz):
        assert opening == at


@settings(max_examples=300, deadline=None)
@given(at=instants, window=windows(), name=st.sampled_from(FIXED_ZONES))
def test_without_dst_the_opening_is_the_earliest_open_instant(
    at: float, window: CallingWindow, name: str
) -> None:
    tz = zone(name)
    opening = next_opening(window, at, tz)
    if opening > at:
        assert local(opening, name).time() == window.start
        # every whole minute between the request and the opening is outside the window
        probe = at
        while probe < opening - 60:
            assert not is_open(window, probe, tz)
            probe += 60


@settings(max_examples=200, deadline=None)
@given(
    at=instants,
    window=windows(),
    offset=st.integers(min_value=-12 * 60, max_value=14 * 60),
)
def test_fixed_offsets_agree_with_plain_arithmetic(
    at: float, window: CallingWindow, offset: int
) -> None:
    tz = timezone(timedelta(minutes=offset))
    opening = next_opening(window, at, tz)
    shifted = datetime.fromtimestamp(opening, tz)
    assert window.contains(shifted.time())
    assert opening >= at
