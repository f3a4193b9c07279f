"""TruncationGuard: the 640-byte reply is never released; normal replies are not delayed."""

from __future__ import annotations

import pytest

from bridge.calls.truncation import TruncationGuard
from bridge.errors import TruncatedReply


def guard(chars: int) -> TruncationGuard:
    return TruncationGuard(chars, ms_per_char=12, min_ms=100, hold_ms=200)


def test_640_byte_mulaw_reply_is_truncated_and_nothing_released() -> None:
    g = guard(51)
    assert g.feed(b"\x01" * 640, 80.0) == b""
    with pytest.raises(TruncatedReply) as info:
        g.finish(b"", 80.0)
    assert info.value.audio_ms == 80.0
    assert info.value.threshold_ms == 612


def test_normal_first_chunk_passes_at_once() -> None:
    g = guard(51)
    chunk = b"\x02" * 1850  # ~231 ms of 8 kHz μ-law: a real first chunk
    assert g.feed(chunk, 231.25) == chunk


def test_small_chunks_are_held_then_released_together() -> None:
    g = guard(51)
    assert g.feed(b"a" * 800, 100.0) == b""
    assert g.feed(b"b" * 800, 200.0) == b"a" * 800 + b"b" * 800
    assert g.feed(b"c", 200.125) == b"c"
    assert g.finish(b"d", 300.0) == b"d"


def test_short_text_threshold_has_a_floor() -> None:
    g = guard(2)
    assert g.threshold_ms == 100
    g.feed(b"x" * 640, 80.0)
    with pytest.raises(TruncatedReply):
        g.finish(b"", 80.0)


def test_short_reply_for_short_text_is_played() -> None:
    g = guard(5)
    assert g.feed(b"x" * 800, 100.0) == b"x" * 800
    assert g.finish(b"", 100.0) == b""


def test_reply_held_below_hold_but_above_threshold_is_released_at_end() -> None:
    g = TruncationGuard(5, ms_per_char=12, min_ms=50, hold_ms=200)
    assert g.feed(b"x" * 440, 55.0) == b""
    assert g.finish(b"y" * 40, 60.0) == b"x" * 440 + b"y" * 40
