"""A server's reader of a WebSocket client's byte stream: where each frame begins and ends.

Sans-I/O and pure: bytes in, whole frames out, no socket, no clock. It parses only the frame
header (RFC 6455 §5.2, https://datatracker.ietf.org/doc/html/rfc6455#section-5.2): FIN, the
opcode, the MASK bit and the payload length. It validates nothing else. Its one job is to let
the server's hot path take the common frame, a complete, unfragmented, masked text frame (the
first byte ``0x81``, MASK set), without running python-websockets' generator-based parser for it.
Every other frame goes to that parser whole, and it judges it as before.

What the caller (``bridge/stream_transport.py``) must do with :meth:`ClientFrameReader.split`'s
items, in order:

- ``(header_length, raw)`` with ``header_length > 0``: a candidate text frame, ``raw`` the
  whole frame. The caller may unmask ``raw[header_length:]`` with the 4 bytes before it and take
  the text itself, or hand ``raw`` to the parser like any other frame.
- ``(0, raw)``: hand ``raw`` to the parser, as it comes: a frame that is no candidate (a
  control frame, a fragment, binary, unmasked, reserved bits or opcode), or a piece of one, since
  such a frame is passed on as its bytes arrive, from its header on (the parser refuses a bad
  one from its header, as it always did). After a candidate that declares more than
  ``max_size``, it is everything from that frame's header on, and every later call returns its
  data as one ``(0, data)`` item (pass-through): the parser refuses it (1009) from the header.

The parser is thus given every frame, whole or in order of its pieces, except the candidates
taken directly, and it stands at a frame boundary whenever a candidate begins: that is what
lets the two share one stream. Only a candidate is held back until it is whole (at most
``max_size`` plus a 14-byte header), and a header until it is complete (at most 14 bytes).

Cost: one ``struct`` read for lengths of 126 and over, a slice per frame when a read holds more
than one, and one copy of a frame that arrived in pieces. Twilio's messages, ~330 bytes each,
usually arrive one per read and are then passed on without a copy.
"""

from __future__ import annotations

import struct
from typing import Final

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["TEXT_FIN", "ClientFrameReader", "unmasked"]

TEXT_FIN: Final = 0x81
"""FIN set, no reserved bit, opcode 1 (text): the only first byte a candidate has."""
_MASKED: Final = 0x80
_U16: Final = struct.Struct("!H").unpack_from
_U64: Final = struct.Struct("!Q").unpack_from


class ClientFrameReader:
    """Splits a client's frames out of its byte stream (see the module docstring).

    ``max_size``: the largest payload the parser accepts (``None``: no limit). A frame that
    declares more is not waited for: it and everything after it pass through to the parser.
    """

    __slots__ = ("max_size", "passthrough", "_pending", "_need", "_passing")

    def __init__(self, max_size: int | None) -> None:
        self.max_size = max_size
        self.passthrough = False
        """True once a frame declared more than ``max_size``: everything goes to the parser."""
        self._pending = bytearray()
        self._need = 0
        """Bytes the pending frame needs in all, once its header is known (0: not yet)."""
        self._passing = 0
        """Bytes still to come of a frame that is no candidate, passed on as they arrive."""

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._pending)

    def split(self, data: bytes) -> list[tuple[int, bytes]]:
        """The whole frames that ``data`` completes, in order (see the module docstring)."""
        if self.passthrough:
            return [(0, data)] if data else []
        items: list[tuple[int, bytes]] = []
        passing = self._passing
        if passing:
            if len(data) <= passing:
                self._passing = passing - len(data)
                return [(0, data)] if data else []
            items.append((0, data[:passing]))
            data = data[passing:]
            self._passing = 0
        pending = self._pending
        if pending:
            pending += data
            if len(pending) < self._need:
                return []
            data = bytes(pending)
            pending.clear()
            self._need = 0
        size = len(data)
        max_size = self.max_size
        pos = 0
        while True:
            left = size - pos
            if left < 2:
                break
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if left < 4:
                    break
                (length,) = _U16(data, pos + 2)
                header = 4
            elif length == 127:
                if left < 10:
                    break
                (length,) = _U64(data, pos + 2)
                header = 10
            if max_size is not None and length > max_size:
                self.passthrough = True
                items.append((0, data[pos:] if pos else data))
                return items
            masked = second & _MASKED
            if masked:
                header += 4
            candidate = first == TEXT_FIN and masked
            end = pos + header + length
            if end > size:
                if candidate:
                    self._need = header + length
                    break
                self._passing = end - size  # not held: the parser judges it as it comes
                items.append((0, data[pos:] if pos else data))
                return items
            raw = data if pos == 0 and end == size else data[pos:end]
            items.append((header if candidate else 0, raw))
            pos = end
        if pos < size:
            pending += data[pos:] if pos else data
        return items


def unmasked(raw: bytes, header: int) -> bytes:
    """The payload of a candidate ``raw`` whose header is ``header`` bytes long, its mask (the
    header's last 4 bytes) removed with websockets' C ``apply_mask``."""
    return apply_mask(memoryview(raw)[header:], raw[header - 4 : header])
