"""How many concurrent calls one ``hamsa-bridge serve`` process (one core) carries.

Method
------

* The bridge runs exactly as in production: ``python -m bridge.cli serve`` in a subprocess (uvloop
  where installed, JSON logs at level warning unless ``--log-level``), pinned to one CPU with
  ``os.sched_setaffinity`` when the machine has two or more; this process (the load generator)
  pins itself to another one. Whether pinning happened is printed.
* This process runs the Hamsa emulator (``create_emulator_app``: fixed 0.3 s first byte,
  synthesis 3x faster than real time, ``ms_per_char`` ms of audio per character, no faults) and
  the simulated Twilio callers: the bench's own lean caller (``LeanCall``, see its section): the
  signed webhook, then a hand-spoken WebSocket that sends a 20 ms media frame every 20 ms (one
  ticker for all calls, in ``TICK_GROUPS`` phases), models Twilio's playout buffer, echoes marks
  when their audio has played and timestamps every frame received. Every call speaks
  ``BRIDGE_GREETING``: sentences adding up to ``--duration`` seconds (30) of audio, pipelined on
  the call's one Hamsa socket, so audio plays without a pause for the whole steady window.
* Each step gets a fresh bridge process (so its RSS growth is the step's own), warmed up by one
  short unmeasured call. First (``--latency-calls``, 20) calls one at a time through a fresh
  bridge, each hanging up after 0.3 s of audio: bridge-added latency with one call. Then the
  unloaded reference (3 calls) and each step of ``--calls``: N calls arriving evenly at
  ``SETUP_RATE`` (50) a second (at least over 2 s; ``--ramp`` overrides), run to their end.
* Per step:

  - bridge CPU: utime + stime of the bridge process alone, all its threads
    (``/proc/<pid>/stat``, sampled every 0.5 s), over the steady window in which all N calls
    were playing (the last call's first audio to the first call's end), in % of one core (in
    brackets over the ramp); CPU per call = that / N; calls per core = 100 % / CPU per call.
    Neither the generator's CPU nor anyone else's is in it. For comparison with measures of the
    whole box the machine's busy ticks over the same window (``/proc/stat``, every CPU: bridge,
    generator and everyone else, in % of one core) are printed too ("machine CPU", and in each
    step's note the calls per core they would give);
  - bridge RSS (peak ``VmRSS``) and its growth per call over the idle, warmed-up process (each
    call holds a Twilio socket and a Hamsa socket);
  - from the bridge's ``/metrics`` (deltas, bucket upper bounds): event-loop lag (a 0.5 s timer)
    p50/p99/max; **writer lateness**: each time the playback writer sleeps for the pacing clock,
    the time it sends the batch's first frame minus the instant the clock let that frame go
    (``hamsa_bridge_pacing_lateness_seconds``): how late the bridge is on its own schedule;
    **bridge-added latency** p50/p99 (``hamsa_bridge_bridge_added_latency_seconds``: first Hamsa
    audio bytes received to the first frame sent, for an utterance reaching an empty queue, so
    one sample per call here); underruns; frames sent;
  - at the callers (exact): **frame lateness**: for every frame received once the lead is
    established in a run of playback, its *margin* is how long before its play time it arrived
    (Twilio's buffer modelled: play time = end of the audio already buffered). The pacing plan
    never leaves a frame less than ``PLAN_MARGIN_DEFAULT`` (120 ms: it tops the 220 ms lead up
    when it has drained to 220 - 20 - 80 ms), so lateness = max(0, 120 ms - margin): 0 for every
    frame on or ahead of the plan; it includes loopback transit and the generator's own lag.
    p50/p99/max and the frames later than ``JITTER_LIMIT`` (10 ms); gaps heard; first audio
    (``start`` sent to the first media frame); frames received against the greeting's; failed
    calls (no stream, not closed 1000 by the bridge, short of audio, or a media frame whose
    payload is not 160 bytes).
* The generator measures itself: its CPU over the steady window and its loop lag (a 50 ms
  timer); at ``GEN_CPU_LIMIT`` or a lag p99 of ``GEN_LAG_LIMIT`` it counts as saturated and the
  step is invalid. Its cyclic GC is off during a step. "Other CPU" is the machine's busy time
  (``/proc/stat``) minus the bridge and the generator, in % of one core.

Targets (``--target``)
----------------------

The same generator, callers and figures can be aimed at other servers, started, pinned, warmed
up and measured exactly as the bridge (a fresh process per step, CPU from its own ``/proc``
ticks, RSS growth per call, frame lateness at the callers):

* ``floor``: ``bench/floor_server.py``, the least a pure-Python server does for the same media
  path (uvloop, an ``asyncio.Protocol`` around websockets' sans-I/O ``ServerProtocol``, inbound
  media dropped unparsed, one ``writelines`` of 5 precomputed frames per 100 ms). Its plan keeps
  the bridge's 120 ms smallest lead, so frame lateness means the same. No Hamsa socket.
* ``pipecat``: ``bench/pipecat_server.py``, Pipecat's FastAPI websocket transport with its
  ``TwilioFrameSerializer`` and a local fake TTS (no STT, no LLM, no network), run by the
  interpreter of its own virtual environment (``--pipecat-python``; missing: exit 2 with the
  install commands). Pipecat runs one frame ahead, so its frame lateness is measured against a
  20 ms lead (``PLAN_MARGINS``).

With several targets (``--target both`` = bridge,floor; ``all``; ``--compare-pipecat`` adds
Pipecat) each step runs against each target in turn, rows are named by target, the 1-call latency
pass runs for the bridge only, and a last table puts each target's CPU and memory per call, frame
lateness p99 and audio rate side by side with their ratios to the floor: the bridge's CPU per
call ÷ the floor's is what everything the bridge adds costs.

Verdict: the largest N such that it and every smaller step passed: bridge CPU below 80 % of one
core, no underrun and no gap, no failed call, the server idle again within ``IDLE_TIMEOUT`` after
the calls, loop lag, writer lateness and frame lateness p99 at most 10 ms, first-audio p95 within
0.2 s of the unloaded step's; a saturated generator ends the
verdict. A step that fails while other processes use ``OTHER_CPU_LIMIT`` of a core or more is
repeated (``--retries``, once by default).

``--stall-report [MS]``: the bridge runs with ``BRIDGE_STALL_REPORT_MS`` (20 ms by default;
``bridge.stall_report``) and each step (and the soak) ends with the event-loop stalls of MS or
more seen during it, by cause (GC generation, the frame, JSON, logging, store I/O, "not
scheduled"), and the bridge's collections by generation over its life.

``--soak``: one bridge, ``--soak-calls`` calls at once for ``--soak-seconds``, each replaced by a
new call as it ends; every ``--soak-interval`` seconds the bridge's RSS, open file descriptors,
active calls and CPU are printed; at the end the same per-frame figures, failed calls, and idle
RSS and fds before and after. ``--smoke``: every mode for seconds with a handful of calls (CI);
figures are printed, not judged, but a failed call or a malformed frame exits 1.

Caveats
-------

* Loopback only: no network latency or jitter, no TLS (usually terminated by the ingress).
* Hamsa is an emulator with fixed timing; its audio is computed in the generator, not the bridge.
* The generator and other people's processes share the machine (2 vCPUs here): compare runs
  only with the "other CPU" column in view.
* One greeting per call, no keypresses, no IVR, no announcements database.

Run: ``python bench/capacity.py [--calls 50,100,200,300] [--quick | --soak | --smoke]
[--target bridge|floor|pipecat|both|all] [--compare-pipecat]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import bisect
import contextlib
import gc
import json
import math
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import httpx2
from _common import (
    CLOCK_TICKS,
    KEY,
    OWN_PREFIXES,
    TOKEN,
    ServedBridge,
    allowed_cpus,
    cpu_model,
    free_port,
    load_average,
    loop_factory,
    machine_busy_ticks,
    open_fds,
    rss_bytes,
    serve_env,
    served_bridge,
    tree_rss_bytes,
    tree_ticks,
    uvloop_installed,
)
from figures import quantile
from pipecat_server import EXIT_MISSING, INSTALL_HINT
from prometheus_client.parser import text_string_to_metric_families

from bridge.dev.caller import parse_connect_stream
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorState, create_emulator_app
from bridge.dev.media_leg import STREAM_USER_AGENT
from bridge.dev.servers import serving
from bridge.dev.twilio_stream_client import TwilioMediaLeg
from bridge.sentences import split_text
from bridge.signatures import TwilioSignatures
from bridge.stall_report import cause_group, summarise

MS_PER_CHAR: Final = 80.0
"""Audio per character of the emulator (the logged Hamsa replies carry 80-100 ms)."""
FIRST_BYTE_DELAY: Final = 0.3
SYNTHESIS_SPEED: Final = 3.0
CHUNK_BYTES: Final = 1600
"""Largest emulator binary frame: 200 ms of μ-law, so replies stream steadily (with 64 KB frames
a short first frame followed by a long second one makes gaps at any load)."""
UNLOADED_CALLS: Final = 3
WARM_UP_SECONDS: Final = 2.0
IDLE_TIMEOUT: Final = 30.0
"""Seconds the server under test gets to be idle again after a step's calls are done."""
SAMPLE_INTERVAL: Final = 0.5
"""Seconds between CPU/RSS samples (a sampling interval, not synchronisation)."""
GEN_LAG_INTERVAL: Final = 0.05
CPU_LIMIT: Final = 80.0
"""Bridge CPU (% of one core) a step may use and still pass."""
FIRST_AUDIO_MARGIN: Final = 0.2
"""Seconds a step's first-audio p95 may exceed the unloaded step's."""
GEN_CPU_LIMIT: Final = 90.0
GEN_LAG_LIMIT: Final = 0.05
JITTER_LIMIT: Final = 0.010
"""The goal's bound on p99 loop lag and pacing lateness (a step over it does not pass)."""
SETUP_RATE: Final = 50.0
"""Default arrival rate (calls set up per second) of a step's ramp."""
OTHER_CPU_LIMIT: Final = 15.0
"""Other processes using this much of a core during a step make it invalid (repeated once)."""
TARGETS: Final = ("bridge", "floor", "pipecat", "workers")
"""The servers a run can measure (``--target``): ``hamsa-bridge serve`` (one process), the floor
server (``bench/floor_server.py``), a Pipecat pipeline (``bench/pipecat_server.py``) and
``hamsa-bridge serve --workers N``, one worker per CPU (``workers``: nothing is pinned then, see
``main``)."""
BENCH_DIR: Final = Path(__file__).resolve().parent
PIPECAT_VENV_PYTHON: Final = BENCH_DIR.parent / ".venv-pipecat" / "bin" / "python"
SENTENCES: Final = (
    "مرحبا بك في خدمة همسة للرد الآلي على المكالمات الهاتفية.",
    "نحن سعداء بتواصلك معنا ونرجو أن تكون بخير وصحة جيدة.",
    "يمكنك الاستماع إلى هذه الرسالة حتى نهايتها أو إنهاء المكالمة.",
    "ساعات العمل من الأحد إلى الخميس من الثامنة صباحا حتى الرابعة.",
    "للمواعيد والاستفسارات يرجى زيارة موقعنا الإلكتروني في أي وقت.",
    "شكرا لاتصالك بنا ونتمنى لك يوما سعيدا مليئا بالخير والنجاح.",
)


