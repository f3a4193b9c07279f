"""The campaign's small parts: CPS spacing (also after a restart), retry decisions, progress
rendering and its rate limits, the export, the lease owner check."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from bridge.announcements.limiter import CallRateLimiter
from bridge.announcements.options import AnnouncementOptions
from bridge.announcements.spec import AnnouncementSpec, AttemptState, CallOutcome, OutcomeReason
from bridge.campaigns.export import NOT_CALLED, export_rows, write_export
from bridge.campaigns.lease import owner_is_dead
from bridge.campaigns.progress import (
    PLAIN_INTERVAL,
    Counts,
    LiveProgress,
    PlainProgress,
    ProgressFields,
    ProgressView,
    fit,
    plain_line,
    progress_for,
)
from bridge.campaigns.retry import decide
from bridge.campaigns.runner import classify
from bridge.errors import TwilioApiError
from bridge.store import AnnouncementRecord, ContactRecord, ContactState

pytestmark = pytest.mark.anyio

# --- the CPS limiter -------------------------------------------------------------------------


def most_in_one_second(times: Sequence[float]) -> int:
    """The largest number of ``times`` inside any window [t, t + 1)."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(ordered):
        while ordered[j] < start:
            j += 1
        k = i
        while k < len(ordered) and ordered[k] < start + 1.0:
            k += 1
        best = max(best, k - j)
    return best


def book(limiter: CallRateLimiter, arrivals: Sequence[float]) -> list[float]:
    """The instants the limiter lets each caller through (callers arrive at ``arrivals``)."""
    return [now + limiter.reserve(now) for now in arrivals]


arrivals = st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), max_size=80).map(sorted)


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(min_value=1, max_value=30), times=arrivals)
def test_no_one_second_window_holds_more_than_rate_creations(rate: int, times: list[float]) -> None:
    slots = book(CallRateLimiter(rate, clock=lambda: 0.0), times)
    assert most_in_one_second(slots) <= rate
    assert all(slot >= arrival for slot, arrival in zip(slots, times, strict=True))


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(min_value=0.05, max_value=50), times=arrivals)
def test_slots_are_at_least_one_over_rate_apart(rate: float, times: list[float]) -> None:
    slots = book(CallRateLimiter(rate, clock=lambda: 0.0), times)
    assert all(b - a >= 1 / rate for a, b in zip(slots, slots[1:], strict=False))


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=30),
    before=arrivals,
    gap=st.floats(min_value=0, max_value=3, allow_nan=False),
    after=arrivals,
)
def test_a_restarted_limiter_seeded_with_recent_creations_cannot_burst(
    rate: int, before: list[float], gap: float, after: list[float]
) -> None:
    first = book(CallRateLimiter(rate, clock=lambda: 0.0), before)
    restart = (first[-1] if first else 0.0) + gap
    second = CallRateLimiter(rate, clock=lambda: 0.0)
    second.seed(t for t in first if t >= restart - 2.0)  # what recent_attempt_times returns
    slots = book(second, [restart + t for t in after])
    assert most_in_one_second(first + slots) <= rate


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=30),
    lateness=st.lists(st.floats(min_value=0, max_value=0.5, allow_nan=False), max_size=60),
)
def test_a_slot_used_late_pushes_the_next_one(rate: int, lateness: list[float]) -> None:
    """A caller woken late (a busy event loop) must not squeeze the next caller closer."""
    limiter = CallRateLimiter(rate, clock=lambda: 0.0)
    now, used = 0.0, []
    for late in lateness:  # one caller at a time, as the campaign's dispatcher
        now += limiter.reserve(now) + late
        limiter.used(now)
        used.append(now)
    assert all(b - a >= 1 / rate for a, b in zip(used, used[1:], strict=False))
    assert most_in_one_second(used) <= rate


async def test_acquire_waits_on_the_clock() -> None:
    now = [100.0]
    limiter = CallRateLimiter(1000, clock=lambda: now[0])  # 1 ms apart: real sleeps are short
    for _ in range(3):
        await limiter.acquire()
    assert limiter.reserve(now[0]) > 0


# --- retries ---------------------------------------------------------------------------------

