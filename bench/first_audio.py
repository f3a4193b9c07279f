"""Time to first audio, and gaps: the bridge versus the naive patterns of the seed Hamsa FAQ.

Question: how long after Twilio's ``start`` does the caller hear the first audio, and the last,
and how often does the speech stutter (gaps), under several Hamsa delivery models, for

* **(a)** ``hamsa-bridge`` itself: the real app (``bridge.dev.loopback``: ``create_app`` under
  uvicorn, signed webhook and handshake, stream token), which opens the call's Hamsa socket when
  the stream starts and plays each reply from its first bytes (its warm Hamsa pool off:
  ``HAMSA_WARM_CONNECTIONS=0``, so the 1.2 s connect is in every call's path);
* **(a) warm pool**: the same bridge with its production default of two warm Hamsa sockets
  (``HAMSA_WARM_CONNECTIONS=2``): a call takes a socket opened and authenticated before it, and
  the pool opens a replacement in the background;
* **(b)** the pattern the seed FAQ warns against: a **new Hamsa connection per request**, the whole
  reply collected (until ``end``) before any of it is sent to Twilio;
* **(c)** the FAQ's "correct" pattern: **one persistent connection** per call (opened when the
  stream starts, like the bridge's), but still the whole reply collected before sending.

(b) and (c) are minimal, honest comparator bridges defined below (``naive_app``): a Starlette app
with the same two routes (webhook, media stream) that talks to the same Hamsa emulator over a real
socket with the FAQ's code shape (``websockets.connect``, ``X-Api-Key``, ``mulaw: true`` so no
transcoding is needed), splits the text into the same requests as the bridge
(``bridge.sentences.split_text``), frames the collected μ-law into 160-byte ``media`` messages (the
utterance's last frame padded with 0xFF), paces them at real time with the bridge's 220 ms lead,
sends a ``mark`` at the end and closes the stream once it is echoed. They are generous: reply k+1
is fetched while reply k plays (pipelined), so they pay the collection delay only where it shows,
and they skip signature checks and every retry rule.

Delivery models (``EmulatorConfig.model(name)`` in ``bridge/dev/hamsa_emulator.py``, whose
docstrings give the numbers and their sources; ``--models``, default all four):

* **realistic**: connect 1.2 s, first audio 0.3-1.7 s, first frame 0.2-0.5 s of audio, the rest
  in 3-6 weighted pieces at 2-4x real time;
* **observed** (docs/hamsa-ws.md §3.5 at face value): connect 1.2 s, first audio 0.3-1.7 s, a small
  first frame of 0.1-0.3 s, 4-7 frames in all, paced at 0.8-1.8x real time, intervals x0.7-1.3;
* **slow**: first frame 0.2-0.3 s, then ~1 s frames (0.6-1.4 s) at 0.9x real time;
* **bursty**: 0.3-0.9 s frames at 4-8x, but a stall of 0.4-1.0 s before a quarter of them
  (1.5-3x on average).

80 ms of audio per character in all. Every variant gets its **own emulator with the same seed**
and ``draws_per_text``: the n-th request for a given text gets the same first-byte delay, speed
and chunking in every variant, whatever the interleaving of concurrent calls. So the variants see
exactly the same Hamsa latencies for their sentences; the figures differ only by what each design
does with them.

Scenarios:

1. **announcement** (every model): three Arabic sentences (169 characters, 3 Hamsa requests,
   13.4 s of audio), spoken by the bridge as its greeting (``BRIDGE_GREETING``).
2. **ivr** (realistic only, unless ``--scenario`` says otherwise): the main-menu prompt of
   ``bridge/ivr/examples/clinic.toml`` (134 characters, 3 Hamsa requests after merging short
   sentences, 10.6 s of audio), run by the bridge as a real IVR flow (a ``menu`` node; the caller
   presses 1 after the prompt, which hangs up). The bridge runs twice: with its prompt cache off, so
   every call synthesises the prompt (**a**, the like-for-like comparison), and with the cache
   warmed by ``hamsa-bridge ivr warm`` before the calls (**a, cache warm**: what a caller of a
   deployed IVR hears for a static prompt).

Each variant carries ``--calls`` calls (20) of each scenario; call i of every variant starts at
``i * --spacing`` seconds (1.5 s), so the variants run side by side and each has about ten calls
in flight. Before the calls, every variant takes one unmeasured warm-up call that hangs up after
half the connect delay (before any Hamsa request). The callers are
``bridge.dev.caller.place_call`` (sharing one HTTP client): signed webhook, media stream with
caller audio every 20 ms, Twilio's playout model, mark echoes.

Measured per call, at the caller, from its ``start`` message: the first media frame received
(*first audio*), the last one (*last audio*), gaps heard (``CallResult.gaps()``: the playout
buffer ran dry mid-speech; dry after the last audio is the end, not a gap), and whether the call
is complete (every frame of the text's audio received, no protocol warning, the stream closed
normally). Reported per variant, as one markdown table per model and scenario (ready for
BENCHMARKS.md): p50 and p95 (nearest rank) of first audio and its ratio to (c), last audio, the
calls with a gap over 40 ms, the total gap time and the longest gap (complete calls only); Hamsa
sockets and requests per call (from the emulator's records). ``--json FILE`` writes the same
figures (and every fast-check sample) as JSON.

**Fast check** (``--fast-check``; ``--fast-calls`` calls, 20): with ``EmulatorConfig.fast()``
(3x real time, a first frame of 1.0-1.5 s of audio, first byte 0.2-0.4 s), how long after Hamsa's
first byte the bridge's first frame reaches the caller (goal: within 10 ms). The bridge reports no
first byte per call, so it is measured as the caller's first ``media`` arrival minus the
emulator's ``RequestRecord.first_audio_at`` (the same monotonic clock: one process): it includes
the emulator's send, both loopback hops, the bridge's whole Hamsa-to-Twilio path (decoding,
framing, start policy, pacer, JSON/base64) and the caller's receive, plus any event-loop lag the
peers cause each other; calls run one at a time, on the bridge with its warm pool.

The event loop's lag during the calls (all peers share this process), this process' CPU and the
CPU other processes took meanwhile are printed, so a disturbed run can be recognised: lag beyond
the 200 ms playout lead makes gaps of its own.

Run: ``python bench/first_audio.py`` (four models: about 5 minutes; add ``--fast-check`` for
about a minute more), ``--models observed --calls 3`` (a quick look), ``--smoke`` (one call per
variant with a scaled-down realistic model, and one fast-check call: a few seconds, no timing
claims).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2
from _common import (
    CLOCK_TICKS,
    KEY,
    TOKEN,
    cpu_model,
    inbound_plan,
    load_average,
    loop_factory,
    machine_busy_ticks,
)
from figures import quantile
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge.calls.warm_pool import WarmHamsaPool
from bridge.dev.caller import CallPlan, CallResult, place_call
from bridge.dev.hamsa_emulator import (
    DELIVERY_MODELS,
    EmulatorConfig,
    EmulatorState,
    create_emulator_app,
)
from bridge.dev.loopback import loopback
from bridge.dev.servers import bind, serving
from bridge.dev.tone import synthesize
from bridge.ivr.commands import warm
from bridge.ivr.load import load_flow
from bridge.logs import configure_logging
from bridge.sentences import split_text

ROOT: Final = Path(__file__).resolve().parent.parent
CLINIC_FLOW: Final = ROOT / "bridge" / "ivr" / "examples" / "clinic.toml"
SPEAKER, DIALECT, LANGUAGE = "Majd", "ksa", "ar"
FRAME_BYTES: Final = 160
FRAME_SECONDS: Final = 0.020
LEAD: Final = 0.220
"""The comparators' playout lead: the bridge's default ``BRIDGE_PLAYBACK_LEAD_MS``."""
LAG_INTERVAL: Final = 0.020
ANSWER: Final = "1"
"""The key the IVR caller presses after the menu prompt (the bench flow hangs up on it)."""

ANNOUNCEMENT: Final = (
    "نود إعلامكم بأن مواعيد العيادة ستتغير ابتداء من الأسبوع القادم. "
    "ستكون ساعات العمل من الثامنة صباحا حتى الرابعة عصرا. "
    "للاستفسار يرجى الاتصال بنا خلال ساعات الدوام الرسمي."
)


def menu_prompt() -> str:
    """The clinic example's main-menu prompt (``bridge/ivr/examples/clinic.toml``)."""
    with CLINIC_FLOW.open("rb") as handle:
        prompt: str = tomllib.load(handle)["nodes"]["main_menu"]["prompt"]
    return prompt


