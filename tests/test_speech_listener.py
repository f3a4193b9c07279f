"""Listening windows (``CallContext.next_input``) and the per-call ``Listener``.

The caller's audio is pushed straight into the listener (its frames are its clock); Hamsa's
speech-to-text is a tiny in-test transcriber answering what the test says (``FakeHamsaStt``:
a double for Hamsa's answer, ``SttResult``'s shape). Speaking is not needed here (the barge-in
of a prompt is in ``test_speech_e2e``), so the context has no speaker.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import structlog.testing
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bridge.audio.utterances import START_WINDOW
from bridge.audio.wav import WavHeaderParser
from bridge.calls.context import CallContext, Heard, NotUnderstood
from bridge.calls.listener import EARLY_START_GRACE, Listener, detector_for
from bridge.dev.tone import synthesize
from bridge.dev.twilio_stream_client import TwilioMediaLeg
from bridge.metrics import Metrics
from bridge.protocols.twilio_stream_server import MediaReceived, Started, TwilioMediaStream
from bridge.settings import Settings
from tests.timing import HANG

pytestmark = pytest.mark.anyio

PHRASE = "المواعيد"
SILENCE = b"\xff" * 160


class Outcome(enum.Enum):
    """``SttOutcome``'s members (docs/speech-input.md)."""

    TEXT = "text"
    EMPTY = "empty"
    THINKING = "thinking"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Answer:
    """``SttResult``'s shape."""

    outcome: Outcome
    text: str = ""
    via: str | None = None
    seconds: float = 0.0


