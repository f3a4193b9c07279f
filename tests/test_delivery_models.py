"""The emulator's named delivery models and the replay of recorded traces.

The schedules are pure functions of (text, config, RNG), tested as such over many seeds; one
socket test per mode checks that the emulator honours them on the wire: frames never early (an
absolute lower bound, no tolerance), and not much late (a loose bound that survives a busy
machine)."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bridge.cli import build_parser
from bridge.dev import tone
from bridge.dev.hamsa_emulator import (
    DELIVERY_MODELS,
    EmulatorConfig,
    EmulatorServer,
    EmulatorState,
    replay_schedule,
    reply_schedule,
    streaming_mulaw_header,
)
from bridge.hamsa_trace import parse_trace, read_trace
from tests.cli_support import run_cli
from tests.timing import HANG, LATE  # how late a frame may arrive on a busy machine (never early)

pytestmark = pytest.mark.anyio

KEY = "test-key"
SENTENCE = "مرحبا بك في خدمة همسة، كيف يمكنني مساعدتك اليوم؟"  # 48 characters, 3.84 s
LONG = (
    "نود إعلامكم بأن مواعيد العيادة ستتغير ابتداء من الأسبوع القادم. "
    "ستكون ساعات العمل من الثامنة صباحا حتى الرابعة عصرا."
)  # 118 characters, 9.44 s
BPS = 8000
SEEDS = range(60)


def schedules(name: str, text: str = SENTENCE, **overrides: Any) -> list[list[tuple[float, bytes]]]:
    config = EmulatorConfig.model(name, **overrides)
    return [reply_schedule(text, config, random.Random(seed)) for seed in SEEDS]


def audio_s(frame: bytes) -> float:
    return len(frame) / BPS


# --- the catalogue -------------------------------------------------------------------------------


def test_every_model_is_selectable_by_name_and_by_the_cli() -> None:
    assert DELIVERY_MODELS == ("instant", "realistic", "observed", "slow", "bursty", "fast")
    for name in DELIVERY_MODELS:
        config = EmulatorConfig.model(name, seed=7)
        assert config.seed == 7
        assert getattr(EmulatorConfig, name).__doc__  # each documents its numbers and source
        assert build_parser().parse_args(["demo", "--model", name]).model == name
        args = build_parser().parse_args(["emulate-hamsa", "--model", name])
        assert args.model == name
    assert EmulatorConfig.model("instant") == EmulatorConfig()
    assert EmulatorConfig.model("realistic") == EmulatorConfig.realistic()
    assert EmulatorConfig.model("slow", synthesis_speed=0.5).synthesis_speed == 0.5
    with pytest.raises(ValueError, match="unknown delivery model 'glacial'"):
        EmulatorConfig.model("glacial")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["emulate-hamsa", "--model", "glacial"])


@pytest.mark.parametrize(
    "fields",
    [
        {"interval_jitter": 1.0},
        {"interval_jitter": -0.1},
        {"stall_probability": 1.5},
        {"stall_seconds": (1.0, 0.5)},
        {"chunk_seconds": 0.0},
        {"first_chunk_seconds": (0.0, 0.3)},
    ],
)
def test_invalid_delivery_fields_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(**fields)


# --- schedules as pure functions -----------------------------------------------------------------


@pytest.mark.parametrize("name", DELIVERY_MODELS)
def test_schedules_carry_the_text_audio_and_are_deterministic_per_seed(name: str) -> None:
    config = EmulatorConfig.model(name)
    expected = tone.synthesize(SENTENCE, mulaw=True)
    runs = schedules(name)
    for plan in runs:
        assert b"".join(frame for _, frame in plan) == expected
        assert all(delay >= 0 for delay, _ in plan)
        assert max(len(frame) for _, frame in plan) <= config.max_chunk_bytes
    assert reply_schedule(SENTENCE, config, random.Random(3)) == runs[3]
    assert len({tuple(len(f) for _, f in plan) for plan in runs}) > len(SEEDS) // 2  # irregular
    pcm = reply_schedule(SENTENCE, config, random.Random(3), mulaw=False)
    assert b"".join(frame for _, frame in pcm) == tone.synthesize(SENTENCE, mulaw=False)


def test_instant_has_no_delay() -> None:
    for plan in schedules("instant"):
        assert all(delay == 0 for delay, _ in plan)
        assert 4 <= len(plan) <= 7


def test_realistic_keeps_its_numbers() -> None:
    for plan in schedules("realistic"):
        assert 4 <= len(plan) <= 7
        assert 0.3 <= plan[0][0] <= 1.7
        assert 0.2 <= audio_s(plan[0][1]) <= 0.5
        speeds = {round(audio_s(frame) / delay, 6) for delay, frame in plan[1:]}
        assert len(speeds) == 1  # one speed per reply, no jitter
        assert 2.0 <= speeds.pop() <= 4.0 + 1e-6


def test_observed_takes_0_8_to_1_8_times_real_time_from_the_request() -> None:
    wholes: list[float] = []
    for plan in schedules("observed"):
        assert 4 <= len(plan) <= 7
        audio = sum(audio_s(frame) for _, frame in plan)
        whole = sum(delay for delay, _ in plan)  # ack to the last frame
        # the whole sentence, first byte included, in 0.8–1.8× real time
        speed = audio / whole
        assert 0.8 / 1.2 - 1e-6 <= speed <= 1.8 / 0.8 + 1e-6  # within the jitter's reach
        assert 0.1 <= audio_s(plan[0][1]) <= 0.3
        assert plan[0][0] <= 1.7
        assert plan[0][0] <= whole  # the first byte never comes after the rest
        frame_paces = [audio_s(frame) / delay for delay, frame in plan[1:]]
        assert len({round(p, 6) for p in frame_paces}) == len(frame_paces)  # jittered
        wholes.append(audio / whole)
    assert min(wholes) < 1.0 < max(wholes)  # some sentences slower than real time, some faster


def test_slow_is_below_real_time_in_one_second_frames() -> None:
    for plan in schedules("slow", LONG):
        assert 0.3 <= plan[0][0] <= 1.7
        assert 0.2 <= audio_s(plan[0][1]) <= 0.3
        assert all(0.6 <= audio_s(frame) <= 1.4 for _, frame in plan[1:-1])
        assert 0 < audio_s(plan[-1][1]) <= 1.4  # what was left
        assert 7 <= len(plan) <= 17  # 9.2 s after the first frame, 0.6–1.4 s each, + the first
        for delay, frame in plan[1:]:
            assert delay == pytest.approx(audio_s(frame) / 0.9)


def test_bursty_is_fast_on_average_with_stalls_of_up_to_a_second() -> None:
    stalls = frames = 0
    paces = []
    for plan in schedules("bursty", LONG):
        assert 0.3 <= plan[0][0] <= 1.7
        assert all(0.3 <= audio_s(frame) <= 0.9 for _, frame in plan[1:-1])
        for delay, frame in plan[1:]:
            synthesis = (audio_s(frame) / 8.0, audio_s(frame) / 4.0)  # 4–8× real time
            frames += 1
            if delay > synthesis[1] + 1e-9:
                stalls += 1
                assert synthesis[0] + 0.4 - 1e-9 <= delay <= synthesis[1] + 1.0 + 1e-9
            else:
                assert synthesis[0] - 1e-9 <= delay
        paces.append(sum(audio_s(f) for _, f in plan[1:]) / sum(d for d, _ in plan[1:]))
    assert 0.15 <= stalls / frames <= 0.35  # probability 0.25
    assert 1.5 <= statistics.mean(paces) <= 3.0


def test_fast_has_a_large_first_frame_and_three_times_real_time() -> None:
    for plan in schedules("fast"):
        assert 0.2 <= plan[0][0] <= 0.4
        assert 1.0 <= audio_s(plan[0][1]) <= 1.5
        assert 4 <= len(plan) <= 7
        for delay, frame in plan[1:]:
            assert delay == pytest.approx(audio_s(frame) / 3.0)


def test_side_by_side_emulators_draw_the_same_per_text() -> None:
    """``draws_per_text``: the n-th request for a text gets the same schedule in every emulator
    with the same seed, whatever else they were asked before."""
    config = EmulatorConfig.model("bursty", seed=4, draws_per_text=True)
    a, b = EmulatorState(config), EmulatorState(config)

    def plan(state: EmulatorState, number: int, text: str) -> list[tuple[float, bytes]]:
        cuts, timing = state.reply_rngs(number, text)
        return reply_schedule(text, config, cuts, timing_rng=timing)

    a1, a2 = plan(a, 1, SENTENCE), plan(a, 2, LONG)
    b1, b2 = plan(b, 1, LONG), plan(b, 2, SENTENCE)
    assert (a1, a2) == (b2, b1)
    assert plan(a, 3, SENTENCE) != a1  # the second request for a text: new draws


# --- on the wire ---------------------------------------------------------------------------------


@dataclass
class Heard:
    sent_at: float
    ack_at: float | None = None
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    end_at: float | None = None


async def speak(ws: ClientConnection, text: str) -> Heard:
    request = {"text": text, "speaker": "Majd", "dialect": "ksa", "languageId": "ar", "mulaw": True}
    heard = Heard(time.monotonic())
    await ws.send(json.dumps({"type": "tts", "payload": request}, ensure_ascii=False))
    async with asyncio.timeout(HANG):
        while heard.end_at is None:
            message = await ws.recv()
            now = time.monotonic()
            if isinstance(message, bytes):
                heard.frames.append((now - heard.sent_at, message))
                continue
            kind = json.loads(message)["type"]
            assert kind in ("ack", "end"), message
            if kind == "ack":
                heard.ack_at = now - heard.sent_at
            else:
                heard.end_at = now - heard.sent_at
    return heard


@dataclass
class Session:
    emu: EmulatorServer
    ws: ClientConnection
    connected_after: float


@asynccontextmanager
async def hamsa(config: EmulatorConfig) -> AsyncIterator[Session]:
    async with EmulatorServer(config) as emu:
        started = time.monotonic()
        async with connect(emu.ws_url, additional_headers={"X-Api-Key": KEY}) as ws:
            connected_after = time.monotonic() - started
            assert json.loads(await ws.recv())["type"] == "info"
            yield Session(emu, ws, connected_after)


async def test_a_model_timing_is_honoured_on_the_wire() -> None:
    """``slow`` (below real time), connect scaled down: each frame arrives at or after its
    scheduled time from the request, never before, and not much later."""
    text = "ب" * 24  # 1.92 s of audio: first frame 0.2–0.3 s, then ≈ 1 s frames at 0.9×
    config = EmulatorConfig.model("slow", api_keys=frozenset({KEY}), connect_delay=0.2, seed=5)
    cuts, timing = EmulatorState(config).reply_rngs(1, text)
    expected = reply_schedule(text, config, cuts, timing_rng=timing)
    async with hamsa(config) as session:
        assert session.connected_after >= 0.2
        heard = await speak(session.ws, text)
    assert [len(f) for _, f in heard.frames] == [len(f) for _, f in expected]
    due = 0.0
    for (arrived, _), (delay, _) in zip(heard.frames, expected, strict=True):
        due += delay
        assert due <= arrived <= due + LATE
    intervals = [b - a for (a, _), (b, _) in zip(heard.frames, heard.frames[1:], strict=False)]
    assert sum(intervals) >= sum(d for d, _ in expected[1:]) - 0.05  # below real time overall


# --- replay --------------------------------------------------------------------------------------

TRACE_TEXT = "ب" * 30
TRACE_AUDIO = tone.synthesize(TRACE_TEXT, mulaw=True)  # 19,200 bytes


def trace_lines(head: bytes = TRACE_AUDIO) -> list[dict[str, Any]]:
    def req(n: int, frames: list[list[float]], **more: Any) -> dict[str, Any]:
        total = sum(int(size) for _, size in frames)
        line = {
            "type": "request",
            "n": n,
            "text": TRACE_TEXT,
            "chars": 30,
            "connect_s": None,
            "ack_s": 0.04,
            "frames": frames,
            "head_hex": head[: min(64, total)].hex(),
            "end_s": frames[-1][0] + 0.05 if frames else None,
            "error": None,
            "close": None,
        }
        line.update(more)
        return line

    return [
        {
            "type": "probe",
            "version": 1,
            "started": "2026-12-07T09:00:00Z",
            "url": "wss://api.tryhamsa.com/v1/realtime/ws",
            "voice": {"speaker": "Majd", "dialect": "ksa", "language": "ar"},
            "mulaw": True,
        },
        req(1, [[0.15, 641], [0.3, 20000], [0.31, 7]], connect_s=0.25),
        req(2, [[0.12, 640]], error="TTS stream error: aborted", end_s=None),
        req(3, [[0.1, 5000], [0.1, 3000], [0.42, 101]], ack_s=0.02, connect_s=0.05),
    ]


def write_trace(tmp_path: Path, lines: list[dict[str, Any]]) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_replay_schedule_is_the_recorded_one_with_the_text_audio(tmp_path: Path) -> None:
    trace = read_trace(write_trace(tmp_path, trace_lines()))
    first, second = trace.successful
    ack, frames, end = replay_schedule(TRACE_TEXT, first)
    assert (ack, end) == (0.04, pytest.approx(0.36))
    assert [(t, len(f)) for t, f in frames] == [(0.15, 641), (0.3, 20000), (0.31, 7)]
    reply = b"".join(f for _, f in frames)
    assert reply == (TRACE_AUDIO * 2)[:20648]  # the tone, extended by itself to the size
    _, frames, _ = replay_schedule(TRACE_TEXT, second)
    assert b"".join(f for _, f in frames) == TRACE_AUDIO[:8101]  # cut to the size
    with pytest.raises(ValueError, match="not successful"):
        replay_schedule(TRACE_TEXT, trace.requests[1])


def test_replay_keeps_a_recorded_mulaw_riff_header(tmp_path: Path) -> None:
    header = streaming_mulaw_header()
    trace = read_trace(write_trace(tmp_path, trace_lines(head=header + TRACE_AUDIO)))
    _, frames, _ = replay_schedule(TRACE_TEXT, trace.successful[0])
    reply = b"".join(f for _, f in frames)
    assert len(reply) == 20648
    assert reply.startswith(header + TRACE_AUDIO[:100])


async def test_replay_over_a_socket_reproduces_sizes_exactly_and_times_closely(
    tmp_path: Path,
) -> None:
    trace = read_trace(write_trace(tmp_path, trace_lines()))
    # timing fields that replay must ignore
    config = EmulatorConfig.model("bursty", api_keys=frozenset({KEY}), replay=trace)
    plans = [replay_schedule(TRACE_TEXT, r) for r in trace.successful]
    async with hamsa(config) as session:
        assert session.connected_after >= 0.25  # request 1's connect_s
        replies = [await speak(session.ws, TRACE_TEXT) for _ in range(3)]
        started = time.monotonic()
        async with connect(session.emu.ws_url, additional_headers={"X-Api-Key": KEY}) as again:
            await again.recv()
        assert time.monotonic() - started >= 0.05  # request 3's connect_s: the second socket
        records = list(session.emu.state.requests)
    assert session.emu.state.upgrades == 2
    # request k replays successful request ((k - 1) mod 2): 1, 3, 1
    for heard, (ack, frames, end), record in zip(
        replies, [plans[0], plans[1], plans[0]], records, strict=True
    ):
        assert [len(f) for _, f in heard.frames] == [len(f) for _, f in frames]
        assert b"".join(f for _, f in heard.frames) == b"".join(f for _, f in frames)
        assert heard.ack_at is not None
        assert heard.end_at is not None
        assert ack <= heard.ack_at <= ack + LATE
        for (arrived, _), (due, _) in zip(heard.frames, frames, strict=True):
            assert due <= arrived <= due + LATE
        assert end <= heard.end_at <= end + LATE
        assert record.frames == [len(f) for _, f in frames]


async def test_replay_cli_refuses_a_bad_trace_naming_file_and_line(tmp_path: Path) -> None:
    lines = trace_lines()
    lines[3]["frames"] = [[0.3, 5], [0.2, 5]]
    path = write_trace(tmp_path, lines)
    with pytest.raises(Exception, match=rf"{path}:4: frame times must be non-decreasing"):
        read_trace(path)
    code, output = await run_cli("emulate-hamsa", "--replay", str(path), "--port", "0")
    assert code == 2
    assert f"emulate-hamsa: {path}:4: frame times must be non-decreasing" in output
    code, output = await run_cli("emulate-hamsa", "--realistic", "--model", "fast")
    assert code == 2
    assert "--realistic is --model realistic" in output


def _dump(lines: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(x) + "\n" for x in lines)


def _pcm_header() -> str:
    lines = trace_lines()
    lines[0]["mulaw"] = False
    return _dump(lines)


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        pytest.param(_pcm_header(), 1, "not μ-law", id="mulaw-false"),
        pytest.param("", 1, "empty file", id="empty"),
        pytest.param(_dump(trace_lines())[:-40], 4, "truncated last line", id="cut-mid-line"),
    ],
)
async def test_replay_cli_refuses_an_unplayable_trace(
    tmp_path: Path, content: str, line: int, problem: str
) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(content, encoding="utf-8")
    code, output = await run_cli("emulate-hamsa", "--replay", str(path), "--port", "0")
    assert code == 2
    assert f"emulate-hamsa: {path}:{line}: {problem}" in output
    assert "listening" not in output


def test_parse_trace_accepts_what_the_replay_tests_write(tmp_path: Path) -> None:
    text = "".join(json.dumps(x) + "\n" for x in trace_lines())
    assert len(parse_trace(text).successful) == 2