def bench_flow(prompt: str) -> str:
    """A one-menu IVR flow: the prompt, then key 1 hangs up (no goodbye: nothing else is heard)."""
    return (
        "[flow]\n"
        'name = "bench"\n'
        'start = "main_menu"\n'
        f'voice = {{ speaker = "{SPEAKER}", dialect = "{DIALECT}", language = "{LANGUAGE}" }}\n\n'
        "[nodes.main_menu]\n"
        'type = "menu"\n'
        f"prompt = {json.dumps(prompt, ensure_ascii=False)}\n"
        f'options = {{ "{ANSWER}" = "bye" }}\n'
        "timeout = 10\n"
        'on_failure = "bye"\n\n'
        "[nodes.bye]\n"
        'type = "hangup"\n'
    )


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    text: str
    ivr: bool


@dataclass(frozen=True)
class Model:
    """The Hamsa latency model, and the bridge settings that must follow its audio density."""

    name: str
    emulator: EmulatorConfig
    bridge: dict[str, Any] = field(default_factory=dict)
    key: str = "realistic"
    """The delivery model's name (``EmulatorConfig.model``), or ``smoke``."""

    def segments(self, text: str) -> list[str]:
        return split_text(text, language=LANGUAGE)

    def audio_bytes(self, text: str) -> int:
        return sum(
            len(synthesize(s, mulaw=True, ms_per_char=self.emulator.ms_per_char))
            for s in self.segments(text)
        )


MODELS: Final = ("realistic", "observed", "slow", "bursty")
"""The delivery models a default run measures (``EmulatorConfig.model``)."""
SMOKE_BRIDGE: Final[dict[str, Any]] = {
    # 15 ms of audio per character: below the bridge's real-speech thresholds
    "hamsa_truncation_ms_per_char": 3.0,
    "bridge_prompt_cache_min_ms_per_char": 5.0,
}


def _span(value: float | tuple[float, float] | None, unit: str = "s") -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:g}-{value[1]:g} {unit}"
    return f"{value:g} {unit}"


def describe(config: EmulatorConfig) -> str:
    """The numbers of a delivery model, in one line."""
    parts = [
        f"connect {_span(config.connect_delay)}",
        f"first byte {_span(config.first_byte_delay)}",
        "first frame "
        + ("0.2-0.5 s" if config.first_chunk_seconds is None else _span(config.first_chunk_seconds))
        + " of audio",
        "later frames "
        + (
            "3-6 weighted pieces"
            if config.chunk_seconds is None
            else _span(config.chunk_seconds) + " of audio each"
        ),
        (
            "whole reply in " + _span(config.reply_speed, "x real time") + " from the request"
            if config.reply_speed is not None
            else "pace " + _span(config.synthesis_speed, "x real time")
        ),
    ]
    if config.interval_jitter:
        parts.append(f"intervals x{1 - config.interval_jitter:g}-{1 + config.interval_jitter:g}")
    if config.stall_probability:
        parts.append(
            f"stalls of {_span(config.stall_seconds)} before {config.stall_probability:.0%} "
            "of later frames"
        )
    parts.append(f"{config.ms_per_char:g} ms/char")
    return ", ".join(parts)


