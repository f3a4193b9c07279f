"""A campaign's results as CSV: one row per input row, the row's own columns kept.

Written for a spreadsheet: the result columns first, then the CSV's variables in their original
order, in UTF-8 with a byte-order mark (BOM, the bytes EF BB BF) first by default. Excel needs
the BOM to read a CSV as UTF-8 (without it, Arabic names show as mojibake); Python's
``encoding="utf-8-sig"``, pandas and LibreOffice read it fine. ``--no-bom`` leaves it out for
tools that take it for part of the first column's name.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bridge.announcements.commands import describe_confirmation
from bridge.announcements.spec import CallOutcome
from bridge.campaigns.retry import reached, reached_twilio
from bridge.store import AnnouncementRecord, ContactRecord, ContactState

__all__ = ["COLUMNS", "NOT_CALLED", "export_rows", "write_export"]

COLUMNS: Final = (
    "number",
    "attempts",
    "outcome",
    "reason",
    "duration",
    "confirmation",
    "answered_by",
    "call_sid",
    "error",
)


NOT_CALLED: Final = "not-called"
"""The outcome of a number a cancelled campaign never called."""


def _outcome(
    contact: ContactRecord, last: AnnouncementRecord | None, cancelled: bool
) -> tuple[str, str | None]:
    """(outcome, the error it implies)."""
    if contact.state is ContactState.DONE:
        return contact.outcome or "", None
    if cancelled and contact.state is ContactState.PENDING:
        if last is not None and last.outcome is not None:  # its retry was cancelled
            return last.outcome.value, "the campaign was cancelled before the next attempt"
        return NOT_CALLED, "the campaign was cancelled before this number was called"
    return contact.state.value, None  # invalid, or pending/active in an unfinished campaign


def _reason(contact: ContactRecord, last: AnnouncementRecord | None) -> str:
    """Why the outcome is what it is (``stream-never-connected``, ``played-unconfirmed``)."""
    if contact.state is not ContactState.DONE or last is None or last.reason is None:
        return ""
    return last.reason.value


def export_rows(
    contacts: Sequence[ContactRecord],
    attempts: Sequence[AnnouncementRecord],
    *,
    cancelled: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per contact, in input order. ``cancelled``: the campaign was
    cancelled, so its pending numbers never will be called (:data:`NOT_CALLED`, or the outcome
    of the attempt whose retry was cancelled)."""
    history: dict[int, list[AnnouncementRecord]] = {}
    for attempt in attempts:
        if attempt.contact_idx is not None:
            history.setdefault(attempt.contact_idx, []).append(attempt)
    variables: dict[str, None] = {}
    for contact in contacts:
        variables.update(dict.fromkeys(contact.variables))
    names = {name: name if name not in COLUMNS else f"{name} (csv)" for name in variables}
    header = [*COLUMNS, *names.values()]
    rows: list[list[str]] = []
    for contact in sorted(contacts, key=lambda c: c.idx):
        tried = history.get(contact.idx, [])
        calls = [a for a in tried if reached(a)]
        last = calls[-1] if calls else None
        answered = last is not None and last.outcome in (CallOutcome.HEARD, CallOutcome.ANSWERED)
        outcome, why = _outcome(contact, last, cancelled)
        error = contact.error or why or (tried[-1].outcome_error if tried else None) or ""
        rows.append(
            [
                contact.number,
                str(reached_twilio(tried)),
                outcome,
                _reason(contact, last),
                str(last.duration) if answered and last and last.duration is not None else "",
                describe_confirmation(last) if answered and last else "",
                (last.answered_by or "") if last else "",
                next((a.call_sid for a in reversed(tried) if a.call_sid), None) or "",
                error,
                *(contact.variables.get(name, "") for name in names),
            ]
        )
    return header, rows


def write_export(
    path: Path,
    contacts: Sequence[ContactRecord],
    attempts: Sequence[AnnouncementRecord],
    *,
    bom: bool = True,
    cancelled: bool = False,
) -> int:
    """Write the CSV (``bom``: UTF-8 with a BOM, for Excel; ``cancelled``: see
    :func:`export_rows`); the number of rows written."""
    header, rows = export_rows(contacts, attempts, cancelled=cancelled)
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)