SPEC = AnnouncementSpec(
    to="+966501234567",
    from_="+966110000000",
    text="t",
    options=AnnouncementOptions("s", "d", "ar", ring_timeout=30),
)
RETRY_ON = frozenset({CallOutcome.BUSY, CallOutcome.NO_ANSWER, CallOutcome.FAILED})


def attempt(
    n: int,
    status: str | None,
    *,
    state: AttemptState | None = None,
    ended: float = 100.0,
    sid: str | None = None,
    **fields: object,
) -> AnnouncementRecord:
    if state is None:
        state = AttemptState.ENDED if status else AttemptState.NOT_PLACED
    return AnnouncementRecord(
        id=f"an_{n}",
        spec=SPEC,
        state=state,
        created_at=ended - 10,
        contact_idx=0,
        attempt=n,
        status=status,
        ended_at=ended,
        call_sid=sid if sid is not None else (f"CA{n}" if status else None),
        **fields,  # type: ignore[arg-type]
    )


def test_busy_is_retried_after_the_delay_until_the_retries_are_spent() -> None:
    history = [attempt(1, "busy", ended=100.0)]
    first = decide(history, retries=2, retry_delay=30, retry_on=RETRY_ON, now=200)
    assert (first.state, first.not_before, first.outcome) == (
        ContactState.PENDING,
        130.0,
        CallOutcome.BUSY,
    )
    history.append(attempt(2, "no-answer", ended=150.0))
    assert decide(history, retries=2, retry_delay=30, retry_on=RETRY_ON, now=200).state is (
        ContactState.PENDING
    )
    history.append(attempt(3, "failed", ended=190.0))
    last = decide(history, retries=2, retry_delay=30, retry_on=RETRY_ON, now=200)
    assert (last.state, last.outcome) == (ContactState.DONE, CallOutcome.FAILED)


def test_attempts_that_never_reached_twilio_do_not_consume_retries() -> None:
    history = [attempt(1, "busy"), attempt(2, None), attempt(3, None)]
    crashed = decide(history, retries=1, retry_delay=30, retry_on=RETRY_ON, now=500)
    assert (crashed.state, crashed.not_before) == (ContactState.PENDING, 500)
    history.append(attempt(4, "busy"))
    assert decide(history, retries=1, retry_delay=30, retry_on=RETRY_ON, now=500).state is (
        ContactState.DONE
    )


def test_answered_and_outcomes_not_retried_are_done() -> None:
    answered = decide(
        [attempt(1, "completed", stream_started_at=95.0, plays=1)],
        retries=2,
        retry_delay=1,
        retry_on=RETRY_ON,
        now=0,
    )
    assert (answered.state, answered.outcome) == (ContactState.DONE, CallOutcome.HEARD)
    only_busy = frozenset({CallOutcome.BUSY})
    failed = decide([attempt(1, "failed")], retries=2, retry_delay=1, retry_on=only_busy, now=0)
    assert (failed.state, failed.outcome) == (ContactState.DONE, CallOutcome.FAILED)


def test_deciding_on_an_attempt_still_in_flight_is_a_bug() -> None:
    with pytest.raises(ValueError, match="not over"):
        decide(
            [attempt(1, "ringing", state=AttemptState.PLACED)],
            retries=1,
            retry_delay=1,
            retry_on=RETRY_ON,
            now=0,
        )


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, 21211, "refused"),
        (400, 21215, "refused"),
        (404, 20404, "refused"),
        (429, 20429, "throttled"),
        (401, 20003, "fatal"),
        (400, 21210, "fatal"),
        (500, None, "uncertain"),
        (503, 20503, "uncertain"),
        (None, None, "uncertain"),
    ],
)
def test_create_errors_are_classified(status: int | None, code: int | None, kind: str) -> None:
    assert classify(TwilioApiError("x", status=status, code=code)) == kind


# --- progress --------------------------------------------------------------------------------


def contact(idx: int, state: ContactState, outcome: str | None = None) -> ContactRecord:
    return ContactRecord("cp", idx, f"+96650000000{idx}", {}, "t", state=state, outcome=outcome)


