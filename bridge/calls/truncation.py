"""Hold back the start of a Hamsa reply until it is clearly not the 640-byte failure.

Hamsa sometimes answers with a single short binary frame and a normal ``end`` (the seed FAQ's
"640-byte" reply: 80 ms of 8 kHz μ-law; docs/hamsa-ws.md §4). Such a reply must never be
heard. Real replies carry about 80–100 ms of audio per character and their first chunk alone is
several hundred ms, so:

- ``threshold_ms = max(chars × ms_per_char, min_ms)`` is the least audio a genuine reply has
  (for texts under ``FLOOR_CHARS`` characters the ``min_ms`` floor shrinks in proportion, so a
  one-letter prompt is not mistaken for a failure);
- audio is held only until ``min(threshold_ms, hold_ms)`` of it has arrived — a normal first
  chunk already passes, so normal replies are not delayed;
- a reply that ends below its threshold is truncated: if it was still held, nothing of it was
  played; if it had been released, the caller must resume it from a retry (``speech``).

Pure: durations in, bytes out.
"""

from __future__ import annotations

from bridge.errors import TruncatedReply

FLOOR_CHARS = 10


class TruncationGuard:
    __slots__ = ("threshold_ms", "release_at_ms", "released", "_held")

    def __init__(self, chars: int, *, ms_per_char: float, min_ms: float, hold_ms: float) -> None:
        floor = min_ms * min(1.0, chars / FLOOR_CHARS)
        self.threshold_ms = max(floor, chars * ms_per_char)
        self.release_at_ms = min(self.threshold_ms, hold_ms)
        self.released = False
        self._held: list[bytes] = []

    def feed(self, audio: bytes, audio_ms: float) -> bytes:
        """Bytes that may be played now; ``audio_ms`` is the reply's source audio so far."""
        if self.released:
            return audio
        if audio:
            self._held.append(audio)
        if audio_ms >= self.release_at_ms:
            self.released = True
            out = b"".join(self._held)
            self._held.clear()
            return out
        return b""

    def finish(self, tail: bytes, audio_ms: float) -> bytes:
        """End of the reply: the remaining bytes, or ``TruncatedReply`` if it is too short."""
        if audio_ms < self.threshold_ms:
            self._held.clear()
            raise TruncatedReply(
                f"Hamsa reply too short for its text: {audio_ms:.0f} ms of audio, "
                f"expected at least {self.threshold_ms:.0f} ms "
                "(HAMSA_TRUNCATION_MS_PER_CHAR per character, HAMSA_TRUNCATION_MIN_MS in all)",
                audio_ms=audio_ms,
                threshold_ms=self.threshold_ms,
            )
        self.released = True
        self._held.append(tail)
        out = b"".join(self._held)
        self._held.clear()
        return out
