"""Issue 7's fault matrix, Hamsa side: every failure Hamsa can throw at a call, injected through the
Hamsa emulator over real sockets (loopback: simulated Twilio caller ↔ bridge ↔ emulator).

For each fault the test checks three things:

- what the caller heard: either the complete speech (exactly the bytes the emulator sent in its
  one complete reply, cut into 160-byte frames, the last padded with 0xFF) or the bridge's defined
  fallback (silence: the part is skipped, the call goes on and ends). Never a byte of a truncated,
  failed or abandoned reply beyond what its resumed retry replaces, never a sentence twice;
- that the call ended with a recorded reason (the ``call_summary`` log line, the
  ``hamsa_bridge_calls_total{outcome}`` series, the stream's close code);
- that the counters moved (``hamsa_errors_total{kind}``, truncated replies, retries, reconnects).

Then 100 faulty calls, every fault in turn, and nothing left behind (``tests.leaks``).

The README table "Fault matrix: Hamsa" is this file in prose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from bridge.calls.context import CallContext, CallScript
from bridge.dev import tone
from bridge.dev.caller import CallResult, new_sid
from bridge.dev.hamsa_emulator import TRUNCATED_BYTES, EmulatorConfig, Fault, RequestRecord
from bridge.dev.loopback import Loopback, loopback
from bridge.logs import configure_logging
from tests.leaks import Holdings, settle
from tests.timing import LATE, assert_gapless, stall_watch

pytestmark = pytest.mark.anyio

MS_PER_CHAR = 30.0
"""The emulator's speech rate here: a 20-character sentence is 600 ms of audio (fast tests)."""
TEXT = "مرحبا بك في خدمة همسة."
"""One sentence (one Hamsa request): 22 characters, 660 ms, several binary frames."""
SECOND = "شكرا لاتصالك بنا اليوم."
FAST: dict[str, Any] = {
    "hamsa_retry_delays": (0.05, 0.05, 0.05),
    "hamsa_first_byte_timeout": 5.0,
    "hamsa_chunk_timeout": 5.0,
    "hamsa_connect_timeout": 5.0,
    "hamsa_drain_timeout": 0.2,
}
"""Bridge settings on the tests' time scale (production: 1/2/4 s retries, 10 s timeouts). The
timeouts stay near production's where the fault is not a timeout: on a busy machine (fifty calls
in this one process, a hundred concurrent handshakes) even Hamsa's closing answer can take over
half a second, and a timeout would then race the fault under test (the bridge retries after a
timeout: the caller would hear a later reply)."""
TIMEOUTS: dict[str, Any] = {"hamsa_first_byte_timeout": 0.5, "hamsa_chunk_timeout": 0.5}
"""The timeouts on the tests' time scale, where the fault is one: a first byte after 1 or 2 s,
an end that never comes, far past them whatever the machine's speed."""
WAIT = 10.0
"""Upper bound of any wait on an event in this file."""
_LETTERS = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"


def emulator(**fields: Any) -> EmulatorConfig:
    return EmulatorConfig(ms_per_char=MS_PER_CHAR, **fields)


def padded(audio: bytes) -> bytes:
    """Audio as the caller receives it: whole 160-byte frames, the last padded with 0xFF."""
    return audio + b"\xff" * (-len(audio) % 160)


def speech(text: str) -> bytes:
    """What the emulator synthesises for ``text`` (an oracle independent of its records)."""
    return tone.synthesize(text, mulaw=True, ms_per_char=MS_PER_CHAR)


def text_for(i: int) -> str:
    """A distinct sentence per call (distinct audio: a call can only hear its own replies)."""
    return f"مرحبا {_LETTERS[i % 28]}{_LETTERS[i // 28 % 28]} في همسة."


def scrape(rig: Loopback) -> dict[str, float]:
    """The bridge's metrics as ``name{label="v"}`` → value (what ``GET /metrics`` serves)."""
    samples: dict[str, float] = {}
    exposition = rig.bridge.metrics.exposition().decode()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def errors(m: dict[str, float]) -> dict[str, float]:
    """``hamsa_errors_total`` by kind, zeros left out."""
    prefix = 'hamsa_bridge_hamsa_errors_total{kind="'
    return {k[len(prefix) : -2]: v for k, v in m.items() if k.startswith(prefix) and v}


