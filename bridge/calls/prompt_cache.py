"""Audio of static prompts, synthesised once and replayed: a bounded in-memory LRU, optionally
backed by a directory of files (``BRIDGE_PROMPT_CACHE_DIR``) that survives restarts and is
filled ahead of traffic by ``hamsa-bridge ivr warm FLOW``.

Keys are the prompt's text and voice; values are the exact 8 kHz μ-law bytes Hamsa produced
(header removed, unpadded), so a cached prompt sounds byte for byte like a fresh one. Lives in app
state: one cache per process, shared by all calls.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import structlog

from bridge.voice import Voice

log = structlog.get_logger("bridge.prompt_cache")


def prompt_key(text: str, voice: Voice) -> str:
    """A stable file-system-safe key for (text, voice)."""
    material = "\x1f".join((voice.speaker, voice.dialect, voice.language, text)).encode()
    return hashlib.sha256(material).hexdigest()


class PromptCache:
    def __init__(self, *, max_bytes: int = 32 * 1024 * 1024, directory: Path | None = None) -> None:
        self._max_bytes = max_bytes
        self._directory = directory
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, text: str, voice: Voice) -> bytes | None:
        key = prompt_key(text, voice)
        audio = self._entries.get(key)
        if audio is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return audio
        audio = self._read(key)
        if audio is not None:
            self._remember(key, audio)
            self.hits += 1
            return audio
        self.misses += 1
        return None

    def put(self, text: str, voice: Voice, audio: bytes) -> None:
        if not audio:
            return
        key = prompt_key(text, voice)
        self._remember(key, audio)
        self._write(key, audio)

    def _remember(self, key: str, audio: bytes) -> None:
        if len(audio) > self._max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous)
        self._entries[key] = audio
        self._bytes += len(audio)
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)

    def _path(self, key: str) -> Path | None:
        return None if self._directory is None else self._directory / f"{key}.ulaw"

    def _read(self, key: str) -> bytes | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            return path.read_bytes() or None
        except OSError:
            return None

    def _write(self, key: str, audio: bytes) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            # write-then-rename: a reader never sees half a file
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(audio)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("prompt_cache_write_failed", error=str(exc))
