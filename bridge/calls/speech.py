"""Speak text into a call: Hamsa replies → decoded μ-law → 20 ms frames → paced playback.

An *utterance* is one piece of text the call wants heard, ending in one ``mark``. Long text is
split at sentence boundaries into Hamsa requests (*segments*) of at most 2000 characters,
pipelined on the call's one socket: the next request goes out when the previous reply has ended
and less than ``lookahead`` seconds of audio are waiting, so sentence 1 plays while sentence 2 is
synthesised and memory stays bounded. Audio streams from the first usable bytes; only the last
frame of the utterance is padded (with 0xFF).

Failures, per segment:

- A reply held by the ``TruncationGuard`` that ends too short (the 640-byte failure) is never
  heard; it is retried on a fresh socket after 1 s, 2 s, 4 s (``HAMSA_RETRY_DELAYS``).
- A reply that fails *after* some of it was played (socket closed mid-reply, no ``end``, too short
  for its text at ``end``) is retried the same way, and playback **resumes** where it stopped: the
  retry's first bytes, as many as were already played, are skipped. The caller hears the sentence
  once, whole, with a pause where the failure was — never twice, never cut off mid-word.
- A socket found closed before any audio (dropped between utterances) is replaced at once.
- Retries stop after ``HAMSA_RETRY_DELAYS`` is exhausted or ``HAMSA_SEGMENT_BUDGET`` seconds; the
  segment is then skipped with a logged reason, and two skipped segments in a row end the
  utterance (Hamsa is failing systematically: don't keep the caller in silence for the rest).
- A bad key or no balance (4001/4003) is final: what was already queued still plays to its end,
  then the error goes up to the call.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from bridge.audio.decoder import ReplyDecoder
from bridge.audio.formats import MULAW_8K
from bridge.audio.framer import Framer
from bridge.calls.hamsa_session import HamsaSession
from bridge.calls.playback import Playback
from bridge.calls.prompt_cache import PromptCache
from bridge.calls.truncation import TruncationGuard
from bridge.errors import (
    AudioFormatError,
    HamsaError,
    HamsaReplyError,
    HamsaTimeout,
    TruncatedReply,
)
from bridge.metrics import Metrics
from bridge.sentences import split_text
from bridge.settings import Settings
from bridge.voice import Voice

log = structlog.get_logger("bridge.speech")

MARK_MARGIN = 3.0
_SPOKEN_SECONDS_PER_CHAR = 0.08
"""Arabic speech runs about 80 ms a character: a reply may stream for its segment budget plus
this much per character of its text (slow synthesis of a long sentence), and no longer."""


def cache_worthy(text: str, audio_bytes: int, settings: Settings) -> bool:
    """Long enough to be a whole prompt (8 kHz μ-law: 8 bytes per ms).

    ``BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR`` (40; real speech has 80–100) is stricter than the
    truncation guard: a reply that merely passed the guard must not be replayed to every caller.
    """
    chars = len(text.replace(" ", ""))
    return audio_bytes / 8 >= chars * settings.bridge_prompt_cache_min_ms_per_char


"""Seconds past the audio still buffered to wait for a mark echo before giving up on it."""


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
    resumed: int = 0
    skipped_segments: int = 0
    marks_lost: int = 0
    first_audio_latency: float | None = None
    """Seconds from a ``say`` call to the first frame of it being queued."""


@dataclass(slots=True)
class _Progress:
    """How far one segment got: bytes of its 8 kHz μ-law already handed to playback."""

    played: int = 0


Sink = Callable[[bytes], None]
"""Where synthesised 8 kHz μ-law goes, in order, as it becomes playable."""


class Synthesizer:
    """Text → 8 kHz μ-law through the call's Hamsa session, with every retry rule above."""

    def __init__(
        self,
        settings: Settings,
        hamsa: HamsaSession,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._hamsa = hamsa
        self._clock = clock
        self._metrics = metrics or Metrics()
        self.stats = SpeechStats()
        self.first_byte_at: float | None = None
        """When the current reply's first audio bytes arrived (the bridge-added latency's start)."""

    async def text(
        self,
        text: str,
        voice: Voice,
        sink: Sink,
        *,
        room: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Synthesise ``text`` segment by segment into ``sink``; False if a part was skipped.

        ``room`` is awaited before each request (playback's lookahead bound).
        """
        settings = self._settings
        started = self._clock()
        complete = True
        segments = split_text(
            text,
            max_chars=settings.bridge_max_text_chars,
            min_chars=settings.bridge_min_sentence_chars,
            language=voice.language,
        )
        failed_in_a_row = 0
        for index, segment in enumerate(segments):
            if room is not None:
                await room()
            ok = await self._segment(segment, voice, sink, started)
            complete = complete and ok
            failed_in_a_row = 0 if ok else failed_in_a_row + 1
            if failed_in_a_row >= 2:
                log.error("utterance_abandoned", skipped_segments=len(segments) - index - 1)
                return False
        return complete

    async def _segment(self, text: str, voice: Voice, sink: Sink, started: float) -> bool:
        """Play one request's reply, retrying failures; False if it had to be skipped."""
        settings = self._settings
        delays = settings.hamsa_retry_delays
        deadline = self._clock() + settings.hamsa_segment_budget
        progress = _Progress()
        immediate_retry_used = False
        attempt = 0
        while True:
            self.stats.requests += 1
            resumed_from = progress.played
            try:
                # a reply may stream for the budget plus its text's length spoken at real time
                reply_deadline = deadline + len(text) * _SPOKEN_SECONDS_PER_CHAR
                await self._play_reply(text, voice, sink, started, progress, reply_deadline)
                if resumed_from:
                    self.stats.resumed += 1
                    log.info("hamsa_reply_resumed", skipped_bytes=resumed_from)
                return True
            except TruncatedReply as exc:
                self.stats.truncated += 1
                self._metrics.hamsa_truncated.inc()
                self._metrics.hamsa_error(exc.kind)
                log.warning(
                    "hamsa_reply_truncated",
                    audio_ms=round(exc.audio_ms, 1),
                    threshold_ms=round(exc.threshold_ms, 1),
                    played_bytes=progress.played,
                    attempt=attempt + 1,
                    chars=len(text),
                )
            except HamsaError as exc:
                # The one place a call's Hamsa failures are counted: each reaches here once.
                self._metrics.hamsa_error(exc.kind)
                if not exc.retryable:
                    raise
                log.warning(
                    "hamsa_reply_failed",
                    error=str(exc),
                    played_bytes=progress.played,
                    attempt=attempt + 1,
                )
                no_audio = isinstance(exc, HamsaReplyError) and not exc.audio_received
                if no_audio and not immediate_retry_used:
                    # The socket was found closed (dropped between utterances): resend now.
                    immediate_retry_used = True
                    self.stats.retries += 1
                    self._metrics.hamsa_retries.inc()
                    await self._hamsa.reset()
                    continue
            if attempt >= len(delays) or self._clock() + delays[attempt] > deadline:
                self.stats.skipped_segments += 1
                log.error(
                    "hamsa_gave_up",
                    attempts=attempt + 1,
                    chars=len(text),
                    played_bytes=progress.played,
                    reason="no complete reply within the retry limit",
                )
                return False
            await self._hamsa.reset()
            await asyncio.sleep(delays[attempt])
            attempt += 1
            self.stats.retries += 1
            self._metrics.hamsa_retries.inc()

    async def _play_reply(
        self,
        text: str,
        voice: Voice,
        sink: Sink,
        started: float,
        progress: _Progress,
        deadline: float,
    ) -> None:
        """One request: stream its audio into the framer, skipping what an earlier try played.

        A reply still streaming at ``deadline`` (``HAMSA_SEGMENT_BUDGET`` plus the text's length
        spoken at real time) is abandoned: Hamsa never ending a reply must not hold the call
        forever."""
        settings = self._settings
        decoder = ReplyDecoder(MULAW_8K)
        guard = TruncationGuard(
            len(text),
            ms_per_char=settings.hamsa_truncation_ms_per_char,
            min_ms=settings.hamsa_truncation_min_ms,
            hold_ms=settings.hamsa_truncation_hold_ms,
        )
        skip = progress.played
        metrics = self._metrics
        clock = self._clock
        self.first_byte_at = None

        def emit(audio: bytes) -> None:
            nonlocal skip
            if skip:
                if len(audio) <= skip:
                    skip -= len(audio)
                    return
                audio, skip = audio[skip:], 0
            if self.stats.first_audio_latency is None:
                self.stats.first_audio_latency = self._clock() - started
            progress.played += len(audio)
            sink(audio)

        budget = settings.hamsa_segment_budget
        try:
            async with asyncio.timeout(max(0.0, deadline - clock())):
                async with self._hamsa.reply(text, voice) as reply:
                    sent_at = clock()
                    async for chunk in reply:
                        if self.first_byte_at is None:
                            self.first_byte_at = clock()
                            metrics.hamsa_first_byte.observe(self.first_byte_at - sent_at)
                        audio = guard.feed(decoder.feed(chunk), decoder.audio_ms)
                        if audio:
                            emit(audio)
                    audio = guard.finish(decoder.finish(), decoder.audio_ms)
                    if audio:
                        emit(audio)
        except TimeoutError:
            raise HamsaTimeout(
                f"Hamsa reply not ended within HAMSA_SEGMENT_BUDGET ({budget:g} s) plus the "
                "text's length spoken at real time"
            ) from None
        except AudioFormatError as exc:
            error = HamsaReplyError(
                f"Hamsa sent audio the bridge cannot decode: {exc.message}",
                audio_received=progress.played > 0,
            )
            error.kind = "audio_format"
            raise error from None


class Speaker:
    """Turns text into audio in the call, one utterance at a time.

    Static prompts (``cacheable=True``) are played from the ``PromptCache`` when it has them —
    no Hamsa request, first frame at once — and stored there after a complete synthesis.
    """

    def __init__(
        self,
        settings: Settings,
        hamsa: HamsaSession,
        playback: Playback,
        *,
        cache: PromptCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._playback = playback
        self._cache = cache
        self._metrics = metrics = metrics or Metrics()
        self._synth = Synthesizer(settings, hamsa, clock=clock, metrics=metrics)
        self._ids = itertools.count(1)
        self._producer: asyncio.Task[bool] | None = None
        self._interrupts = 0
        self.cache_hits = 0

    @property
    def stats(self) -> SpeechStats:
        return self._synth.stats

    async def say(
        self,
        text: str,
        voice: Voice | None = None,
        *,
        label: str = "utt",
        cacheable: bool = False,
    ) -> SpeechOutcome:
        """Speak ``text`` and wait until it was played (its mark echoed) or interrupted.

        The mark is named ``{label}:{n}`` so a listener can tell which prompt was heard.
        """
        voice = voice or self._settings.voice
        name = f"{label}:{next(self._ids)}"
        interrupts = self._interrupts
        framer = Framer()
        producer = asyncio.create_task(self._produce(text, voice, framer, cacheable))
        self._producer = producer
        try:
            complete = await producer
        except asyncio.CancelledError:
            if producer.cancelled() and not _current_task_cancelling():
                return SpeechOutcome.INTERRUPTED
            raise
        except HamsaError:
            # Final (bad key, no balance): let what is already queued finish, then report it.
            await self._finish(name, framer)
            raise
        finally:
            self._producer = None
        if self._interrupts != interrupts:
            return SpeechOutcome.INTERRUPTED
        played = await self._finish(name, framer)
        if not played or self._interrupts != interrupts:
            return SpeechOutcome.INTERRUPTED
        return SpeechOutcome.PLAYED if complete else SpeechOutcome.PARTIAL

    def interrupt(self) -> None:
        """Barge-in: stop synthesis of the current utterance (its reply drains in the background),
        drop its queued audio and ``clear`` what Twilio buffered."""
        self._interrupts += 1
        if self._producer is not None:
            self._producer.cancel()
        self._playback.interrupt()

    async def _finish(self, name: str, framer: Framer) -> bool:
        """Pad and queue the utterance's last frame and its mark; wait for the echo (bounded)."""
        tail = framer.flush()
        if tail is not None:
            self._playback.push_frames((tail,))
        mark = self._playback.push_mark(name)
        try:
            async with asyncio.timeout(self._playback.buffered() + MARK_MARGIN):
                return await mark
        except TimeoutError:
            self.stats.marks_lost += 1
            self._metrics.marks_lost.inc()
            log.warning("mark_lost", utterance=name, waited=self._playback.buffered() + MARK_MARGIN)
            return True

    async def _produce(self, text: str, voice: Voice, framer: Framer, cacheable: bool) -> bool:
        playback = self._playback
        cache = self._cache if cacheable else None
        if cache is not None:
            audio = cache.get(text, voice)
            if audio is not None:
                self.cache_hits += 1
                self._metrics.prompt_cache.labels(result="hit").inc()
                playback.push_frames(framer.push(audio))
                return True
            self._metrics.prompt_cache.labels(result="miss").inc()
        captured = bytearray() if cache is not None else None
        synth = self._synth
        first = True

        def sink(audio: bytes) -> None:
            nonlocal first
            if captured is not None:
                captured.extend(audio)
            frames = framer.push(audio)
            if first and frames:
                first = False
                playback.push_frames(frames, first_byte_at=synth.first_byte_at)
            else:
                playback.push_frames(frames)

        lookahead = self._settings.bridge_lookahead_seconds
        stats = self._synth.stats
        troubles = (stats.truncated, stats.retries, stats.resumed)
        complete = await self._synth.text(
            text, voice, sink, room=lambda: playback.wait_for_room(lookahead)
        )
        clean = troubles == (stats.truncated, stats.retries, stats.resumed)
        if cache is not None and captured is not None and complete and clean:
            if cache_worthy(text, len(captured), self._settings):
                cache.put(text, voice, bytes(captured))
            else:
                log.warning("prompt_not_cached_short", chars=len(text), audio_bytes=len(captured))
        return complete


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
