"""Audio of prompts, synthesised once and replayed: a bounded in-memory LRU, optionally backed
by a directory of files (``BRIDGE_PROMPT_CACHE_DIR``) shared by every process given the same
directory (replicas, ``hamsa-bridge ivr warm``, the ``announce`` and ``campaign`` commands).

Keys are the prompt's text and voice; values are the exact 8 kHz μ-law bytes Hamsa produced
(header removed, unpadded), so a cached prompt sounds byte for byte like a fresh one. Lives in app
state: one cache per process, shared by all calls.

Two kinds of entry:

- **Static prompts** (IVR prompts, an announcement's confirmation prompt): kept for good, in
  ``DIR/<key>.ulaw``.
- **Held entries** (an announcement's message: per-contact text, personal data): stored only
  while a *holder* (the announcement's id) holds the key, each hold with an expiry (unix time),
  in ``DIR/held/<key>.ulaw`` plus one ``DIR/held/<key>.<holder>.hold`` per holder (its expiry as
  text). :meth:`release` drops a hold; the audio goes (memory and disk) as soon as no hold is
  left. :meth:`sweep` drops expired holds, and held audio no hold protects. A ``put`` of a key
  that is held stores it as held, never as a static prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from bridge.settings import Settings
from bridge.voice import Voice

log = structlog.get_logger("bridge.prompt_cache")

HELD_DIR: Final = "held"
_HOLDER: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TMP_MAX_AGE: Final = 3600.0
"""Seconds after which a ``.tmp`` left by a process killed mid-write is removed by a sweep."""


def prompt_key(text: str, voice: Voice) -> str:
    """A stable file-system-safe key for (text, voice)."""
    material = "\x1f".join((voice.speaker, voice.dialect, voice.language, text)).encode()
    return hashlib.sha256(material).hexdigest()


class PromptCache:
    def __init__(
        self,
        *,
        max_bytes: int = 32 * 1024 * 1024,
        directory: Path | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_bytes = max_bytes
        self._directory = directory
        self._held_dir = directory / HELD_DIR if directory is not None else None
        self._wall_clock = wall_clock
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._holds: dict[str, dict[str, float]] = {}
        """Key → {holder: expiry} of the holds taken in this process."""
        self._held_keys: set[str] = set()
        """Keys whose audio in memory is a held entry."""
        self.hits = 0
        self.misses = 0
        if self._held_dir is not None:
            self._held_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> PromptCache:
        """The cache ``BRIDGE_PROMPT_CACHE_MB`` and ``BRIDGE_PROMPT_CACHE_DIR`` describe (one per
        process: the bridge's, or a command's that shares the directory with it)."""
        directory = settings.bridge_prompt_cache_dir
        return cls(
            max_bytes=settings.bridge_prompt_cache_mb * 1024 * 1024,
            directory=Path(directory) if directory else None,
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def shared(self) -> bool:
        """Backed by a directory other processes can share."""
        return self._directory is not None

    def get(self, text: str, voice: Voice) -> bytes | None:
        audio = self._lookup(prompt_key(text, voice))
        if audio is None:
            self.misses += 1
        else:
            self.hits += 1
        return audio

    def has(self, text: str, voice: Voice) -> bool:
        """Whether :meth:`get` would find it (not counted as a hit or a miss)."""
        return self._lookup(prompt_key(text, voice)) is not None

    def put(self, text: str, voice: Voice, audio: bytes) -> None:
        """Store complete audio: held if the key is held (by anyone), else as a static prompt."""
        if not audio:
            return
        key = prompt_key(text, voice)
        if self._is_held(key):
            self._store_held(key, audio)
            return
        self._remember(key, audio)
        self._write(self._static_path(key), audio)

    # --- held entries ------------------------------------------------------------------------

    def hold(self, text: str, voice: Voice, holder: str, *, until: float) -> None:
        """Hold the key for ``holder`` until ``until`` (unix time): stored audio for it is held
        (kept, and only) while a hold lasts."""
        _check_holder(holder)
        key = prompt_key(text, voice)
        self._holds.setdefault(key, {})[holder] = until
        if self._held_dir is not None:
            self._write(self._hold_path(key, holder), f"{until:.3f}".encode())

    def put_held(self, text: str, voice: Voice, holder: str, audio: bytes) -> bool:
        """Store ``audio`` as held, only if ``holder`` still holds the key (a presynthesis that
        finishes after its call ended must not bring personal audio back); whether it was."""
        _check_holder(holder)
        key = prompt_key(text, voice)
        if not audio or not self._holds_key(key, holder):
            return False
        self._store_held(key, audio)
        return True

    def release(self, text: str, voice: Voice, holder: str) -> None:
        """Drop ``holder``'s hold; the audio goes once no hold is left."""
        _check_holder(holder)
        key = prompt_key(text, voice)
        holders = self._holds.get(key)
        if holders is not None:
            holders.pop(holder, None)
            if not holders:
                del self._holds[key]
        if self._held_dir is not None:
            self._unlink(self._hold_path(key, holder))
        if not self._is_held(key):
            self._drop_held(key)

    def sweep(self) -> int:
        """Drop expired holds and the held audio no hold protects any more; how many audio
        entries were removed (memory and disk counted once per key)."""
        now = self._wall_clock()
        removed: set[str] = set()
        for key in list(self._holds):
            holders = self._holds[key]
            for holder, until in list(holders.items()):
                if until <= now:
                    del holders[holder]
            if not holders:
                del self._holds[key]
        if self._held_dir is not None:
            for path in self._listing("*.hold"):
                if _expiry(path) <= now:
                    self._unlink(path)
            for path in self._listing("*.tmp"):
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < now - _TMP_MAX_AGE:
                        self._unlink(path)
            for path in self._listing("*.ulaw"):
                key = path.stem
                if not self._is_held(key):
                    self._unlink(path)
                    removed.add(key)
        for key in list(self._held_keys):
            if not self._is_held(key):
                self._drop_held(key)
                removed.add(key)
        return len(removed)

    def held_files(self) -> list[Path]:
        """Held audio on disk (what a sweep or a release removes)."""
        return self._listing("*.ulaw")

    # --- internals ---------------------------------------------------------------------------

    def _lookup(self, key: str) -> bytes | None:
        audio = self._entries.get(key)
        if audio is not None:
            self._entries.move_to_end(key)
            return audio
        audio = self._read(self._static_path(key))
        if audio is not None:
            self._remember(key, audio)
            return audio
        audio = self._read(self._held_path(key))
        if audio is not None:
            self._held_keys.add(key)
            self._remember(key, audio)
        return audio

    def _holds_key(self, key: str, holder: str) -> bool:
        if self._held_dir is None:
            return holder in self._holds.get(key, {})
        # Shared: the file decides (another process, the bridge, may have released it).
        return _expiry(self._hold_path(key, holder)) > self._wall_clock()

    def _is_held(self, key: str) -> bool:
        if self._holds.get(key):
            return True
        if self._held_dir is None:
            return False
        now = self._wall_clock()
        return any(_expiry(p) > now for p in self._listing(f"{key}.*.hold"))

    def _store_held(self, key: str, audio: bytes) -> None:
        self._held_keys.add(key)
        self._remember(key, audio)
        self._write(self._held_path(key), audio)

    def _drop_held(self, key: str) -> None:
        if key in self._held_keys:
            self._held_keys.discard(key)
            audio = self._entries.pop(key, None)
            if audio is not None:
                self._bytes -= len(audio)
        path = self._held_path(key)
        if path is not None:
            self._unlink(path)

    def _remember(self, key: str, audio: bytes) -> None:
        if len(audio) > self._max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous)
        self._entries[key] = audio
        self._bytes += len(audio)
        while self._bytes > self._max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
            self._held_keys.discard(evicted_key)  # still on disk while held

    def _static_path(self, key: str) -> Path | None:
        return None if self._directory is None else self._directory / f"{key}.ulaw"

    def _held_path(self, key: str) -> Path | None:
        return None if self._held_dir is None else self._held_dir / f"{key}.ulaw"

    def _hold_path(self, key: str, holder: str) -> Path | None:
        return None if self._held_dir is None else self._held_dir / f"{key}.{holder}.hold"

    def _listing(self, pattern: str) -> list[Path]:
        if self._held_dir is None:
            return []
        try:
            return list(self._held_dir.glob(pattern))
        except OSError:
            return []

    @staticmethod
    def _read(path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes() or None
        except OSError:
            return None

    @staticmethod
    def _unlink(path: Path | None) -> None:
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    @staticmethod
    def _write(path: Path | None, data: bytes) -> None:
        if path is None:
            return
        try:
            # write-then-rename: a reader never sees half a file (mkstemp: mode 0600)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("prompt_cache_write_failed", error=str(exc))


def _check_holder(holder: str) -> None:
    if not _HOLDER.fullmatch(holder):
        raise ValueError("a holder is 1-64 letters, digits, _ or -")


def _expiry(path: Path | None) -> float:
    """A hold file's expiry; 0 (expired) if it is missing or unreadable."""
    if path is None:
        return 0.0
    try:
        return float(path.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return 0.0
