"""Twilio's side of one Media Stream over a real WebSocket: the simulated caller's media leg.

Shared by ``hamsa-bridge call`` and the Twilio emulator (one implementation of Twilio's side):
connect to the ``<Stream url>`` with a signed handshake, send ``connected``, ``start`` and caller
audio every 20 ms, keys at given times, model Twilio's playout buffer (``TwilioMediaLeg``), echo
marks when their audio has played, and hang up (``stop``, then close 1000) after a delay, at a
maximum duration or when the ``hangup`` event is set. What the caller heard is kept for a WAV file
and a timeline.

The caller's audio is silence (0xFF) except when the caller speaks: :attr:`CallerBehaviour.speech`
at given times, or a ``say:`` entry of :attr:`CallerBehaviour.answers` after a prompt. What is
said goes out as the same 20 ms ``media`` frames, in place of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.audio.codec import ulaw_to_lin16
from bridge.dev.tone import synthesize
from bridge.dev.twilio_stream_client import TwilioMediaLeg
from bridge.protocols.websockets_cycle import ReleasingClientConnection
from bridge.signatures import TwilioSignatures

SILENCE_FRAME = b"\xff" * 160
SAY: Final = "say:"
"""An answer starting with this is said (tone speech of the rest), not keyed."""


def mulaw_to_wav(mulaw: bytes) -> bytes:
    """8 kHz μ-law as a 16-bit PCM WAV file (plays anywhere)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(ulaw_to_lin16(mulaw))
    return buffer.getvalue()


STREAM_USER_AGENT: Final = "Twilio.TmeWs/1.0"
"""The ``User-Agent`` of Twilio's stream handshakes."""

EndedBy = Literal["bridge", "hangup_after", "max_duration", "hangup", "vanished"]


@dataclass(slots=True, kw_only=True)
class CallerBehaviour:
    """What the caller does on the media stream."""

    keys: list[tuple[float, str]] = field(default_factory=list)
    """(seconds after ``start``, digit) pairs."""
    raw: list[tuple[float, str | bytes]] = field(default_factory=list)
    """(seconds after ``start``, message) sent as is: malformed frames, to test robustness."""
    answers: list[str] = field(default_factory=list)
    """Answers to prompts: after each IVR prompt that waits for input (a mark named ``menu:…``
    or ``gather:…`` echoed as played) the next string is answered, starting 300 ms after the
    prompt ended: its keys pressed, one every 150 ms, or, for ``say:PHRASE``, PHRASE said (tone
    speech, ``bridge.dev.tone.synthesize(PHRASE, mulaw=True)``: 80 ms a character). Keys and
    spoken answers mix in one list, in the order of the prompts."""
    speech: list[tuple[float, bytes]] = field(default_factory=list)
    """(seconds after ``start``, 8 kHz μ-law) pairs: audio the caller says, sent as its
    ``media`` frames in place of silence (160 bytes each, the last padded with 0xFF). Speech
    due while the caller is still saying something follows it."""
    echo_marks: bool = True
    """False: never echo marks (to test a Twilio whose echoes are lost)."""
    before_start: list[str | bytes] = field(default_factory=list)
    """Messages sent as is between ``connected`` and ``start`` (garbage before the call exists)."""
    flood: list[tuple[float, int]] = field(default_factory=list)
    """(seconds after ``start``, n) pairs: n extra caller ``media`` frames sent at once, on top of
    the 50 a second (one frame built at that instant, repeated: a broken or hostile peer)."""
    vanish_after: float | None = None
    """The caller's connection vanishes this long after ``start`` was written: the TCP connection
    is aborted with no ``stop`` and no close frame (a network drop, a crashed Twilio edge)."""
    hangup_after: float | None = None
    """The caller hangs up (``stop``) this long after ``start``; None: wait for the bridge."""
    max_duration: float = 300.0
    patience: float = 15.0
    """Seconds the caller waits for the webhook's answer (Twilio waits 15 s) and for the stream's
    opening handshake. The in-process rig (``bridge.dev.loopback``) waits longer: there the
    bridge and its callers share one event loop, which a loaded machine can stall for seconds."""
    sign_handshake: bool = True
    handshake_token: str | None = None
    """Sign the handshake with this auth token instead (to test a forged signature)."""
    token_override: str | None = None
    """Replace the ``token`` Parameter (to test stream authentication)."""
    connect_url: str | None = None
    """Connect here instead of the TwiML's stream URL (same path; e.g. behind a tunnel)."""
    on_open: Callable[[], None] | None = None
    """Called once the stream's handshake succeeded (the bridge accepted it)."""
    on_audio: Callable[[], None] | None = None
    """Called once, when the first audio frame arrives (the call is authenticated and playing)."""