def outcomes(m: dict[str, float]) -> dict[str, float]:
    prefix = 'hamsa_bridge_calls_total{outcome="'
    return {k[len(prefix) : -2]: v for k, v in m.items() if k.startswith(prefix) and v}


class LogTap(logging.Handler):
    """Every structlog event of this process (with its bound ``call_sid``), as dicts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            self.events.append(dict(record.msg))
            if threading.get_ident() == self._thread:
                self._notify()
            else:
                self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def named(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """The first ``event`` with these fields, once logged (bound it with a timeout)."""
        while not (found := self.named(event, **fields)):
            await self._changed.wait()
        return found[0]

    def summary(self, call_sid: str | None = None) -> dict[str, Any]:
        """The one ``call_summary`` line (of ``call_sid``)."""
        fields = {} if call_sid is None else {"call_sid": call_sid}
        [line] = self.named("call_summary", **fields)
        return line


class _Discard(io.StringIO):
    """A stream that keeps nothing (and holds no file descriptor)."""

    def write(self, text: str) -> int:
        return len(text)


@contextlib.contextmanager
def log_tap() -> Iterator[LogTap]:
    if not isinstance(structlog.get_config()["logger_factory"], structlog.stdlib.LoggerFactory):
        # The suite's log audit routes structlog through stdlib logging; without it
        # (BRIDGE_TEST_NO_LOG_AUDIT=1) do what the entry point does, output discarded.
        configure_logging(level="info", fmt="json", stream=_Discard())
    tap = LogTap()
    root = logging.getLogger()
    root.addHandler(tap)
    try:
        yield tap
    finally:
        root.removeHandler(tap)


@contextlib.asynccontextmanager
async def rig_for(
    config: EmulatorConfig, *, script: CallScript | None = None, **settings: Any
) -> AsyncIterator[tuple[Loopback, LogTap]]:
    options: dict[str, Any] = {**FAST, **settings}
    if script is not None:
        options["script"] = script
    with log_tap() as tap:
        async with loopback(config, **options) as rig:
            yield rig, tap


async def ended(rig: Loopback) -> dict[str, float]:
    """Wait until the bridge has closed every stream (and counted it); its metrics."""
    async with asyncio.timeout(WAIT):
        await rig.bridge.streams.wait_empty()
    return scrape(rig)


def complete(rig: Loopback, text: str) -> list[RequestRecord]:
    """The emulator's requests for ``text`` that got a complete reply (ended, no fault)."""
    return [
        r for r in rig.hamsa.requests if r.text == text and r.fault is None and r.end_at is not None
    ]


def assert_frames_clean(result: CallResult) -> None:
    """Every Twilio message well formed, every media payload 160 bytes of this stream."""
    leg = result.leg
    assert leg is not None
    assert leg.warnings == []
    assert leg.timeline.frames_received * 160 == len(leg.received)


def assert_heard_whole(result: CallResult, rig: Loopback, text: str) -> RequestRecord:
    """The caller heard exactly the one complete reply for ``text``; returns that reply."""
    [reply] = complete(rig, text)
    assert reply.audio == speech(text)
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(reply.audio)
    assert bytes(result.leg.played) == padded(reply.audio)
    assert [m.cleared for m in result.leg.timeline.marks] == [False]
    return reply


def speak_per_call(texts: dict[str, str]) -> CallScript:
    """A script saying the text chosen for each CallSid (outcome as ``greeting_script``)."""

    async def script(ctx: CallContext) -> None:
        outcome = await ctx.say(texts[ctx.call_sid])
        ctx.outcome = "completed"
        ctx.reason = f"speech {outcome.value}"

    return script


