"""Cut a μ-law byte stream into Twilio's 160-byte (20 ms) media frames (sans-I/O).

One ``Framer`` per utterance. An utterance may span several Hamsa replies, so the remainder of
one reply carries into the next and only the utterance's last frame is padded, with μ-law
silence 0xFF (0x00 is a loud sample, not silence). On barge-in ``reset()`` drops the remainder.

Cost: no per-byte Python work. Each complete frame costs one 160-byte slice (the frames must be
separate ``bytes`` objects); the remainder lives in one ``bytearray`` and is appended to through
a ``memoryview`` so no intermediate copy is made. A push of exactly one frame with nothing
pending returns the pushed object itself.
"""

from __future__ import annotations

from bridge.audio.codec import ULAW_SILENCE
from bridge.audio.formats import FRAME_BYTES

_PAD = bytes([ULAW_SILENCE])


class Framer:
    """Re-frame μ-law bytes into complete 160-byte frames, carrying the remainder."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of their frame (0–159)."""
        return len(self._rest)

    def push(self, data: bytes) -> list[bytes]:
        """Append ``data``; return every frame it completes (in order, each 160 bytes): what
        :meth:`push_whole` returns, cut into frames."""
        whole = self.push_whole(data)
        return [whole[i : i + FRAME_BYTES] for i in range(0, len(whole), FRAME_BYTES)]

    def push_whole(self, data: bytes) -> bytes:
        """Append ``data``; return every frame it completes as one ``bytes`` of whole frames
        (a multiple of 160 bytes; empty if none), for a queue that slices frames off as it
        sends them.

        Cost: one ``bytes`` per call instead of one per frame (a 160-byte ``bytes`` takes 208
        bytes of pymalloc, plus its queue slot): ``data`` itself when it is whole frames and
        nothing is pending, else one copy.
        """
        rest = self._rest
        size = len(data)
        if not rest:
            end = size - size % FRAME_BYTES
            if end == size:
                return data
            rest += memoryview(data)[end:]
            return data[:end]
        rest += data
        end = len(rest) - len(rest) % FRAME_BYTES
        if not end:
            return b""
        with memoryview(rest) as view:
            whole = bytes(view[:end])
        del rest[:end]
        return whole

    def flush(self) -> bytes | None:
        """End of utterance: the remainder padded with 0xFF to a full frame, or ``None``.

        The framer is then empty and ready for the next utterance.
        """
        rest = self._rest
        if not rest:
            return None
        frame = bytes(rest).ljust(FRAME_BYTES, _PAD)
        rest.clear()
        return frame

    def reset(self) -> None:
        """Barge-in: drop the remainder without emitting it."""
        self._rest.clear()
