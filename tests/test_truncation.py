"""TruncationGuard: the 640-byte reply is never released; normal replies are not delayed."""

from __future__ import annotations

import pytest

from bridge.calls.truncation import TruncationGuard
from bridge.errors import TruncatedReply


def guard(chars: int, hold_ms: float = 100) -> TruncationGuard:
    return TruncationGuard(chars, ms_per_char=12, min_ms=100, hold_ms=hold_ms)


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
    g = guard(51, hold_ms=200)
    assert g.feed(b"a" * 800, 100.0) == b""
    assert g.feed(b"b" * 800, 200.0) == b"a" * 800 + b"b" * 800
    assert g.feed(b"c" * 4000, 700.0) == b"c" * 4000
    assert g.finish(b"d", 700.125) == b"d"


def test_reply_released_but_too_short_at_end_is_still_truncated() -> None:
    # e.g. "3 chunks of 640 bytes" for a long sentence: played in part, must be resumed
    g = guard(100)
    assert g.feed(b"x" * 1920, 240.0) == b"x" * 1920
    with pytest.raises(TruncatedReply):
        g.finish(b"", 240.0)


def test_threshold_floor_shrinks_for_very_short_text() -> None:
    assert guard(20).threshold_ms == 240
    assert guard(10).threshold_ms == 120
    assert guard(5).threshold_ms == 60  # 100 ms floor scaled by 5/10
    assert guard(1).threshold_ms == 12
    # a genuine one-letter reply (80 ms) plays
    g = guard(1)
    assert g.feed(b"x" * 640, 80.0) == b"x" * 640
    assert g.finish(b"", 80.0) == b""


def test_normal_length_text_floor_is_min_ms() -> None:
    g = guard(8)
    assert g.threshold_ms == 96
    g2 = TruncationGuard(9, ms_per_char=1, min_ms=100, hold_ms=100)
    assert g2.threshold_ms == 90


def test_held_reply_above_threshold_is_released_at_end() -> None:
    g = TruncationGuard(5, ms_per_char=12, min_ms=50, hold_ms=200)
    assert g.release_at_ms == 60
    assert g.feed(b"x" * 440, 55.0) == b""
    assert g.finish(b"y" * 40, 60.0) == b"x" * 440 + b"y" * 40
