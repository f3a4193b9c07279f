"""``PromptCache`` held entries (an announcement's message: personal data): stored only while
held, shared through the directory between processes (two caches on one directory stand for
the placing command and the bridge), gone once released or expired."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.calls.prompt_cache import PromptCache
from bridge.voice import Voice

VOICE = Voice("Majd", "ksa", "ar")
MESSAGE = "موعدك غدا الساعة العاشرة يا أحمد."
STATIC = "للتأكيد اضغط 1."
AUDIO = b"\x7f" * 800
A, B = "an_" + "a" * 24, "an_" + "b" * 24


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def held(directory: Path) -> list[Path]:
    return sorted((directory / "held").glob("*.ulaw"))


def static(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.ulaw"))


def test_a_held_message_is_stored_apart_and_goes_when_released(tmp_path: Path) -> None:
    cache = PromptCache(directory=tmp_path)
    cache.hold(MESSAGE, VOICE, A, until=2e9)
    cache.put(MESSAGE, VOICE, AUDIO)  # as the Speaker stores a streamed message
    cache.put(STATIC, VOICE, AUDIO)
    assert len(held(tmp_path)) == 1
    assert len(static(tmp_path)) == 1  # the static prompt only
    assert [p.stat().st_mode & 0o077 for p in held(tmp_path)] == [0]  # owner only (0600)
    assert cache.get(MESSAGE, VOICE) == AUDIO
    cache.release(MESSAGE, VOICE, A)
    assert held(tmp_path) == []
    assert list((tmp_path / "held").glob("*.hold")) == []
    assert cache.get(MESSAGE, VOICE) is None  # not in memory either
    assert cache.get(STATIC, VOICE) == AUDIO  # static prompts stay


def test_the_audio_stays_while_another_holder_holds_it(tmp_path: Path) -> None:
    cache = PromptCache(directory=tmp_path)
    cache.hold(MESSAGE, VOICE, A, until=2e9)
    cache.hold(MESSAGE, VOICE, B, until=2e9)
    assert cache.put_held(MESSAGE, VOICE, A, AUDIO)
    cache.release(MESSAGE, VOICE, A)
    assert cache.has(MESSAGE, VOICE)
    cache.release(MESSAGE, VOICE, B)
    assert not cache.has(MESSAGE, VOICE)
    assert held(tmp_path) == []


def test_a_placing_process_hands_audio_to_the_bridge_through_the_directory(
    tmp_path: Path,
) -> None:
    placer, bridge = PromptCache(directory=tmp_path), PromptCache(directory=tmp_path)
    placer.hold(MESSAGE, VOICE, A, until=2e9)
    assert placer.put_held(MESSAGE, VOICE, A, AUDIO)
    # the bridge, at the stream's start: holds it for the call, plays it, releases it
    bridge.hold(MESSAGE, VOICE, A, until=2e9)
    assert bridge.get(MESSAGE, VOICE) == AUDIO
    bridge.release(MESSAGE, VOICE, A)
    assert held(tmp_path) == []
    placer.release(MESSAGE, VOICE, A)  # later, at the call's outcome: nothing left to remove
    assert not placer.has(MESSAGE, VOICE)
    assert list((tmp_path / "held").iterdir()) == []


def test_audio_finished_after_its_release_is_not_stored(tmp_path: Path) -> None:
    cache = PromptCache(directory=tmp_path)
    cache.hold(MESSAGE, VOICE, A, until=2e9)
    cache.release(MESSAGE, VOICE, A)
    assert not cache.put_held(MESSAGE, VOICE, A, AUDIO)
    assert held(tmp_path) == []
    assert static(tmp_path) == []
    assert not cache.has(MESSAGE, VOICE)


def test_a_sweep_removes_expired_holds_and_their_audio_only(tmp_path: Path) -> None:
    clock = Clock()
    placer = PromptCache(directory=tmp_path, wall_clock=clock)
    other = "رسالة أخرى لمريض آخر."
    placer.hold(MESSAGE, VOICE, A, until=clock.now + 100)
    placer.hold(other, VOICE, B, until=clock.now + 300)
    assert placer.put_held(MESSAGE, VOICE, A, AUDIO)
    assert placer.put_held(other, VOICE, B, AUDIO)
    (tmp_path / "held" / ("0" * 64 + ".ulaw")).write_bytes(AUDIO)  # orphan: no hold at all
    # the placing process died; the bridge sweeps
    bridge = PromptCache(directory=tmp_path, wall_clock=clock)
    assert bridge.sweep() == 1  # the orphan
    assert len(held(tmp_path)) == 2
    clock.now += 101
    assert bridge.sweep() == 1
    assert not bridge.has(MESSAGE, VOICE)
    assert bridge.has(other, VOICE)
    clock.now += 200
    # the placer's own sweep: the message from its memory, the other from memory and disk
    assert placer.sweep() == 2
    assert held(tmp_path) == []
    assert not placer.has(other, VOICE)


def test_a_corrupt_hold_file_counts_as_expired(tmp_path: Path) -> None:
    cache = PromptCache(directory=tmp_path)
    cache.hold(MESSAGE, VOICE, A, until=2e9)
    assert cache.put_held(MESSAGE, VOICE, A, AUDIO)
    [hold] = (tmp_path / "held").glob("*.hold")
    hold.write_text("not a time", encoding="ascii")
    bridge = PromptCache(directory=tmp_path)
    assert bridge.sweep() == 1
    assert held(tmp_path) == []


def test_without_a_directory_holds_live_in_memory() -> None:
    clock = Clock()
    cache = PromptCache(wall_clock=clock)
    cache.hold(MESSAGE, VOICE, A, until=clock.now + 10)
    cache.put(MESSAGE, VOICE, AUDIO)
    assert cache.has(MESSAGE, VOICE)
    clock.now += 11
    assert cache.sweep() == 1
    assert not cache.has(MESSAGE, VOICE)


@pytest.mark.parametrize("holder", ["", "../etc", "a.b", "x" * 65, "an_/1", "an 1"])
def test_a_holder_that_is_no_plain_id_is_refused(tmp_path: Path, holder: str) -> None:
    cache = PromptCache(directory=tmp_path)
    with pytest.raises(ValueError, match="holder"):
        cache.hold(MESSAGE, VOICE, holder, until=2e9)
    with pytest.raises(ValueError, match="holder"):
        cache.release(MESSAGE, VOICE, holder)
    assert list((tmp_path / "held").iterdir()) == []


def test_a_hold_released_by_another_process_stops_a_late_store(tmp_path: Path) -> None:
    placer, bridge = PromptCache(directory=tmp_path), PromptCache(directory=tmp_path)
    placer.hold(MESSAGE, VOICE, A, until=2e9)
    bridge.hold(MESSAGE, VOICE, A, until=2e9)
    bridge.release(MESSAGE, VOICE, A)  # the call ended before the placer's synthesis did
    assert not placer.put_held(MESSAGE, VOICE, A, AUDIO)
    assert held(tmp_path) == []