# --- 640-byte replies on 30 % of requests ---------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_640_byte_replies_on_30_percent_of_requests_are_never_heard(seed: int) -> None:
    calls = 8
    sids = [new_sid("CA") for _ in range(calls)]
    texts = {sid: text_for(i + 10 * seed) for i, sid in enumerate(sids)}
    many = {**FAST, "hamsa_retry_delays": (0.05,) * 6}  # 0.3**7: giving up is not expected
    config = emulator(truncate_rate=0.3, seed=seed)
    async with rig_for(config, script=speak_per_call(texts), **many) as (rig, tap):
        results = await asyncio.gather(*(rig.call(call_sid=sid) for sid in sids))
        m = await ended(rig)
        requests = list(rig.hamsa.requests)
        for sid, result in zip(sids, results, strict=True):
            assert_frames_clean(result)
            assert result.close_code == 1000
            assert_heard_whole(result, rig, texts[sid])
            assert tap.summary(sid)["outcome"] == "completed"
            assert tap.summary(sid)["reason"] == "speech played"

    truncated = [r for r in requests if r.fault is Fault.TRUNCATE_640]
    assert 0.15 * len(requests) <= len(truncated) <= 0.5 * len(requests)
    assert all(r.audio == speech(r.text or "")[:TRUNCATED_BYTES] for r in truncated)
    assert len(requests) == calls + len(truncated)  # each truncated reply retried once
    assert m["hamsa_bridge_hamsa_requests_total"] == len(requests)
    assert m["hamsa_bridge_hamsa_truncated_replies_total"] == len(truncated)
    assert m["hamsa_bridge_hamsa_retries_total"] == len(truncated)
    assert m["hamsa_bridge_hamsa_reconnects_total"] == len(truncated)  # retried on a new socket
    assert errors(m) == {"truncated": len(truncated)}
    assert outcomes(m) == {"completed": calls}
    assert len(tap.named("hamsa_reply_truncated", played_bytes=0)) == len(truncated)
    assert tap.named("hamsa_gave_up") == []


async def test_640_byte_reply_every_time_gives_up_in_silence_and_ends_the_call() -> None:
    config = emulator(truncate_rate=1.0)
    async with rig_for(config, bridge_greeting=TEXT) as (rig, tap):
        result = await rig.call()
        m = await ended(rig)
        requests = list(rig.hamsa.requests)
    assert_frames_clean(result)
    assert result.leg is not None
    assert result.leg.received == b""  # the fallback: silence, never a truncated reply
    assert result.close_code == 1000
    assert [r.fault for r in requests] == [Fault.TRUNCATE_640] * 4  # the try and 3 retries
    assert errors(m) == {"truncated": 4}
    assert m["hamsa_bridge_hamsa_retries_total"] == 3
    assert outcomes(m) == {"completed": 1}
    assert tap.summary()["reason"] == "greeting partial"
    [gave_up] = tap.named("hamsa_gave_up")
    assert gave_up["attempts"] == 4
    assert gave_up["played_bytes"] == 0


# --- error frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault.ERROR, Fault.ERROR_THEN_END])
async def test_error_frame_is_retried_at_once_on_a_new_socket_and_heard_whole(
    fault: Fault,
) -> None:
    async with rig_for(emulator(faults={1: fault}), bridge_greeting=TEXT) as (rig, tap):
        result = await rig.call()
        m = await ended(rig)
        requests = list(rig.hamsa.requests)
        assert_frames_clean(result)
        reply = assert_heard_whole(result, rig, TEXT)
    assert result.close_code == 1000
    assert requests[0].error == "TTS stream error: aborted"
    assert requests[0].audio == b""
    assert reply.connection_id == 2  # the socket is not trusted after an error frame
    assert errors(m) == {"reply": 1}
    assert m["hamsa_bridge_hamsa_retries_total"] == 1
    assert m["hamsa_bridge_hamsa_reconnects_total"] == 1
    assert outcomes(m) == {"completed": 1}
    [failed] = tap.named("hamsa_reply_failed")
    assert "aborted" in failed["error"]
    assert failed["played_bytes"] == 0
    assert tap.summary()["reason"] == "greeting played"