def test_counts_put_each_contact_in_one_bucket() -> None:
    contacts = [
        contact(0, ContactState.DONE, "answered"),
        contact(1, ContactState.DONE, "no-answer"),
        contact(2, ContactState.DONE, "not-placed"),
        contact(3, ContactState.INVALID),
        contact(4, ContactState.ACTIVE),
        contact(5, ContactState.PENDING),
        contact(6, ContactState.PENDING),
        contact(7, ContactState.DONE, "duplicate"),
    ]
    counts = Counts.of(contacts, {5: 1})
    assert (counts.answered, counts.no_answer, counts.not_placed, counts.invalid) == (1, 1, 1, 1)
    assert (counts.active, counts.retry, counts.waiting, counts.duplicate) == (1, 1, 1, 1)
    assert (counts.total, counts.finished) == (8, 5)
    # the numbers to call leave out the invalid row and the duplicate: 6, 3 of them done
    assert (counts.to_call, counts.done, counts.left) == (6, 3, 3)
    text = counts.describe()
    assert text.startswith("heard 0 · answered 1 · busy 0 · no-answer 1")
    assert "calling 1 · waiting for retry 1 · not called yet 1" in text
    assert "canceled" not in text


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def busy_counts(i: int) -> Counts:
    """Numbers big enough that everything would not fit in 80 columns."""
    return Counts(
        heard=100 * i,
        answered=7 * i,
        busy=3 * i,
        no_answer=2 * i,
        failed=i,
        not_placed=i,
        active=20,
        retry=30,
        waiting=10_000 - 114 * i,
    )


def test_on_a_terminal_the_line_fits_80_columns_and_is_redrawn_in_place() -> None:
    stream, clock = io.StringIO(), Clock()
    console = Console(width=80, file=stream, force_terminal=True)
    progress = LiveProgress(console, clock=clock)
    updates = 12
    for i in range(updates):
        clock.now = float(i)
        progress.update(busy_counts(i))
    progress.close()
    output = stream.getvalue()
    # one line break in all: the one ending the line at close (no stacked lines), and the
    # cursor never goes up (a line that wrapped would be redrawn from the line above)
    assert output.count("\n") == 1
    assert "\x1b[1A" not in output
    assert output.endswith("\n") or output.endswith("\x1b[?25h")
    # every redraw goes back to the start of the line and erases it before writing
    redraws = output.split("\r\x1b[2K")
    assert len(redraws) >= updates  # one frame per update (and the last one again at close)
    frames = [ANSI.sub("", frame).rstrip("\n") for frame in redraws]
    assert all("\r" not in frame for frame in frames)
    assert all(0 < len(frame) <= 80 for frame in frames), [len(f) for f in frames]
    for i, frame in enumerate(frames[:updates]):  # the counts of each update, done/total first
        counts = busy_counts(i)
        assert f"{counts.done}/{counts.to_call} done" in frame
        assert f"heard {counts.heard}" in frame
    assert "/min" in frames[-1]  # the rate, once measurable
    assert "ETA " in frames[-1]
    # the whole line would not have fitted: the least useful counts were left out
    assert "not called yet" not in frames[-1]
    assert "not called yet" in plain_line(ProgressView().fields(busy_counts(11), 0.0))


def test_on_a_terminal_the_line_is_redrawn_at_most_four_times_a_second() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = LiveProgress(Console(width=120, file=stream, force_terminal=True), clock=clock)
    for i in range(40):  # 40 changes in one second
        clock.now = i * 0.025
        progress.update(Counts(answered=i, waiting=40 - i))
    assert 4 <= stream.getvalue().count("\r\x1b[2K") + 1 <= 5
    progress.close()
    last = ANSI.sub("", stream.getvalue().split("\r\x1b[2K")[-1])
    assert "39/40 done" in last  # the last counts are shown at close
    assert "answered 39" in last


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(min_value=1, max_value=300),
    done=st.integers(min_value=0, max_value=10**6),
    left=st.integers(min_value=0, max_value=10**6),
    rate=st.none() | st.floats(min_value=0, max_value=1e5),
    eta=st.none() | st.floats(min_value=0, max_value=1e8),
    counts=st.lists(st.integers(min_value=0, max_value=10**6), min_size=6, max_size=6),
)
def test_the_live_line_never_exceeds_the_width(
    width: int, done: int, left: int, rate: float | None, eta: float | None, counts: list[int]
) -> None:
    names = ["heard", "answered", "busy", "no-answer", "failed", "calling"]
    view = ProgressFields(done, done + left, rate, eta, tuple(zip(names, counts, strict=True)))
    layout = fit(view, width)
    assert layout.width <= width
    if width >= 40:
        assert layout.parts[0] == f"{done}/{done + left} done"
    if width >= 60:
        assert layout.bar >= 10


