from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.audio.formats import FRAME_BYTES
from bridge.audio.framer import Framer

chunks_st = st.lists(st.binary(max_size=500), max_size=12)


def run(chunks: list[bytes]) -> tuple[list[bytes], bytes | None]:
    framer = Framer()
    frames: list[bytes] = []
    for c in chunks:
        frames += framer.push(c)
    return frames, framer.flush()


@settings(max_examples=200, deadline=None)
@given(chunks_st)
def test_frames_reassemble_to_input_with_silence_padding_only_at_the_end(
    chunks: list[bytes],
) -> None:
    data = b"".join(chunks)
    frames, last = run(chunks)
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert b"".join(frames) == data[: len(frames) * FRAME_BYTES]
    tail = data[len(frames) * FRAME_BYTES :]
    if tail:
        assert last is not None
        assert len(last) == FRAME_BYTES
        assert last == tail + b"\xff" * (FRAME_BYTES - len(tail))
    else:
        assert last is None


@settings(max_examples=100, deadline=None)
@given(chunks_st)
def test_chunking_does_not_change_the_frames(chunks: list[bytes]) -> None:
    assert run(chunks) == run([b"".join(chunks)])


@pytest.mark.parametrize("n_frames", [1, 2, 7])
def test_exact_multiple_has_no_padding_frame(n_frames: int) -> None:
    framer = Framer()
    data = bytes(range(256))[:FRAME_BYTES] * n_frames
    frames = framer.push(data)
    assert len(frames) == n_frames
    assert framer.pending == 0
    assert framer.flush() is None


def test_remainder_carries_across_pushes() -> None:
    framer = Framer()
    assert framer.push(b"\x01" * 100) == []
    assert framer.pending == 100
    assert framer.push(b"\x02" * 50) == []
    assert framer.pending == 150
    frames = framer.push(b"\x03" * 180)
    assert frames == [b"\x01" * 100 + b"\x02" * 50 + b"\x03" * 10, b"\x03" * 160]
    assert framer.pending == 10
    assert framer.push(b"\x04" * 150) == [b"\x03" * 10 + b"\x04" * 150]
    assert framer.pending == 0


def test_flush_pads_with_mulaw_silence_and_resets() -> None:
    framer = Framer()
    framer.push(b"\x00" * 170)
    assert framer.flush() == b"\x00" * 10 + b"\xff" * 150
    assert framer.pending == 0
    assert framer.flush() is None
    assert framer.push(b"\x05" * FRAME_BYTES) == [b"\x05" * FRAME_BYTES]


def test_reset_drops_the_remainder() -> None:
    framer = Framer()
    framer.push(b"\x07" * 90)
    framer.reset()
    assert framer.pending == 0
    assert framer.flush() is None
    assert framer.push(b"\x08" * FRAME_BYTES) == [b"\x08" * FRAME_BYTES]


def test_empty_push_is_a_no_op() -> None:
    framer = Framer()
    assert framer.push(b"") == []
    framer.push(b"\x01")
    assert framer.push(b"") == []
    assert framer.pending == 1


def test_single_exact_frame_is_not_copied() -> None:
    frame = bytes(range(FRAME_BYTES))
    assert Framer().push(frame)[0] is frame


@settings(max_examples=200, deadline=None)
@given(chunks_st)
def test_push_whole_gives_the_same_frames_joined(chunks: list[bytes]) -> None:
    """``push_whole`` hands out exactly ``push``'s frames, each call's joined into one object
    of whole frames, and leaves the same remainder for ``flush``."""
    frames, last = run(chunks)
    framer = Framer()
    pieces = [framer.push_whole(c) for c in chunks]
    assert all(len(p) % FRAME_BYTES == 0 for p in pieces)
    assert b"".join(pieces) == b"".join(frames)
    assert framer.flush() == last