_INPUT_MARKS: Final = ("menu:", "gather:")
"""Marks of IVR prompts after which the bridge waits for the caller's keys."""
_SAME_INSTANT: Final = 1e-6


@dataclass(frozen=True, slots=True)
class Silence:
    """A stretch of silence the caller heard between audio (see :meth:`StreamResult.silences`)."""

    at: float
    duration: float
    kind: Literal["underrun", "waiting", "between"]
    """``underrun``: inside speech, the audio came later than playback needed it;
    ``waiting``: the IVR waited for the caller's keys; ``between``: between two prompts."""
    keyed: bool = False
    """``waiting``: the wait ended with a key, or the caller speaking (else it lasted until the
    next prompt)."""


@dataclass(slots=True, kw_only=True)
class StreamResult:
    """What happened on one media stream."""

    stream_url: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    leg: TwilioMediaLeg | None = None
    started_at: float | None = None
    ended_at: float | None = None
    close_code: int | None = None
    handshake_status: int | None = None
    keys_sent: list[tuple[float, str]] = field(default_factory=list)
    speech_sent: list[tuple[float, float]] = field(default_factory=list)
    """(clock, seconds of audio) of each thing the caller began to say."""
    hung_up: bool = False
    """The caller hung up: sent ``stop`` and closed the socket with 1000."""
    ended_by: EndedBy | None = None
    """Why the stream ended: ``bridge`` (it closed the socket), else why the caller hung up —
    :attr:`CallerBehaviour.hangup_after` or :attr:`~CallerBehaviour.max_duration` elapsed, or
    the ``hangup`` event of :func:`run_media_stream` was set —, or ``vanished``
    (:attr:`CallerBehaviour.vanish_after`: the connection was aborted). ``None``: the stream
    never ran."""

    @property
    def heard(self) -> bytes:
        return self.leg.heard() if self.leg is not None else b""

    def write_wav(self, path: Path) -> Path:
        """What the caller heard, as 8 kHz 16-bit PCM WAV (plays anywhere)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mulaw_to_wav(self.heard))
        return path

    def prompts(self) -> list[str]:
        """The IVR nodes whose prompts were sent, in order (from mark names ``kind:node:n``)."""
        if self.leg is None:
            return []
        nodes = [m.name.split(":")[1] for m in self.leg.timeline.marks if m.name.count(":") == 2]
        return [n for i, n in enumerate(nodes) if i == 0 or nodes[i - 1] != n]

    def gaps(self) -> list[tuple[float, float]]:
        """Underruns the caller heard as gaps inside speech: playout ran dry in the middle of an
        utterance and its audio came again later, ``(at, duration)``.

        Silence after an utterance ended (its mark echoed) is not a gap: the IVR waiting for a
        key, or the pause before the next prompt (:meth:`silences` tells them apart); nor is
        the buffer running dry after the last audio (the end of the call).
        """
        return [(s.at, s.duration) for s in self.silences() if s.kind == "underrun"]

    def silences(self) -> list[Silence]:
        """Every stretch of silence between audio the caller heard, in order, and why.

        A stretch that began when an utterance ended (Twilio echoed its mark as played, at the
        instant the playout ran dry or during the silence) is ``waiting`` after a prompt that
        asks for keys (mark ``menu:…`` or ``gather:…``) — until the last key pressed in it, or
        all of it if none was —, and ``between`` otherwise (and after that last key): the next
        prompt was being prepared. Any other stretch is an ``underrun``: a gap inside speech.
        """
        if self.leg is None:
            return []
        marks = [
            (m.echoed_at, m.name)
            for m in self.leg.timeline.marks
            if m.echoed_at is not None and not m.cleared
        ]
        keys = sorted([at for at, _ in self.keys_sent] + [at for at, _ in self.speech_sent])
        out: list[Silence] = []
        for underrun in self.leg.timeline.underruns:
            if underrun.duration is None:
                continue
            at, end = underrun.at, underrun.at + underrun.duration
            ended = [name for echoed, name in marks if at - _SAME_INSTANT <= echoed <= end]
            if not ended:
                out.append(Silence(at, underrun.duration, "underrun"))
            elif ended[-1].startswith(_INPUT_MARKS):
                pressed = [t for t in keys if at < t <= end]
                waited = (pressed[-1] if pressed else end) - at
                out.append(Silence(at, waited, "waiting", keyed=bool(pressed)))
                if end - at - waited > 0:
                    out.append(Silence(at + waited, end - at - waited, "between"))
            else:
                out.append(Silence(at, underrun.duration, "between"))
        return out

    def timeline(self) -> list[str]:
        """Human-readable report of the stream, times in ms from ``start``."""
        lines: list[str] = []
        leg, t0 = self.leg, self.started_at
        if leg is None or t0 is None:
            if self.handshake_status is not None:
                lines.append(f"stream handshake refused: HTTP {self.handshake_status}")
            return lines

        def ms(t: float | None) -> str:
            return "-" if t is None else f"{(t - t0) * 1000:8.1f} ms"

        tl = leg.timeline
        lines.append(f"stream: {self.stream_url}  parameters: {sorted(self.parameters)}")
        lines.append(f"first audio:        {ms(tl.first_media_at)}")
        if self.prompts():
            lines.append(f"IVR nodes heard:    {' > '.join(self.prompts())}")
        for at, digit in self.keys_sent:
            lines.append(f"key {digit!r} pressed:     {ms(at)}")
        for at, seconds in self.speech_sent:
            lines.append(f"caller spoke:       {ms(at)} for {seconds:.2f} s")
        for mark in tl.marks:
            state = "cleared" if mark.cleared else "played"
            lines.append(
                f"mark {mark.name!r}: sent {ms(mark.received_at)}, "
                f"echoed {ms(mark.echoed_at)} ({state})"
            )
        for clear in tl.clears:
            lines.append(f"clear:              {ms(clear.at)} dropped {clear.dropped_bytes} bytes")
        silences = self.silences()
        for silence in silences:
            if silence.kind == "underrun":
                lines.append(
                    f"underrun:           {ms(silence.at)} for {silence.duration * 1000:.1f} ms "
                    "(silence inside speech: the audio came later than playback needed it)"
                )
            elif silence.kind == "waiting":
                lines.append(
                    f"waiting for a key:  {ms(silence.at)} for {silence.duration:.1f} s"
                    + ("" if silence.keyed else " (no key came: the flow moved on)")
                )
            else:
                lines.append(
                    f"between prompts:    {ms(silence.at)} for {silence.duration * 1000:.1f} ms"
                )
        underruns = sum(1 for s in silences if s.kind == "underrun")
        waited = sum(s.duration for s in silences if s.kind == "waiting")
        lines.append(
            f"frames received: {tl.frames_received}  audio heard: {len(leg.played) / 8000:.2f} s  "
            f"max lead: {tl.max_lead_ms:.0f} ms  underruns: {underruns}"
            + (f"  waiting for keys: {waited:.1f} s" if waited else "")
        )
        if leg.warnings:
            lines.append(
                f"protocol warnings: {leg.warnings[:5]}{' …' if len(leg.warnings) > 5 else ''}"
            )
        else:
            lines.append("protocol warnings: none")
        if self.ended_by == "hangup":
            end = "Twilio stopped the stream (the call was updated or ended)"
        elif self.ended_by == "vanished":
            end = "the caller's connection vanished (aborted, no stop)"
        elif self.hung_up:
            end = "caller hung up"
        else:
            end = f"bridge closed the stream (code {self.close_code})"
        lines.append(f"end:                {ms(self.ended_at)} {end}")
        return lines


async def run_media_stream(
    stream_url: str,
    parameters: dict[str, str],
    *,
    auth_token: str,
    call_sid: str,
    account_sid: str,
    stream_sid: str,
    behaviour: CallerBehaviour,
    result: StreamResult | None = None,
    clock: Callable[[], float] = time.monotonic,
    hangup: asyncio.Event | None = None,
    on_open: Callable[[], None] | None = None,
) -> StreamResult:
    """Open the stream as Twilio does and run it to its end (either side closing, or hang-up).

    Setting ``hangup`` hangs up at once, as Twilio does when the call ends (a REST update, a
    time limit): ``stop`` with the next ``sequenceNumber``, then close 1000. ``on_open`` is
    called once the handshake has succeeded, before ``connected`` is sent.
    """
    result = result if result is not None else StreamResult()
    result.stream_url, result.parameters = stream_url, dict(parameters)
    params = dict(parameters)
    if behaviour.token_override is not None:
        params["token"] = behaviour.token_override
    signer = TwilioSignatures(behaviour.handshake_token or auth_token)
    headers = (
        {"X-Twilio-Signature": signer.sign(stream_url, {})} if behaviour.sign_handshake else {}
    )
    try:
        ws = await connect(
            behaviour.connect_url or stream_url,
            additional_headers=headers,
            user_agent_header=STREAM_USER_AGENT,
            open_timeout=behaviour.patience,
            max_size=2**20,
            create_connection=ReleasingClientConnection,  # a caller's socket, freed at once
        )
    except InvalidStatus as exc:
        result.handshake_status = exc.response.status_code
        return result
    leg = TwilioMediaLeg(stream_sid, call_sid, account_sid, params)
    result.leg = leg
    async with ws:
        for callback in (on_open, behaviour.on_open):
            if callback is not None:
                callback()
        await _run_stream(ws, leg, behaviour, result, clock, hangup)
    result.close_code = ws.close_code
    return result


async def _run_stream(
    ws: ClientConnection,
    leg: TwilioMediaLeg,
    plan: CallerBehaviour,
    result: StreamResult,
    clock: Callable[[], float],
    hangup: asyncio.Event | None,
) -> None:
    outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
    bridge_closed = asyncio.Event()
    wake = asyncio.Event()  # the bridge closed the socket or ``hangup`` was set: stop sleeping

    start: str | None = None  # the ``start`` message, once made
    start_sent: float | None = None  # when it was written (the vanish counts from it)

    async def writer() -> None:
        nonlocal start_sent
        while (message := await outbox.get()) is not None:
            try:
                await ws.send(message)
            except ConnectionClosed:
                return
            if message is start:
                start_sent = clock()
        with contextlib.suppress(ConnectionClosed):
            await ws.close()

    async def reader() -> None:
        on_audio = plan.on_audio
        try:
            async for message in ws:
                for reply in leg.receive(message, clock()):
                    if plan.echo_marks:
                        outbox.put_nowait(reply)
                if on_audio is not None and leg.timeline.frames_received:
                    on_audio()
                    on_audio = None
        except ConnectionClosed:
            pass
        finally:
            bridge_closed.set()
            wake.set()

    async def wake_on_hangup(event: asyncio.Event) -> None:
        await event.wait()
        wake.set()

    def hang_up(why: EndedBy) -> None:
        result.hung_up, result.ended_by = True, why
        outbox.put_nowait(leg.stop())

    async def ticker() -> None:
        """Caller audio every 20 ms, keys on time, playout and mark echoes, hang-up."""
        nonlocal start
        outbox.put_nowait(leg.connected())
        for message in plan.before_start:
            outbox.put_nowait(message)
        t0 = clock()
        result.started_at = t0
        start = leg.start()
        outbox.put_nowait(start)
        keys = sorted(plan.keys)
        raw = sorted(plan.raw, key=lambda item: item[0])
        flood = sorted(plan.flood)
        answers = list(plan.answers)
        speech = sorted(plan.speech, key=lambda item: item[0])
        talking = bytearray()  # what the caller is saying, a frame at a time
        marks_seen = 0
        frame = 0
        deadline = t0 + (plan.hangup_after if plan.hangup_after is not None else plan.max_duration)
        while not bridge_closed.is_set():
            now = clock()
            for reply in leg.advance(now):
                if plan.echo_marks:
                    outbox.put_nowait(reply)
            if hangup is not None and hangup.is_set():
                hang_up("hangup")
                return
            marks = leg.timeline.marks
            while answers and marks_seen < len(marks) and marks[marks_seen].echoed_at is not None:
                mark = marks[marks_seen]
                marks_seen += 1
                if not mark.cleared and mark.name.startswith(_INPUT_MARKS):
                    at, answer = now - t0 + 0.3, answers.pop(0)
                    if answer.startswith(SAY):
                        speech.append((at, synthesize(answer[len(SAY) :], mulaw=True)))
                        speech.sort(key=lambda item: item[0])
                    else:
                        keys.extend((at + 0.15 * i, digit) for i, digit in enumerate(answer))
                        keys.sort()
            while keys and t0 + keys[0][0] <= now:
                _, digit = keys.pop(0)
                result.keys_sent.append((now, digit))
                outbox.put_nowait(leg.dtmf(digit))
            while raw and t0 + raw[0][0] <= now:
                outbox.put_nowait(raw.pop(0)[1])
            while speech and t0 + speech[0][0] <= now:
                said = speech.pop(0)[1]
                result.speech_sent.append((now, len(said) / 8000))
                talking += said
                talking += SILENCE_FRAME[: -len(talking) % len(SILENCE_FRAME)]
            while flood and t0 + flood[0][0] <= now:
                burst = leg.media(SILENCE_FRAME, int((now - t0) * 1000))
                for _ in range(flood.pop(0)[1]):
                    outbox.put_nowait(burst)
            # counted from when ``start`` was written, not queued: on a busy machine the writer
            # may not have run yet, and aborting then would vanish before the call existed
            if (
                plan.vanish_after is not None
                and start_sent is not None
                and now >= start_sent + plan.vanish_after
            ):
                result.ended_by = "vanished"
                ws.transport.abort()  # no stop, no close frame: the TCP connection just goes
                return
            next_media = t0 + 0.020 * (frame + 1)
            if now >= next_media:
                frame += 1
                payload = SILENCE_FRAME
                if talking:
                    payload = bytes(talking[:160])
                    del talking[:160]
                outbox.put_nowait(leg.media(payload, int(frame * 20)))
                continue
            if now >= deadline:
                hang_up("hangup_after" if plan.hangup_after is not None else "max_duration")
                return
            wake_at = min(next_media, deadline)
            due = leg.next_due()
            if due is not None:
                wake_at = min(wake_at, due)
            if keys:
                wake_at = min(wake_at, t0 + keys[0][0])
            if raw:
                wake_at = min(wake_at, t0 + raw[0][0])
            if speech:
                wake_at = min(wake_at, t0 + speech[0][0])
            if flood:
                wake_at = min(wake_at, t0 + flood[0][0])
            if plan.vanish_after is not None and start_sent is not None:
                wake_at = min(wake_at, start_sent + plan.vanish_after)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - clock())):
                    await wake.wait()
        result.ended_by = "bridge"

    async with asyncio.TaskGroup() as tasks:
        write = tasks.create_task(writer())
        tasks.create_task(reader())
        watcher = tasks.create_task(wake_on_hangup(hangup)) if hangup is not None else None
        await ticker()
        if watcher is not None:
            watcher.cancel()
        result.ended_at = clock()
        for reply in leg.advance(result.ended_at):
            outbox.put_nowait(reply)
        outbox.put_nowait(None)
        await write
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await bridge_closed.wait()