async def test_error_frames_on_every_request_give_up_in_silence() -> None:
    faults = dict.fromkeys(range(1, 20), Fault.ERROR)
    async with rig_for(emulator(faults=faults), bridge_greeting=TEXT) as (rig, tap):
        result = await rig.call()
        m = await ended(rig)
        requests = len(rig.hamsa.requests)
    assert result.leg is not None
    assert result.leg.received == b""
    assert result.close_code == 1000
    # the first try, the at-once resend (the socket may just have dropped), 3 delayed retries
    assert requests == 5
    assert errors(m) == {"reply": 5}
    assert m["hamsa_bridge_hamsa_retries_total"] == 4
    assert outcomes(m) == {"completed": 1}
    assert tap.summary()["reason"] == "greeting partial"
    assert len(tap.named("hamsa_gave_up")) == 1


# --- socket closed mid-reply ---------------------------------------------------------------------


async def test_socket_closed_mid_reply_resumes_on_a_new_socket_heard_once_whole() -> None:
    async with (
        rig_for(emulator(faults={1: Fault.CLOSE_MID_REPLY}), bridge_greeting=TEXT) as (rig, tap),
        stall_watch() as watch,
    ):
        result = await rig.call()
        m = await ended(rig)
        requests = list(rig.hamsa.requests)
        connections = list(rig.hamsa.connections)
        assert_frames_clean(result)
        reply = assert_heard_whole(result, rig, TEXT)
    cut = requests[0]
    assert 0 < len(cut.audio) < len(reply.audio)
    assert reply.audio.startswith(cut.audio)
    assert connections[0].close_code == 1011
    assert reply.connection_id == 2
    assert_gapless(result, watch, allowed=1)  # at most one pause, where the failure was
    assert errors(m) == {"reply": 1}
    assert m["hamsa_bridge_hamsa_retries_total"] == 1
    assert m["hamsa_bridge_hamsa_reconnects_total"] == 1
    assert outcomes(m) == {"completed": 1}
    [failed] = tap.named("hamsa_reply_failed")
    assert "1011" in failed["error"]
    played = failed["played_bytes"]
    assert 0 < played <= len(cut.audio)  # part of it had been played ...
    [resumed] = tap.named("hamsa_reply_resumed")
    assert resumed["skipped_bytes"] == played  # ... and was not played again
    assert tap.summary()["reason"] == "greeting played"


# --- close codes 4001 and 4003 -------------------------------------------------------------------


AUTH_CLOSES: dict[str, tuple[EmulatorConfig, dict[str, Any], int]] = {
    "4001_at_request": (emulator(faults={1: Fault.CLOSE_4001}), {}, 4001),
    "4003_at_request": (emulator(faults={1: Fault.CLOSE_4003}), {}, 4003),
    "4001_at_connect": (emulator(), {"hamsa_api_key": "wrong-key-for-4001"}, 4001),
    "4003_at_connect": (emulator(balance_ok=False), {}, 4003),
}
MEANINGS = {4001: "invalid or missing API key", 4003: "insufficient balance"}


@pytest.mark.parametrize("case", AUTH_CLOSES)
async def test_auth_close_codes_are_final_silence_and_a_failed_call(case: str) -> None:
    config, settings, code = AUTH_CLOSES[case]
    async with rig_for(config, bridge_greeting=TEXT, **settings) as (rig, tap):
        result = await rig.call()
        m = await ended(rig)
        connections = list(rig.hamsa.connections)
        requests = list(rig.hamsa.requests)
    assert result.leg is not None
    assert result.leg.received == b""
    assert result.close_code == 1000
    assert result.ended_by == "bridge"
    assert len(requests) == (1 if case.endswith("request") else 0)  # never retried ...
    assert len(connections) == 1  # ... nor reconnected
    assert connections[0].close_code == code
    assert errors(m) == {"auth": 1}
    assert m["hamsa_bridge_hamsa_retries_total"] == 0
    assert outcomes(m) == {"failed": 1}
    summary = tap.summary()
    assert summary["outcome"] == "failed"
    assert f"Hamsa closed with {code}: {MEANINGS[code]}" in summary["reason"]
    [failed] = tap.named("call_failed")
    assert failed["retryable"] is False