def test_the_rate_and_eta_come_from_the_run_so_far() -> None:
    view = ProgressView()
    start = view.fields(Counts(heard=10, waiting=90), now=100.0)  # 10 settled at recovery
    assert (start.done, start.total, start.rate, start.eta) == (10, 100, None, None)
    later = view.fields(Counts(heard=40, busy=5, active=5, waiting=50), now=160.0)
    assert (later.done, later.total) == (45, 100)
    assert later.rate == pytest.approx(35.0)  # 35 numbers done in the minute since the start
    assert later.eta == pytest.approx(55 / 35 * 60)
    assert plain_line(later).startswith("45/100 done · 35/min · ETA 1m34s · heard 40")


def test_without_a_terminal_a_plain_line_every_five_seconds_and_one_at_the_end() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = PlainProgress(stream, clock=clock)
    for i in range(41):  # a change every 0.5 s for 20 s
        clock.now = i * 0.5
        progress.update(Counts(heard=i, waiting=60 - i))
    for _ in range(3):  # no change for 30 s: nothing printed
        clock.now += 10
        progress.update(Counts(heard=40, waiting=20))
    lines = stream.getvalue().splitlines()
    # at 0 s, 5 s, 10 s, 15 s and 20 s: the interval, never more often
    assert [line.split(" done")[0] for line in lines] == [
        "progress: 0/60",
        "progress: 10/60",
        "progress: 20/60",
        "progress: 30/60",
        "progress: 40/60",
    ]
    assert PLAIN_INTERVAL == 5.0
    clock.now += 1  # 51 s: a change after a quiet spell is written at once
    progress.update(Counts(heard=41, waiting=19))
    clock.now += 1  # 52 s: within 5 s of the last line: held…
    progress.update(Counts(heard=42, waiting=18))
    assert len(stream.getvalue().splitlines()) == 6
    progress.close()  # …and written at the end
    lines = stream.getvalue().splitlines()
    assert len(lines) == 7
    assert lines[-2].startswith("progress: 41/60 done · ")
    assert lines[-1].startswith("progress: 42/60 done · ")
    assert "\x1b" not in stream.getvalue()
    assert "\r" not in stream.getvalue()


def test_a_stream_that_is_not_a_terminal_gets_plain_lines() -> None:
    assert isinstance(progress_for(io.StringIO()), PlainProgress)


# --- export ----------------------------------------------------------------------------------