def delivery_model(name: str, seed: int) -> Model:
    """A named delivery model of the Hamsa emulator (its docstring has the sources)."""
    config = EmulatorConfig.model(name, seed=seed, draws_per_text=True)
    return Model(f"{name}: {describe(config)}", config, key=name)


def realistic_model(seed: int) -> Model:
    return delivery_model("realistic", seed)


def smoke_model(seed: int, name: str = "realistic") -> Model:
    """Scaled down for ``--smoke``: the named model's shape, a few seconds in all."""
    config = EmulatorConfig.model(
        name,
        connect_delay=0.1,
        first_byte_delay=(0.05, 0.15),
        ms_per_char=15.0,
        seed=seed,
        draws_per_text=True,
    )
    return Model(f"smoke (scaled down {name}): {describe(config)}", config, SMOKE_BRIDGE, "smoke")


# --- the comparators: (b) and (c) --------------------------------------------------------------


def _tts_frame(text: str) -> str:
    """The FAQ's request, with ``mulaw: true`` (Twilio's format: no transcoding needed)."""
    payload = {
        "text": text,
        "speaker": SPEAKER,
        "dialect": DIALECT,
        "languageId": LANGUAGE,
        "mulaw": True,
    }
    return json.dumps({"type": "tts", "payload": payload}, ensure_ascii=False)


async def _hamsa_connect(url: str) -> ClientConnection:
    return await connect(
        url,
        additional_headers={"X-Api-Key": KEY},
        ping_interval=20,
        ping_timeout=10,
        open_timeout=15,
        max_size=4 * 1024 * 1024,
    )


async def _collect(ws: ClientConnection, text: str) -> bytes:
    """The FAQ's ``text_to_speech``: send, then collect every binary frame until ``end``."""
    await ws.send(_tts_frame(text))
    chunks: list[bytes] = []
    async for message in ws:
        if isinstance(message, bytes):
            chunks.append(message)
            continue
        kind = json.loads(message).get("type")
        if kind == "end":
            return b"".join(chunks)
        if kind == "error":
            raise RuntimeError(f"Hamsa error: {message}")
    raise RuntimeError("Hamsa closed the socket before end")


class _Pacer:
    """160-byte μ-law frames to Twilio at real time, at most ``LEAD`` ahead (as the bridge)."""

    def __init__(self, ws: WebSocket, stream_sid: str) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.play_end = 0.0
        self.pending = b""

    async def audio(self, data: bytes, *, last: bool = False) -> None:
        data = self.pending + data
        whole = len(data) - len(data) % FRAME_BYTES
        self.pending = data[whole:]
        if last and self.pending:
            data, whole = (
                data[:whole] + self.pending.ljust(FRAME_BYTES, b"\xff"),
                whole + FRAME_BYTES,
            )
            self.pending = b""
        for i in range(0, whole, FRAME_BYTES):
            now = time.monotonic()
            self.play_end = max(self.play_end, now)
            wait = self.play_end + FRAME_SECONDS - LEAD - now
            if wait > 0:
                await asyncio.sleep(wait)
            payload = base64.b64encode(data[i : i + FRAME_BYTES]).decode()
            media = {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
            await self.ws.send_text(json.dumps(media))
            self.play_end += FRAME_SECONDS

    async def mark(self, name: str) -> None:
        mark = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
        await self.ws.send_text(json.dumps(mark))


def naive_app(
    hamsa_url: str, stream_url: str, segments: Sequence[str], *, persistent: bool
) -> Starlette:
    """A bridge built the FAQ's way: whole replies, a socket per request unless ``persistent``."""

    async def inbound(request: Request) -> Response:
        twiml = f'<Response><Connect><Stream url="{stream_url}"/></Connect></Response>'
        return Response(twiml, media_type="text/xml")

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        stream_sid: str | None = None
        with contextlib.suppress(WebSocketDisconnect):
            while stream_sid is None:
                message = json.loads(await ws.receive_text())
                if message.get("event") == "start":
                    stream_sid = str(message["streamSid"])
        if stream_sid is None:
            return
        echoed = asyncio.Event()
        replies: asyncio.Queue[bytes | None] = asyncio.Queue()
        pacer = _Pacer(ws, stream_sid)

        async def listen() -> None:  # Twilio's messages: caller audio (ignored), marks, stop
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                event = json.loads(message.get("text") or "{}").get("event")
                if event == "mark":
                    echoed.set()
                elif event == "stop":
                    return

        async def synthesise() -> None:
            if persistent:  # (c): opened as the stream starts, reused for every request
                hamsa = await _hamsa_connect(hamsa_url)
                try:
                    for text in segments:
                        replies.put_nowait(await _collect(hamsa, text))
                finally:
                    await hamsa.close()
            else:  # (b): a fresh connection for every request
                for text in segments:
                    async with await _hamsa_connect(hamsa_url) as hamsa:
                        replies.put_nowait(await _collect(hamsa, text))
            replies.put_nowait(None)

        async def play() -> None:
            while (reply := await replies.get()) is not None:
                await pacer.audio(reply)
            await pacer.audio(b"", last=True)
            await pacer.mark("end")
            await echoed.wait()
            await ws.close(1000)

        tasks = [asyncio.create_task(listen()), asyncio.create_task(play())]
        synthesis = asyncio.create_task(synthesise())
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, synthesis]:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, synthesis, return_exceptions=True)
        for outcome in outcomes:
            expected = (asyncio.CancelledError, WebSocketDisconnect, ConnectionClosed, OSError)
            if isinstance(outcome, BaseException) and not isinstance(outcome, expected):
                raise outcome

    return Starlette(
        routes=[
            Route("/twiml/inbound", inbound, methods=["POST"]),
            WebSocketRoute("/stream", stream),
        ]
    )


