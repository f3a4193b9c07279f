"""Hamsa's realtime wire strings and the WAV headers the emulator sends."""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Mapping
from typing import Any, Final

from bridge.dev.tone import MULAW_RATE, PCM_RATE

logger = logging.getLogger(__name__)

# --- wire constants (docs/hamsa-ws.md §2, §3.2, §7; verbatim, misspellings included) -----------

INFO_FRAME: Final = (
    '{"type": "info", "payload": {"message": "Connected to realtime WebSocket server"}}'
)
ACK_FRAME: Final = (
    '{"type": "ack", "payload": {"message": "Real time text to speach connection establesh"}}'
)
END_FRAME: Final = '{"type": "end", "payload": {"message": "End of TTS stream"}}'
PRELOAD_OK_BODY: Final[Mapping[str, Any]] = {
    "success": True,
    "message": "Custom voice have been preloaded successfully",
    "data": [],
}
DEFAULT_API_KEY: Final = "emulator-key"

ABORTED_MESSAGE: Final = "TTS stream error: aborted"
UNSUPPORTED_AUDIO_MESSAGE: Final = "Error generating transcription: Audio format not supported"
"""The one STT error text Hamsa documents (docs/hamsa-ws.md §3.4): any ``audioBase64`` that is not
base64 of a PCM WAV gets it."""
STT_FAILED_MESSAGE: Final = "Error generating transcription: Internal server error"
"""The injected STT error (:attr:`SttFault.ERROR`): the prefix is Hamsa's, the rest a guess."""
OVERSIZED_STT_BYTES: Final = 100_000
"""The size of an :attr:`SttFault.OVERSIZED` transcript, in UTF-8 bytes."""
TRUNCATED_BYTES: Final = 640

_SPEECH_CACHE_ENTRIES: Final = 1024
"""espeak-ng renderings kept per emulator (the oldest go first)."""
_UUID_RE: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
_WS_PATH: Final = "/v1/realtime/ws"
_AUTH_FAILED: Final = "Authentication failed: invalid or missing API key"
_NO_FUNDS: Final = "Insufficient funds: project wallet balance depleted"


def _error_frame(message: str) -> str:
    return json.dumps({"type": "error", "payload": {"message": message}}, ensure_ascii=False)


def streaming_mulaw_header() -> bytes:
    """A streaming WAV header for 8 kHz mono μ-law: ``RIFF`` and ``data`` sizes ``0xFFFFFFFF``.

    The ``fmt `` chunk is the 18-byte non-PCM form (``cbSize`` 0), so the header is 46 bytes, not
    44: a client that cuts a fixed 44 bytes plays two header bytes as audio (§5.4).
    """
    fmt = struct.pack("<HHIIHHH", 7, 1, MULAW_RATE, MULAW_RATE, 1, 8, 0)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def canonical_pcm16_header(data_size: int) -> bytes:
    """The canonical 44-byte WAV header for ``data_size`` bytes of 16 kHz mono s16le PCM."""
    fmt = struct.pack("<HHIIHH", 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )
