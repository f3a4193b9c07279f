"""A Hamsa voice: speaker, dialect and language."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Voice:
    speaker: str
    dialect: str
    language: str