async def test_4003_mid_greeting_lets_the_sentence_already_heard_finish() -> None:
    greeting = f"{TEXT} {SECOND}"
    config = emulator(faults={2: Fault.CLOSE_4003})
    async with rig_for(config, bridge_greeting=greeting, bridge_min_sentence_chars=10) as (
        rig,
        tap,
    ):
        result = await rig.call()
        m = await ended(rig)
        first, second = rig.hamsa.requests
    assert first.text == TEXT
    assert second.text == SECOND
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(first.audio)  # sentence 1 whole, nothing of 2
    assert first.audio == speech(TEXT)
    assert [mk.cleared for mk in result.leg.timeline.marks] == [False]
    assert result.close_code == 1000
    assert errors(m) == {"auth": 1}
    assert outcomes(m) == {"failed": 1}
    assert "4003" in tap.summary()["reason"]


# --- connection refused --------------------------------------------------------------------------


async def test_refused_upgrades_are_retried_with_backoff_then_speech_is_whole() -> None:
    async with rig_for(emulator(refuse_connections=2), bridge_greeting=TEXT) as (rig, tap):
        result = await rig.call()
        m = await ended(rig)
        refused = [c.refused_status for c in rig.hamsa.connections]
        assert_heard_whole(result, rig, TEXT)
    assert refused == [503, 503, None]
    assert len(tap.named("hamsa_connect_failed")) == 2
    assert m["hamsa_bridge_hamsa_connections_total"] == 1
    assert errors(m) == {}  # the call's connect succeeded within its attempts
    assert outcomes(m) == {"completed": 1}
    assert tap.summary()["reason"] == "greeting played"


@pytest.mark.parametrize("refusal", ["http_503", "tcp"])
async def test_hamsa_unreachable_gives_up_in_silence_and_ends_the_call(refusal: str) -> None:
    settings: dict[str, Any] = {"hamsa_connect_attempts": 2, "bridge_greeting": TEXT}
    with contextlib.ExitStack() as stack:
        if refusal == "tcp":
            # bound, never listening: every connect gets ECONNREFUSED
            hole = stack.enter_context(socket.socket())
            hole.bind(("127.0.0.1", 0))
            settings["hamsa_ws_url"] = f"ws://127.0.0.1:{hole.getsockname()[1]}/v1/realtime/ws"
        async with rig_for(emulator(refuse_connections=10**6), **settings) as (rig, tap):
            result = await rig.call()
            m = await ended(rig)
    assert result.leg is not None
    assert result.leg.received == b""
    assert result.close_code == 1000
    # each of the segment's 4 tries makes 2 connect attempts, the early open 2 more
    assert len(tap.named("hamsa_connect_failed")) == 10
    assert m["hamsa_bridge_hamsa_connections_total"] == 0
    assert errors(m) == {"connect": 4}
    assert m["hamsa_bridge_hamsa_retries_total"] == 3
    assert outcomes(m) == {"completed": 1}
    assert tap.summary()["reason"] == "greeting partial"
    assert len(tap.named("hamsa_gave_up")) == 1


# --- first byte later than the timeout -----------------------------------------------------------


async def test_first_byte_after_the_timeout_is_abandoned_and_retried_whole() -> None:
    config = emulator(faults={1: Fault.SLOW_FIRST_BYTE}, slow_first_byte_delay=2.0)
    async with rig_for(config, bridge_greeting=TEXT, **TIMEOUTS) as (rig, tap):
        result = await rig.call()
        m = await ended(rig)
        requests = list(rig.hamsa.requests)
        assert_frames_clean(result)
        reply = assert_heard_whole(result, rig, TEXT)
        # the slow reply's socket was closed by the bridge before its audio came
        async with asyncio.timeout(WAIT):
            await rig.hamsa.wait_until(lambda s: s.connections[0].closed_at is not None)
        slow_connection = rig.hamsa.connections[0]
    assert requests[0].fault is Fault.SLOW_FIRST_BYTE
    assert requests[0].audio == b""
    assert slow_connection.closed_by == "client"
    assert reply.connection_id == 2
    assert errors(m) == {"timeout": 1}
    assert m["hamsa_bridge_hamsa_retries_total"] == 1
    assert m["hamsa_bridge_hamsa_reconnects_total"] == 1
    assert outcomes(m) == {"completed": 1}
    [failed] = tap.named("hamsa_reply_failed")
    assert "no first audio byte from Hamsa within 0.5 s" in failed["error"]
    assert tap.summary()["reason"] == "greeting played"


