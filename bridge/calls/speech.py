"""Speak text into a call: Hamsa replies → decoded μ-law → 20 ms frames → paced playback.

An *utterance* is one piece of text the call wants heard, ending in one ``mark``. Long text is
split at sentence boundaries into Hamsa requests of at most 2000 characters, pipelined on the
call's one socket: the next request goes out when the previous reply has ended and less than
``lookahead`` seconds of audio are waiting, so sentence 1 plays while sentence 2 is synthesised
and memory stays bounded. Audio streams from the first usable bytes; only the last frame of the
utterance is padded (with 0xFF).

Each reply goes through a ``TruncationGuard`` (the 640-byte failure is never heard) and is
retried on a fresh socket with backoff (1 s, 2 s, 4 s by default). A reply that fails after some
of it was played is requested again from its start, so the caller hears the sentence whole.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from bridge.audio.decoder import ReplyDecoder
from bridge.audio.formats import MULAW_8K
from bridge.audio.framer import Framer
from bridge.calls.hamsa_session import HamsaSession
from bridge.calls.playback import Playback
from bridge.calls.truncation import TruncationGuard
from bridge.errors import HamsaError, HamsaReplyError, TruncatedReply
from bridge.sentences import split_text
from bridge.settings import Settings
from bridge.voice import Voice

log = structlog.get_logger("bridge.speech")


class SpeechOutcome(enum.Enum):
    PLAYED = "played"
    """Every part of the text was played to its end (the mark came back)."""
    INTERRUPTED = "interrupted"
    """Barge-in: cleared before its end."""
    PARTIAL = "partial"
    """Played to its end, but a part could not be synthesised and was skipped."""


@dataclass(slots=True)
class SpeechStats:
    requests: int = 0
    truncated: int = 0
    retries: int = 0
    skipped_segments: int = 0
    first_audio_latency: float | None = None
    """Seconds from a ``say`` call to the first frame of it being queued."""


class Speaker:
    """Turns text into audio in the call, one utterance at a time."""

    def __init__(
        self,
        settings: Settings,
        hamsa: HamsaSession,
        playback: Playback,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._hamsa = hamsa
        self._playback = playback
        self._clock = clock
        self._ids = itertools.count(1)
        self._producer: asyncio.Task[bool] | None = None
        self.stats = SpeechStats()

    async def say(self, text: str, voice: Voice | None = None) -> SpeechOutcome:
        """Speak ``text`` and wait until it was played (its mark echoed) or interrupted."""
        voice = voice or self._settings.voice
        name = f"utt-{next(self._ids)}"
        producer = asyncio.create_task(self._produce(text, voice, name))
        self._producer = producer
        try:
            complete = await producer
        except asyncio.CancelledError:
            if producer.cancelled() and not _current_task_cancelling():
                return SpeechOutcome.INTERRUPTED
            raise
        finally:
            self._producer = None
        mark = self._playback.push_mark(name)
        played = await mark
        if not played:
            return SpeechOutcome.INTERRUPTED
        return SpeechOutcome.PLAYED if complete else SpeechOutcome.PARTIAL

    def interrupt(self) -> None:
        """Barge-in: stop synthesis of the current utterance (its reply drains in the background),
        drop its queued audio and ``clear`` what Twilio buffered."""
        if self._producer is not None:
            self._producer.cancel()
        self._playback.interrupt()

    async def _produce(self, text: str, voice: Voice, name: str) -> bool:
        settings = self._settings
        started = self._clock()
        framer = Framer()
        complete = True
        segments = split_text(
            text,
            max_chars=settings.bridge_max_text_chars,
            min_chars=settings.bridge_min_sentence_chars,
            language=voice.language,
        )
        failed_in_a_row = 0
        for index, segment in enumerate(segments):
            await self._playback.wait_for_room(settings.bridge_lookahead_seconds)
            ok = await self._segment(segment, voice, framer, started)
            complete = complete and ok
            failed_in_a_row = 0 if ok else failed_in_a_row + 1
            if failed_in_a_row >= 2:
                # Hamsa is failing systematically: don't keep the caller in silence for the rest.
                log.error("utterance_abandoned", skipped_segments=len(segments) - index - 1)
                break
        tail = framer.flush()
        if tail is not None:
            self._playback.push_frames((tail,))
        log.debug("utterance_queued", utterance=name, segments=len(segments), complete=complete)
        return complete

    async def _segment(self, text: str, voice: Voice, framer: Framer, started: float) -> bool:
        """Play one request's reply, retrying failures; False if it had to be skipped."""
        settings = self._settings
        delays = settings.hamsa_retry_delays
        immediate_retry_used = False
        attempt = 0
        while True:
            self.stats.requests += 1
            try:
                await self._play_reply(text, voice, framer, started)
                return True
            except TruncatedReply as exc:
                self.stats.truncated += 1
                log.warning(
                    "hamsa_reply_truncated",
                    audio_ms=exc.audio_ms,
                    threshold_ms=exc.threshold_ms,
                    attempt=attempt + 1,
                    chars=len(text),
                )
            except HamsaError as exc:
                if not exc.retryable:
                    raise
                no_audio = isinstance(exc, HamsaReplyError) and not exc.audio_received
                log.warning("hamsa_reply_failed", error=str(exc), attempt=attempt + 1)
                if no_audio and not immediate_retry_used:
                    # e.g. the socket was dropped between utterances: reconnect and resend now.
                    immediate_retry_used = True
                    await self._hamsa.reset()
                    self.stats.retries += 1
                    continue
            if attempt >= len(delays):
                self.stats.skipped_segments += 1
                log.error(
                    "hamsa_gave_up",
                    attempts=attempt + 1,
                    chars=len(text),
                    reason="no complete reply after retries",
                )
                return False
            await self._hamsa.reset()
            await asyncio.sleep(delays[attempt])
            attempt += 1
            self.stats.retries += 1

    async def _play_reply(self, text: str, voice: Voice, framer: Framer, started: float) -> None:
        settings = self._settings
        decoder = ReplyDecoder(MULAW_8K)
        guard = TruncationGuard(
            len(text),
            ms_per_char=settings.hamsa_truncation_ms_per_char,
            min_ms=settings.hamsa_truncation_min_ms,
            hold_ms=settings.hamsa_truncation_hold_ms,
        )
        playback = self._playback
        async with self._hamsa.reply(text, voice) as reply:
            async for chunk in reply:
                audio = guard.feed(decoder.feed(chunk), decoder.audio_ms)
                if audio:
                    if self.stats.first_audio_latency is None:
                        self.stats.first_audio_latency = self._clock() - started
                    playback.push_frames(framer.push(audio))
            audio = guard.finish(decoder.finish(), decoder.audio_ms)
            if audio:
                playback.push_frames(framer.push(audio))


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
