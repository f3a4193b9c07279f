"""docs/operations.md's metrics table names every series the bridge exports, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.metrics import Metrics

OPERATIONS = Path(__file__).parents[1] / "docs" / "operations.md"


def documented(known: set[str]) -> set[str]:
    """Every series named in the table's first column: ``name``, ``name{labels}``, and the
    ``_suffix`` shorthand for a sibling of the name before it in the same cell (its stem is a
    leading part of that name: the one that gives a series in ``known``, else the longest)."""
    names: set[str] = set()
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `hamsa_bridge_"):
            continue
        cell = line.split("|")[1]
        stems: list[str] = []
        for token in re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", cell):
            if not token.startswith("_"):
                parts = token.split("_")
                stems = ["_".join(parts[:n]) for n in range(len(parts) - 1, 1, -1)]
                names.add(token)
                continue
            candidates = [stem + token for stem in stems]
            names.add(next((c for c in candidates if c in known), candidates[0]))
    return names


def exported() -> set[str]:
    """The series of a fresh registry, as scraped (counters with their ``_total``)."""
    names = set()
    for family in Metrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    return names


def test_every_exported_series_is_documented_and_every_documented_one_exists() -> None:
    series = exported()
    assert series - documented(series) == set()
    assert documented(series) - series == set()
