"""The caller's speech, for one call whose script listens: utterances in, transcripts out.

The I/O around :class:`~bridge.audio.utterances.UtteranceDetector` (docs/speech-input.md):

1. The call hands every inbound frame to :meth:`Listener.on_media` (``Call._on_events``, from
   Twilio's ``media``: 50 a second). The detector runs on all of them, all call long.
2. On ``SpeechStarted`` the listener asks the context whether anything listens now
   (:meth:`CallContext.speech_started`: a ``next_input(speech=True)`` waiting, or a prompt with
   ``speech_barge_in``, which it interrupts). The answer is the window number the utterance is
   tagged with, or ``None``: speech over a prompt without voice barge-in, or between inputs, is
   never sent to Hamsa.
3. On ``UtteranceEnded`` for a tagged utterance, a task of the call's task group builds the WAV
   (:func:`~bridge.audio.wav.stt_wav`) and asks the :class:`Transcriber` (the call's Hamsa
   session: its lock orders STT with TTS, one request in flight); one transcription at a time
   per call. The answer goes to the context as ``Heard`` or ``NotUnderstood``; an answer for a
   window that is over (the script moved on) is dropped and counted ``stale``. A window already
   over when the utterance ends is not sent at all (counted ``stale`` too).

Never raises into the call: a transcriber that fails (a bug, an auth error) is an ``error``
outcome; a refused key then ends the call at its next prompt, as for TTS. The transcript is
logged at debug level only and never put in a metric label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from bridge.audio.utterances import SpeechStarted, UtteranceDetector, UtteranceEnded
from bridge.audio.wav import stt_wav
from bridge.calls.context import CallContext, Heard, NotUnderstood
from bridge.metrics import Metrics
from bridge.settings import Settings

log = structlog.get_logger("bridge.listener")

__all__ = ["Listener", "SttAnswer", "Transcriber", "detector_for"]

_OUTCOMES = frozenset({"text", "empty", "thinking", "error", "timeout"})
EARLY_START_GRACE = 1.0
"""Seconds an utterance may have begun before a node started listening and still answer it:
callers often start answering as the prompt's last words play. An utterance begun earlier, well
inside the prompt, is not taken (without ``speech_barge_in``, speech over a prompt is ignored)."""


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class SttAnswer(Protocol):
    """What the listener reads of ``bridge.calls.hamsa_session.SttResult`` (its contract):
    the outcome's name (``TEXT``, ``EMPTY``, ``THINKING``, ``ERROR``, ``TIMEOUT``), the
    transcript, and Hamsa's time to answer."""

    @property
    def outcome(self) -> _Named: ...

    @property
    def text(self) -> str: ...

    @property
    def seconds(self) -> float: ...


class Transcriber(Protocol):
    """``HamsaSession.transcribe``: one utterance's WAV to its transcript. Never raises for
    Hamsa's answers (errors and timeouts are outcomes)."""

    async def transcribe(self, wav: bytes, *, language: str) -> SttAnswer: ...


def detector_for(settings: Settings) -> UtteranceDetector:
    """The detector with the ``BRIDGE_SPEECH_*`` settings."""
    return UtteranceDetector(
        start_pad_ms=settings.bridge_speech_start_pad_ms,
        end_silence_ms=settings.bridge_speech_end_silence_ms,
        max_ms=round(settings.bridge_speech_max_seconds * 1000),
        mode=settings.bridge_speech_vad_mode,
    )