# --- the variants ------------------------------------------------------------------------------


@dataclass
class Target:
    """One variant, running: where to call it and its Hamsa emulator's records."""

    key: str
    label: str
    hamsa: EmulatorState
    plan: Callable[..., CallPlan]
    pool: WarmHamsaPool | None = None
    """The bridge's warm Hamsa pool (the warm-pool variant)."""


WARM_SOCKETS: Final = 2
"""The warm-pool variant's ``HAMSA_WARM_CONNECTIONS`` (the production default)."""


@contextlib.asynccontextmanager
async def bridge_target(
    scenario: Scenario,
    model: Model,
    workdir: Path,
    *,
    cache_warm: bool = False,
    warm_pool: bool = False,
) -> AsyncIterator[Target]:
    key = "a+cache" if cache_warm else "a+pool" if warm_pool else "a"
    settings: dict[str, Any] = {
        "bridge_database_url": f"sqlite:///{workdir}/bridge-{scenario.key}-{key}.db",
        **model.bridge,
    }
    flow = workdir / f"{scenario.key}.toml"
    if scenario.ivr:
        settings["bridge_ivr_flow"] = str(flow)
        if cache_warm:
            settings["bridge_prompt_cache_dir"] = str(workdir / f"prompts-{scenario.key}")
        else:
            settings["bridge_prompt_cache_mb"] = 0  # every call synthesises the prompt
    else:
        settings["bridge_greeting"] = scenario.text
    pool = WARM_SOCKETS if warm_pool else 0
    async with loopback(model.emulator, hamsa_warm_connections=pool, **settings) as rig:
        label = "(a) hamsa-bridge" + (", prompt cache warm" if cache_warm else "")
        label += f", warm pool ({pool} sockets)" if warm_pool else ""
        if cache_warm and await warm(rig.settings, flow, out=lambda _line: None) != 0:
            raise RuntimeError("hamsa-bridge ivr warm failed")
        yield Target(key, label, rig.hamsa, rig.plan, rig.bridge.warm_pool)


@contextlib.asynccontextmanager
async def naive_target(
    scenario: Scenario, model: Model, *, persistent: bool
) -> AsyncIterator[Target]:
    config = dataclasses.replace(model.emulator, api_keys=frozenset({KEY}))
    emulator = create_emulator_app(config)
    async with serving(emulator) as hamsa_http:
        sock = bind()
        public = "http://{}:{}".format(*sock.getsockname()[:2])
        app = naive_app(
            hamsa_http.replace("http://", "ws://") + "/v1/realtime/ws",
            public.replace("http://", "ws://") + "/stream",
            model.segments(scenario.text),
            persistent=persistent,
        )
        async with serving(app, sock=sock):

            def plan(**overrides: Any) -> CallPlan:
                return inbound_plan(public, TOKEN, **overrides)

            if persistent:
                key, label = "c", "(c) FAQ: persistent socket, whole reply"
            else:
                key, label = "b", "(b) new socket per request, whole reply"
            yield Target(key, label, emulator.state.emulator, plan)


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class CallFigures:
    first: float | None = None
    last: float | None = None
    gaps: int = 0
    gap_seconds: float = 0.0
    longest_gap: float = 0.0
    problem: str | None = None


def figures(result: CallResult, expected_frames: int) -> CallFigures:
    leg, t0 = result.leg, result.started_at
    if result.webhook_status != 200:
        return CallFigures(problem=f"webhook HTTP {result.webhook_status}")
    if leg is None or t0 is None:
        return CallFigures(problem=f"no stream (handshake {result.handshake_status})")
    tl = leg.timeline
    out = CallFigures(
        first=None if tl.first_media_at is None else tl.first_media_at - t0,
        last=tl.media_arrivals[-1] - t0 if tl.media_arrivals else None,
        gaps=len(result.gaps()),
        gap_seconds=sum(duration for _, duration in result.gaps()),
        longest_gap=max((duration for _, duration in result.gaps()), default=0.0),
    )
    if result.ended_by != "bridge" or result.close_code != 1000:
        out.problem = f"ended by {result.ended_by} (close {result.close_code})"
    elif tl.frames_received != expected_frames:
        out.problem = f"{tl.frames_received}/{expected_frames} frames"
    elif leg.warnings:
        out.problem = f"protocol warnings {leg.warnings[:2]}"
    return out


@dataclass
class VariantResult:
    key: str
    label: str
    calls: list[CallFigures]
    sockets: int
    requests: int
    warm: tuple[int, int] | None = None
    """Calls that took a warm socket, and calls that connected directly (warm pool only)."""
    first_byte: list[float] = field(default_factory=list)
    """Hamsa's first-audio delay (request received → first binary frame sent, at the emulator)
    of every request for the first segment: the part of first audio no design can avoid."""
    draws: list[tuple[int, ...]] = field(default_factory=list)
    """The frame sizes of every reply, sorted: equal lists mean equal Hamsa draws."""

    def values(self, name: str) -> list[float]:
        found = (getattr(c, name) for c in self.calls if c.problem is None)
        return [v for v in found if v is not None]

    @property
    def failed(self) -> int:
        return sum(c.problem is not None for c in self.calls)