# --- idle close between utterances ---------------------------------------------------------------


async def test_idle_close_between_utterances_reconnects_and_both_are_heard_whole() -> None:
    box: dict[str, LogTap] = {}

    async def two_utterances(ctx: CallContext) -> None:
        first = await ctx.say(TEXT)
        # Hamsa closes the idle socket; the bridge has seen it (logged) before it speaks again
        await box["tap"].wait_for("hamsa_closed", call_sid=ctx.call_sid, code=1000)
        second = await ctx.say(SECOND)
        ctx.outcome, ctx.reason = "completed", f"{first.value}, {second.value}"

    config = emulator(idle_close_after=0.3)
    async with rig_for(config, script=two_utterances) as (rig, tap):
        box["tap"] = tap
        result = await rig.call()
        m = await ended(rig)
        connections = list(rig.hamsa.connections)
        [one] = complete(rig, TEXT)
        [two] = complete(rig, SECOND)
    assert_frames_clean(result)
    assert result.leg is not None
    assert bytes(result.leg.received) == padded(one.audio) + padded(two.audio)
    assert one.audio == speech(TEXT)
    assert two.audio == speech(SECOND)
    assert [mk.cleared for mk in result.leg.timeline.marks] == [False, False]
    assert (one.connection_id, two.connection_id) == (1, 2)
    assert connections[0].close_code == 1000
    assert connections[0].close_reason == "Connection closed due to inactivity"
    assert connections[0].closed_by == "server"
    assert errors(m) == {}  # a socket found closed is replaced: not an error, not a retry
    assert m["hamsa_bridge_hamsa_retries_total"] == 0
    assert m["hamsa_bridge_hamsa_reconnects_total"] == 1
    assert outcomes(m) == {"completed": 1}
    assert tap.summary()["reason"] == "played, played"


# --- a reply that never ends ---------------------------------------------------------------------


async def test_reply_without_end_times_out_resumes_and_is_heard_once_whole() -> None:
    async with (
        rig_for(emulator(faults={1: Fault.NEVER_END}), bridge_greeting=TEXT, **TIMEOUTS) as (
            rig,
            tap,
        ),
        stall_watch() as watch,
    ):
        result = await rig.call()
        m = await ended(rig)
        requests = list(rig.hamsa.requests)
        assert_frames_clean(result)
        reply = assert_heard_whole(result, rig, TEXT)
    wedged = requests[0]
    assert wedged.fault is Fault.NEVER_END
    assert wedged.end_at is None
    assert wedged.audio == reply.audio  # all of it came, then no end: every byte heard once
    assert reply.connection_id == 2
    assert_gapless(result, watch, allowed=1)
    assert errors(m) == {"timeout": 1}
    assert m["hamsa_bridge_hamsa_retries_total"] == 1
    assert m["hamsa_bridge_hamsa_reconnects_total"] == 1
    assert outcomes(m) == {"completed": 1}
    [failed] = tap.named("hamsa_reply_failed")
    assert "no next audio chunk or end from Hamsa within 0.5 s" in failed["error"]
    [resumed] = tap.named("hamsa_reply_resumed")
    assert resumed["skipped_bytes"] == failed["played_bytes"] > 0
    assert tap.summary()["reason"] == "greeting played"


ENDLESS_BUDGET = 1.5
ENDLESS_LIMIT = ENDLESS_BUDGET + len(TEXT) * 0.08
"""A reply may stream for the segment budget plus its text spoken at real time (80 ms/char)."""