class FakeHamsaStt:
    """What Hamsa answers to each utterance: ``answer`` (or raises it), after ``delay``."""

    def __init__(self, answer: Answer | Exception, *, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.wavs: list[bytes] = []
        self.languages: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def transcribe(self, wav: bytes, *, language: str) -> Answer:
        self.wavs.append(wav)
        self.languages.append(language)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


STARTED = Started("MZ1", "CA1", "AC1", ("inbound",), {}, {})


def context(metrics: Metrics, *, listens: bool = True, **settings: Any) -> CallContext:
    ctx = CallContext(
        Settings(**settings),
        STARTED,
        None,  # type: ignore[arg-type]  # nothing is said in these tests
        asyncio.Event(),
        metrics=metrics,
    )
    ctx.listens = listens
    return ctx


@asynccontextmanager
async def listening(
    stt: FakeHamsaStt,
    *,
    listens: bool = True,
    clock: Callable[[], float] = time.monotonic,
    **settings: Any,
) -> AsyncIterator[tuple[CallContext, Listener, Metrics]]:
    metrics = Metrics()
    ctx = context(metrics, listens=listens, **settings)
    async with asyncio.TaskGroup() as tasks:
        listener = Listener(
            ctx,
            stt,
            tasks,
            detector=detector_for(ctx.settings),
            metrics=metrics,
            language="ar",
            clock=clock,
        )
        yield ctx, listener, metrics


def say(listener: Listener, phrase: str = PHRASE, *, then_silence_ms: int = 1000) -> None:
    """After 400 ms of silence the caller says ``phrase`` (tone speech), then is silent:
    pushed frame by frame."""
    for _ in range(20):
        listener.on_media(SILENCE)
    audio = synthesize(phrase, mulaw=True)
    for i in range(0, len(audio), 160):
        listener.on_media(audio[i : i + 160].ljust(160, b"\xff"))
    for _ in range(then_silence_ms // 20):
        listener.on_media(SILENCE)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"hamsa_bridge_{name}", labels) or 0.0


async def soon(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds: polled, since it is a count or a list."""
    async with asyncio.timeout(HANG):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but a value
            await asyncio.sleep(0.005)


async def test_a_key_typed_ahead_answers_at_once_even_when_listening() -> None:
    async with listening(FakeHamsaStt(Answer(Outcome.TEXT, PHRASE))) as (ctx, _, _):
        ctx.key_pressed("1")
        assert await ctx.next_input(0.0, speech=True) == "1"


async def test_a_call_that_does_not_listen_reads_keys_only() -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE))
    async with listening(stt, listens=False) as (ctx, listener, _):
        waiting = asyncio.create_task(ctx.next_input(0.3, speech=True))
        await asyncio.sleep(0)
        say(listener)
        assert await waiting is None
    assert stt.wavs == []


async def test_an_utterance_in_the_window_is_transcribed_and_heard() -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE, via="text", seconds=0.25))
    with structlog.testing.capture_logs() as logs:
        async with listening(stt) as (ctx, listener, metrics):
            waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
            await asyncio.sleep(0)
            say(listener)
            async with asyncio.timeout(HANG):
                heard = await waiting
    assert heard == Heard(PHRASE)
    assert PHRASE not in repr(heard)  # its repr never carries the transcript
    [wav] = stt.wavs
    verdict = WavHeaderParser().feed(wav)
    assert verdict is not None
    assert verdict.header is not None
    assert verdict.header.format.sample_rate == 16000
    # 640 ms of speech, 300 ms of start padding, the end silence (700 ms + webrtcvad's hangover)
    seconds = len(verdict.body) / 32000
    assert 0.64 + 0.3 + 0.7 - 0.05 <= seconds <= 0.64 + 0.3 + 0.7 + 0.15
    assert stt.languages == ["ar"]
    assert value(metrics, "stt_requests_total") == 1
    assert value(metrics, "stt_results_total", outcome="text") == 1
    assert value(metrics, "speech_utterances_total", end="silence") == 1
    assert value(metrics, "stt_seconds_count") == 1
    assert value(metrics, "stt_seconds_sum") == pytest.approx(0.25)
    assert value(metrics, "stt_bridge_latency_seconds_count") == 1
    # the transcript is logged at debug level only
    for line in logs:
        if line["log_level"] != "debug":
            assert PHRASE not in repr(line), line
    assert [line["text"] for line in logs if line["event"] == "stt_transcript"] == [PHRASE]


@pytest.mark.parametrize("outcome", [Outcome.EMPTY, Outcome.THINKING, Outcome.ERROR])
async def test_hamsas_failures_are_not_understood_with_their_reason(outcome: Outcome) -> None:
    async with listening(FakeHamsaStt(Answer(outcome))) as (ctx, listener, metrics):
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener)
        async with asyncio.timeout(HANG):
            assert await waiting == NotUnderstood(outcome.value)
    assert value(metrics, "stt_results_total", outcome=outcome.value) == 1


async def test_a_transcriber_that_raises_is_an_error_and_the_call_goes_on() -> None:
    stt = FakeHamsaStt(RuntimeError("socket gone"))
    async with listening(stt) as (ctx, listener, metrics):
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener)
        async with asyncio.timeout(HANG):
            assert await waiting == NotUnderstood("error")
        # still listening: the next window hears the next utterance
        stt.answer = Answer(Outcome.TEXT, "نعم")
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener, "نعم")
        async with asyncio.timeout(HANG):
            assert await waiting == Heard("نعم")
    assert value(metrics, "stt_results_total", outcome="error") == 1


async def test_speech_outside_a_window_is_never_sent() -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE))
    async with listening(stt) as (ctx, listener, metrics):
        say(listener)  # nobody listens: between inputs
        assert await ctx.next_input(0.2, speech=True) is None  # silence in the window
        say(listener)  # the window is closed again
        await asyncio.sleep(0.05)
    assert stt.wavs == []
    assert value(metrics, "speech_utterances_total", end="silence") == 2
    assert value(metrics, "stt_requests_total") == 0


async def test_a_key_pressed_while_the_transcript_is_pending_wins_and_the_transcript_is_stale() -> (
    None
):
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE), delay=0.3)
    async with listening(stt) as (ctx, listener, metrics):
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener)
        await soon(lambda: bool(stt.wavs))  # Hamsa is working on it
        ctx.key_pressed("2")
        async with asyncio.timeout(HANG):
            assert await waiting == "2"
        await soon(lambda: value(metrics, "stt_results_total", outcome="stale") == 1)
    assert value(metrics, "stt_results_total", outcome="text") == 0


async def test_a_key_pressed_while_the_caller_still_speaks_wins_and_nothing_is_sent() -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE))
    async with listening(stt) as (ctx, listener, metrics):
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener, then_silence_ms=0)  # started, not ended
        ctx.key_pressed("3")
        async with asyncio.timeout(HANG):
            assert await waiting == "3"
        for _ in range(50):
            listener.on_media(SILENCE)  # it ends now, after its window closed
        await soon(lambda: value(metrics, "stt_results_total", outcome="stale") == 1)
    assert stt.wavs == []  # never sent: its window was over before it ended


async def test_the_wait_for_a_transcript_is_bounded() -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE), delay=1.0)
    async with listening(stt) as (ctx, listener, metrics):
        ctx.transcript_wait = 0.2
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener)
        async with asyncio.timeout(HANG):
            assert await waiting == NotUnderstood("timeout")
    assert value(metrics, "stt_results_total", outcome="stale") == 1


def test_the_transcript_wait_is_the_longest_utterance_and_hamsas_timeout_and_a_second() -> None:
    ctx = context(Metrics(), bridge_speech_max_seconds=10)
    assert ctx.transcript_wait == 10 + 6 + 1


async def test_one_transcription_at_a_time_and_old_windows_are_stale() -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE), delay=0.2)
    async with listening(stt) as (ctx, listener, metrics):
        # window 1: sent, then closed by a key while Hamsa works on it
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener)
        await soon(lambda: len(stt.wavs) == 1)
        ctx.key_pressed("1")
        assert await waiting == "1"
        # window 2: its utterance waits for the first's answer; closed by a key meanwhile
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener)
        ctx.key_pressed("2")
        assert await waiting == "2"
        # window 3: waits its turn too, and is heard
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        say(listener)
        async with asyncio.timeout(HANG):
            assert await waiting == Heard(PHRASE)
    assert stt.most_in_flight == 1
    # the first was sent and came back stale; the second's window was over before its turn
    # came (not sent)
    assert len(stt.wavs) == 2
    assert value(metrics, "stt_results_total", outcome="stale") == 2
    assert value(metrics, "stt_results_total", outcome="text") == 1


def test_record_match_counts_the_result_and_refuses_anything_else() -> None:
    metrics = Metrics()
    ctx = context(metrics)
    ctx.record_match("matched")
    ctx.record_match("digits")
    assert value(metrics, "speech_matches_total", result="matched") == 1
    assert value(metrics, "speech_matches_total", result="digits") == 1
    with pytest.raises(ValueError, match="unknown"):
        ctx.record_match(PHRASE)


async def test_closing_the_listener_cancels_the_transcriptions_still_pending() -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE), delay=HANG)
    async with asyncio.timeout(HANG / 2):  # the task group does not wait for Hamsa
        async with listening(stt) as (ctx, listener, metrics):
            waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
            await asyncio.sleep(0)
            say(listener)
            await soon(lambda: bool(stt.wavs))
            waiting.cancel()  # the caller hung up: the script is cancelled
            listener.close()
    assert value(metrics, "stt_results_total", outcome="text") == 0


# --- fuzzed inbound media: Twilio's parser, then the listener, as ``Call._on_events`` does

_SIDS = ("MZ" + "0" * 32, "CA" + "0" * 32, "AC" + "0" * 32)


def _media(payload: object) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": "3",
            "streamSid": _SIDS[0],
            "media": {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": payload},
        }
    )


_PAYLOADS = st.one_of(
    st.binary(max_size=2000).map(lambda data: base64.b64encode(data).decode()),  # any bytes
    st.binary(min_size=160, max_size=160).map(lambda data: base64.b64encode(data).decode()),
    st.text(max_size=200),  # not base64, not ASCII, empty
    st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=3)),  # not a string
)
_MESSAGES = st.lists(
    st.one_of(
        # a payload held for a run of frames (random bytes are loud: long enough, an utterance)
        st.tuples(_PAYLOADS.map(_media), st.integers(min_value=1, max_value=40)),
        st.tuples(st.one_of(st.text(max_size=100), st.binary(max_size=100)), st.just(1)),
    ),
    max_size=25,
).map(lambda runs: [message for message, times in runs for _ in range(times)])


async def _fuzzed_call(messages: list[str | bytes]) -> None:
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE))
    async with listening(stt) as (ctx, listener, _):
        settings = ctx.settings
        held_at_most = 320 * (
            settings.bridge_speech_start_pad_ms // 20
            + round(settings.bridge_speech_max_seconds * 50)
            + START_WINDOW
        )
        stream = TwilioMediaStream(inbound_audio=True)
        leg = TwilioMediaLeg(*_SIDS)
        for text in (leg.connected(), leg.start()):
            stream.receive(text)
        waiting = asyncio.create_task(ctx.next_input(HANG, speech=True))
        await asyncio.sleep(0)
        for message in [*messages, *[_media(base64.b64encode(SILENCE).decode())] * 100]:
            for event in stream.receive(message):
                if isinstance(event, MediaReceived):
                    listener.on_media(event.payload)
            assert listener.detector.held_bytes <= held_at_most
        assert not listener.detector.speaking  # 2 s of silence ended whatever was said
        ctx.key_pressed("5")
        async with asyncio.timeout(HANG):
            got = await waiting
        if got != "5":  # an utterance was heard first: the key is still there for the next
            assert got == Heard(PHRASE)
            assert await ctx.next_input(0.0, speech=True) == "5"
        assert len(stt.wavs) <= 1  # one window: at most one utterance sent


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_MESSAGES)
def test_fuzzed_inbound_media_never_breaks_the_listener(messages: list[str | bytes]) -> None:
    """Any payload (bytes of any length, not base64, not a string) and any message, through
    ``TwilioMediaStream(inbound_audio=True)`` into a listening call's ``Listener``: nothing
    raises, the audio held stays bounded, and the call still takes its next input."""
    asyncio.run(_fuzzed_call(messages))


def begin(listener: Listener, phrase: str = PHRASE) -> bytes:
    """The caller starts ``phrase`` (the utterance begins) and is still speaking; the rest of
    the phrase is returned, to be pushed later."""
    for _ in range(20):
        listener.on_media(SILENCE)
    audio = synthesize(phrase, mulaw=True)
    half = len(audio) // 2 // 160 * 160
    for i in range(0, half, 160):
        listener.on_media(audio[i : i + 160])
    return audio[half:]


def finish(listener: Listener, rest: bytes) -> None:
    for i in range(0, len(rest), 160):
        listener.on_media(rest[i : i + 160].ljust(160, b"\xff"))
    for _ in range(50):
        listener.on_media(SILENCE)


@pytest.mark.parametrize(
    ("began_before", "taken"),
    [(0.3, True), (EARLY_START_GRACE, True), (EARLY_START_GRACE + 0.5, False)],
)
async def test_an_utterance_begun_just_before_the_node_listens_answers_it(
    began_before: float, taken: bool
) -> None:
    # A caller who starts answering as the prompt's last words play: the utterance began before
    # the window opened. Within EARLY_START_GRACE it is the answer; begun earlier (well inside
    # the prompt: talk over it, its echo) it is not, and the node hears nothing.
    now = [100.0]
    stt = FakeHamsaStt(Answer(Outcome.TEXT, PHRASE))
    async with listening(stt, clock=lambda: now[0]) as (ctx, listener, metrics):
        rest = begin(listener)
        assert ctx.window == 0  # nobody listened when it began
        assert not stt.wavs
        now[0] += began_before
        waiting = asyncio.create_task(ctx.next_input(0.5 if not taken else HANG, speech=True))
        await asyncio.sleep(0)
        finish(listener, rest)
        async with asyncio.timeout(HANG):
            got = await waiting
    if taken:
        assert got == Heard(PHRASE)
        assert len(stt.wavs) == 1
    else:
        assert got is None
        assert stt.wavs == []