def greeting_for(duration: float) -> str:
    """Whole sentences adding up to at least ``duration`` seconds of emulator audio."""
    need = math.ceil(duration * 1000 / MS_PER_CHAR)
    parts: list[str] = []
    while len(" ".join(parts)) < need:
        parts.append(SENTENCES[len(parts) % len(SENTENCES)])
    return " ".join(parts)


def expected_frames(greeting: str, ms_per_char: float = MS_PER_CHAR) -> int:
    """Media frames one call must receive: each utterance's audio, its last frame padded."""
    per_char = round(8000 * ms_per_char / 1000)
    return sum(math.ceil(len(piece) * per_char / 160) for piece in split_text(greeting))


# --- Prometheus --------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def total_delta(after: Samples, before: Samples, name: str) -> float:
    """Sum over every label set of ``name``."""
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == name)


def histogram_delta(after: Samples, before: Samples, name: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` buckets of a histogram's observations between two scrapes."""
    buckets = [
        (float(dict(labels)["le"]), value - before.get((sample, labels), 0.0))
        for (sample, labels), value in after.items()
        if sample == name + "_bucket"
    ]
    return sorted(buckets)


def histogram_bucket(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Upper bound of the bucket holding the q-quantile (no interpolation: "at most")."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    return next(upper for upper, count in buckets if count >= rank)


def histogram_max_bucket(buckets: Sequence[tuple[float, float]]) -> float | None:
    """Upper bound of the highest bucket holding an observation (None: no observation)."""
    previous = 0.0
    top: float | None = None
    for upper, count in buckets:
        if count > previous:
            top = upper
        previous = count
    return top


# --- the bridge under test ---------------------------------------------------------------------


def log_event(line: str) -> dict[str, Any]:
    """One line of the bridge's log (a line that is not JSON: its text as the event)."""
    try:
        event: dict[str, Any] = json.loads(line)
    except ValueError:
        return {"event": line.strip()}
    return event


LOGURU_LINE: Final = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \| *(\w+) *\| *(\S+)")
"""A loguru line (Pipecat's log): its level and its ``module:function:line``."""
HEX_ADDRESS: Final = re.compile(r" at 0x[0-9a-f]+")


def log_kind(line: str) -> str:
    """What a log line counts as in a step's note: a JSON line's event; a loguru line's level and
    place (not its time and object addresses: one kind, however many lines); else the text."""
    found = LOGURU_LINE.match(line)
    if found is not None:
        return f"{found[1]} {found[2]}"
    return HEX_ADDRESS.sub("", str(log_event(line).get("event", "?")))[:120]


def log_tail(bridge: ServedBridge) -> list[dict[str, Any]]:
    """The last lines of the bridge's log (for an error message)."""
    return [log_event(line) for line in bridge.lines[-5:]]


async def scrape(bridge: ServedBridge, http: httpx2.AsyncClient) -> Samples:
    response = await http.get(bridge.url + "/metrics")
    response.raise_for_status()
    return parse_metrics(response.text)


@asynccontextmanager
async def running_bridge(
    hamsa_url: str,
    greeting: str,
    *,
    max_calls: int,
    cpu: int | None,
    log_level: str,
    workers: int = 1,
    stall_report_ms: float = 0.0,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[ServedBridge]:
    """``hamsa-bridge serve`` in a subprocess (pinned to ``cpu``), ready, until the block exits;
    ``workers`` > 1: ``serve --workers`` (``max_calls`` is per worker). ``settings``: more
    ``BRIDGE_*``/``HAMSA_*`` variables (``--set``), applied last.

    The environment is this one without any ``BRIDGE_*``, ``HAMSA_*`` or ``TWILIO_*`` variable
    (an IVR flow or a metrics port set in the shell would change what is measured).
    """
    port = free_port()
    pin = pinner(cpu)
    with tempfile.TemporaryDirectory(prefix="hamsa-bench-") as workdir:
        env = serve_env(
            hamsa_url,
            hamsa_key=KEY,
            auth_token=TOKEN,
            public_url=f"http://127.0.0.1:{port}",
            clean=True,
            BRIDGE_GREETING=greeting,
            BRIDGE_LOG_LEVEL=log_level,
            BRIDGE_MAX_CALLS=str(max_calls),
            BRIDGE_DATABASE_URL=f"sqlite:///{workdir}/bench.db",
            BRIDGE_WORKERS=str(workers),
            BRIDGE_STALL_REPORT_MS=f"{stall_report_ms:g}",
            **(settings or {}),
        )
        async with served_bridge(port, env, graceful=True, cwd=workdir, preexec_fn=pin) as bridge:
            async with httpx2.AsyncClient(timeout=2.0) as http:
                await wait_ready(bridge, http)
            yield bridge


def pinner(cpu: int | None) -> Callable[[], None]:
    """What runs in a server's child process before exec: pins it (and so every thread it
    starts) to ``cpu``."""

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return pin


@asynccontextmanager
async def running_reference(
    script: Path, python: str, *, frames_per_call: int, cpu: int | None
) -> AsyncIterator[ServedBridge]:
    """A reference server (``bench/floor_server.py``, ``bench/pipecat_server.py``) run by
    ``python`` in a subprocess pinned to ``cpu``, ready, until the block exits; each call it
    answers speaks ``frames_per_call`` frames. The environment is this one without the bridge's
    settings."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    command = [python, str(script), "--port", str(port), "--frames", str(frames_per_call)]
    with tempfile.TemporaryDirectory(prefix="hamsa-bench-") as workdir:
        async with served_bridge(
            port, env, graceful=True, cwd=workdir, preexec_fn=pinner(cpu), command=command
        ) as server:
            async with httpx2.AsyncClient(timeout=2.0) as http:
                await wait_ready(server, http)
            yield server


async def wait_ready(bridge: ServedBridge, http: httpx2.AsyncClient) -> None:
    """Poll ``/readyz`` (at log level warning the bridge prints nothing when it is ready, and no
    other event crosses the process boundary)."""
    async with asyncio.timeout(30):
        while True:
            if bridge.process.returncode is not None:
                raise RuntimeError(f"the server under test exited: {log_tail(bridge)}")
            with contextlib.suppress(httpx2.TransportError):
                if (await http.get(bridge.url + "/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)


class NotIdle(RuntimeError):
    """The server under test still had calls or streams ``IDLE_TIMEOUT`` after the callers were
    done (an overloaded server still tearing calls down, or calls it lost track of)."""

    def __init__(self, samples: Samples) -> None:
        active = samples.get(("hamsa_bridge_active_calls", ()), 0.0)
        streams = samples.get(("hamsa_bridge_open_streams", ()), 0.0)
        super().__init__(
            f"not idle {IDLE_TIMEOUT:.0f} s after the calls: {active:.0f} calls, "
            f"{streams:.0f} streams left"
        )
        self.samples = samples


async def wait_idle(bridge: ServedBridge, http: httpx2.AsyncClient) -> Samples:
    """The bridge's metrics once no call and no stream is left (calls end just after the
    callers see the socket close: the bridge's counters settle a moment later); ``NotIdle``
    after ``IDLE_TIMEOUT``."""
    samples: Samples = {}
    try:
        async with asyncio.timeout(IDLE_TIMEOUT):
            while True:
                samples = await scrape(bridge, http)
                active = samples.get(("hamsa_bridge_active_calls", ()), 0.0)
                streams = samples.get(("hamsa_bridge_open_streams", ()), 0.0)
                if active == 0 and streams == 0:
                    return samples
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise NotIdle(samples) from None


# --- sampling ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    at: float
    bridge_ticks: int
    gen_cpu: float
    machine_ticks: int
    bridge_rss: int


def take_sample(pid: int) -> Sample:
    return Sample(
        at=time.monotonic(),
        bridge_ticks=tree_ticks(pid),
        gen_cpu=time.process_time(),
        machine_ticks=machine_busy_ticks(),
        bridge_rss=tree_rss_bytes(pid),
    )


class Sampler:
    """CPU and RSS every ``SAMPLE_INTERVAL``, and this process' event-loop lag, while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[Sample] = []
        self.gen_lag: list[tuple[float, float]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def _sample(self) -> None:
        while True:
            self.samples.append(take_sample(self.pid))
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def _lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(GEN_LAG_INTERVAL)
            now = loop.time()
            self.gen_lag.append((now, max(0.0, now - before - GEN_LAG_INTERVAL)))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sample()), asyncio.create_task(self._lag())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.samples.append(take_sample(self.pid))

    def other_cpu(self) -> float:
        """Other processes' CPU over the sampling, in % of one core: the machine's busy time
        minus the bridge's and the generator's."""
        first, last = self.samples[0], self.samples[-1]
        span = last.at - first.at
        if span <= 0:
            return 0.0
        ours = (last.bridge_ticks - first.bridge_ticks) / CLOCK_TICKS
        ours += last.gen_cpu - first.gen_cpu
        machine = (last.machine_ticks - first.machine_ticks) / CLOCK_TICKS
        return max(0.0, machine - ours) / span * 100

    def window(self, start: float, end: float) -> tuple[Sample, Sample] | None:
        """The first and last samples inside ``[start, end]`` (None: fewer than two)."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            return None
        return inside[0], inside[-1]


# --- the lean simulated caller -----------------------------------------------------------------
#
# ``bridge.dev.caller.place_call`` (the websockets client, ``TwilioMediaLeg`` keeping every byte
# heard, one ticker task per call) saturates the generator's core near 300 calls. The bench's own
# caller does the same on the wire with far less work: after the webhook (httpx, once per call)
# it speaks WebSocket by hand on an ``asyncio.Protocol`` (a hand-written upgrade request; client
# frames masked with a zero key, which RFC 6455 permits the server to receive), one ticker for
# every call sends each call's 20 ms media frame in one of ``TICK_GROUPS`` phase groups (so the
# bridge sees arrivals spread over the 20 ms as from independent calls, not one burst), and the
# bridge's media frames are checked by length (a 160-byte payload) and timestamped, not decoded
# (a ``media`` message spelled otherwise, as Pipecat's ``json.dumps`` spaces it, is parsed and its
# payload decoded instead: the same check, at the generator's extra cost).
# Twilio's playout buffer is modelled by its end time only; marks are echoed when the audio
# before them has played, at once on ``clear``; pings are answered.

SILENCE_B64: Final = binascii.b2a_base64(b"\xff" * 160, newline=False).decode()
TICK: Final = 0.020
TICK_GROUPS: Final = 10
PLAN_MARGIN_DEFAULT: Final = 0.120
"""The smallest lead the bridge's pacing plans to leave a frame: it tops Twilio's buffer up to
``lead`` (220 ms) when it has drained to ``lead - frame - refill`` (220 - 20 - 80 = 120 ms), 5
frames every 100 ms, as the floor does."""
PLAN_MARGINS: Final = {
    "bridge": PLAN_MARGIN_DEFAULT,
    "floor": PLAN_MARGIN_DEFAULT,
    "pipecat": 0.020,
    "workers": PLAN_MARGIN_DEFAULT,
}
"""Each target's smallest planned lead, what its frame lateness is measured against: the floor
plans the bridge's 120 ms (220 ms sent at once, then 100 ms every 100 ms); Pipecat's output
transport writes a frame, then sleeps until the next one is due, so it runs one frame (20 ms)
ahead."""
MARGIN_BIN: Final = 0.0001
MARGIN_BINS: Final = 10_000


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One client frame (FIN, masked with a zero key: the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Tally:
    """What every call of a step adds to: per-frame margins (how far ahead of its play time each
    frame arrived, 0.1 ms bins), counted once the lead is established in each run of playback."""

    def __init__(self) -> None:
        self.margins = [0] * (MARGIN_BINS + 1)
        self.late: list[tuple[float, float]] = []
        """(arrival, lateness) of each counted frame more than ``JITTER_LIMIT`` late, for the
        soak's attribution (``late_causes``)."""

    def margin_quantile(self, q: float) -> float | None:
        total = sum(self.margins)
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for i, count in enumerate(self.margins):
            seen += count
            if seen >= rank:
                return i * MARGIN_BIN
        return MARGIN_BINS * MARGIN_BIN

    @property
    def frames(self) -> int:
        return sum(self.margins)


class LeanCall(asyncio.Protocol):
    """One simulated Twilio media stream on a raw socket (see above)."""

    def __init__(
        self,
        *,
        host: str,
        path: str,
        signature: str,
        call_sid: str,
        parameters: dict[str, str],
        tally: Tally,
        plan_margin: float,
        hangup_after_frames: int | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = call_sid
        self.tally = tally
        self.plan_margin = plan_margin
        self.hangup_after_frames = hangup_after_frames
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"User-Agent: {STREAM_USER_AGENT}\r\nX-Twilio-Signature: {signature}\r\n\r\n"
        ).encode()
        self._leg = TwilioMediaLeg(
            self.stream_sid, call_sid, "AC" + secrets.token_hex(16), parameters
        )
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._open = False
        self._seq = 1
        self._chunk = 0
        self._media_len = len(
            f'{{"event":"media","streamSid":"{self.stream_sid}","media":{{"payload":"'
            f'{SILENCE_B64}"}}}}'
        )
        self._media_tail = f'","payload":"{SILENCE_B64}"}},"streamSid":"{self.stream_sid}"}}'
        self._play_end: float | None = None
        self._established = False
        self._after_clear = False
        self._marks: list[asyncio.TimerHandle] = []
        self._mark_names: list[str] = []
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.handshake_status: int | None = None
        self.started_at: float | None = None
        self.first_media_at: float | None = None
        self.ended_at: float | None = None
        self.frames = 0
        self.bad_frames = 0
        self.gaps = 0
        self.marks = 0
        self.close_code: int | None = None
        self.ended_by: str | None = None
        self.error: str | None = None

    # --- the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        for handle in self._marks:
            handle.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_ws_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self._write(0x1, text.encode())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self._buf
        buf += data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(bytes(buf[9:12]))
            del buf[: end + 4]
            if status != 101:
                self.handshake_status = status
                self.ended_by = "refused"
                assert self.transport is not None
                self.transport.close()
                return
            self._open = True
            self.send_text(self._leg.connected())
            self.started_at = time.monotonic()
            self.send_text(self._leg.start())
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1] & 0x7F
            off = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[off] << 8) | buf[off + 1]
                off += 2
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[off : off + 8], "big")
                off += 8
            if size - off < n:
                break
            pos = off + n
            opcode = b0 & 0x0F
            if opcode == 0x1:
                if buf.startswith(b'{"event":"media"', off):
                    self._on_media(n == self._media_len, now)
                else:
                    self._on_text(bytes(buf[off:pos]), now)
            elif opcode == 0x8:
                self.close_code = (buf[off] << 8) | buf[off + 1] if n >= 2 else 1005
                if self.ended_by is None:
                    self.ended_by = "bridge"
                self.ended_at = now
                self._write(0x8, bytes(buf[off : off + 2]))
                assert self.transport is not None
                self.transport.close()
                break
            elif opcode == 0x9:
                self._write(0xA, bytes(buf[off:pos]))
        del buf[:pos]

    # --- Twilio's side

    def _on_media(self, well_formed: bool, now: float) -> None:
        if not well_formed:
            self.bad_frames += 1
        self.frames += 1
        if self.first_media_at is None:
            self.first_media_at = now
        end = self._play_end
        if end is None or end < now:  # the buffer is empty: this frame plays at once
            if end is not None and not self._after_clear:
                self.gaps += 1
            self._established = False
            self._after_clear = False
            margin = 0.0
            self._play_end = now + TICK
        else:
            margin = end - now
            self._play_end = end + TICK
        if not self._established and margin >= self.plan_margin:
            self._established = True
        if self._established:
            self.tally.margins[min(MARGIN_BINS, int(margin / MARGIN_BIN))] += 1
            if margin < self.plan_margin - JITTER_LIMIT:
                self.tally.late.append((now, self.plan_margin - margin))
        if self.hangup_after_frames is not None and self.frames >= self.hangup_after_frames:
            self.hangup_after_frames = None
            self.hang_up("caller")

    def _on_text(self, payload: bytes, now: float) -> None:
        try:
            message = json.loads(payload)
            event = message["event"]
        except (ValueError, KeyError, TypeError):
            self.bad_frames += 1
            return
        if event == "media":  # not in the bridge's exact shape (Pipecat's json.dumps spacing…)
            media = message.get("media")
            encoded = media.get("payload") if isinstance(media, dict) else None
            try:
                size = len(base64.b64decode(encoded, validate=True)) if encoded else 0
            except (binascii.Error, TypeError, ValueError):
                size = 0
            self._on_media(message.get("streamSid") == self.stream_sid and size == 160, now)
        elif event == "mark":
            self.marks += 1
            name = str(message.get("mark", {}).get("name", ""))
            end = self._play_end
            delay = 0.0 if end is None or end <= now else end - now
            self._marks.append(self.loop.call_later(delay, self._echo, name))
            self._mark_names.append(name)
        elif event == "clear":
            self._play_end = None
            self._after_clear = True
            for handle, name in zip(self._marks, self._mark_names, strict=True):
                if not handle.cancelled():
                    handle.cancel()
                    self._echo(name, pop=False)
            self._marks.clear()
            self._mark_names.clear()

    def _echo(self, name: str, *, pop: bool = True) -> None:
        if pop and self._marks:
            self._marks.pop(0)
            self._mark_names.pop(0)
        self._seq += 1
        self.send_text(
            f'{{"event":"mark","sequenceNumber":"{self._seq}","streamSid":"{self.stream_sid}",'
            f'"mark":{{"name":{json.dumps(name)}}}}}'
        )

    def send_media(self) -> None:
        """Caller audio, as Twilio sends it (silence)."""
        self._seq += 1
        self._chunk += 1
        chunk = self._chunk
        self._write(
            0x1,
            (
                f'{{"event":"media","sequenceNumber":"{self._seq}","media":{{"track":"inbound",'
                f'"chunk":"{chunk}","timestamp":"{chunk * 20}{self._media_tail}'
            ).encode(),
        )

    def hang_up(self, why: str) -> None:
        """``stop``, then close 1000, as Twilio does when the caller hangs up."""
        if not self._open or self.ended_by is not None:
            return
        self.ended_by = why
        self.ended_at = time.monotonic()
        self._seq += 1
        self.send_text(
            f'{{"event":"stop","sequenceNumber":"{self._seq}","stop":{{"accountSid":'
            f'"{self._leg.account_sid}","callSid":"{self.call_sid}"}},'
            f'"streamSid":"{self.stream_sid}"}}'
        )
        self._write(0x8, (1000).to_bytes(2, "big"))

    @property
    def sending(self) -> bool:
        return self._open and self.ended_by is None


class Ticker:
    """Sends every open call's 20 ms media frame, the calls split in ``TICK_GROUPS`` phases."""

    def __init__(self) -> None:
        self.groups: list[set[LeanCall]] = [set() for _ in range(TICK_GROUPS)]
        self._next = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, call: LeanCall) -> None:
        self.groups[self._next % TICK_GROUPS].add(call)
        self._next += 1

    def remove(self, call: LeanCall) -> None:
        for group in self.groups:
            group.discard(call)

    async def run(self) -> None:
        step = TICK / TICK_GROUPS
        start = time.monotonic()
        n = 0
        while True:
            # Catch up after a late wake: every call keeps 50 frames/s on average.
            while start + n * step <= time.monotonic():
                for call in self.groups[n % TICK_GROUPS]:
                    if call.sending:
                        call.send_media()
                n += 1
            await asyncio.sleep(max(0.0, start + n * step - time.monotonic()))

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def lean_call(
    webhook_url: str,
    *,
    http: httpx2.AsyncClient,
    ticker: Ticker,
    tally: Tally,
    plan_margin: float,
    max_duration: float,
    hangup_after_frames: int | None = None,
) -> LeanCall | str:
    """One call: the signed webhook, then the stream until the bridge closes it. The call, or
    why it never got a stream."""
    call_sid = "CA" + secrets.token_hex(16)
    form = {
        "AccountSid": "AC" + secrets.token_hex(16),
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+966500000001",
        "To": "+966110000000",
    }
    signer = TwilioSignatures(TOKEN)
    headers = {"X-Twilio-Signature": signer.sign(webhook_url, form)}
    try:
        response = await http.post(webhook_url, data=form, headers=headers)
    except httpx2.HTTPError as exc:
        return f"webhook {type(exc).__name__}"
    if response.status_code != 200:
        return f"webhook HTTP {response.status_code}"
    found = parse_connect_stream(response.text)
    if found is None:
        return "no <Stream> in the TwiML"
    stream_url, parameters = found
    url = urllib.parse.urlsplit(stream_url)
    path = url.path + (f"?{url.query}" if url.query else "")
    call = LeanCall(
        host=url.netloc,
        path=path,
        signature=signer.sign(stream_url, {}),
        call_sid=call_sid,
        parameters=parameters,
        tally=tally,
        plan_margin=plan_margin,
        hangup_after_frames=hangup_after_frames,
    )
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: call, url.hostname or "127.0.0.1", url.port or 80)
    except OSError as exc:
        return f"connect {type(exc).__name__}"
    ticker.add(call)
    try:
        async with asyncio.timeout(max_duration):
            await asyncio.shield(call.done)
    except TimeoutError:
        call.hang_up("max_duration")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(call.done)
    finally:
        ticker.remove(call)
        if call.transport is not None and not call.transport.is_closing():
            call.transport.close()
    return call


# --- one step ----------------------------------------------------------------------------------


@dataclass
class StepResult:
    label: str
    calls: int
    target: str = "bridge"
    processes: int = 1
    """Server processes doing the work (``workers``: one per CPU); CPU is summed over them."""
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    bridge_cpu: float | None = None
    """The server under test's CPU (the bridge's, or a reference target's), steady window."""
    bridge_ramp_cpu: float | None = None
    gen_cpu: float | None = None
    machine_cpu: float | None = None
    """Busy time of every CPU together (``/proc/stat``) over the steady window, in % of one
    core: the server, the generator and everyone else."""
    audio_rate: float | None = None
    """Audio heard per second of a call's stream (1.0: real time), mean over the calls."""
    other_cpu: float | None = None
    rss_idle: int = 0
    rss_peak: int = 0
    lag_p50: float | None = None
    lag_p99: float | None = None
    lag_max: float | None = None
    writer_p50: float | None = None
    writer_p99: float | None = None
    writer_max: float | None = None
    margin_p50: float | None = None
    margin_p01: float | None = None
    margin_min: float | None = None
    late_frames: int = 0
    counted_frames: int = 0
    plan_margin: float = PLAN_MARGIN_DEFAULT
    added_p50: float | None = None
    added_p99: float | None = None
    added_count: int = 0
    gen_lag_p99: float | None = None
    gen_ramp_lag_p99: float | None = None
    gen_rss: int = 0
    underruns: int = 0
    gaps: int = 0
    bad_frames: int = 0
    first_audio_p50: float | None = None
    first_audio_p95: float | None = None
    bridge_first_audio_p95: float | None = None
    frames_sent: int = 0
    frames_heard: int = 0
    frames_expected: int = 0
    refused: int = 0
    stuck: str | None = None
    """Why the server was not idle after the step (None: it was)."""
    warnings: dict[str, int] = field(default_factory=dict)
    stalls: list[dict[str, Any]] = field(default_factory=list)
    """The bridge's ``event_loop_stall`` lines during the step (``--stall-report``)."""
    stall_summary: dict[str, Any] | None = None
    """Its ``event_loop_stall_summary`` line at exit: every stall and collection of the
    process, warm-up included."""
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0

    @property
    def rss_per_call(self) -> float:
        return max(0, self.rss_peak - self.rss_idle) / max(1, self.calls)

    @property
    def cpu_per_call(self) -> float | None:
        """% of one core per concurrent call (steady window)."""
        return None if self.bridge_cpu is None else self.bridge_cpu / self.calls

    @property
    def calls_per_core(self) -> float | None:
        per_call = self.cpu_per_call
        return None if not per_call else 100.0 / per_call

    @property
    def calls_per_core_machine(self) -> float | None:
        """Calls per core if the machine's busy time (server, generator, others) were all
        charged to the calls: what a measure of the whole box reports."""
        return None if not self.machine_cpu else 100.0 * self.calls / self.machine_cpu

    def lateness(self, q: float) -> float | None:
        """Frame lateness (see the docstring) at quantile ``q``: 0 when on the plan or early."""
        margin = {0.5: self.margin_p50, 0.99: self.margin_p01, 1.0: self.margin_min}[q]
        return None if margin is None else max(0.0, self.plan_margin - margin)

    @property
    def machine_busy(self) -> bool:
        return self.other_cpu is not None and self.other_cpu >= OTHER_CPU_LIMIT

    @property
    def gen_saturated(self) -> bool:
        return (self.gen_cpu is not None and self.gen_cpu >= GEN_CPU_LIMIT) or (
            self.gen_lag_p99 is not None and self.gen_lag_p99 >= GEN_LAG_LIMIT
        )

    def problems(self, reference_p95: float | None) -> list[str]:
        """Why this step does not pass (empty: it passes)."""
        found = []
        if self.bridge_cpu is None:
            found.append("no steady window")
        elif self.bridge_cpu >= CPU_LIMIT * self.processes:
            found.append(f"CPU {self.bridge_cpu:.0f}%")
        if self.failed:
            found.append(f"{self.failed} failed")
        if self.stuck:
            found.append(self.stuck)
        if self.underruns or self.gaps:
            found.append("underruns/gaps")
        if self.bad_frames:
            found.append(f"{self.bad_frames} malformed frames")
        if self.lag_p99 is not None and self.lag_p99 > JITTER_LIMIT:
            found.append(f"loop lag p99 {self.lag_p99 * 1000:g} ms")
        if self.writer_p99 is not None and self.writer_p99 > JITTER_LIMIT:
            found.append(f"writer lateness p99 {self.writer_p99 * 1000:g} ms")
        late = self.lateness(0.99)
        if late is not None and late > JITTER_LIMIT:
            found.append(f"frame lateness p99 {late * 1000:.1f} ms")
        if (
            reference_p95 is not None
            and self.first_audio_p95 is not None
            and self.first_audio_p95 > reference_p95 + FIRST_AUDIO_MARGIN
        ):
            found.append("first audio slow")
        return found

    def invalid(self, reference_p95: float | None) -> str | None:
        """Why this step's figures are not the bridge's own (None: they are).

        A saturated generator always invalidates a step. Other processes only invalidate a step
        that failed: interference can make the bridge look worse, never better.
        """
        if self.gen_saturated:
            return "the load generator saturated"
        if self.machine_busy and self.problems(reference_p95):
            return f"other processes used {self.other_cpu:.0f}% of a core"
        return None


@dataclass
class Bench:
    """What every step shares: the emulator, an HTTP client for webhooks and scrapes."""

    hamsa: EmulatorState
    hamsa_url: str
    http: httpx2.AsyncClient
    greeting: str
    frames_per_call: int
    duration: float
    cpus: tuple[int | None, int | None]
    """(bridge CPU, generator CPU), or Nones without pinning."""
    log_level: str
    stall_report_ms: float = 0.0
    """The bridge's ``BRIDGE_STALL_REPORT_MS`` (``--stall-report``; 0: off)."""
    plan_margin: float = PLAN_MARGIN_DEFAULT
    """The current target's (``PLAN_MARGINS``), set with its server."""
    pipecat_python: str = sys.executable
    workers: int = 1
    """The ``workers`` target's process count (one per CPU)."""
    settings: dict[str, str] = field(default_factory=dict)
    """The bridge's extra settings (``--set NAME=VALUE``)."""
    started: set[str] = field(default_factory=set)
    """The targets whose pinning has been printed."""


def call_problem(result: LeanCall | str, frames_per_call: int | None) -> str | None:
    """Why a call failed (None: it did not). ``frames_per_call`` None: hung up early on purpose."""
    if isinstance(result, str):
        return result
    if result.handshake_status is not None:
        return f"handshake HTTP {result.handshake_status}"
    if frames_per_call is None:
        return None if result.frames and result.ended_by == "caller" else "no audio"
    if result.ended_by != "bridge" or result.close_code != 1000:
        return f"ended by {result.ended_by} (close {result.close_code})"
    if result.frames < frames_per_call:
        return f"{result.frames}/{frames_per_call} frames"
    return None


async def warm_up(bench: Bench, bridge: ServedBridge, calls: int = 1) -> str | None:
    """``calls`` short calls at once through a fresh server (lazy imports, first Hamsa socket;
    several so that each of ``serve --workers``' processes likely takes one: the kernel picks
    the worker); None if each heard audio, else what went wrong. Not measured."""
    ticker = Ticker()
    ticker.start()
    try:
        results = await asyncio.gather(
            *(
                lean_call(
                    bridge.url + "/twiml/inbound",
                    http=bench.http,
                    ticker=ticker,
                    tally=Tally(),
                    plan_margin=bench.plan_margin,
                    max_duration=30,
                    hangup_after_frames=int(WARM_UP_SECONDS / TICK),
                )
                for _ in range(calls)
            )
        )
    finally:
        await ticker.stop()
    await wait_idle(bridge, bench.http)
    problems = [problem for r in results if (problem := call_problem(r, None)) is not None]
    return problems[0] if problems else None


def running_target(
    bench: Bench, target: str, max_calls: int
) -> contextlib.AbstractAsyncContextManager[ServedBridge]:
    """The server under test: a fresh ``hamsa-bridge serve``, floor server or Pipecat server."""
    if target in ("bridge", "workers"):
        return running_bridge(
            bench.hamsa_url,
            bench.greeting,
            max_calls=max_calls,
            cpu=bench.cpus[0],
            log_level=bench.log_level,
            workers=bench.workers if target == "workers" else 1,
            stall_report_ms=bench.stall_report_ms,
            settings=bench.settings,
        )
    script, python = {
        "floor": (BENCH_DIR / "floor_server.py", sys.executable),
        "pipecat": (BENCH_DIR / "pipecat_server.py", bench.pipecat_python),
    }[target]
    return running_reference(
        script, python, frames_per_call=bench.frames_per_call, cpu=bench.cpus[0]
    )


@asynccontextmanager
async def fresh_bridge(
    bench: Bench, max_calls: int, target: str = "bridge"
) -> AsyncIterator[ServedBridge]:
    """A fresh server under test (the bridge unless ``target`` says), warmed up; prints its
    pinning once."""
    bench.plan_margin = PLAN_MARGINS[target]
    async with running_target(bench, target, max_calls) as bridge:
        if target not in bench.started:
            bench.started.add(target)
            bridge_cpu, gen_cpu = bench.cpus
            if bridge_cpu is not None and allowed_cpus(bridge.pid) == {str(bridge_cpu)}:
                print(f"pinning: {target} on CPU {bridge_cpu}, load generator on CPU {gen_cpu}")
            else:
                print(f"pinning: none ({target} and load generator share every CPU)")
        problem = await warm_up(bench, bridge, 4 * bench.workers if target == "workers" else 1)
        if problem is not None:
            raise RuntimeError(f"warm-up call failed: {problem}; log: {log_tail(bridge)}")
        yield bridge


async def measure_step(
    bench: Bench, calls: int, label: str, *, ramp: float, target: str = "bridge"
) -> StepResult:
    """A fresh server under test (the bridge unless ``target`` says), warmed up, then the
    step."""
    async with fresh_bridge(bench, calls + 10, target) as bridge:
        step = await run_step(bench, bridge, calls, label, ramp=ramp)
    step.target = target
    step.processes = bench.workers if target == "workers" else 1
    step.stall_summary = stall_summary(bridge.lines)
    return step


STALL_EVENT: Final = "event_loop_stall"
STALL_SUMMARY_EVENT: Final = "event_loop_stall_summary"


def stall_summary(lines: Sequence[str]) -> dict[str, Any] | None:
    """The bridge's ``event_loop_stall_summary`` line (logged as it stops), if any."""
    for line in reversed(lines):
        if STALL_SUMMARY_EVENT in line:
            event = log_event(line)
            if event.get("event") == STALL_SUMMARY_EVENT:
                return event
    return None


def stall_report(step: StepResult) -> list[str]:
    """The step's stalls by cause (most frequent first, with the worst and total lateness),
    the same grouped coarsely, and the bridge's collections by generation."""
    stalls = [(str(e.get("cause", "?")), float(e.get("late_ms", 0)) / 1000) for e in step.stalls]
    total = sum(late for _, late in stalls)
    lines = [
        f"{step.label}: {len(stalls)} event-loop stalls during the step ({total * 1000:.0f} ms "
        "late in all)"
    ]
    if stalls:
        groups = summarise((cause_group(cause), late) for cause, late in stalls)
        lines.append(
            "  by kind: "
            + "; ".join(
                f"{cause} {t.stalls} (max {t.late_max * 1000:.0f} ms)" for cause, t in groups
            )
        )
        worst: dict[str, dict[str, Any]] = {}
        for event in step.stalls:
            cause = str(event.get("cause", "?"))
            if float(event.get("late_ms", 0)) >= float(worst.get(cause, {}).get("late_ms", -1)):
                worst[cause] = event
        for cause, tally in summarise(stalls)[:8]:
            example = worst[cause]
            frames = " < ".join(str(f) for f in example.get("frames", [])[:3])
            gc_runs = ", ".join(str(r) for r in example.get("gc", [])[:3])
            lines.append(
                f"  {tally.stalls:4d} × {cause}: max {tally.late_max * 1000:.0f} ms, "
                f"total {tally.late_total * 1000:.0f} ms; worst: loop CPU "
                f"{example.get('loop_cpu')}, watchdog late {example.get('watchdog_late_ms')} ms"
                + (f", frames {frames}" if frames else "")
                + (f", GC {gc_runs}" if gc_runs else "")
            )
    if step.stall_summary is not None:
        gens = step.stall_summary.get("gc", {})
        lines.append(
            "  bridge GC over its life (runs, total ms, longest ms, collected, longest CPU ms): "
            + ", ".join(
                f"{gen} {v[0]} / {v[1]:.0f} / {v[2]:.1f} / {v[3]} / {v[4]:.1f}"
                for gen, v in gens.items()
            )
        )
    return lines


def read_histograms(step: StepResult, after: Samples, before: Samples) -> None:
    """The bridge's own figures for the step, from two scrapes of ``/metrics``."""
    lag = histogram_delta(after, before, "hamsa_bridge_event_loop_lag_seconds")
    step.lag_p50 = histogram_bucket(0.5, lag)
    step.lag_p99 = histogram_bucket(0.99, lag)
    step.lag_max = histogram_max_bucket(lag)
    writer = histogram_delta(after, before, "hamsa_bridge_pacing_lateness_seconds")
    step.writer_p50 = histogram_bucket(0.5, writer)
    step.writer_p99 = histogram_bucket(0.99, writer)
    step.writer_max = histogram_max_bucket(writer)
    added = histogram_delta(after, before, "hamsa_bridge_bridge_added_latency_seconds")
    step.added_p50 = histogram_bucket(0.5, added)
    step.added_p99 = histogram_bucket(0.99, added)
    step.added_count = int(added[-1][1]) if added else 0
    fa = histogram_delta(after, before, "hamsa_bridge_first_audio_seconds")
    step.bridge_first_audio_p95 = histogram_bucket(0.95, fa)
    step.underruns = int(delta(after, before, "hamsa_bridge_underruns_total"))
    step.frames_sent = int(delta(after, before, "hamsa_bridge_frames_sent_total"))
    step.refused = int(total_delta(after, before, "hamsa_bridge_streams_refused_total"))


def read_tally(step: StepResult, tally: Tally, plan_margin: float) -> None:
    step.plan_margin = plan_margin
    step.margin_p50 = tally.margin_quantile(0.5)
    step.margin_p01 = tally.margin_quantile(0.01)
    step.margin_min = tally.margin_quantile(0.0)
    step.counted_frames = tally.frames
    late_bins = max(0, int((step.plan_margin - JITTER_LIMIT) / MARGIN_BIN))
    step.late_frames = sum(tally.margins[:late_bins])


def read_calls(step: StepResult, results: Sequence[LeanCall | str], frames: int | None) -> None:
    for result in results:
        problem = call_problem(result, frames)
        if problem is not None:
            step.failed += 1
            if problem not in step.errors:
                step.errors.append(problem)
    ok = [r for r in results if isinstance(r, LeanCall) and r.started_at is not None]
    first_audio = [
        r.first_media_at - r.started_at
        for r in ok
        if r.first_media_at is not None and r.started_at is not None
    ]
    step.first_audio_p50 = quantile(first_audio, 0.5)
    step.first_audio_p95 = quantile(first_audio, 0.95)
    step.gaps = sum(r.gaps for r in ok)
    step.bad_frames = sum(r.bad_frames for r in ok)
    step.frames_heard = sum(r.frames for r in ok)
    rates = [
        r.frames * TICK / (r.ended_at - r.first_media_at)
        for r in ok
        if r.first_media_at is not None and r.ended_at is not None and r.ended_at > r.first_media_at
    ]
    step.audio_rate = sum(rates) / len(rates) if rates else None


async def run_step(
    bench: Bench, bridge: ServedBridge, calls: int, label: str, *, ramp: float
) -> StepResult:
    """``calls`` calls started over ``ramp`` seconds through ``bridge``, run to their end."""
    http = bench.http
    before = await wait_idle(bridge, http)
    step = StepResult(label=label, calls=calls, rss_idle=tree_rss_bytes(bridge.pid))
    first_log = len(bridge.lines)
    sampler = Sampler(bridge.pid)
    tally = Tally()
    ticker = Ticker()
    # The generator's cyclic GC would pause every caller at once: off during the step, the
    # garbage is collected after it.
    gc.collect()
    gc.disable()
    sampler.start()
    ticker.start()
    started = time.monotonic()

    async def one(i: int) -> LeanCall | str:
        await asyncio.sleep(ramp * i / calls)  # the arrival schedule
        try:
            return await lean_call(
                bridge.url + "/twiml/inbound",
                http=http,
                ticker=ticker,
                tally=tally,
                plan_margin=bench.plan_margin,
                max_duration=bench.duration + 120,
            )
        except Exception as exc:  # a failed call is a result, not the end of the benchmark
            return f"{type(exc).__name__}: {exc}"

    try:
        results = await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        await ticker.stop()
        gc.enable()
    await sampler.stop()
    step.gen_rss = rss_bytes(os.getpid())
    gc.collect()
    try:
        after = await wait_idle(bridge, http)
    except NotIdle as exc:  # a finding of the step, not the end of the run
        after = exc.samples
        step.stuck = str(exc)
    step.seconds = time.monotonic() - started
    step.load = os.getloadavg()
    read_calls(step, results, bench.frames_per_call)
    read_tally(step, tally, bench.plan_margin)
    step.frames_expected = calls * bench.frames_per_call

    # the steady window: every call playing (last first audio .. first end)
    ok = [r for r in results if isinstance(r, LeanCall)]
    firsts = [r.first_media_at for r in ok]
    ends = [r.ended_at for r in ok if r.ended_at is not None]
    if firsts and ends and None not in firsts:
        start = max(f for f in firsts if f is not None)
        end = min(ends)
        window = sampler.window(start, end)
        if window is not None:
            a, b = window
            span = b.at - a.at
            bridge_cpu = (b.bridge_ticks - a.bridge_ticks) / CLOCK_TICKS / span * 100
            gen_cpu = (b.gen_cpu - a.gen_cpu) / span * 100
            step.bridge_cpu, step.gen_cpu = bridge_cpu, gen_cpu
            step.machine_cpu = (b.machine_ticks - a.machine_ticks) / CLOCK_TICKS / span * 100
        ramp_window = sampler.window(started, start)
        if ramp_window is not None:
            a, b = ramp_window
            ramp_ticks = b.bridge_ticks - a.bridge_ticks
            step.bridge_ramp_cpu = ramp_ticks / CLOCK_TICKS / (b.at - a.at) * 100
        lags = [lag for at, lag in sampler.gen_lag if start <= at <= end]
        step.gen_lag_p99 = quantile(lags, 0.99)
        ramp_lags = [lag for at, lag in sampler.gen_lag if at <= start]
        step.gen_ramp_lag_p99 = quantile(ramp_lags, 0.99)
    step.rss_peak = max(s.bridge_rss for s in sampler.samples)
    step.other_cpu = sampler.other_cpu()
    read_histograms(step, after, before)
    read_log(step, bridge.lines[first_log:])
    bench.hamsa.requests.clear()  # the emulator keeps every reply's audio: free it
    bench.hamsa.connections.clear()
    return step


def read_log(step: StepResult, lines: Sequence[str]) -> None:
    """The server's log lines during the step: stall reports apart, the rest counted by kind."""
    for line in lines:
        if STALL_EVENT in line:
            event = log_event(line)
            if event.get("event") == STALL_EVENT:
                step.stalls.append(event)
                continue
        name = log_kind(line)
        step.warnings[name] = step.warnings.get(name, 0) + 1


async def latency_one(bench: Bench, calls: int) -> StepResult:
    """Bridge-added latency with one call at a time: ``calls`` calls in a row through one fresh
    bridge, each hanging up after 0.3 s of audio (only a call's first utterance, reaching an
    empty queue, is a sample)."""
    async with fresh_bridge(bench, 10) as bridge:
        http = bench.http
        before = await wait_idle(bridge, http)
        step = StepResult(label=f"1 ({calls} in a row)", calls=1)
        sampler = Sampler(bridge.pid)
        sampler.start()
        ticker = Ticker()
        ticker.start()
        results: list[LeanCall | str] = []
        try:
            for _ in range(calls):
                results.append(
                    await lean_call(
                        bridge.url + "/twiml/inbound",
                        http=http,
                        ticker=ticker,
                        tally=Tally(),
                        plan_margin=bench.plan_margin,
                        max_duration=30,
                        hangup_after_frames=15,
                    )
                )
                await wait_idle(bridge, http)
        finally:
            await ticker.stop()
            await sampler.stop()
        after = await wait_idle(bridge, http)
        read_calls(step, results, None)
        step.other_cpu = sampler.other_cpu()
        read_histograms(step, after, before)
        bench.hamsa.requests.clear()
        bench.hamsa.connections.clear()
        return step


# --- soak --------------------------------------------------------------------------------------

SOAK_LATE: Final = 0.020
"""The soak's goal: no frame later than this beyond the plan."""
GEN_STALL: Final = 0.010
"""A generator loop lag at least this long is a stall of the generator's own (``late_causes``)."""


def late_causes(
    late: Sequence[tuple[float, float]], gen_lag: Sequence[tuple[float, float]], over: float
) -> tuple[int, int]:
    """Of the frames more than ``over`` late: (how many, how many arrived while or just after the
    generator's own loop stalled). A lag sample ``(at, lag)`` says the generator's loop was
    blocked for ``lag`` before ``at``; a frame stamped then was read late by the generator, not
    necessarily sent late by the server: it counts for the generator when it arrived within
    ``[at - lag - 10 ms, at + one lag interval]`` of a stall of ``GEN_STALL`` or more."""
    starts: list[float] = []
    ends: list[float] = []
    for a, b in sorted(
        (at - lag - 0.010, at + GEN_LAG_INTERVAL) for at, lag in gen_lag if lag >= GEN_STALL
    ):
        if ends and a <= ends[-1]:  # overlapping windows merge
            ends[-1] = max(ends[-1], b)
        else:
            starts.append(a)
            ends.append(b)
    total = generator = 0
    for t, lateness in late:
        if lateness <= over:
            continue
        total += 1
        i = bisect.bisect_right(starts, t) - 1
        if i >= 0 and t <= ends[i]:
            generator += 1
    return total, generator


@dataclass
class SoakRow:
    at: float
    calls: float
    rss: int
    fds: int
    cpu: float | None


async def soak(
    bench: Bench,
    calls: int,
    seconds: float,
    interval: float,
    ramp: float,
    *,
    strict: bool,
    target: str = "bridge",
) -> int:
    """``calls`` calls at once for ``seconds`` through one server under test (the bridge unless
    ``target`` says), each replaced as it ends."""
    async with fresh_bridge(bench, calls + 10, target) as bridge:
        http = bench.http
        before = await wait_idle(bridge, http)
        pid = bridge.pid
        idle_rss, idle_fds = tree_rss_bytes(pid), open_fds(pid)
        step = StepResult(label=f"soak {calls}", calls=calls, rss_idle=idle_rss)
        tally, ticker, sampler = Tally(), Ticker(), Sampler(pid)
        first_log = len(bridge.lines)
        results: list[LeanCall | str] = []
        rows: list[SoakRow] = []
        # As in a step, the generator's cyclic GC is off: a collection pauses every caller at
        # once, and its frames would read late (a generation-2 pass over 10 minutes of callers
        # and the emulator's records took ~100 ms). Its garbage is collected at the end; the
        # emulator's records are dropped as the soak goes (``watch``).
        gc.collect()
        gc.freeze()  # the bench's long-lived objects are never scanned again
        gc.disable()
        gen_rss_before = rss_bytes(os.getpid())
        ticker.start()
        sampler.start()
        t0 = time.monotonic()
        end = t0 + seconds

        async def slot(i: int) -> None:
            await asyncio.sleep(ramp * i / calls)
            while time.monotonic() < end:
                try:
                    result = await lean_call(
                        bridge.url + "/twiml/inbound",
                        http=http,
                        ticker=ticker,
                        tally=tally,
                        plan_margin=bench.plan_margin,
                        max_duration=bench.duration + 120,
                    )
                except Exception as exc:  # counted, and the slot carries on
                    result = f"{type(exc).__name__}: {exc}"
                results.append(result)
                if isinstance(result, str):
                    await asyncio.sleep(1.0)  # a failing bridge must not be hammered

        async def watch() -> None:
            last: tuple[float, int] | None = None
            while True:
                now, ticks = time.monotonic(), tree_ticks(pid)
                cpu = None
                if last is not None:
                    cpu = (ticks - last[1]) / CLOCK_TICKS / (now - last[0]) * 100
                last = (now, ticks)
                samples = await scrape(bridge, http)
                active = samples.get(("hamsa_bridge_active_calls", ()), 0.0)
                rows.append(SoakRow(now - t0, active, tree_rss_bytes(pid), open_fds(pid), cpu))
                bench.hamsa.requests.clear()  # every reply's audio: the generator's, not needed
                bench.hamsa.connections.clear()
                print(
                    f"  soak {now - t0:5.0f} s: {active:4.0f} calls, RSS "
                    f"{rows[-1].rss / 2**20:6.1f} MB, {rows[-1].fds} fds, CPU {pct(cpu)}",
                    flush=True,
                )
                await asyncio.sleep(interval)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(slot(i) for i in range(calls)))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await ticker.stop()
            await sampler.stop()
            gen_rss_after = rss_bytes(os.getpid())
            gc.enable()
            gc.unfreeze()
        after = await wait_idle(bridge, http)
        gc.collect()
        await asyncio.sleep(1.0)  # let the bridge's closed sockets be reaped before counting
        end_rss, end_fds = tree_rss_bytes(pid), open_fds(pid)
        read_calls(step, results, bench.frames_per_call)
        read_tally(step, tally, bench.plan_margin)
        read_histograms(step, after, before)
        step.other_cpu = sampler.other_cpu()
        step.rss_peak = max(r.rss for r in rows) if rows else end_rss
        read_log(step, bridge.lines[first_log:])
        bench.hamsa.requests.clear()
        bench.hamsa.connections.clear()
    step.stall_summary = stall_summary(bridge.lines)

    print()
    print(f"| elapsed s | active calls | RSS MB | open fds | {target} CPU |")
    print("|---|---|---|---|---|")
    print(f"| idle before | 0 | {idle_rss / 2**20:.1f} | {idle_fds} | - |")
    for r in rows:
        print(f"| {r.at:.0f} | {r.calls:.0f} | {r.rss / 2**20:.1f} | {r.fds} | {pct(r.cpu)} |")
    print(f"| idle after | 0 | {end_rss / 2**20:.1f} | {end_fds} | - |")
    # Flatness: once the first calls have been replaced (after a third of the run), the RSS at
    # full load should stay where it was; compare the first and last thirds of the loaded rows.
    loaded = [r for r in rows if r.calls >= 0.9 * calls]
    third = max(1, len(loaded) // 3)
    verdict_lines = ["RSS at full load: too few samples to judge"]
    if len(loaded) >= 3:
        verdict_lines = []
        early = sum(r.rss for r in loaded[third : 2 * third]) / max(
            1, len(loaded[third : 2 * third])
        )
        late = sum(r.rss for r in loaded[-third:]) / third
        growth = (late - early) / 2**20
        fds = [r.fds for r in loaded[third:]]
        verdict_lines.append(
            f"RSS at full load: middle third {early / 2**20:.1f} MB, last third "
            f"{late / 2**20:.1f} MB ({growth:+.1f} MB); open fds at full load after the first "
            f"third: {min(fds)}..{max(fds)}"
        )
    completed = len(results) - step.failed
    verdict_lines += [
        f"calls: {len(results)} ({completed} completed, {step.failed} failed"
        + (f": {'; '.join(step.errors[:3])}" if step.errors else "")
        + f"); gaps {step.gaps}, underruns {step.underruns}, malformed frames {step.bad_frames}",
        f"idle before → after: RSS {idle_rss / 2**20:.1f} → {end_rss / 2**20:.1f} MB, "
        f"fds {idle_fds} → {end_fds}",
        f"frame lateness beyond the plan p50/p99/max: {ms1(step.lateness(0.5))} / "
        f"{ms1(step.lateness(0.99))} / {ms1(step.lateness(1.0))} ms over "
        f"{step.counted_frames} frames; frames later than {JITTER_LIMIT * 1000:.0f} ms: "
        f"{step.late_frames}",
        f"writer lateness p50/p99/max: {ms_bound(step.writer_p50)} / {ms_bound(step.writer_p99)}"
        f" / {ms_bound(step.writer_max)} ms; loop lag p99/max {ms_bound(step.lag_p99)} / "
        f"{ms_bound(step.lag_max)} ms; other CPU {pct(step.other_cpu)}",
    ]
    lags = [lag for _, lag in sampler.gen_lag]
    late, of_generator = late_causes(tally.late, sampler.gen_lag, SOAK_LATE)
    verdict_lines += [
        f"generator: loop lag p99/max {ms1(quantile(lags, 0.99))} / "
        f"{ms1(max(lags, default=None))} ms, {sum(lag >= GEN_STALL for lag in lags)} stalls "
        f"of {GEN_STALL * 1000:.0f} ms or more; RSS {gen_rss_before / 2**20:.0f} → "
        f"{gen_rss_after / 2**20:.0f} MB (its GC off)",
        f"frames more than {SOAK_LATE * 1000:.0f} ms late: {late}, of which {of_generator} "
        f"arrived while the generator's own loop stalled (see late_causes)",
    ]
    if step.warnings:
        verdict_lines.append(f"{target} log: {dict(sorted(step.warnings.items()))}")
    if bench.stall_report_ms and target == "bridge":
        verdict_lines += stall_report(step)
    for line in verdict_lines:
        print(line)
    return 1 if strict and (step.failed or step.bad_frames) else 0


# --- report ------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def ms1(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def ms_bound(value: float | None) -> str:
    """A bucket bound in ms: "≤2.5"."""
    return "-" if value is None else f"≤{value * 1000:g}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


HEADER: Final = (
    "| calls | failed | server CPU steady (ramp) | CPU/call | calls/core | RSS MB (KB/call) "
    "| loop lag p50/p99/max ms | writer lateness p50/p99/max ms "
    "| frame lateness p50/p99/max ms (late>10ms) | bridge-added p50/p99 ms (n) "
    "| first audio p50/p95 ms | underruns / gaps | frames sent / heard / expected "
    "| generator CPU, lag p99 ms | machine CPU | other CPU |"
)


def row(step: StepResult) -> str:
    rss = f"{step.rss_peak / 2**20:.0f} ({step.rss_per_call / 1024:.0f})"
    lag = f"{ms_bound(step.lag_p50)} / {ms_bound(step.lag_p99)} / {ms_bound(step.lag_max)}"
    writer = (
        f"{ms_bound(step.writer_p50)} / {ms_bound(step.writer_p99)} / {ms_bound(step.writer_max)}"
    )
    late = (
        f"{ms1(step.lateness(0.5))} / {ms1(step.lateness(0.99))} / {ms1(step.lateness(1.0))} "
        f"({step.late_frames})"
    )
    added = f"{ms_bound(step.added_p50)} / {ms_bound(step.added_p99)} ({step.added_count})"
    first = f"{ms(step.first_audio_p50)} / {ms(step.first_audio_p95)}"
    frames = f"{step.frames_sent} / {step.frames_heard} / {step.frames_expected}"
    gen = f"{pct(step.gen_cpu)}, {ms(step.gen_lag_p99)}"
    if step.gen_saturated:
        gen += " SATURATED"
    other = pct(step.other_cpu) + (" BUSY" if step.machine_busy else "")
    cpu = f"{pct(step.bridge_cpu)} ({pct(step.bridge_ramp_cpu)})"
    per_call = "-" if step.cpu_per_call is None else f"{step.cpu_per_call:.3f}%"
    per_core = "-" if step.calls_per_core is None else f"{step.calls_per_core:.0f}"
    return (
        f"| {step.label} | {step.failed} | {cpu} | {per_call} | {per_core} | {rss} | {lag} "
        f"| {writer} | {late} | {added} | {first} | {step.underruns} / {step.gaps} | {frames} "
        f"| {gen} | {pct(step.machine_cpu)} | {other} |"
    )


def verdict(unloaded: StepResult, steps: Sequence[StepResult]) -> tuple[str, StepResult | None]:
    """The one-line verdict, and the step it names."""
    reference = unloaded.first_audio_p95
    best: StepResult | None = None
    stopped: str | None = None
    for step in sorted(steps, key=lambda s: s.calls):
        problems = step.problems(reference)
        invalid = step.invalid(reference)
        if invalid is not None:
            stopped = f"{step.calls} calls not measured cleanly: {invalid}"
            stopped += f" ({', '.join(problems)})" if problems else ""
            break
        if problems:
            stopped = f"{step.calls} calls fail: {', '.join(problems)}"
            break
        best = step
    if best is None or best.bridge_cpu is None:
        return f"capacity per core: below the smallest step ({stopped})", None
    per_core = best.calls_per_core or 0.0
    line = (
        f"largest passing step: {best.calls} calls ({best.target} CPU {best.bridge_cpu:.0f}%, "
        f"{best.cpu_per_call:.3f}% of a core per call: {per_core:.0f} calls per core)"
    )
    if stopped is not None:
        line += f"; {stopped}"
    else:
        line += "; every step passed"
    return line, best


def cpu_note(step: StepResult) -> str:
    """The step's CPU two ways: the server process' ticks (what calls/core is computed from) and
    the whole machine's busy ticks (server + generator + everyone else)."""
    if step.bridge_cpu is None or step.machine_cpu is None:
        return "CPU: no steady window"
    per_core = step.calls_per_core or 0.0
    machine_per_core = step.calls_per_core_machine or 0.0
    return (
        f"CPU steady: {step.target} process {step.bridge_cpu:.0f}% of a core "
        f"({per_core:.0f} calls/core), machine {step.machine_cpu:.0f}% of one core across "
        f"{os.cpu_count()} ({machine_per_core:.0f} calls/core if all of it is charged to the "
        f"calls), generator {pct(step.gen_cpu)}"
    )


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def comparison(by_target: dict[str, list[StepResult]]) -> list[str]:
    """Side by side per call count: each target's CPU and memory per call, frame lateness p99 and
    audio rate, and each target's CPU and memory per call divided by the reference's (the floor
    when it ran, else the first target)."""
    targets = list(by_target)
    reference = "floor" if "floor" in by_target else targets[0]
    others = [t for t in targets if t != reference]
    header = (
        ["calls"]
        + [f"{t} CPU/call (calls/core)" for t in targets]
        + [f"{t} KB/call" for t in targets]
        + [f"{t} frame lateness p99 ms" for t in targets]
        + [f"{t} audio × real time" for t in targets]
        + [f"{t} ÷ {reference} CPU/call" for t in others]
        + [f"{t} ÷ {reference} KB/call" for t in others]
    )
    lines = [
        f"per call, side by side (ratios: ÷ {reference}):",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for i, ref in enumerate(by_target[reference]):
        steps = [by_target[t][i] if i < len(by_target[t]) else None for t in targets]
        cells = [f"{ref.calls}" + (" (unloaded)" if i == 0 else "")]
        for s in steps:
            if s is None or s.cpu_per_call is None:
                cells.append("-")
            else:
                cells.append(f"{s.cpu_per_call:.3f}% ({s.calls_per_core or 0:.0f})")
        cells += ["-" if s is None else f"{s.rss_per_call / 1024:.0f}" for s in steps]
        cells += ["-" if s is None else ms1(s.lateness(0.99)) for s in steps]
        cells += [
            "-" if s is None or s.audio_rate is None else f"{s.audio_rate:.2f}" for s in steps
        ]
        others_steps = [by_target[t][i] if i < len(by_target[t]) else None for t in others]
        cells += [_ratio(s.cpu_per_call if s else None, ref.cpu_per_call) for s in others_steps]
        cells += [
            _ratio(s.rss_per_call if s else None, ref.rss_per_call or None) for s in others_steps
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def carry_ratio(one: Sequence[StepResult], workers: Sequence[StepResult], count: int) -> str:
    """The calls ``serve --workers COUNT`` carries within the jitter goals (no failed call, no
    gap, loop lag, writer and frame lateness p99 within ``JITTER_LIMIT``: the largest step
    before the first that misses one) against one process's, in one run: the multi-worker
    layout's scaling. First audio and CPU are left out: a worker that has not yet seen a Hamsa
    reply holds its first calls by the start policy's prior (each worker learns Hamsa's pace on
    its own), and a process's CPU limit is not the layout's."""

    def carried(steps: Sequence[StepResult]) -> int:
        best = 0
        for step in sorted(steps[1:], key=lambda s: s.calls):
            missed = [p for p in step.problems(None) if not p.startswith(("CPU ", "first audio"))]
            if missed or step.bridge_cpu is None:
                break
            best = step.calls
        return best

    carried_one, carried_workers = carried(one), carried(workers)
    ratio = f"{carried_workers / carried_one:.2f}" if carried_one else "-"
    return (
        f"scaling: {count} workers carry {carried_workers} calls within the jitter goals, one "
        f"process {carried_one}: {ratio}x (the steps bound it: a step between two is not "
        "measured; the load generator shares the CPUs with both layouts)"
    )


# --- main --------------------------------------------------------------------------------------


def usable_cpus() -> int:
    """The CPUs this process may use (before it pins itself)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def pick_cpus() -> tuple[int | None, int | None]:
    """(bridge CPU, generator CPU), or Nones when pinning is impossible."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def bench_emulator_config() -> EmulatorConfig:
    """The Hamsa emulator every capacity-style benchmark talks to: first byte after
    ``FIRST_BYTE_DELAY``, ``SYNTHESIS_SPEED``× real time, ``MS_PER_CHAR``, frames of at most
    ``CHUNK_BYTES``, no faults."""
    return EmulatorConfig(
        api_keys=frozenset({KEY}),
        first_byte_delay=FIRST_BYTE_DELAY,
        synthesis_speed=SYNTHESIS_SPEED,
        ms_per_char=MS_PER_CHAR,
        max_chunk_bytes=CHUNK_BYTES,
    )


def default_ramp(calls: int, ramp: float | None) -> float:
    """Arrivals at ``SETUP_RATE`` calls a second, over at least 2 s (``--ramp`` overrides)."""
    return ramp if ramp is not None else max(2.0, calls / SETUP_RATE)


async def bench_main(args: argparse.Namespace, cpus: tuple[int | None, int | None]) -> int:
    greeting = greeting_for(args.duration)
    frames_per_call = expected_frames(greeting)
    emulator = create_emulator_app(bench_emulator_config())
    loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}")
    bridge_uvloop = uvloop_installed()
    print(f"event loops: bridge {'uvloop' if bridge_uvloop else 'asyncio'}, generator {loop_kind}")
    pieces = split_text(greeting)
    print(
        f"greeting: {len(greeting)} chars in {len(pieces)} Hamsa requests, "
        f"{frames_per_call * 0.02:.1f} s of audio per call ({frames_per_call} frames); "
        f"emulator: first byte {FIRST_BYTE_DELAY} s, synthesis {SYNTHESIS_SPEED}x real time"
    )
    async with (
        serving(emulator) as hamsa_url,
        httpx2.AsyncClient(
            timeout=30.0, limits=httpx2.Limits(max_connections=100, max_keepalive_connections=100)
        ) as http,
    ):
        bench = Bench(
            hamsa=emulator.state.emulator,
            hamsa_url=hamsa_url,
            http=http,
            greeting=greeting,
            frames_per_call=frames_per_call,
            duration=args.duration,
            cpus=cpus,
            log_level=args.log_level,
            stall_report_ms=args.stall_report,
            pipecat_python=args.pipecat_python,
            workers=usable_cpus(),
            settings=dict(args.set),
        )
        targets: list[str] = args.target
        named = targets != ["bridge"]  # rows carry their target's name
        print(f"targets: {', '.join(targets)}")
        if bench.settings:
            chosen = " ".join(f"{name}={value}" for name, value in bench.settings.items())
            print(f"bridge settings (--set): {chosen}")
        print(f"load average before: {load_average()}")
        if args.soak:
            calls = args.soak_calls
            ramp = default_ramp(calls, args.ramp)
            code = 0
            for target in targets:
                print(
                    f"soak ({target}): {calls} calls for {args.soak_seconds:.0f} s, each "
                    f"replaced as it ends (first arrivals over {ramp:.0f} s); samples every "
                    f"{args.soak_interval:.0f} s"
                )
                code |= await soak(
                    bench,
                    calls,
                    args.soak_seconds,
                    args.soak_interval,
                    ramp,
                    strict=args.strict,
                    target=target,
                )
            print(f"load average after: {load_average()}")
            return code
        print()
        print(HEADER)
        print(_separator())
        by_target: dict[str, list[StepResult]] = {target: [] for target in targets}
        extra: list[StepResult] = []
        if args.latency_calls and "bridge" in targets:
            latency = await latency_one(bench, args.latency_calls)
            if named:
                latency.label = f"bridge {latency.label}"
            extra.append(latency)
            print(row(latency), flush=True)
        # Step by step, every target in turn: targets measured minutes apart on a shared machine
        # would be compared across whatever else ran in between.
        for n in [UNLOADED_CALLS, *args.calls]:
            for target in targets:
                done = by_target[target]
                label = f"{n} (unloaded)" if not done else str(n)
                if named:
                    label = f"{target} {label}"
                ramp = 1.0 if not done else default_ramp(n, args.ramp)
                reference = done[0].first_audio_p95 if done else None
                for attempt in range(1 + args.retries):
                    step = await measure_step(bench, n, label, ramp=ramp, target=target)
                    failed = bool(step.problems(reference)) or step.gen_saturated
                    repeat = step.machine_busy and failed and attempt < args.retries
                    if repeat:
                        step.label += " (machine busy: repeated)"
                    print(row(step), flush=True)
                    if not repeat:
                        break
                done.append(step)
        results = [step for steps in by_target.values() for step in steps]
        print()
        for step in results:
            unloaded = by_target[step.target][0]
            notes = [
                f"{step.seconds:.0f} s, ramp {default_ramp(step.calls, args.ramp):.0f} s, "
                f"generator RSS {step.gen_rss / 2**20:.0f} MB, load avg {step.load[0]:.2f}",
                cpu_note(step),
            ]
            if step.errors:
                notes.append(f"failures: {'; '.join(step.errors[:3])}")
            if step.refused:
                notes.append(f"{step.refused} streams refused")
            if step.stuck:
                notes.append(step.stuck)
            if step.warnings:
                notes.append(f"{step.target} log: {dict(sorted(step.warnings.items()))}")
            problems = step.problems(unloaded.first_audio_p95)
            if problems:
                notes.append(f"problems: {', '.join(problems)}")
            print(f"{step.label}: {' | '.join(notes)}")
            if bench.stall_report_ms and step.target == "bridge":
                for line in stall_report(step):
                    print(line)
        for target, steps in by_target.items():
            line, _ = verdict(steps[0], steps[1:])
            print(f"{target}: {line}" if named else line)
            saturated = [s.calls for s in steps[1:] if s.gen_saturated]
            if saturated:
                print(
                    f"warning: the load generator saturated at {saturated} calls: figures invalid"
                )
        if len(targets) > 1:
            print()
            for line in comparison(by_target):
                print(line)
        if "workers" in by_target and "bridge" in by_target:
            print(carry_ratio(by_target["bridge"], by_target["workers"], bench.workers))
        broken = [s for s in [*results, *extra] if s.failed or s.bad_frames or s.stuck]
    print(f"load average after: {load_average()}")
    if args.strict and broken:
        print(f"smoke: failed calls or malformed frames in {[s.label for s in broken]}")
        return 1
    return 0


def _separator() -> str:
    return "|" + "---|" * (HEADER.count("|") - 1)


def parse_calls(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive call counts")
    return values


def parse_targets(text: str) -> list[str]:
    """``bridge``, ``floor``, ``pipecat`` or several, comma-separated; ``both``: bridge,floor;
    ``all``: the three."""
    names: list[str] = []
    for part in (v.strip() for v in text.split(",")):
        expanded = {"both": ["bridge", "floor"], "all": ["bridge", "floor", "pipecat"]}.get(
            part, [part]
        )
        for name in expanded:
            if name not in TARGETS:
                raise argparse.ArgumentTypeError(
                    f"unknown target {name!r}: {', '.join(TARGETS)}, both or all"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise argparse.ArgumentTypeError("no target")
    return names


def default_pipecat_python() -> str:
    """``.venv-pipecat/bin/python`` beside ``bench/`` if it exists, else this interpreter."""
    return str(PIPECAT_VENV_PYTHON) if PIPECAT_VENV_PYTHON.exists() else sys.executable


def pipecat_missing(python: str) -> bool:
    """Whether ``python`` cannot import what ``bench/pipecat_server.py`` needs."""
    try:
        done = subprocess.run(
            [python, "-c", "import pipecat, fastapi, uvicorn"],
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    return done.returncode != 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Concurrent speaking calls one bridge process (one core) carries.",
    )
    parser.add_argument("--calls", type=parse_calls, default=None, help="steps (50,100,200,300)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of audio per call (30)"
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help=f"seconds to start a step's calls (calls/{SETUP_RATE:.0f}, at least 2)",
    )
    parser.add_argument(
        "--latency-calls",
        type=int,
        default=None,
        help="calls in a row for the 1-call bridge-added latency (20; 0: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="steps 50,200, 15 s calls")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every mode in seconds with a handful of calls (CI: no figure is judged)",
    )
    parser.add_argument("--soak", action="store_true", help="the soak instead of the steps")
    parser.add_argument("--soak-calls", type=int, default=200, help="soak: calls at once (200)")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="soak: how long (600)")
    parser.add_argument(
        "--soak-interval", type=float, default=10.0, help="soak: seconds between samples (10)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="repeat a step this often while other processes keep the machine busy (1)",
    )
    parser.add_argument("--log-level", default="warning", help="the bridge's BRIDGE_LOG_LEVEL")
    parser.add_argument(
        "--stall-report",
        type=float,
        nargs="?",
        const=20.0,
        default=0.0,
        metavar="MS",
        help="the bridge reports every event-loop stall of MS (20) or more "
        "(BRIDGE_STALL_REPORT_MS): each step ends with its stalls by cause and the GC runs",
    )
    parser.add_argument(
        "--target",
        type=parse_targets,
        default=["bridge"],
        help="the server(s) under test, comma-separated: bridge (default), floor "
        "(bench/floor_server.py), pipecat (bench/pipecat_server.py), workers (serve "
        "--workers, one per CPU; nothing is pinned then); both = bridge,floor; all = bridge, "
        "floor, pipecat. Several: each step runs against each in turn, then a side-by-side "
        "table with the ratios to the floor (to the first without it), and with bridge and "
        "workers the calls each layout carries within the goals",
    )
    parser.add_argument(
        "--compare-pipecat",
        action="store_true",
        help="add the Pipecat pipeline to the targets (bench/pipecat_server.py; its own "
        "virtual environment, see there)",
    )
    parser.add_argument(
        "--pipecat-python",
        default=None,
        help="the interpreter with pipecat-ai installed (.venv-pipecat/bin/python if it exists)",
    )
    parser.add_argument(
        "--set",
        type=bridge_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the bridge under test, e.g. BRIDGE_LOOKAHEAD_SECONDS=3 (repeatable; "
        "only BRIDGE_* and HAMSA_* names; default: none, the production defaults)",
    )
    parser.set_defaults(strict=False)  # --smoke: a failed call or a malformed frame exits 1
    return parser


def bridge_setting(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` for ``--set``: a ``BRIDGE_*`` or ``HAMSA_*`` variable."""
    name, equals, value = text.partition("=")
    if not equals or not name.startswith(("BRIDGE_", "HAMSA_")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected BRIDGE_…=VALUE or HAMSA_…=VALUE")
    return name, value


def run(args: argparse.Namespace, cpus: tuple[int | None, int | None]) -> int:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            return runner.run(bench_main(args, cpus))
        except RuntimeError as exc:  # the bridge did not start, or could not carry one call
            print(f"capacity: {exc}", file=sys.stderr)
            return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare_pipecat and "pipecat" not in args.target:
        args.target.append("pipecat")
    if args.pipecat_python is None:
        args.pipecat_python = default_pipecat_python()
    if "pipecat" in args.target and pipecat_missing(args.pipecat_python):
        print(f"capacity: {args.pipecat_python}: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_MISSING
    started = time.monotonic()
    cpus = pick_cpus()
    if "workers" in args.target:
        # One worker per CPU needs every CPU: nothing is pinned, and so that the layouts compare
        # on equal terms, not one process either; the generator shares the CPUs with them.
        cpus = (None, None)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})  # before the loop: threads inherit it
    if args.smoke:
        # Each mode for seconds: the 1-call latency pass (3 calls in a row), the unloaded step and
        # a step of 2 short calls, then a soak of 3 calls for 6 s. Figures are printed, never
        # judged; a failed call or a malformed frame fails the run.
        steps = build_parser().parse_args(
            ["--calls", "2", "--duration", "3", "--ramp", "0.5", "--latency-calls", "3"]
        )
        steps.log_level, steps.strict = args.log_level, True
        steps.stall_report = args.stall_report
        steps.target, steps.pipecat_python = args.target, args.pipecat_python
        steps.set = args.set
        code = run(steps, cpus)
        if code == 0:
            print()
            soak_args = build_parser().parse_args(
                ["--soak", "--soak-calls", "3", "--soak-seconds", "6", "--soak-interval", "2"]
            )
            soak_args.duration, soak_args.log_level, soak_args.strict = 3.0, args.log_level, True
            soak_args.target, soak_args.pipecat_python = args.target, args.pipecat_python
            soak_args.stall_report = args.stall_report
            soak_args.set = args.set
            code = run(soak_args, cpus)
    else:
        if args.calls is None:
            args.calls = [50, 200] if args.quick else [50, 100, 200, 300]
        if args.duration is None:
            args.duration = 15.0 if args.quick else 30.0
        if args.latency_calls is None:
            args.latency_calls = 5 if args.quick else 20
        code = run(args, cpus)
    print(f"run time: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
