"""Synthesis ahead of a call: text → ``PromptCache`` before anyone listens.

Used for announcements (``bridge.announcements.presynth``): their audio is synthesised while the
phone rings, so the stream finds it in the cache and its first frame leaves at once.

A *job* belongs to a holder (the announcement's id) and has one held text (the message:
personal data, stored only while held, see ``PromptCache``) and any static prompts (stored for
good). Each job runs in its own task on its own Hamsa socket, through the connector it was given
(the bridge's warm pool, or ``websockets.connect`` in a command), and closes it when done.

- **Bounded.** At most ``BRIDGE_PRESYNTH_CONNECTIONS`` jobs synthesise at once in a process; a
  job waits for a slot at most ``slot_wait`` seconds (its ring timeout), then is skipped: the
  call streams as without presynthesis.
- **Only clean audio is stored.** The same ``Synthesizer`` as a call (sentence splitting,
  truncation guard, timeouts), but no retry: a reply that needed one is not clean, and only
  complete, clean, ``cache_worthy`` audio may be stored, so retrying could never store it (it
  would only spend Hamsa balance). A call whose audio was not stored streams it with every retry
  rule.
- **In flight.** A text already cached, or being synthesised by another job of this process, is
  not synthesised again (the hold keeps it for this holder too).
- **Abandoned** (:meth:`abandon`) when the call's stream started before the job was done (the
  call streams instead): the job stops, freeing its slot and socket for calls still ringing.
- **Released** (:meth:`release`) when the caller is done with it: a running job is cancelled and
  the hold dropped (the audio goes once no hold is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from websockets.asyncio.client import connect

from bridge.calls.hamsa_session import Connector, HamsaSession
from bridge.calls.prompt_cache import PromptCache, prompt_key
from bridge.calls.speech import Synthesizer, cache_refusal
from bridge.errors import HamsaError
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.voice import Voice

__all__ = ["JobState", "PresynthJob", "Presynthesizer"]

log = structlog.get_logger("bridge.presynth")


class JobState(enum.Enum):
    QUEUED = "queued"
    """Waiting for a slot."""
    RUNNING = "running"
    READY = "ready"
    """Every text of the job is in the cache."""
    FAILED = "failed"
    """Some text could not be synthesised cleanly (the call streams it)."""
    SKIPPED = "skipped"
    """No slot within ``slot_wait``, or released before it ran."""
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class PresynthJob:
    holder: str
    """Whose the held text is (an announcement id)."""
    text: str
    """The held text (personal data: held, never stored for good, never logged)."""
    voice: Voice
    until: float
    """Unix time the hold expires at (a sweep removes the audio after it)."""
    prompts: tuple[tuple[str, Voice], ...] = ()
    """Static prompts the call may need (stored for good, shared)."""
    slot_wait: float = 30.0


class Presynthesizer:
    """Runs ``PresynthJob``s in the background (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        cache: PromptCache,
        *,
        connector: Connector = connect,
        metrics: Metrics,
    ) -> None:
        # No retry: a retried reply is never stored (see the module docstring).
        self._settings = settings.model_copy(update={"hamsa_retry_delays": ()})
        self.cache = cache
        self._connector = connector
        self._metrics = metrics
        self._slots = asyncio.Semaphore(max(1, settings.bridge_presynth_connections))
        self.enabled = settings.bridge_presynth_connections > 0
        self._jobs: dict[str, tuple[PresynthJob, asyncio.Task[None]]] = {}
        self._inflight: dict[str, asyncio.Event] = {}
        """Keys being synthesised by a job of this process (set when it is done)."""
        self.states: dict[str, JobState] = {}
        """The state of each holder's job (kept after it ended, until released)."""
        self._changed = asyncio.Event()

    # --- state -------------------------------------------------------------------------------

    def _set(self, holder: str, state: JobState) -> None:
        self.states[holder] = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[Presynthesizer], bool]) -> None:
        """Return once ``predicate(self)`` holds, re-checked after every change (bound it with
        ``asyncio.timeout()``)."""
        while not predicate(self):
            await self._changed.wait()

    @property
    def running(self) -> int:
        return sum(not task.done() for _, task in self._jobs.values())

    # --- jobs --------------------------------------------------------------------------------

    def start(self, job: PresynthJob) -> None:
        """Hold the job's text and synthesise what is not cached yet, in the background."""
        if not self.enabled or job.holder in self._jobs:
            return
        self.cache.hold(job.text, job.voice, job.holder, until=job.until)
        self._metrics.presynth.labels(event="started").inc()
        task = asyncio.create_task(self._run(job), name=f"presynth-{job.holder}")
        self._jobs[job.holder] = (job, task)
        self._set(job.holder, JobState.QUEUED)

    def abandon(self, holder: str) -> None:
        """The call no longer needs the job (its stream started first): stop it if it has not
        finished. The hold stays until :meth:`release`."""
        entry = self._jobs.get(holder)
        if entry is None or entry[1].done():
            return
        entry[1].cancel()
        self._metrics.presynth.labels(event="skipped").inc()
        log.info("presynth_skipped", announcement=holder, reason="the stream started first")
        self._set(holder, JobState.SKIPPED)

    async def release(self, holder: str) -> None:
        """The holder is done (its call ended, or never will be answered): cancel its job if
        it still runs and drop its hold."""
        entry = self._jobs.pop(holder, None)
        if entry is None:
            return
        job, task = entry
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.cache.release(job.text, job.voice, holder)
        self._set(holder, JobState.RELEASED)
        self.states.pop(holder, None)

    async def aclose(self) -> None:
        """Cancel every job and drop every hold this process took."""
        for holder in list(self._jobs):
            await self.release(holder)

    async def _run(self, job: PresynthJob) -> None:
        texts = [(job.text, job.voice, True), *((t, v, False) for t, v in job.prompts)]
        if all(self.cache.has(text, voice) for text, voice, _ in texts):
            log.info("presynth_cached", announcement=job.holder)
            self._finish(job, ok=True)
            return
        try:
            async with asyncio.timeout(job.slot_wait):
                await self._slots.acquire()
        except TimeoutError:
            self._metrics.presynth.labels(event="skipped").inc()
            log.info("presynth_skipped", announcement=job.holder, reason="no free slot in time")
            self._set(job.holder, JobState.SKIPPED)
            return
        try:
            self._set(job.holder, JobState.RUNNING)
            ok = await self._synthesise_all(job, texts)
        except Exception:  # a background task must log, never vanish silently
            log.exception("presynth_crashed", announcement=job.holder)
            ok = False
        finally:
            self._slots.release()
        self._finish(job, ok=ok)

    def _finish(self, job: PresynthJob, *, ok: bool) -> None:
        self._metrics.presynth.labels(event="completed" if ok else "failed").inc()
        self._set(job.holder, JobState.READY if ok else JobState.FAILED)

    async def _synthesise_all(self, job: PresynthJob, texts: list[tuple[str, Voice, bool]]) -> bool:
        """Every text of the job in the cache; False if one could not be stored."""
        started = time.monotonic()
        synthesised = 0
        reason = ""
        async with asyncio.TaskGroup() as tasks:
            # Connects on its first request only: nothing is opened for cached texts.
            hamsa = HamsaSession(
                self._settings, tasks, connector=self._connector, metrics=self._metrics
            )
            try:
                for text, voice, held in texts:
                    reason = await self._one(hamsa, job, text, voice, held)
                    if reason == "synthesised":
                        synthesised += 1
                    elif reason:
                        break
            except HamsaError as exc:  # final (bad key, no balance) or no connection
                reason = f"Hamsa {exc.kind}: {exc}"
            finally:
                await hamsa.close()
        if reason in ("", "synthesised"):
            log.info(
                "presynth_completed",
                announcement=job.holder,
                synthesised=synthesised,
                seconds=round(time.monotonic() - started, 3),
            )
            return True
        log.warning("presynth_failed", announcement=job.holder, reason=reason)
        return False

    async def _one(
        self, hamsa: HamsaSession, job: PresynthJob, text: str, voice: Voice, held: bool
    ) -> str:
        """One text into the cache: ``""`` (already there), ``"synthesised"``, or why not."""
        key = prompt_key(text, voice)
        other = self._inflight.get(key)
        if other is not None:  # another job of this process is synthesising it
            await other.wait()
        if self.cache.has(text, voice):
            return ""
        if other is not None:
            return "the same text failed in another job"
        done = self._inflight[key] = asyncio.Event()
        try:
            return await self._synthesise(hamsa, job, text, voice, held) or "synthesised"
        finally:
            del self._inflight[key]
            done.set()

    async def _synthesise(
        self, hamsa: HamsaSession, job: PresynthJob, text: str, voice: Voice, held: bool
    ) -> str:
        """Synthesise and store; ``""`` if stored, else why not."""
        synth = Synthesizer(self._settings, hamsa, metrics=self._metrics)
        audio = bytearray()
        complete = await synth.text(text, voice, audio.extend)
        stats = synth.stats
        if not complete or stats.truncated or stats.retries or stats.resumed:
            return "reply incomplete or not clean"
        refusal = cache_refusal(text, len(audio), self._settings)
        if refusal is not None:
            return refusal
        if held:
            if not self.cache.put_held(text, voice, job.holder, bytes(audio)):
                return "released before the audio was ready"
        else:
            self.cache.put(text, voice, bytes(audio))
        return ""
