"""Split long text into Hamsa requests at sentence boundaries.

Hamsa accepts at most ``MAX_TEXT_CHARS`` (2000) characters per ``tts`` request
(docs/hamsa-ws.md §3.1, counted in characters). Very short sentences are merged with their
neighbours: Hamsa is reported to fail more often on short text (docs/hamsa-ws.md §4), and fewer
requests mean fewer round trips. Sentence boundaries come from sentencex, which handles Arabic
punctuation (``؟``, ``،``) and English."""

from __future__ import annotations

import re

from sentencex import segment

from bridge.protocols.hamsa_client import MAX_TEXT_CHARS

_CLAUSE_BREAK = re.compile(r"(?<=[،,;؛:])\s+")
_SPACE = re.compile(r"\s+")


def split_text(
    text: str, *, max_chars: int = MAX_TEXT_CHARS, min_chars: int = 30, language: str = "ar"
) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters, at sentence boundaries.

    A piece shorter than ``min_chars`` absorbs the next one while the merge fits; a short last
    sentence joins the one before it.
    A sentence longer than ``max_chars`` is cut at clause punctuation, then at spaces, and only
    as a last resort inside a word. Whitespace is normalised; empty input gives ``[]``.
    """
    pieces: list[str] = []
    for sentence in segment(language, text):
        sentence = _SPACE.sub(" ", sentence).strip()
        if sentence:
            pieces.extend(_cut_long(sentence, max_chars))
    merged: list[str] = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        if merged and (len(merged[-1]) < min_chars or (last and len(piece) < min_chars)):
            candidate = f"{merged[-1]} {piece}"
            if len(candidate) <= max_chars:
                merged[-1] = candidate
                continue
        merged.append(piece)
    return merged


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    out: list[str] = []
    for clause in _CLAUSE_BREAK.split(sentence):
        for part in _pack(clause.split(" "), max_chars, " "):
            out.extend(part[i : i + max_chars] for i in range(0, len(part), max_chars))
    return list(_pack(out, max_chars, " "))


def _pack(words: list[str], max_chars: int, sep: str) -> list[str]:
    """Greedily join words into strings of at most ``max_chars`` (a longer word stays whole)."""
    out: list[str] = []
    current = ""
    for word in words:
        if not word:
            continue
        candidate = f"{current}{sep}{word}" if current else word
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            out.append(current)
            current = word
    if current:
        out.append(current)
    return out