class Listener:
    """One call's ears (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_context",
        "_detector",
        "_language",
        "_lock",
        "_metrics",
        "_pending",
        "_tagged",
        "_tasks",
        "_transcriber",
        "_abandoned",
        "_began",
        "heard",
        "utterances",
    )

    def __init__(
        self,
        context: CallContext,
        transcriber: Transcriber,
        tasks: asyncio.TaskGroup,
        *,
        detector: UtteranceDetector,
        metrics: Metrics,
        language: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._context = context
        self._transcriber = transcriber
        self._tasks = tasks
        self._detector = detector
        self._metrics = metrics
        self._language = language
        self._clock = clock
        self._lock = asyncio.Lock()
        self._pending: dict[asyncio.Task[None], int] = {}
        """Transcriptions not yet delivered, with the window each answers."""
        self._abandoned: set[asyncio.Task[None]] = set()
        """Those cancelled because their window closed (not because the call ends)."""
        context.on_window_closed = self._window_closed
        context.on_window_opened = self._window_opened
        self._began: float | None = None
        """When the utterance in progress began (this listener's clock); None between them."""
        self._tagged: int | None = None
        """The window the utterance in progress answers (None: nobody listened at its start)."""
        self.utterances = 0
        """Utterances detected (sent or not): for the call's summary."""
        self.heard = 0
        """Transcripts delivered to the script (of any outcome)."""

    @property
    def detector(self) -> UtteranceDetector:
        return self._detector

    def on_media(self, payload: bytes) -> None:
        """One inbound frame (20 ms of the caller's μ-law)."""
        for event in self._detector.push(payload):
            if isinstance(event, SpeechStarted):
                self._began = self._clock()
                self._tagged = self._context.speech_started()
                if self._tagged is not None:
                    log.info("speech_started", at_ms=event.at_ms, window=self._tagged)
            else:
                self._ended(event)

    def _window_opened(self) -> None:
        """A node starts listening while the caller is already speaking: the utterance is its
        answer if it began at most ``EARLY_START_GRACE`` before (a caller answering as the
        prompt ends), else it is left alone (it began well inside the prompt: talk over it, or
        the prompt's own echo, which must not answer)."""
        began = self._began
        if self._tagged is not None or began is None:
            return
        if self._clock() - began <= EARLY_START_GRACE:
            self._tagged = self._context.speech_started()
            if self._tagged is not None:
                log.info("speech_started", window=self._tagged, early=True)

    def _ended(self, utterance: UtteranceEnded) -> None:
        self._began = None
        self.utterances += 1
        end = "cut" if utterance.cut else "silence"
        self._metrics.speech_utterances.labels(end=end).inc()
        window, self._tagged = self._tagged, None
        if window is None:
            return  # nobody listened when it started: never sent
        log.info(
            "speech_ended",
            window=window,
            ms=utterance.ended_ms - utterance.started_ms,
            end=end,
        )
        try:
            task = self._tasks.create_task(self._transcribe(window, utterance, self._clock()))
        except RuntimeError:  # the call's task group is ending: nobody will read the answer
            return
        self._pending[task] = window
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        window = self._pending.pop(task, None)
        if task in self._abandoned:
            self._abandoned.discard(task)
            if task.cancelled():  # before or while Hamsa answered: its answer is not awaited
                self._metrics.stt_results.labels(outcome="stale").inc()
                log.info("stt_abandoned", window=window, reason="the script moved on")

    def _window_closed(self) -> None:
        """The script stopped waiting (a key won, the node moved on): a transcription for an
        earlier window is abandoned at once, so the next prompt never waits for Hamsa's answer
        to it (up to ``HAMSA_STT_TIMEOUT``). Hamsa's late answer is drained by the session, the
        next request waiting for it up to ``HAMSA_DRAIN_TIMEOUT``, as for an abandoned reply."""
        current = self._context.window
        for task, window in self._pending.items():
            if window != current and task not in self._abandoned:
                self._abandoned.add(task)
                task.cancel()

    def close(self) -> None:
        """The call is ending: cancel the transcriptions still pending (their answers could no
        longer be used), so the call's task group need not wait for Hamsa."""
        for task in self._pending:
            task.cancel()

    async def _transcribe(self, window: int, utterance: UtteranceEnded, ended_at: float) -> None:
        """Send one utterance (after any earlier one: one at a time) and deliver its answer.
        Cancelled when its window closes first (``_window_closed``: ``_done`` counts it)."""
        metrics = self._metrics
        async with self._lock:
            if window != self._context.window:
                metrics.stt_results.labels(outcome="stale").inc()
                log.info("stt_skipped", window=window, reason="the script moved on")
                return
            wav = stt_wav(utterance.pcm)
            metrics.stt_requests.inc()
            seconds = 0.0
            try:
                answer = await self._transcriber.transcribe(wav, language=self._language)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failing transcriber must not end the call here
                log.warning("stt_failed", error=type(exc).__name__, detail=str(exc)[:200])
                outcome, text = "error", ""
            else:
                outcome = answer.outcome.name.lower()
                if outcome not in _OUTCOMES:
                    outcome = "error"
                text, seconds = answer.text, answer.seconds
                metrics.stt_seconds.observe(seconds)
        result: Heard | NotUnderstood = Heard(text) if outcome == "text" else NotUnderstood(outcome)
        if not self._context.speech_heard(window, result):
            metrics.stt_results.labels(outcome="stale").inc()
            log.info("stt_stale", window=window, outcome=outcome)
            return
        self.heard += 1
        metrics.stt_results.labels(outcome=outcome).inc()
        metrics.stt_bridge_latency.observe(max(0.0, self._clock() - ended_at - seconds))
        log.info("stt_heard", window=window, outcome=outcome, chars=len(text))
        log.debug("stt_transcript", window=window, text=text)
