"""Every document the code cites is in the repository: ``docs/NAME.md`` (or a top-level file
such as ``BENCHMARKS.md``), never a reference file beside the checkout that a user who clones
the project does not have. A cited section (``docs/hamsa-ws.md §3.5``) must exist too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("bridge", "twiml") for p in (ROOT / d).rglob("*.py"))
CITATION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)(?:\s*(§\s*[\d.]+))?")
OUTSIDE = re.compile(
    r"\.\./shared|shared/reference|lessons-from-peers|python-conventions|seeds/"
    r"|hamsa-api\.md|twilio-media-streams\.md"  # the names of the files beside the checkout
)


def citations() -> list[tuple[Path, int, str, str | None]]:
    found = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in CITATION.finditer(line):
                found.append((path, number, match.group(1), match.group(2)))
    return found


def test_the_code_cites_documents() -> None:
    assert len(citations()) > 20  # the pattern still finds them


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_outside_the_repository_is_cited(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not OUTSIDE.search(text)


def test_every_cited_document_and_section_exists() -> None:
    missing = []
    for path, number, name, section in citations():
        target = ROOT / name if "/" in name else ROOT / "docs" / name
        where = f"{path.relative_to(ROOT)}:{number}: {name}"
        if not target.is_file():
            if not (ROOT / name).is_file():
                missing.append(where)
            continue
        if section:
            wanted = section.replace("§", "").strip().rstrip(".")
            headings = re.findall(r"^#+\s*§?\s*([\d.]+)", target.read_text(encoding="utf-8"), re.M)
            if wanted not in {h.rstrip(".") for h in headings}:
                missing.append(f"{where} {section}")
    assert missing == []