async def test_reply_streaming_forever_is_cut_at_the_segment_budget_and_the_call_ends() -> None:
    config = emulator(faults={1: Fault.ENDLESS})
    settings: dict[str, Any] = {"bridge_greeting": TEXT, "hamsa_segment_budget": ENDLESS_BUDGET}
    async with rig_for(config, **settings) as (rig, tap):
        # the caller would hang up after 6 s: the bridge must end the call before
        result = await rig.call(max_duration=6.0)
        m = await ended(rig)
        endless = rig.hamsa.requests[0]
    assert result.leg is not None
    heard = bytes(result.leg.received)
    assert result.ended_by == "bridge"
    assert result.close_code == 1000
    # what was heard is the reply as Hamsa streamed it (no garbage), and no more than it
    # streamed within the budget: its first pass (sent at once), then the budget's worth at
    # real time until the limit (plus the playback lead and the padded last frame)
    assert heard.rstrip(b"\xff") == endless.audio[: len(heard.rstrip(b"\xff"))]
    assert len(heard) <= len(speech(TEXT)) + (ENDLESS_LIMIT + 0.3) * 8000 + 160
    assert errors(m) == {"timeout": 1}
    assert outcomes(m) == {"completed": 1}
    assert tap.summary()["reason"] == "greeting partial"
    assert len(tap.named("hamsa_gave_up")) == 1


# --- 100 faulty calls: nothing left behind -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Batch:
    """Calls that all meet one fault: the emulator config, what each caller does, what it may
    hear."""

    name: str
    calls: int
    config: Callable[[int], EmulatorConfig]
    """From the number of calls (faults are keyed by request number)."""
    heard: Callable[[Loopback, str], set[bytes]]
    """The acceptable received audio of the call speaking ``text``."""
    outcome: str = "completed"
    """Every call's recorded outcome."""
    counted: Callable[[dict[str, float], int], bool] = lambda _m, _calls: True
    """The bridge's metrics show the fault was met (from the metrics and the number of calls)."""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)
    two_utterances: bool = False


def first_requests(fault: Fault) -> Callable[[int], EmulatorConfig]:
    """Every call's first request meets ``fault`` (and some retries, in a race: either is fine)."""
    return lambda calls: emulator(faults=dict.fromkeys(range(1, calls + 1), fault))


def whole_or_silence(rig: Loopback, text: str) -> set[bytes]:
    return {padded(r.audio) for r in complete(rig, text)} | {b""}


def silence(_rig: Loopback, _text: str) -> set[bytes]:
    return {b""}


def whole_twice(rig: Loopback, text: str) -> set[bytes]:
    [one] = complete(rig, text)
    [two] = complete(rig, "شكرا " + text)
    return {padded(one.audio) + padded(two.audio)}


def endless_prefix(rig: Loopback, text: str) -> set[bytes]:
    """The caller hung up during the endless reply: any frame-aligned part of what it streamed
    (nothing, if the hang-up came before the request reached Hamsa: which comes first is the
    machine's speed, not the bridge's choice)."""
    replies = [r for r in rig.hamsa.requests if r.text == text]
    assert len(replies) <= 1
    audio = replies[0].audio if replies else b""
    return {padded(audio[:n]) for n in range(0, len(audio) + 160, 160)}


def kind_per_call(kind: str) -> Callable[[dict[str, float], int], bool]:
    return lambda m, calls: errors(m).get(kind, 0) >= calls


