"""A campaign's numbers: loading the CSV, and checking every row before anything is dialled.

The file is UTF-8 (with or without the BOM spreadsheet programs write) with a header row. The
number column is ``number``, ``phone``, ``phone_number`` or ``to`` (any case); an optional
``timezone`` column overrides the campaign's time zone per row; every other column is a template
variable (and is exported back with the results). Problems are collected, not raised one by
one, so the user fixes the whole file at once; each names its line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bridge.announcements.options import FIELD_NAMES
from bridge.announcements.placing import call_request
from bridge.announcements.spec import AnnouncementSpec
from bridge.campaigns.template import Template
from bridge.campaigns.window import zone
from bridge.errors import AnnouncementInvalid, CampaignInvalid, TwimlTooLong
from bridge.settings import Settings
from bridge.store import ContactRecord, ContactState

__all__ = [
    "DUPLICATE",
    "NUMBER_COLUMNS",
    "ContactFile",
    "CsvRow",
    "Prepared",
    "Problem",
    "load_contacts",
    "normalise_number",
    "prepare_contacts",
]

NUMBER_COLUMNS: Final = ("number", "phone", "phone_number", "to")
TIMEZONE_COLUMN: Final = "timezone"
DUPLICATE: Final = "duplicate"
"""The outcome of a row whose number appeared on an earlier row (it is called once)."""
_PLACEHOLDER_ID: Final = "an_" + "0" * 24
"""As long as a real announcement id: the TwiML size check must be exact."""
_SEPARATORS: Final = re.compile(r"[\s\-.()\u00a0]")


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int
    """Line number in the file (the header is line 1)."""
    number: str
    timezone: str
    variables: dict[str, str]


@dataclass(frozen=True, slots=True)
class ContactFile:
    path: Path
    number_column: str
    variable_names: tuple[str, ...]
    rows: tuple[CsvRow, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str
    field: str = "number"

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(slots=True)
class Prepared:
    """Every row as a contact to store (input order), and what was wrong with some."""

    contacts: list[ContactRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Invalid rows: the campaign refuses to start, unless they are skipped (``INVALID``)."""
    duplicates: list[Problem] = field(default_factory=list)
    """Rows whose number an earlier row has: stored ``DONE``/``duplicate``, never called."""


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CampaignInvalid(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CampaignInvalid(
            f"{path}: line {line} is not UTF-8: save the file as CSV UTF-8"
        ) from None


def load_contacts(path: Path) -> ContactFile:
    """Read and shape-check the file. Raises ``CampaignInvalid`` listing every problem."""
    text = _decode(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise CampaignInvalid(f"{path} is empty: expected a header row, e.g. number,name")
        names = [name.strip() for name in header]
        problems: list[str] = []
        keyed = [name.lower() for name in names]
        number_columns = [names[i] for i, key in enumerate(keyed) if key in NUMBER_COLUMNS]
        if not number_columns:
            found = ", ".join(n for n in names if n) or "none"
            raise CampaignInvalid(
                f"{path}: no number column: name one of {', '.join(NUMBER_COLUMNS)} "
                f"(columns found: {found})"
            )
        if len(number_columns) > 1:
            raise CampaignInvalid(
                f"{path}: several number columns ({', '.join(number_columns)}): keep one"
            )
        seen: set[str] = set()
        for name in names:
            if name and name.lower() in seen:
                problems.append(f"line 1: column {name!r} appears twice")
            seen.add(name.lower())
        if problems:
            raise CampaignInvalid(f"{path}: bad header", tuple(problems))
        number_at = keyed.index(number_columns[0].lower())
        timezone_at = keyed.index(TIMEZONE_COLUMN) if TIMEZONE_COLUMN in keyed else None
        variable_at = [
            i for i, name in enumerate(names) if name and i not in (number_at, timezone_at)
        ]
        rows: list[CsvRow] = []
        for record in reader:
            line = reader.line_num
            if not any(value.strip() for value in record):
                continue  # blank line
            if len(record) > len(names) and any(v.strip() for v in record[len(names) :]):
                problems.append(
                    f"line {line}: {len(record)} fields but the header has {len(names)} "
                    "(quote values that contain commas)"
                )
                continue
            values = record + [""] * (len(names) - len(record))
            rows.append(
                CsvRow(
                    line=line,
                    number=values[number_at].strip(),
                    timezone=values[timezone_at].strip() if timezone_at is not None else "",
                    variables={names[i]: values[i].strip() for i in variable_at},
                )
            )
    except csv.Error as exc:
        raise CampaignInvalid(f"{path}: line {reader.line_num}: {exc}") from None
    if problems:
        raise CampaignInvalid(f"{path}: {len(problems)} malformed row(s)", tuple(problems))
    if not rows:
        raise CampaignInvalid(f"{path} has a header but no numbers")
    return ContactFile(
        path=path,
        number_column=number_columns[0],
        variable_names=tuple(names[i] for i in variable_at),
        rows=tuple(rows),
    )


def normalise_number(raw: str) -> str:
    """Spaces, dashes, dots and brackets go (``+966 50-123 4567``); nothing is guessed (a
    number without its ``+`` and country code stays invalid)."""
    return _SEPARATORS.sub("", raw)


SpecFactory = Callable[[str, str], AnnouncementSpec]
"""(number, text) → a validated spec (the campaign's options applied)."""

OPTION_FIELDS: Final = frozenset({"from", *FIELD_NAMES})
"""Fields whose errors come from the campaign's options, not from a row."""


def prepare_contacts(
    file: ContactFile,
    template: Template,
    spec_for: SpecFactory,
    settings: Settings,
    *,
    now: float,
) -> Prepared:
    """Check every row: its number (E.164, BRIDGE_ALLOWED_PREFIXES), time zone, rendered text
    and the size of the call's TwiML. Raises ``CampaignInvalid`` for problems of the text or the
    options (they would repeat on every row); row problems are returned."""
    missing = [name for name in template.variables if name not in file.variable_names]
    if missing:
        columns = ", ".join(file.variable_names) or "none besides the number"
        raise CampaignInvalid(
            "the text uses "
            + ", ".join("{" + name + "}" for name in missing)
            + f" but {file.path.name} has no such column (variables: {columns})"
        )
    prepared = Prepared()
    first_line: dict[str, int] = {}
    for idx, row in enumerate(file.rows):
        number = normalise_number(row.number)
        problem: Problem | None = None
        text = ""
        if row.timezone:
            try:
                zone(row.timezone)
            except ValueError as exc:
                problem = Problem(row.line, str(exc), "timezone")
        empty = [name for name in template.variables if not row.variables.get(name)]
        if problem is None and empty:
            names = ", ".join("{" + name + "}" for name in empty)
            problem = Problem(row.line, f"empty {names} (used by the text)", "text")
        if problem is None:
            text = template.render(row.variables)
            problem = _check_call(row, number, text, spec_for, settings, now)
        if problem is None and number in first_line:
            duplicate = Problem(
                row.line, f"{number} is also on line {first_line[number]}: called once"
            )
            prepared.duplicates.append(duplicate)
            prepared.contacts.append(
                _contact(idx, row, number, text, ContactState.DONE, duplicate, DUPLICATE)
            )
            continue
        if problem is not None:
            prepared.problems.append(problem)
            prepared.contacts.append(
                _contact(idx, row, row.number, text, ContactState.INVALID, problem, None)
            )
            continue
        first_line[number] = row.line
        prepared.contacts.append(_contact(idx, row, number, text, ContactState.PENDING, None, None))
    return prepared


def _check_call(
    row: CsvRow,
    number: str,
    text: str,
    spec_for: SpecFactory,
    settings: Settings,
    now: float,
) -> Problem | None:
    try:
        spec = spec_for(number, text)
        call_request(settings, _PLACEHOLDER_ID, spec, now=now)
    except AnnouncementInvalid as exc:
        if exc.field in OPTION_FIELDS:
            raise CampaignInvalid(exc.message) from None
        if exc.field == "to":  # the number as the file has it
            message = exc.message.removeprefix("to").replace(repr(number), repr(row.number))
            return Problem(row.line, "number" + message, "number")
        return Problem(row.line, exc.message, exc.field)
    except TwimlTooLong as exc:
        return Problem(row.line, f"text too long for one call: {exc}", "text")
    return None


def _contact(
    idx: int,
    row: CsvRow,
    number: str,
    text: str,
    state: ContactState,
    problem: Problem | None,
    outcome: str | None,
) -> ContactRecord:
    return ContactRecord(
        campaign_id="",
        idx=idx,
        number=number,
        variables=row.variables,
        text=text,
        state=state,
        outcome=outcome,
        error=str(problem) if problem is not None else None,
        timezone=row.timezone or None,
    )
