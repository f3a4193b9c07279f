"""Real-time paced playback into a Twilio stream: the one writer of the Twilio socket.

``PacingClock`` is the sans-I/O rule: it models Twilio's playout buffer (8000 bytes/s) and
lets a frame go only while the audio already sent is at most ``lead`` ahead of real time. After an
underrun the clock restarts from "now", so there is never a catch-up burst
(docs/design-notes.md §1). To wake the event loop less often, frames go in small batches:
once full, the writer sleeps until the lead has drained by ``refill`` and then tops it up.

``Playback`` is the I/O side: a local queue of frames and marks, a writer task that paces
frames out, sends a ``mark`` at each utterance end, and a ``clear`` on barge-in with stale audio
dropped. Mark echoes resolve the futures returned by ``push_mark``: ``True`` when the audio
before the mark was played, ``False`` when it was cleared.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from bridge.audio.formats import FRAME_BYTES
from bridge.metrics import Metrics
from bridge.protocols.twilio_stream_server import TwilioMediaStream

FRAME_SECONDS = 0.020


class PacingClock:
    """When may the next 20 ms frame be sent? Pure arithmetic on times passed in."""

    __slots__ = ("frame", "lead", "refill", "gap", "_play_end")

    def __init__(self, *, lead: float, refill: float = 0.060, frame: float = FRAME_SECONDS) -> None:
        if not frame <= lead:
            raise ValueError("lead must be at least one frame")
        self.lead = lead
        self.frame = frame
        self.refill = min(refill, lead - frame)
        self.gap = 0.0
        """How long Twilio's buffer had been dry when the last underrun ended (see ``sent``)."""
        self._play_end: float | None = None

    @property
    def play_end(self) -> float | None:
        """When the audio sent so far will have played (None before the first frame or after
        ``reset``); in the past once Twilio's buffer ran dry."""
        return self._play_end

    def ahead(self, now: float) -> float:
        """Seconds of audio sent but not yet played at ``now`` (0 when Twilio's buffer is dry)."""
        if self._play_end is None:
            return 0.0
        return max(0.0, self._play_end - now)

    def delay(self, now: float) -> float:
        """0 if a frame may go now, else how long to wait before topping the lead up again."""
        ahead = self.ahead(now)
        if ahead + self.frame <= self.lead + 1e-9:
            return 0.0
        return ahead - (self.lead - self.frame - self.refill)

    def sent(self, now: float) -> bool:
        """Account one frame sent at ``now``; True if Twilio's buffer had run dry (an underrun),
        and then ``gap`` says for how long (0 if nothing had ever played)."""
        end = self._play_end
        if end is None or end < now:
            self.gap = 0.0 if end is None else now - end
            self._play_end = now + self.frame
            return True
        self._play_end = end + self.frame
        return False

    def reset(self) -> None:
        """Twilio's buffer is empty (after ``clear``)."""
        self._play_end = None


@dataclass(slots=True)
class _Mark:
    name: str
    future: asyncio.Future[bool]


@dataclass(slots=True)
class PlaybackStats:
    frames_sent: int = 0
    marks_sent: int = 0
    clears_sent: int = 0
    underruns: int = 0
    """Gaps inside an utterance: Twilio's buffer ran dry before the utterance's next frame went
    (never counted between utterances, where the silence is the script's: a wait for a key)."""
    gaps: list[float] = field(default_factory=list)
    """How long each underrun's silence lasted, in seconds (0 if nothing had played yet)."""
    frames_dropped: int = 0
    first_frame_at: float | None = None
    wakes: int = 0
    """How often the writer woke from a wait (for work or for the pacing clock)."""