class LagMonitor:
    """While the calls run: this process' event-loop lag (a 20 ms timer; every peer of the
    benchmark runs here), its CPU, and the CPU other processes took (both in % of one core)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self.own_cpu = 0.0
        self.other_cpu: float | None = None
        self._start = (0.0, 0.0, 0.0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.lags.append(max(0.0, loop.time() - before - LAG_INTERVAL))

    def __enter__(self) -> LagMonitor:
        self._task = asyncio.create_task(self._run())
        self._start = (time.monotonic(), time.process_time(), self._machine())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        at, own, machine = self._start
        span = max(1e-9, time.monotonic() - at)
        own_seconds = time.process_time() - own
        self.own_cpu = own_seconds / span * 100
        busy = self._machine()
        if busy and machine:
            self.other_cpu = max(0.0, busy - machine - own_seconds) / span * 100

    @staticmethod
    def _machine() -> float:
        try:
            return machine_busy_ticks() / CLOCK_TICKS  # CPU seconds since boot
        except (OSError, ValueError):
            return 0.0


async def run_scenario(
    scenario: Scenario, model: Model, *, calls: int, spacing: float, workdir: Path
) -> tuple[list[VariantResult], LagMonitor]:
    expected = math.ceil(model.audio_bytes(scenario.text) / FRAME_BYTES)
    answers = [ANSWER] if scenario.ivr else []
    max_duration = 60.0 + expected * FRAME_SECONDS
    if scenario.ivr:
        (workdir / f"{scenario.key}.toml").write_text(bench_flow(scenario.text), encoding="utf-8")
        load_flow(workdir / f"{scenario.key}.toml")  # raises if the flow is invalid
    async with contextlib.AsyncExitStack() as stack:
        contexts = [bridge_target(scenario, model, workdir)]
        if scenario.ivr:
            contexts.append(bridge_target(scenario, model, workdir, cache_warm=True))
        contexts.append(bridge_target(scenario, model, workdir, warm_pool=True))
        contexts += [
            naive_target(scenario, model, persistent=False),
            naive_target(scenario, model, persistent=True),
        ]
        targets = [await stack.enter_async_context(c) for c in contexts]
        # One HTTP client for every webhook: a client per call would build an SSL context each
        # time (~50 ms of blocked event loop per call start, in the process every peer shares).
        limits = httpx2.Limits(max_connections=100, max_keepalive_connections=100)
        http = await stack.enter_async_context(httpx2.AsyncClient(timeout=30.0, limits=limits))

        connect = model.emulator.connect_delay
        hangup = connect / 2 if connect > 0 else 0.05

        async def warm_up(target: Target) -> None:
            """One unmeasured call that hangs up before any Hamsa request; returns once the
            emulator has recorded the Hamsa connection it started (after its connect delay)."""
            opened = len(target.hamsa.connections)
            result = await place_call(target.plan(hangup_after=hangup), http=http)
            if result.leg is None:
                raise RuntimeError(f"{target.label}: the warm-up call failed")
            with contextlib.suppress(TimeoutError):  # the stream may end before it connects
                async with asyncio.timeout(connect + 2):
                    await target.hamsa.wait_until(lambda s: len(s.connections) > opened)
            if target.hamsa.requests:
                # With a warm socket there is no connect to hang up during: the warm-up got to
                # send a request. Restart the emulator's per-text draw counts, so the measured
                # calls get the same n-th draws as in the other variants.
                used = {r.connection_id for r in target.hamsa.requests}
                async with asyncio.timeout(30):  # the bridge closed the call's socket
                    await target.hamsa.wait_until(
                        lambda s: all(c.closed_at for c in s.connections if c.id in used)
                    )
                target.hamsa.reset_draws()

        await asyncio.gather(*(warm_up(t) for t in targets))
        before = [(len(t.hamsa.connections), len(t.hamsa.requests)) for t in targets]
        warm_before = {t.key: (t.pool.taken, t.pool.misses) for t in targets if t.pool is not None}
        started = time.monotonic()

        async def one(target: Target, i: int) -> CallFigures:
            await asyncio.sleep(max(0.0, started + i * spacing - time.monotonic()))
            plan = target.plan(answers=list(answers), max_duration=max_duration)
            try:
                result = await place_call(plan, http=http)
            except Exception as exc:  # a failed call is a result, not the end of the run
                return CallFigures(problem=f"{type(exc).__name__}: {exc}")
            return figures(result, expected)

        with LagMonitor() as lag:
            per_target = await asyncio.gather(
                *(asyncio.gather(*(one(t, i) for i in range(calls))) for t in targets)
            )
        results = []
        first_segment = model.segments(scenario.text)[0]
        for target, figs, (conns, reqs) in zip(targets, per_target, before, strict=True):
            requests = target.hamsa.requests[reqs:]
            results.append(
                VariantResult(
                    target.key,
                    target.label,
                    list(figs),
                    sockets=len(target.hamsa.connections) - conns,
                    requests=len(requests),
                    first_byte=[
                        r.first_audio_at - r.received_at
                        for r in requests
                        if r.text == first_segment and r.first_audio_at is not None
                    ],
                    draws=sorted(tuple(r.frames) for r in requests),
                    warm=None
                    if target.pool is None
                    else (
                        target.pool.taken - warm_before[target.key][0],
                        target.pool.misses - warm_before[target.key][1],
                    ),
                )
            )
    return results, lag


# --- report ------------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}"


GAP_LIMIT: Final = 0.040
"""A gap longer than this counts (``calls with a gap > 40 ms``): a stutter a caller hears."""

HEADER: Final = (
    "| variant | first audio p50 / p95 s | ÷ (c) p50 / p95 | last audio p50 / p95 s "
    "| calls with a gap > 40 ms | total gap s | longest gap ms "
    "| Hamsa sockets / requests per call | failed |"
)


def gap_figures(r: VariantResult) -> tuple[int, float, float]:
    """Calls with a gap over 40 ms, total gap time and the longest gap (complete calls only)."""
    calls = [c for c in r.calls if c.problem is None]
    stuttered = sum(c.longest_gap > GAP_LIMIT for c in calls)
    total = sum(c.gap_seconds for c in calls)
    longest = max((c.longest_gap for c in calls), default=0.0)
    return stuttered, total, longest


def table(results: Sequence[VariantResult], calls: int) -> list[str]:
    reference = next(r for r in results if r.key == "c")
    ref = {q: quantile(reference.values("first"), q) for q in (0.5, 0.95)}
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in results:
        first = [quantile(r.values("first"), q) for q in (0.5, 0.95)]
        last = [quantile(r.values("last"), q) for q in (0.5, 0.95)]
        stuttered, total, longest = gap_figures(r)
        cells = [
            r.label,
            f"{seconds(first[0])} / {seconds(first[1])}",
            f"{ratio(first[0], ref[0.5])} / {ratio(first[1], ref[0.95])}",
            f"{seconds(last[0])} / {seconds(last[1])}",
            f"{stuttered} of {len(r.calls) - r.failed}",
            f"{total:.2f}",
            f"{longest * 1000:.0f}",
            f"{r.sockets / calls:.1f} / {r.requests / calls:.1f}",
            str(r.failed),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(results: Sequence[VariantResult], calls: int) -> list[dict[str, Any]]:
    """The table's figures as JSON-ready data (seconds; ratios to (c))."""
    reference = next(r for r in results if r.key == "c")
    out = []
    for r in results:
        stuttered, total, longest = gap_figures(r)
        item: dict[str, Any] = {"key": r.key, "label": r.label, "calls": len(r.calls)}
        for name in ("first", "last"):
            for q in (0.5, 0.95):
                value = quantile(r.values(name), q)
                item[f"{name}_p{round(q * 100)}"] = value
                if name == "first":
                    theirs = quantile(reference.values(name), q)
                    item[f"first_p{round(q * 100)}_ratio_c"] = (
                        value / theirs if value is not None and theirs else None
                    )
        item.update(
            calls_with_gap_over_40ms=stuttered,
            gaps=sum(c.gaps for c in r.calls if c.problem is None),
            gap_total_s=total,
            longest_gap_s=longest,
            hamsa_sockets_per_call=r.sockets / calls,
            hamsa_requests_per_call=r.requests / calls,
            hamsa_first_byte_p50=quantile(r.first_byte, 0.5),
            hamsa_first_byte_p95=quantile(r.first_byte, 0.95),
            failed=r.failed,
            problems=sorted({c.problem for c in r.calls if c.problem is not None}),
            warm_taken_direct=list(r.warm) if r.warm is not None else None,
        )
        out.append(item)
    return out


