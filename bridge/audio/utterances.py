"""Cut the caller's audio into utterances: 20 ms μ-law frames in, speech starts and ends out.

Sans-I/O and pure: the frames pushed are the clock (each one is 20 ms of stream time, counted
from the first push), so the same frames always give the same events at the same times.
``webrtcvad`` (the WebRTC voice activity detector, 8 kHz, 20 ms frames, aggressiveness
``mode`` 0–3) says whether each frame is voiced; the rules around it are these:

* **Start.** Idle, the detector starts an utterance when at least 8 of the last 10 frames are
  voiced (160 ms of voice in 200 ms: py-webrtcvad's example ring buffer, shorter). Why not
  fewer: webrtcvad keeps flagging about 5 frames (100 ms) after any sound stops (its hangover),
  so a 20 ms click looks like 100 ms of voice, and on a noisy line its first 4 frames are voiced
  while it adapts; both stay under the rule, while a short "نعم" (~250 ms) passes it. The
  utterance's onset (``started_ms``) is the first voiced frame of that window; its audio begins
  ``start_pad_ms`` before the onset (less if the stream, or the previous utterance's end, is
  closer), so a soft first syllable is kept. ``SpeechStarted(at_ms=onset)`` is reported on the
  frame that completes the rule, 140–180 ms after the onset.
* **End.** ``end_silence_ms`` of silence in a row ends it; those frames stay in its audio as end
  padding, and ``ended_ms`` is the end of the last of them. A frame counts as silence when it is
  unvoiced, or voiced while fewer than 8 of the last 10 are (a blip in the silence neither ends
  nor restarts the count; speech resuming does). With webrtcvad's hangover the silence is
  counted from ~100 ms after the voice stopped: an utterance ends ``end_silence_ms`` + ~100 ms
  after the caller's last sound.
* **Cut.** An utterance reaching ``max_ms`` from its onset (end padding included) is ended there
  with ``cut=True``. A caller still talking at that instant (the start rule holds) starts the
  next utterance at once, on the same frame: ``SpeechStarted`` at the cut, no start padding
  (that audio was the cut utterance's). So a minute of talk without a pause is six 10 s cuts,
  and nothing the caller says between two cuts is lost.

Each ``UtteranceEnded`` carries its 8 kHz PCM16 (for :func:`bridge.audio.wav.stt_wav`).

Peer input never raises: a frame of the wrong length (Twilio sends 160 bytes) is still one 20 ms
step of the clock, cut to 160 bytes or padded with μ-law silence (0xFF), and counted in
``odd_frames``. Memory is bounded whatever is pushed: the audio held is at most ``start_pad_ms``
plus ``max_ms`` (plus the 10-frame window), 10.3 s of PCM16 (165 KB) with the defaults.

Cost per frame: one ``ulaw_to_lin16`` of 160 samples (C), one ``Vad.is_speech`` (C, the bulk of
it), a ``deque`` append and, while speaking, a 320-byte append to one ``bytearray``; no per-sample
Python work. Measured by ``bench/listening.py`` (docs/audio.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import webrtcvad

from bridge.audio.codec import ULAW_SILENCE, ulaw_to_lin16
from bridge.audio.formats import FRAME_BYTES

__all__ = [
    "FRAME_MS",
    "START_VOICED",
    "START_WINDOW",
    "SpeechStarted",
    "UtteranceDetector",
    "UtteranceEnded",
]

FRAME_MS: Final = 20
"""Stream time of one pushed frame."""
START_WINDOW: Final = 10
"""Frames looked at by the start rule..."""
START_VOICED: Final = 8
"""...of which this many voiced start an utterance (and keep one going)."""
_SAMPLE_RATE: Final = 8000
_PAD: Final = bytes([ULAW_SILENCE])


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking: ``at_ms`` is the onset, in stream time (frames pushed × 20)."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """One utterance: its audio (8 kHz PCM16 mono, start and end padding included), its onset
    and end in stream time, and whether it was cut at ``max_ms`` (else silence ended it)."""

    pcm: bytes
    started_ms: int
    ended_ms: int
    cut: bool


DetectorEvent = SpeechStarted | UtteranceEnded


def _frames(ms: int) -> int:
    """Whole 20 ms frames in ``ms`` (rounded)."""
    return round(ms / FRAME_MS)


class UtteranceDetector:
    """Voice activity → utterances, for one call's inbound audio (see the module docstring)."""

    __slots__ = (
        "_before",
        "_end_frames",
        "_frame",
        "_idle_from",
        "_max_frames",
        "_onset",
        "_pad_frames",
        "_pcm",
        "_silent",
        "_speaking",
        "_vad",
        "_voiced",
        "_voiced_count",
        "odd_frames",
    )

    def __init__(self, *, start_pad_ms: int, end_silence_ms: int, max_ms: int, mode: int) -> None:
        """Raises ``ValueError`` for a configuration outside the ranges the settings allow:
        ``start_pad_ms`` ≥ 0, ``end_silence_ms`` ≥ 20, ``max_ms`` ≥ 200 and more than the start
        rule's window, ``mode`` 0–3."""
        if mode not in (0, 1, 2, 3):
            raise ValueError(f"webrtcvad mode must be 0-3, got {mode}")
        if start_pad_ms < 0 or end_silence_ms < FRAME_MS or max_ms < 200:
            raise ValueError(
                "need start_pad_ms >= 0, end_silence_ms >= 20 and max_ms >= 200, got "
                f"{start_pad_ms}, {end_silence_ms}, {max_ms}"
            )
        self._vad = webrtcvad.Vad(mode)
        self._pad_frames = _frames(start_pad_ms)
        self._end_frames = max(1, _frames(end_silence_ms))
        self._max_frames = max(START_WINDOW + 1, _frames(max_ms))
        self._frame = 0
        """Frames pushed so far (the clock)."""
        self._idle_from = 0
        """The first frame after the last utterance (an onset is never before it)."""
        self._voiced: deque[bool] = deque(maxlen=START_WINDOW)
        self._voiced_count = 0
        self._before: deque[bytes] = deque(maxlen=self._pad_frames + START_WINDOW)
        """Idle: the last frames' PCM, for the start padding (the window's frames included)."""
        self._pcm = bytearray()
        self._speaking = False
        self._onset = 0
        """The current utterance's first frame (its onset)."""
        self._silent = 0
        """Frames of silence in a row in the current utterance."""
        self.odd_frames = 0
        """Frames pushed whose length was not 160 bytes (cut or padded)."""

    @property
    def speaking(self) -> bool:
        """An utterance is in progress (started, not yet ended)."""
        return self._speaking

    @property
    def now_ms(self) -> int:
        """Stream time: frames pushed × 20 ms."""
        return self._frame * FRAME_MS

    @property
    def held_bytes(self) -> int:
        """PCM bytes held (the current utterance, or the frames kept for start padding)."""
        return len(self._pcm) + sum(len(frame) for frame in self._before)

    def push(self, frame: bytes) -> list[SpeechStarted | UtteranceEnded]:
        """One 20 ms frame of the caller's μ-law (160 bytes); the events it completes, in order
        (at most an ``UtteranceEnded`` then a ``SpeechStarted``, for a cut while talking)."""
        if len(frame) != FRAME_BYTES:
            self.odd_frames += 1
            frame = frame[:FRAME_BYTES].ljust(FRAME_BYTES, _PAD)
        pcm = ulaw_to_lin16(frame)
        voiced = self._vad.is_speech(pcm, _SAMPLE_RATE)
        window = self._voiced
        if len(window) == START_WINDOW and window[0]:
            self._voiced_count -= 1
        window.append(voiced)
        if voiced:
            self._voiced_count += 1
        index = self._frame
        self._frame = index + 1
        talking = self._voiced_count >= START_VOICED
        if not self._speaking:
            self._before.append(pcm)
            if not talking:
                return []
            return [self._start(index)]
        self._pcm += pcm
        if voiced and talking:
            self._silent = 0
        else:
            self._silent += 1
        if self._silent >= self._end_frames:
            return [self._end(cut=False)]
        if self._frame - self._onset >= self._max_frames:
            ended = self._end(cut=True)
            if not talking:
                return [ended]
            # Still talking: the next utterance begins at the cut, without start padding.
            self._speaking = True
            self._onset = self._frame
            self._silent = 0
            return [ended, SpeechStarted(self._onset * FRAME_MS)]
        return []

    def reset(self) -> None:
        """Drop whatever is held (an utterance in progress ends unreported) and go idle; the
        clock keeps counting."""
        self._speaking = False
        self._pcm = bytearray()
        self._before.clear()
        self._voiced.clear()
        self._voiced_count = 0
        self._silent = 0
        self._idle_from = self._frame

    def _start(self, index: int) -> SpeechStarted:
        """The start rule held on frame ``index``: the onset is the window's first voiced frame."""
        window = self._voiced
        first = next(i for i, flag in enumerate(window) if flag)
        onset = max(self._idle_from, index - (len(window) - 1 - first))
        before = self._before
        keep = min(len(before), index - onset + 1 + self._pad_frames)
        self._pcm = bytearray(b"".join(before[i] for i in range(len(before) - keep, len(before))))
        before.clear()
        self._speaking = True
        self._onset = onset
        self._silent = 0
        return SpeechStarted(onset * FRAME_MS)

    def _end(self, *, cut: bool) -> UtteranceEnded:
        ended = UtteranceEnded(
            bytes(self._pcm), self._onset * FRAME_MS, self._frame * FRAME_MS, cut=cut
        )
        self._pcm = bytearray()
        self._speaking = False
        self._silent = 0
        self._idle_from = self._frame
        return ended