class Playback:
    """Owns every write to the Twilio socket of one call.

    ``send`` takes a list of Twilio messages and sends them in order (one write where it can);
    if it raises, the writer stops with that error.
    """

    def __init__(
        self,
        stream: TwilioMediaStream,
        send: Callable[[list[str]], Awaitable[None]],
        *,
        lead: float,
        refill: float = 0.060,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics,
    ) -> None:
        self._stream = stream
        self._send = send
        self._clock = clock
        self._metrics = metrics
        self._lead = lead
        self._pacer = PacingClock(lead=lead, refill=refill)
        self._latency_probes: deque[tuple[int, float]] = deque()
        """(frame number, when its audio arrived from Hamsa): frames whose send time is measured."""
        self._queue: deque[bytes | _Mark] = deque()
        self._queued_frames = 0
        self._head = 0
        """Bytes of the queue's first item already sent (it holds one or more frames)."""
        self._waiter: asyncio.Future[bool] | None = None
        """The writer's pending wait, if it is waiting: resolved by ``_notify`` (False) or by its
        pacing timer (True)."""
        self._pacing = False
        """True while that wait is for the pacing clock (frames queued, none due yet)."""
        self._uncounted = 0
        """Frames sent and not yet added to the ``frames_sent`` counter."""
        self._idle = asyncio.Event()
        self._clear_requested = False
        self._in_utterance = False
        self._sent_marks: dict[str, tuple[_Mark, float]] = {}
        self.stats = PlaybackStats()

    # --- producer side -------------------------------------------------------------------------

    def push_frames(self, frames: Iterable[bytes], *, first_byte_at: float | None = None) -> None:
        """Queue audio for paced sending: each item is one or more whole 160-byte frames (a
        multiple of 160 bytes), sliced into frames as they are sent.

        Cost: one queue slot per item, not per frame: 10 s of audio queued as 160-byte
        ``bytes`` took ~106 KB (208 bytes of pymalloc and an 8-byte slot per frame), as the
        framer's chunks ~81 KB (``bench/memory_per_call.py``).

        ``first_byte_at``: when the audio of the first of these frames arrived from Hamsa; if
        nothing is waiting ahead of it, the time until it is sent is the bridge-added latency.
        """
        if first_byte_at is not None and self.buffered() < self._lead:
            number = self.stats.frames_sent + self._queued_frames + 1
            self._latency_probes.append((number, first_byte_at))
        added = 0
        queue = self._queue
        for item in frames:
            count = len(item) // FRAME_BYTES
            if count:
                queue.append(item)
                added += count
        if added:
            self._queued_frames += added
            self._idle.clear()
            self._notify()

    def push_mark(self, name: str) -> asyncio.Future[bool]:
        """Queue a mark behind the queued frames; its future says played (True) or cleared."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Mark(name, future))
        self._idle.clear()
        self._notify()
        return future

    def interrupt(self) -> None:
        """Barge-in: drop queued audio, resolve outstanding marks as cleared, send ``clear``."""
        dropped = self._queued_frames
        for item in self._queue:
            if isinstance(item, _Mark) and not item.future.done():
                item.future.set_result(False)
        self._queue.clear()
        self._head = 0
        self._queued_frames = 0
        for mark, _ in self._sent_marks.values():
            if not mark.future.done():
                mark.future.set_result(False)
        self._sent_marks.clear()
        self._latency_probes.clear()
        self.stats.frames_dropped += dropped
        self._clear_requested = True
        self._idle.clear()
        self._notify(urgent=True)

    def on_mark(self, name: str) -> None:
        """A mark echoed by Twilio: the audio before it has been played."""
        entry = self._sent_marks.pop(name, None)
        if entry is None:
            return  # stale: cleared already, or not ours
        mark, sent_at = entry
        # Into the histogram only: a list of every round trip would grow for the whole call.
        self._metrics.mark_round_trip.observe(self._clock() - sent_at)
        if not mark.future.done():
            mark.future.set_result(True)

    def buffered(self) -> float:
        """Seconds of audio queued here plus sent but not yet played."""
        return self._queued_frames * FRAME_SECONDS + self._pacer.ahead(self._clock())

    def playout_end(self) -> float:
        """When everything handed over so far will have played: now plus what is queued, after
        what Twilio still buffers. In the past if Twilio's buffer already ran dry and nothing is
        queued (a gap is being heard); now if nothing was ever sent."""
        now = self._clock()
        end = self._pacer.play_end
        queued = self._queued_frames * FRAME_SECONDS
        if end is None:
            return now + queued
        if queued:
            return max(now, end) + queued
        return end

    async def wait_for_room(self, limit: float) -> None:
        """Return once less than ``limit`` seconds of audio wait to be played."""
        # The backlog drains with real time, not with an event: sleep exactly that long.
        while (excess := self.buffered() - limit) > 0:  # noqa: ASYNC110
            await asyncio.sleep(excess + 0.01)

    def cancel_pending(self) -> None:
        """The call is over: resolve every outstanding mark future as not played."""
        for item in self._queue:
            if isinstance(item, _Mark) and not item.future.done():
                item.future.set_result(False)
        for mark, _ in self._sent_marks.values():
            if not mark.future.done():
                mark.future.set_result(False)

    async def flush(self) -> None:
        """Wait until everything queued (frames, marks, a pending ``clear``) has been sent."""
        await self._idle.wait()

    # --- the writer task ---------------------------------------------------------------------

    def _notify(self, *, urgent: bool = False) -> None:
        """Wake the writer if it waits for work, or, when ``urgent`` (a ``clear``), also if it
        waits for the pacing clock. More frames or a mark queued behind the frame the clock holds
        back change nothing before the clock's wake: waking then would cost a wake per Hamsa
        chunk for nothing."""
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (urgent or not self._pacing):
            waiter.set_result(False)

    async def run(self) -> None:
        """Send until cancelled. The only coroutine that writes to the Twilio socket.

        Cost: this loop runs once per frame, but awaits ``send`` once per wake: the frames (and
        any mark or ``clear`` between them, in queue order) that a wake lets go are handed over
        as one list, which the call writes with one syscall where the server offers it
        (``bridge/stream_transport.py``). Each frame is still accounted on its own (underruns,
        latency probes, lateness) at the instant it joins the batch. A wait is one future (plus
        one timer handle when pacing), not an ``asyncio.Event`` under ``asyncio.timeout``;
        ``frames_sent`` is counted in bulk, before each wait and when the writer stops.
        """
        loop = asyncio.get_running_loop()
        try:
            await self._run(loop)
        finally:
            self._count_sent()

    def _count_sent(self) -> None:
        if self._uncounted:
            self._metrics.frames_sent.inc(self._uncounted)
            self._uncounted = 0

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = self._queue
        pacer = self._pacer
        stream = self._stream
        send = self._send
        clock = self._clock
        stats = self.stats
        metrics = self._metrics
        probes = self._latency_probes
        lateness = metrics.pacing_lateness
        paced: float | None = None  # when the pacing clock let the frame at the head go
        batch: list[str] = []  # what this wake sends, in queue order: one ``send`` before a wait
        while True:
            if self._clear_requested:
                self._clear_requested = False
                paced = None
                self._in_utterance = False
                pacer.reset()
                stats.clears_sent += 1
                metrics.clears.inc()
                batch.append(stream.clear())
                continue
            if not queue:
                if batch:
                    await send(batch)
                    batch = []
                    continue  # the send may have waited: look again before sleeping
                self._count_sent()
                self._idle.set()
                waiter = self._waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self._waiter = None
                stats.wakes += 1
                self._idle.clear()
                continue
            item = queue[0]
            if isinstance(item, _Mark):
                queue.popleft()
                self._in_utterance = False
                self._sent_marks[item.name] = (item, clock())
                stats.marks_sent += 1
                batch.append(stream.mark(item.name))
                continue
            now = clock()
            wait = pacer.delay(now)
            if wait > 0:
                if batch:
                    await send(batch)
                    batch = []
                    continue  # the send may have waited: the clock has moved
                self._count_sent()
                waiter = self._waiter = loop.create_future()
                timer = loop.call_later(wait, _expire, waiter)
                self._pacing = True
                try:
                    if await waiter:
                        paced = now + wait
                finally:
                    timer.cancel()
                    self._waiter = None
                    self._pacing = False
                stats.wakes += 1
                continue
            head = self._head
            if head == 0 and len(item) == FRAME_BYTES:
                queue.popleft()
            else:
                end = head + FRAME_BYTES
                frame = item[head:end]
                if end >= len(item):
                    queue.popleft()
                    end = 0
                self._head = end
                item = frame
            self._queued_frames -= 1
            if paced is not None:
                lateness.observe(now - paced)
                paced = None
            if pacer.sent(now) and self._in_utterance:
                stats.underruns += 1
                stats.gaps.append(pacer.gap)
                metrics.underruns.inc()
                metrics.gap.observe(pacer.gap)
            self._in_utterance = True
            if stats.first_frame_at is None:
                stats.first_frame_at = now
            stats.frames_sent += 1
            self._uncounted += 1
            if probes and probes[0][0] <= stats.frames_sent:
                number, arrived = probes.popleft()
                if number == stats.frames_sent:
                    metrics.bridge_latency.observe(now - arrived)
            batch.append(stream.media(item))


def _expire(waiter: asyncio.Future[bool]) -> None:
    """The pacing timer of a writer's wait."""
    if not waiter.done():
        waiter.set_result(True)