def goal_line(results: Sequence[VariantResult], model: str, key: str = "a") -> str:
    """Issue 12's goals for variant ``key`` against (c): under ``realistic`` and ``observed``, no
    call with a gap over 40 ms inside the utterance and first audio at most half of (c)'s at p50
    and p95; under ``slow``, no more gap time than (c)."""
    by_key = {r.key: r for r in results}
    a, c = by_key[key], by_key["c"]
    name = {"a": "(a)", "a+pool": "(a) warm pool"}.get(key, key)
    calls_a = [x for x in a.calls if x.problem is None]
    calls_c = [x for x in c.calls if x.problem is None]
    gap_a = sum(x.gap_seconds for x in calls_a)
    gap_c = sum(x.gap_seconds for x in calls_c)
    if model == "slow":
        verdict = "MET" if gap_a <= gap_c + 1e-9 else "NOT MET"
        return (
            f"goal {name} gap time ≤ (c)'s: {gap_a:.2f} s against {gap_c:.2f} s in all → {verdict}"
        )
    parts = []
    met = True
    for q in (0.5, 0.95):
        mine, theirs = quantile(a.values("first"), q), quantile(c.values("first"), q)
        if mine is None or theirs is None:
            return f"goal {name}: not measured (failed calls)"
        share = mine / theirs
        met = met and share <= 0.5
        parts.append(f"p{round(q * 100)} {mine:.2f} / {theirs:.2f} s = {share:.2f}")
    stuttered = sum(1 for x in calls_a if x.longest_gap > GAP_LIMIT)
    met = met and stuttered == 0
    verdict = "MET" if met else "NOT MET"
    line = (
        f"goal {name} first audio ≤ ½ of (c)'s and no gap > 40 ms: {'; '.join(parts)}; "
        f"{stuttered} of {len(calls_a)} calls with a gap > 40 ms → {verdict}"
    )
    if model not in ("realistic", "observed"):
        line += " (the goal is set for realistic and observed; shown for reference)"
    if key != "a":
        return line
    warm = by_key.get("a+cache")
    if warm is not None:
        mine, theirs = quantile(warm.values("first"), 0.95), quantile(c.values("first"), 0.95)
        if mine is not None and theirs is not None:
            line += f" (with the prompt cache warm: p95 {mine:.3f} / {theirs:.2f} s"
            line += f" = {mine / theirs:.3f})"
    return line


def git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_lines() -> list[str]:
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (plus uncommitted changes in the working tree)"
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    load = load_average()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"date: {now}",
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        f"python: {platform.python_version()}, event loop: {loop} (every peer in this process)",
        f"commit: {commit}",
        f"load average before: {load}",
    ]


