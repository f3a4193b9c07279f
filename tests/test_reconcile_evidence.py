"""The reconciliation rule (``bridge.announcements.evidence``): every fact is evidence."""

from __future__ import annotations

import itertools

import pytest

from bridge.announcements.evidence import (
    AttemptFacts,
    ListedCall,
    VerdictKind,
    in_window,
    reconcile,
)

PLACED, NOT_PLACED, WAIT = VerdictKind.PLACED, VerdictKind.NOT_PLACED, VerdictKind.WAIT
CREATED = 1_000.7
"""The attempt was recorded at .7 of a second: its call may be dated the whole second before."""
SKEW = 120.0
SETTLE = 3.0
OWN = "CAown"

LISTED = {
    "none": [],
    # created 0.2 s after the attempt, dated at the whole second (before the attempt's time)
    "own, whole-second date": [ListedCall(OWN, 1_000.0)],
    "in window, clock skew": [ListedCall("CAskew", CREATED - SKEW + 0.5)],
    "later, in window": [ListedCall("CAlater", 1_030.0)],
    "outside window": [ListedCall("CAold", CREATED - SKEW - 2)],
    "undated": [ListedCall("CAundated", None)],
    "another attempt's": [ListedCall("CAtaken", 1_001.0)],
}
TAKEN = frozenset({"CAtaken"})
EXPECTED_SID = {
    "own, whole-second date": OWN,
    "in window, clock skew": "CAskew",
    "later, in window": "CAlater",
}
AGES = {"young": CREATED + 1.0, "settled": CREATED + 60.0}


@pytest.mark.parametrize(
    ("sid", "stream", "plays", "listed", "age", "kind", "call_sid"),
    [
        # the row: CallSid, stream start, plays=1, its own call listed, completed
        (OWN, True, 1, "own, whole-second date", "settled", PLACED, OWN),
        (OWN, False, 0, "none", "settled", PLACED, OWN),
        (OWN, False, 0, "none", "young", PLACED, OWN),
        (OWN, False, 0, "another attempt's", "settled", PLACED, OWN),
        (None, True, 0, "none", "settled", PLACED, None),
        (None, False, 1, "none", "settled", PLACED, None),
        (None, True, 1, "later, in window", "settled", PLACED, "CAlater"),
        (None, False, 0, "own, whole-second date", "young", PLACED, OWN),
        (None, False, 0, "own, whole-second date", "settled", PLACED, OWN),
        (None, False, 0, "in window, clock skew", "settled", PLACED, "CAskew"),
        (None, False, 0, "outside window", "settled", NOT_PLACED, None),
        (None, False, 0, "undated", "settled", NOT_PLACED, None),
        (None, False, 0, "another attempt's", "settled", NOT_PLACED, None),
        (None, False, 0, "none", "settled", NOT_PLACED, None),
        (None, False, 0, "none", "young", WAIT, None),
        (None, False, 0, "outside window", "young", WAIT, None),
    ],
)
def test_rule_table(
    sid: str | None,
    stream: bool,
    plays: int,
    listed: str,
    age: str,
    kind: VerdictKind,
    call_sid: str | None,
) -> None:
    facts = AttemptFacts(CREATED, call_sid=sid, stream_started=stream, plays=plays)
    taken = TAKEN | ({sid} if sid else set())
    verdict = reconcile(facts, LISTED[listed], taken=taken, now=AGES[age], settle=SETTLE, skew=SKEW)
    assert (verdict.kind, verdict.call_sid) == (kind, call_sid)
    assert (verdict.until == CREATED + SETTLE) == (kind is WAIT)


@pytest.mark.parametrize(
    ("sid", "stream", "plays", "listed", "age"),
    list(itertools.product([None, OWN], [False, True], [0, 1], sorted(LISTED), sorted(AGES))),
)
def test_every_combination_any_evidence_means_placed(
    sid: str | None, stream: bool, plays: int, listed: str, age: str
) -> None:
    facts = AttemptFacts(CREATED, call_sid=sid, stream_started=stream, plays=plays)
    taken = TAKEN | ({sid} if sid else set())
    verdict = reconcile(facts, LISTED[listed], taken=taken, now=AGES[age], settle=SETTLE, skew=SKEW)
    listed_sid = EXPECTED_SID.get(listed)
    if sid or listed_sid or stream or plays:
        assert verdict.kind is PLACED
        assert verdict.call_sid == (sid or listed_sid)
    else:
        assert verdict.kind is (WAIT if age == "young" else NOT_PLACED)


def test_oldest_unattributed_call_in_window_is_chosen() -> None:
    listed = [ListedCall("CAb", 1_005.0), ListedCall("CAa", 1_002.0), ListedCall("CAt", 1_001.0)]
    verdict = reconcile(AttemptFacts(CREATED), listed, taken=frozenset({"CAt"}), now=2_000.0)
    assert verdict.call_sid == "CAa"


@pytest.mark.parametrize(
    ("date_created", "inside"),
    [
        (None, False),
        (1_000.0, True),  # the attempt's own second, truncated
        (1_000.0 - SKEW, True),
        (1_000.0 - SKEW - 1, False),
        (1_500.0, True),
    ],
)
def test_window(date_created: float | None, inside: bool) -> None:
    assert in_window(AttemptFacts(CREATED), date_created, skew=SKEW) is inside