def test_export_has_one_row_per_input_row_with_its_variables() -> None:
    confirm = AnnouncementSpec(
        to="+966501234567",
        from_="+966110000000",
        text="t",
        options=AnnouncementOptions("s", "d", "ar", confirm_digit="1", ring_timeout=30),
    )
    contacts = [
        ContactRecord(
            "cp",
            0,
            "+966501",
            {"name": "Ali", "error": "x"},
            "t",
            ContactState.DONE,
            outcome="heard",
        ),
        ContactRecord("cp", 1, "+966502", {"name": "Sara"}, "t", ContactState.DONE, outcome="busy"),
        ContactRecord(
            "cp",
            2,
            "bad",
            {"name": "Omar"},
            "",
            ContactState.INVALID,
            error="line 4: number 'bad' is not an E.164 number",
        ),
        ContactRecord(
            "cp",
            3,
            "+966504",
            {"name": "Huda"},
            "t",
            ContactState.DONE,
            outcome="not-placed",
            error="Twilio refused the call: …",
        ),
        ContactRecord(
            "cp", 4, "+966505", {"name": "Zaid"}, "t", ContactState.DONE, outcome="failed"
        ),
    ]
    records = [
        attempt(1, None),  # a crash left it unplaced: not counted
        attempt(
            2,
            "completed",
            duration=7,
            answered_by="human",
            confirmation="confirmed",
            stream_started_at=95.0,
            plays=1,
        ),
        attempt(3, "busy", sid="CAb1"),
        attempt(4, "busy", sid="CAb2"),
        attempt(5, None, error="Twilio refused the call: …"),
        attempt(6, "completed", duration=3, sid="CAn"),  # answered, no bridge saw the stream
    ]
    records[1] = AnnouncementRecord(**{**_fields(records[1]), "spec": confirm})
    records = [
        AnnouncementRecord(**{**_fields(r), "contact_idx": idx})
        for r, idx in zip(records, [0, 0, 1, 1, 3, 4], strict=True)
    ]
    header, rows = export_rows(contacts, records)
    assert header == [
        "number", "attempts", "outcome", "reason", "duration", "confirmation", "answered_by",
        "call_sid", "error", "name", "error (csv)",
    ]  # fmt: skip
    never = OutcomeReason.STREAM_NEVER_CONNECTED
    assert rows == [
        ["+966501", "1", "heard", "", "7", "confirmed", "human", "CA2", "", "Ali", "x"],
        ["+966502", "2", "busy", "", "", "", "", "CAb2", "", "Sara", ""],
        ["bad", "0", "invalid", "", "", "", "", "", "line 4: number 'bad' is not an E.164 number",
         "Omar", ""],
        ["+966504", "0", "not-placed", "", "", "", "", "", "Twilio refused the call: …", "Huda",
         ""],
        ["+966505", "1", "failed", never.value, "", "", "", "CAn", never.description, "Zaid", ""],
    ]  # fmt: skip


def test_a_cancelled_campaigns_numbers_never_called_are_exported_as_such() -> None:
    contacts = [
        ContactRecord("cp", 0, "+966501", {}, "t", ContactState.DONE, outcome="heard"),
        ContactRecord("cp", 1, "+966502", {}, "t", ContactState.PENDING),  # its retry cancelled
        ContactRecord("cp", 2, "+966503", {}, "t", ContactState.PENDING),  # never called
    ]
    records = [
        AnnouncementRecord(**{**_fields(attempt(1, "completed", plays=1, stream_started_at=95.0)),
                              "contact_idx": 0}),
        AnnouncementRecord(**{**_fields(attempt(2, "busy")), "contact_idx": 1}),
    ]  # fmt: skip
    _, running = export_rows(contacts, records)
    assert [row[2] for row in running] == ["heard", "pending", "pending"]
    _, cancelled = export_rows(contacts, records, cancelled=True)
    assert [(row[1], row[2], row[8]) for row in cancelled] == [
        ("1", "heard", ""),
        ("1", "busy", "the campaign was cancelled before the next attempt"),
        ("0", NOT_CALLED, "the campaign was cancelled before this number was called"),
    ]


@pytest.mark.parametrize(("bom", "first"), [(True, b"\xef\xbb\xbfnumber,"), (False, b"number,")])
def test_the_export_starts_with_a_bom_unless_told_not_to(
    tmp_path: Path, bom: bool, first: bytes
) -> None:
    contacts = [ContactRecord("cp", 0, "+966501", {"name": "أحمد"}, "t", ContactState.PENDING)]
    path = tmp_path / "out.csv"
    assert write_export(path, contacts, [], bom=bom) == 1
    data = path.read_bytes()
    assert data.startswith(first)
    assert "أحمد".encode() in data


def _fields(record: AnnouncementRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


# --- the lease owner -------------------------------------------------------------------------


def test_a_dead_local_process_is_recognised_and_anything_else_is_not() -> None:
    host = socket.gethostname()
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],  # noqa: S603
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(child.stdout)
    assert owner_is_dead(f"{host}:{dead_pid}:abcd")
    assert not owner_is_dead(f"{host}:{os.getpid()}:abcd")  # ourselves
    assert not owner_is_dead(f"{host}:{os.getppid()}:abcd")  # alive
    assert not owner_is_dead(f"elsewhere.example:{dead_pid}:abcd")  # cannot tell: alive
    assert not owner_is_dead("garbage")