BATCHES = [
    Batch(
        "truncate_30",
        10,
        lambda _: emulator(truncate_rate=0.3, seed=7),
        whole_or_silence,
        counted=lambda m, _: m["hamsa_bridge_hamsa_truncated_replies_total"] >= 1,
        settings={"hamsa_retry_delays": (0.05,) * 6},
    ),
    Batch(
        "error", 9, first_requests(Fault.ERROR), whole_or_silence, counted=kind_per_call("reply")
    ),
    Batch(
        "error_then_end",
        9,
        first_requests(Fault.ERROR_THEN_END),
        whole_or_silence,
        counted=kind_per_call("reply"),
    ),
    Batch(
        "close_mid_reply",
        9,
        first_requests(Fault.CLOSE_MID_REPLY),
        whole_or_silence,
        counted=kind_per_call("reply"),
    ),
    Batch(
        "close_4001",
        9,
        first_requests(Fault.CLOSE_4001),
        silence,
        outcome="failed",
        counted=kind_per_call("auth"),
    ),
    Batch(
        "close_4003",
        9,
        first_requests(Fault.CLOSE_4003),
        silence,
        outcome="failed",
        counted=kind_per_call("auth"),
    ),
    Batch(
        "refused",
        9,
        lambda calls: emulator(refuse_connections=calls),
        whole_or_silence,
        counted=lambda m, calls: m["hamsa_bridge_hamsa_connections_total"] >= 1,
    ),
    Batch(
        "slow_first_byte",
        9,
        lambda calls: dataclasses.replace(
            first_requests(Fault.SLOW_FIRST_BYTE)(calls), slow_first_byte_delay=1.0
        ),
        whole_or_silence,
        counted=kind_per_call("timeout"),
        settings=TIMEOUTS,
    ),
    Batch(
        "idle_close",
        9,
        # 1 s: a new socket whose first request a busy machine sends later than the idle limit
        # is closed under it (a reply error, retried): more reconnects than calls, still whole
        lambda _: emulator(idle_close_after=1.0),
        whole_twice,
        counted=lambda m, calls: m["hamsa_bridge_hamsa_reconnects_total"] >= calls,
        two_utterances=True,
    ),
    Batch(
        "never_end",
        9,
        first_requests(Fault.NEVER_END),
        whole_or_silence,
        counted=kind_per_call("timeout"),
        settings=TIMEOUTS,
    ),
    Batch(
        "endless",
        9,
        first_requests(Fault.ENDLESS),
        endless_prefix,
        outcome="hung_up",
        # the callers hang up while the endless replies stream: 3 s after their start, which
        # leaves a busy machine time to get some of their requests to Hamsa (the batch checks
        # that its fault was met)
        plan={"hangup_after": 3.0},
    ),
]


async def run_batch(batch: Batch, first: int) -> None:
    sids = [new_sid("CA") for _ in range(batch.calls)]
    texts = {sid: text_for(first + i) for i, sid in enumerate(sids)}
    box: dict[str, LogTap] = {}

    async def script(ctx: CallContext) -> None:
        text = texts[ctx.call_sid]
        outcome = await ctx.say(text)
        if batch.two_utterances:
            await box["tap"].wait_for("hamsa_closed", call_sid=ctx.call_sid, code=1000)
            outcome = await ctx.say("شكرا " + text)
        ctx.outcome, ctx.reason = "completed", f"speech {outcome.value}"

    async with rig_for(batch.config(batch.calls), script=script, **batch.settings) as (rig, tap):
        box["tap"] = tap
        results = await asyncio.gather(*(rig.call(call_sid=sid, **batch.plan) for sid in sids))
        m = await ended(rig)
        for sid, result in zip(sids, results, strict=True):
            where = f"{batch.name} call {sid}"
            assert result.leg is not None, where
            warnings = [w for w in result.leg.warnings if w[0] != "after_stop"]
            assert warnings == [], where
            if not result.hung_up:
                assert result.leg.warnings == [], where
            else:  # frames the bridge sent before the caller's ``stop`` reached it: in flight
                # for at most LATE on a busy machine, at 50 a second, plus one wake's batch; a
                # bridge that went on playing after ``stop`` would send hundreds
                assert len(result.leg.warnings) <= round(LATE * 50) + 5, where
            assert bytes(result.leg.received) in batch.heard(rig, texts[sid]), where
            summary = tap.summary(sid)
            assert summary["outcome"] == batch.outcome, where
            assert summary["reason"], where
            assert result.close_code == 1000, where
    assert outcomes(m) == {batch.outcome: batch.calls}, batch.name
    assert batch.counted(m, batch.calls), (batch.name, errors(m))
    assert rig.hamsa.requests, batch.name


async def test_100_faulty_calls_leave_no_task_socket_fd_or_thread_behind() -> None:
    assert sum(b.calls for b in BATCHES) == 100
    assert {b.name for b in BATCHES} >= {"truncate_30", "close_4001", "close_4003", "endless"}
    before = Holdings.now()
    starts = [sum(b.calls for b in BATCHES[:i]) for i in range(len(BATCHES))]
    # in two waves, each wave's batches (one loopback each) concurrently
    half = len(BATCHES) // 2
    for wave in (range(half), range(half, len(BATCHES))):
        async with asyncio.TaskGroup() as tasks:
            for i in wave:
                tasks.create_task(run_batch(BATCHES[i], starts[i]))
    after = await settle(before)
    assert after.excess_over(before) == {}