ANNOUNCEMENT_SCENARIO: Final = Scenario(
    "announcement", "3-sentence announcement", ANNOUNCEMENT, False
)


def scenarios_for(model: Model, choice: str) -> list[Scenario]:
    """``--scenario auto``: both for realistic (and the smoke run), the announcement otherwise."""
    if choice == "auto":
        choice = "both" if model.key in ("realistic", "smoke") else "announcement"
    found = []
    if choice in ("announcement", "both"):
        found.append(ANNOUNCEMENT_SCENARIO)
    if choice in ("ivr", "both"):
        found.append(
            Scenario("ivr", "IVR menu prompt (clinic.toml main_menu)", menu_prompt(), True)
        )
    return found


async def measure_model(
    model: Model, args: argparse.Namespace, workdir: Path
) -> tuple[dict[str, Any], int]:
    """Every scenario of one model: print its tables, return its JSON summary and failures."""
    failed = 0
    report: dict[str, Any] = {"description": model.name, "scenarios": {}}
    print()
    print(f"## Hamsa delivery model {model.name}; seed {args.seed}")
    for scenario in scenarios_for(model, args.scenario):
        pieces = model.segments(scenario.text)
        audio = model.audio_bytes(scenario.text) / 8000
        print()
        print(
            f"### {model.key} — {scenario.title}: {len(scenario.text)} characters, "
            f"{len(pieces)} Hamsa requests ({', '.join(str(len(p)) for p in pieces)} chars), "
            f"{audio:.1f} s of audio"
        )
        print()
        begun = time.monotonic()
        results, lag = await run_scenario(
            scenario, model, calls=args.calls, spacing=args.spacing, workdir=workdir
        )
        for line in table(results, args.calls):
            print(line)
        print()
        bridge = results[0]
        fb50, fb95 = quantile(bridge.first_byte, 0.5), quantile(bridge.first_byte, 0.95)
        differ = [r.label for r in results if r.requests and r.draws != bridge.draws]
        print(
            f"Hamsa's first audio after the first request: p50 {seconds(fb50)} / p95 "
            f"{seconds(fb95)} s (plus {model.emulator.connect_delay:g} s to connect); "
            f"the same replies (chunking and timing draws) in every variant: "
            f"{'NO: ' + ', '.join(differ) if differ else 'yes'}"
        )
        print(goal_line(results, model.key))
        print(goal_line(results, model.key, "a+pool"))
        for r in results:
            if r.warm is not None:
                print(
                    f"{r.label}: {r.warm[0]} calls took a warm Hamsa socket, "
                    f"{r.warm[1]} connected directly (pool empty)"
                )
        p99, worst = quantile(lag.lags, 0.99) or 0.0, max(lag.lags, default=0.0)
        other = "-" if lag.other_cpu is None else f"{lag.other_cpu:.0f}%"
        took = time.monotonic() - begun
        print(
            f"while the calls ran: event-loop lag p99 {p99 * 1000:.1f} ms, "
            f"max {worst * 1000:.1f} ms; this process {lag.own_cpu:.0f}% of a core, "
            f"other processes {other}; scenario took {took:.0f} s"
        )
        for r in results:
            problems = sorted({c.problem for c in r.calls if c.problem is not None})
            if problems:
                print(f"{r.label}: {r.failed} failed: {'; '.join(problems[:3])}")
        failed += sum(r.failed for r in results)
        report["scenarios"][scenario.key] = {
            "title": scenario.title,
            "characters": len(scenario.text),
            "requests": len(pieces),
            "audio_s": audio,
            "same_draws": not differ,
            "variants": summary(results, args.calls),
            "event_loop_lag_p99_s": p99,
            "event_loop_lag_max_s": worst,
            "own_cpu_percent": lag.own_cpu,
            "other_cpu_percent": lag.other_cpu,
            "took_s": took,
        }
    return report, failed


# --- fast delivery: first frame after the first byte ----------------------------------------------

FAST_CHECK_LIMIT: Final = 0.010
"""The lead's criterion: with fast delivery, the first frame within 10 ms of the first byte."""


async def fast_check(model: Model, calls: int, workdir: Path) -> tuple[dict[str, Any], int]:
    """With fast delivery (``EmulatorConfig.fast``: 3x real time, a first frame of 1.0-1.5 s of
    audio), how long after Hamsa's first byte the caller gets the first frame.

    Measured per call as the caller's first ``media`` arrival minus the emulator's
    ``RequestRecord.first_audio_at`` of the call's first request (both ``time.monotonic()`` in
    this one process). Included: the emulator's send, loopback TCP, the bridge's Hamsa client
    (receive, protocol, WAV detection, framing), its start policy and pacer, the ``media``
    message's JSON and base64, the bridge's WebSocket send, loopback TCP and the caller's
    receive; and whatever event-loop lag the peers (all in this process) cause each other. The
    calls run one at a time (no concurrency), on the bridge with its warm pool (production
    default), each hanging up once its first reply is well under way. The bridge process's very
    first call is reported apart: nothing was learned yet, so the start policy judges it by its
    real-time prior (and holds a many-sentence utterance a little); the ``calls`` measured calls
    come after it.
    """
    scenario = ANNOUNCEMENT_SCENARIO
    first_call: float | None = None
    deltas: list[float] = []
    firsts: list[float] = []
    problems: list[str] = []
    print()
    print(f"## Fast delivery check: {model.name}")
    async with bridge_target(scenario, model, workdir, warm_pool=True) as target:
        emulator = model.emulator
        hangup = emulator.connect_delay + _high(emulator.first_byte_delay) + 1.0
        async with httpx2.AsyncClient(timeout=30.0) as http:
            for index in range(calls + 1):
                before = len(target.hamsa.requests)
                result = await place_call(target.plan(hangup_after=hangup), http=http)
                requests = target.hamsa.requests[before:]
                leg = result.leg
                if leg is None or result.started_at is None or not requests:
                    problems.append(f"no stream or no request (webhook {result.webhook_status})")
                    continue
                sent = requests[0].first_audio_at
                heard = leg.timeline.first_media_at
                if sent is None or heard is None:
                    problems.append("no audio before the hang-up")
                    continue
                if index == 0:
                    first_call = heard - sent
                else:
                    deltas.append(heard - sent)
                    firsts.append(heard - result.started_at)
                # the call's Hamsa socket closes before the next call starts: one at a time
                used = requests[0].connection_id
                async with asyncio.timeout(30):
                    await target.hamsa.wait_until(
                        lambda s, used=used: s.connections[used - 1].closed_at is not None
                    )
    p50, p95 = quantile(deltas, 0.5), quantile(deltas, 0.95)
    worst = max(deltas, default=None)
    within = sum(d <= FAST_CHECK_LIMIT for d in deltas)
    ms = lambda v: "-" if v is None else f"{v * 1000:.1f}"  # noqa: E731
    print(
        f"first frame after Hamsa's first byte (bridge, warm pool, {calls} calls one at a time): "
        f"p50 {ms(p50)} / p95 {ms(p95)} / max {ms(worst)} ms; within 10 ms: "
        f"{within} of {len(deltas)} → {'MET' if deltas and within == len(deltas) else 'NOT MET'}"
    )
    print(
        f"the process's first call (judged by the prior, not counted above): first frame "
        f"{ms(first_call)} ms after the first byte"
    )
    print(
        f"first audio after start: p50 {seconds(quantile(firsts, 0.5))} / "
        f"p95 {seconds(quantile(firsts, 0.95))} s"
    )
    if problems:
        print(f"fast check: {len(problems)} calls failed: {'; '.join(sorted(set(problems))[:3])}")
    report = {
        "description": model.name,
        "calls": calls,
        "first_frame_after_first_byte_s": deltas,
        "p50_s": p50,
        "p95_s": p95,
        "max_s": worst,
        "within_10ms": within,
        "first_audio_s": firsts,
        "first_call_of_the_process_s": first_call,
        "problems": problems,
    }
    return report, len(problems)


def _high(value: float | tuple[float, float]) -> float:
    return value[1] if isinstance(value, tuple) else value


async def bench_main(args: argparse.Namespace) -> int:
    if args.smoke:
        models = [smoke_model(args.seed)]
    else:
        models = [delivery_model(name, args.seed) for name in args.models]
    for line in machine_lines():
        print(line)
    print(f"models: {', '.join(m.key for m in models)}; seed {args.seed}")
    print(f"calls: {args.calls} per variant and scenario, one started every {args.spacing:g} s")
    if args.smoke:
        print("smoke run: checks that every variant works end to end; its figures are not results")
    failed = 0
    report: dict[str, Any] = {
        "machine": machine_lines(),
        "seed": args.seed,
        "calls": args.calls,
        "spacing_s": args.spacing,
        "smoke": args.smoke,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="hamsa-first-audio-") as tmp:
        for model in models:
            report["models"][model.key], lost = await measure_model(model, args, Path(tmp))
            failed += lost
        if args.fast_check or args.smoke:
            fast = (
                smoke_model(args.seed, "fast") if args.smoke else delivery_model("fast", args.seed)
            )
            report["fast_check"], lost = await fast_check(
                fast, 1 if args.smoke else args.fast_calls, Path(tmp)
            )
            failed += lost
    print(f"load average after: {load_average()}")
    if args.json:
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        await asyncio.to_thread(Path(args.json).write_text, text, encoding="utf-8")
        print(f"JSON summary written to {args.json}")
    return 1 if failed else 0


def _models(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in DELIVERY_MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(DELIVERY_MODELS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time to first audio and gaps: hamsa-bridge versus the seed FAQ's naive "
        "patterns, under several Hamsa delivery models."
    )
    parser.add_argument("--calls", type=int, default=None, help="calls per variant (20)")
    parser.add_argument(
        "--spacing", type=float, default=None, help="seconds between call starts (1.5)"
    )
    parser.add_argument("--seed", type=int, default=1, help="the emulators' seed (1)")
    parser.add_argument(
        "--models",
        type=_models,
        default=list(MODELS),
        help=f"comma-separated delivery models ({','.join(MODELS)})",
    )
    parser.add_argument(
        "--scenario",
        choices=("auto", "announcement", "ivr", "both"),
        default="auto",
        help="(auto: both for realistic, the announcement for the other models)",
    )
    parser.add_argument(
        "--fast-check",
        action="store_true",
        help="also run the fast model: the bridge's first frame after Hamsa's first byte",
    )
    parser.add_argument(
        "--fast-calls", type=int, default=20, help="calls of the fast check, one at a time (20)"
    )
    parser.add_argument("--json", metavar="FILE", help="write a JSON summary to FILE")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one call per variant, scaled-down latency, plus one fast-check call: seconds, "
        "no timing claims",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calls is None:
        args.calls = 1 if args.smoke else 20
    if args.spacing is None:
        args.spacing = 0.0 if args.smoke else 1.5
    if args.calls < 1 or args.spacing < 0:
        print("first_audio: --calls must be ≥ 1 and --spacing ≥ 0", file=sys.stderr)
        return 2
    configure_logging(level="warning", fmt="console")
    started = time.monotonic()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        code = runner.run(bench_main(args))
    print(f"run time: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
