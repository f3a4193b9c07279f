"""How many concurrent calls one ``hamsa-bridge serve`` process (one core) carries.

Method
------

* The bridge runs exactly as in production: ``python -m bridge.cli serve`` in a subprocess (uvloop
  where installed, JSON logs at level warning unless ``--log-level``), pinned to one CPU with
  ``os.sched_setaffinity`` when the machine has two or more; this process (the load generator)
  pins itself to another one. Whether pinning happened is printed.
* This process runs the Hamsa emulator (``create_emulator_app``: fixed 0.3 s first byte,
  synthesis 3x faster than real time, ``ms_per_char`` ms of audio per character, no faults) and
  the simulated Twilio callers (``place_call``): each caller POSTs the signed webhook, opens the
  media stream, sends a 20 ms media frame every 20 ms, models Twilio's playout buffer and echoes
  marks as Twilio does. Every call speaks ``BRIDGE_GREETING``: a text of several sentences long
  enough for ``--duration`` seconds of audio, so the bridge pipelines several Hamsa requests per
  call on its one Hamsa socket.
* Each step gets a fresh bridge process (so its RSS growth is the step's own), warmed up by one
  short unmeasured call. The first step is the unloaded reference (3 calls); then each step of
  ``--calls``: N calls started evenly over ``--ramp`` seconds (2 s), run to their end (the bridge
  closes each stream after the last mark is echoed).
* Per step: bridge CPU (``/proc/<pid>/stat`` utime+stime, sampled every 0.5 s) averaged over the
  steady window in which all N calls were playing (from the last call's first audio to the first
  call's end), in % of one core, and in brackets over the ramp (the start to that window);
  bridge RSS (``/proc/<pid>/status`` VmRSS, peak during the step) and its growth per call over
  the idle RSS after the warm-up; from the bridge's ``/metrics`` (deltas over the step):
  event-loop lag (the bridge samples a 0.5 s timer; shown as bucket upper bounds of p50, p99 and
  the worst sample), ``hamsa_bridge_underruns_total``, first-audio p95 (bucket bound), frames
  sent; at the callers: gaps heard (``CallResult.gaps()``), first audio (``start`` sent to the
  first media received; exact), frames received against the frames the greeting must produce,
  and failed calls (webhook not 200, handshake refused, not closed normally by the bridge, or
  short of audio).
* The generator measures itself: its CPU (``time.process_time``) over the steady window and its
  own event-loop lag (a 50 ms timer) in the steady window and during the ramp. Its cyclic GC is
  off during a step (a generation-2 collection at 200 calls pauses every caller for ~70 ms); the
  garbage is collected between steps. At ``GEN_CPU_LIMIT`` of its core or a steady loop lag p99
  of ``GEN_LAG_LIMIT`` the generator counts as saturated (late timestamps eat into the bridge's
  200 ms playout lead: gaps and first-audio figures are no longer the bridge's): the step is
  marked invalid and ends the verdict. "Other CPU" is the whole machine's busy time
  (``/proc/stat``) minus the bridge and the generator, in % of one core: other processes
  competing for the two cores while the step ran.

Verdict: the largest N such that it and every smaller step passed: bridge CPU below 80 % of one
core, no underrun and no gap, no failed call, first-audio p95 (callers' measure) within 0.2 s of
the unloaded step's; a step whose generator saturated is not a measurement and ends the verdict.
A step that fails while other processes use ``OTHER_CPU_LIMIT`` of a core or more is repeated
(``--retries``, once by default); failing again, it is reported as not measured cleanly (a step
that passes despite such interference counts). If every step passed, the verdict says "≥ N" and
adds a linear extrapolation of the CPU to 80 % (not a measurement).

Caveats
-------

* Loopback only: no network latency or jitter, no TLS (usually terminated by the ingress).
* Hamsa is an emulator with fixed timing; its audio is computed in the generator, not the bridge.
* The load generator shares the machine (2 cores here) and saturates its core at roughly 300
  calls, so the bridge's own limit may lie above the largest step that can be measured.
* Calls arrive in a burst (N in 2 s), far harsher than real arrivals; the first-audio criterion
  therefore measures call-setup throughput as much as steady-state capacity (see ``--ramp``).
* One greeting per call, no keypresses, no IVR, no announcements database.

Run: ``python bench/capacity.py [--calls 25,50,100,200] [--duration 20] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from bridge.dev.caller import CallPlan, CallResult, place_call
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorState, create_emulator_app
from bridge.dev.servers import bind, serving
from bridge.sentences import split_text

TOKEN: Final = "bench-twilio-auth-token-0123456789"
KEY: Final = "bench-hamsa-api-key-0123456789"
MS_PER_CHAR: Final = 80.0
"""Audio per character of the emulator (the logged Hamsa replies carry 80-100 ms)."""
FIRST_BYTE_DELAY: Final = 0.3
SYNTHESIS_SPEED: Final = 3.0
CHUNK_BYTES: Final = 1600
"""Largest emulator binary frame: 200 ms of μ-law, so replies stream steadily (with 64 KB frames
a short first frame followed by a long second one makes gaps at any load)."""
UNLOADED_CALLS: Final = 3
WARM_UP_SECONDS: Final = 2.0
SAMPLE_INTERVAL: Final = 0.5
"""Seconds between CPU/RSS samples (a sampling interval, not synchronisation)."""
GEN_LAG_INTERVAL: Final = 0.05
CPU_LIMIT: Final = 80.0
"""Bridge CPU (% of one core) a step may use and still pass."""
FIRST_AUDIO_MARGIN: Final = 0.2
"""Seconds a step's first-audio p95 may exceed the unloaded step's."""
GEN_CPU_LIMIT: Final = 90.0
GEN_LAG_LIMIT: Final = 0.05
OTHER_CPU_LIMIT: Final = 15.0
"""Other processes using this much of a core during a step make it invalid (repeated once)."""
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
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


# --- /proc readings ----------------------------------------------------------------------------


def process_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_busy_ticks() -> int:
    """Busy clock ticks of all CPUs together (everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def allowed_cpus(pid: int) -> set[str]:
    """The ``Cpus_allowed_list`` of every thread of ``pid``."""
    found: set[str] = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    found.add(line.split()[1])
    return found


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


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


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of exact values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- the bridge under test ---------------------------------------------------------------------


@dataclass
class Bridge:
    process: asyncio.subprocess.Process
    url: str
    log_events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def scrape(self, http: httpx2.AsyncClient) -> Samples:
        response = await http.get(self.url + "/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)


@asynccontextmanager
async def running_bridge(
    hamsa_url: str, greeting: str, *, max_calls: int, cpu: int | None, log_level: str
) -> AsyncIterator[Bridge]:
    """``hamsa-bridge serve`` in a subprocess (pinned to ``cpu``), until the block exits.

    The environment is this one without any ``BRIDGE_*``, ``HAMSA_*`` or ``TWILIO_*`` variable
    (an IVR flow or a metrics port set in the shell would change what is measured).
    """
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "HAMSA_", "TWILIO_"))
    }

    def pin() -> None:  # runs in the child before exec: every thread inherits it
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    with tempfile.TemporaryDirectory(prefix="hamsa-bench-") as workdir:
        env = inherited | {
            "HAMSA_API_KEY": KEY,
            "HAMSA_WS_URL": hamsa_url.replace("http://", "ws://") + "/v1/realtime/ws",
            "HAMSA_API_URL": hamsa_url,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "BRIDGE_PUBLIC_URL": url,
            "BRIDGE_GREETING": greeting,
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_LOG_LEVEL": log_level,
            "BRIDGE_MAX_CALLS": str(max_calls),
            "BRIDGE_DATABASE_URL": f"sqlite:///{workdir}/bench.db",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            env=env,
            cwd=workdir,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=pin,
        )
        bridge = Bridge(process, url)
        assert process.stderr is not None
        stderr = process.stderr

        async def pump() -> None:
            while line := await stderr.readline():
                try:
                    bridge.log_events.append(json.loads(line))
                except ValueError:
                    bridge.log_events.append({"event": line.decode(errors="replace").strip()})

        reader = asyncio.create_task(pump())
        try:
            async with httpx2.AsyncClient(timeout=2.0) as http:
                await wait_ready(bridge, http)
            yield bridge
        finally:
            if process.returncode is None:
                process.terminate()  # SIGTERM: the drain, with no call left, exits at once
                try:
                    async with asyncio.timeout(15):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()
            await reader


async def wait_ready(bridge: Bridge, http: httpx2.AsyncClient) -> None:
    """Poll ``/readyz`` (at log level warning the bridge prints nothing when it is ready, and no
    other event crosses the process boundary)."""
    async with asyncio.timeout(30):
        while True:
            if bridge.process.returncode is not None:
                raise RuntimeError(f"the bridge exited: {bridge.log_events[-5:]}")
            with contextlib.suppress(httpx2.TransportError):
                if (await http.get(bridge.url + "/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)


async def wait_idle(bridge: Bridge, http: httpx2.AsyncClient) -> Samples:
    """The bridge's metrics once no call and no stream is left (calls end just after the
    callers see the socket close: the bridge's counters settle a moment later)."""
    async with asyncio.timeout(30):
        while True:
            samples = await bridge.scrape(http)
            active = samples.get(("hamsa_bridge_active_calls", ()), 0.0)
            streams = samples.get(("hamsa_bridge_open_streams", ()), 0.0)
            if active == 0 and streams == 0:
                return samples
            await asyncio.sleep(0.1)


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
        bridge_ticks=process_ticks(pid),
        gen_cpu=time.process_time(),
        machine_ticks=machine_busy_ticks(),
        bridge_rss=rss_bytes(pid),
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

    def window(self, start: float, end: float) -> tuple[Sample, Sample] | None:
        """The first and last samples inside ``[start, end]`` (None: fewer than two)."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            return None
        return inside[0], inside[-1]


# --- one step ----------------------------------------------------------------------------------


@dataclass
class StepResult:
    label: str
    calls: int
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    bridge_cpu: float | None = None
    bridge_ramp_cpu: float | None = None
    gen_cpu: float | None = None
    other_cpu: float | None = None
    rss_idle: int = 0
    rss_peak: int = 0
    lag_p50: float | None = None
    lag_p99: float | None = None
    lag_max: float | None = None
    gen_lag_p99: float | None = None
    gen_ramp_lag_p99: float | None = None
    gen_rss: int = 0
    underruns: int = 0
    gaps: int = 0
    first_audio_p50: float | None = None
    first_audio_p95: float | None = None
    bridge_first_audio_p95: float | None = None
    frames_sent: int = 0
    frames_heard: int = 0
    frames_expected: int = 0
    refused: int = 0
    warnings: dict[str, int] = field(default_factory=dict)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0

    @property
    def rss_per_call(self) -> float:
        return max(0, self.rss_peak - self.rss_idle) / max(1, self.calls)

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
        elif self.bridge_cpu >= CPU_LIMIT:
            found.append(f"CPU {self.bridge_cpu:.0f}%")
        if self.failed:
            found.append(f"{self.failed} failed")
        if self.underruns or self.gaps:
            found.append("underruns/gaps")
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
    started: bool = False


def call_problem(result: CallResult | BaseException, frames_per_call: int) -> str | None:
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    if result.webhook_status != 200:
        return f"webhook HTTP {result.webhook_status}"
    if result.handshake_status is not None:
        return f"handshake HTTP {result.handshake_status}"
    if result.leg is None:
        return "no stream"
    if result.ended_by != "bridge" or result.close_code != 1000:
        return f"ended by {result.ended_by} (close {result.close_code})"
    if result.leg.timeline.frames_received < frames_per_call:
        return f"{result.leg.timeline.frames_received}/{frames_per_call} frames"
    return None


async def warm_up(bench: Bench, bridge: Bridge) -> str | None:
    """One short call through a fresh bridge (lazy imports, first Hamsa socket); None if it
    heard audio, else what went wrong. Not measured."""
    plan = CallPlan(
        webhook_url=bridge.url + "/twiml/inbound", auth_token=TOKEN, hangup_after=WARM_UP_SECONDS
    )
    result = await place_call(plan, http=bench.http)
    await wait_idle(bridge, bench.http)
    if result.leg is None or not result.leg.timeline.frames_received:
        return f"webhook {result.webhook_status}, handshake {result.handshake_status}"
    return None


async def measure_step(bench: Bench, calls: int, label: str, *, ramp: float) -> StepResult:
    """A fresh bridge, warmed up, then the step; prints the pinning and the table's header
    once the first bridge runs."""
    async with running_bridge(
        bench.hamsa_url,
        bench.greeting,
        max_calls=calls + 10,
        cpu=bench.cpus[0],
        log_level=bench.log_level,
    ) as bridge:
        if not bench.started:
            bench.started = True
            bridge_cpu, gen_cpu = bench.cpus
            if bridge_cpu is not None and allowed_cpus(bridge.pid) == {str(bridge_cpu)}:
                print(f"pinning: bridge on CPU {bridge_cpu}, load generator on CPU {gen_cpu}")
            else:
                print("pinning: none (bridge and load generator share every CPU)")
            print()
            print(HEADER)
            print(_separator())
        problem = await warm_up(bench, bridge)
        if problem is not None:
            raise RuntimeError(f"warm-up call failed: {problem}; log: {bridge.log_events[-5:]}")
        return await run_step(bench, bridge, calls, label, ramp=ramp)


async def run_step(
    bench: Bench, bridge: Bridge, calls: int, label: str, *, ramp: float
) -> StepResult:
    """``calls`` calls started over ``ramp`` seconds through ``bridge``, run to their end."""
    http = bench.http
    before = await wait_idle(bridge, http)
    step = StepResult(label=label, calls=calls, rss_idle=rss_bytes(bridge.pid))
    first_log = len(bridge.log_events)
    sampler = Sampler(bridge.pid)
    # The generator's cyclic GC would pause every caller at once (a 70 ms gen-2 collection at
    # 200 calls): off during the step, the garbage is collected after it.
    gc.collect()
    gc.disable()
    sampler.start()
    started = time.monotonic()

    async def one(i: int) -> CallResult | BaseException:
        await asyncio.sleep(ramp * i / calls)  # the arrival schedule
        plan = CallPlan(
            webhook_url=bridge.url + "/twiml/inbound",
            auth_token=TOKEN,
            max_duration=bench.duration + 120,
        )
        try:
            return await place_call(plan, http=http)
        except Exception as exc:  # a failed call is a result, not the end of the benchmark
            return exc

    try:
        results = await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        gc.enable()
    await sampler.stop()
    step.gen_rss = rss_bytes(os.getpid())
    gc.collect()
    after = await wait_idle(bridge, http)
    step.seconds = time.monotonic() - started
    step.load = os.getloadavg()

    ok: list[CallResult] = []
    for result in results:
        problem = call_problem(result, bench.frames_per_call)
        if problem is not None:
            step.failed += 1
            if problem not in step.errors:
                step.errors.append(problem)
        if isinstance(result, CallResult) and result.leg is not None:
            ok.append(result)

    # the steady window: every call playing (last first audio .. first end)
    firsts = [r.leg.timeline.first_media_at for r in ok if r.leg is not None]
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
    first, last = sampler.samples[0], sampler.samples[-1]
    span = last.at - first.at
    ours = (last.bridge_ticks - first.bridge_ticks) / CLOCK_TICKS + last.gen_cpu - first.gen_cpu
    machine = (last.machine_ticks - first.machine_ticks) / CLOCK_TICKS
    step.other_cpu = max(0.0, machine - ours) / span * 100

    first_audio = [
        r.leg.timeline.first_media_at - r.started_at
        for r in ok
        if r.leg is not None and r.leg.timeline.first_media_at is not None and r.started_at
    ]
    step.first_audio_p50 = quantile(first_audio, 0.5)
    step.first_audio_p95 = quantile(first_audio, 0.95)
    step.gaps = sum(len(r.gaps()) for r in ok)
    step.frames_heard = sum(r.leg.timeline.frames_received for r in ok if r.leg is not None)
    step.frames_expected = calls * bench.frames_per_call

    lag = histogram_delta(after, before, "hamsa_bridge_event_loop_lag_seconds")
    step.lag_p50 = histogram_bucket(0.5, lag)
    step.lag_p99 = histogram_bucket(0.99, lag)
    step.lag_max = histogram_max_bucket(lag)
    fa = histogram_delta(after, before, "hamsa_bridge_first_audio_seconds")
    step.bridge_first_audio_p95 = histogram_bucket(0.95, fa)
    step.underruns = int(delta(after, before, "hamsa_bridge_underruns_total"))
    step.frames_sent = int(delta(after, before, "hamsa_bridge_frames_sent_total"))
    step.refused = int(total_delta(after, before, "hamsa_bridge_streams_refused_total"))
    for event in bridge.log_events[first_log:]:
        name = str(event.get("event", "?"))
        step.warnings[name] = step.warnings.get(name, 0) + 1
    bench.hamsa.requests.clear()  # the emulator keeps every reply's audio: free it
    bench.hamsa.connections.clear()
    return step


# --- report ------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def ms_bound(value: float | None) -> str:
    """A bucket bound in ms: "≤2.5"."""
    return "-" if value is None else f"≤{value * 1000:g}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


HEADER: Final = (
    "| calls | failed | bridge CPU steady (ramp) | RSS MB (KB/call) | loop lag p50/p99/max ms "
    "| first audio p50/p95 ms (bridge p95) | underruns | gaps | frames sent/heard/expected "
    "| generator CPU, lag p99 steady / ramp ms | other CPU | load avg |"
)


def row(step: StepResult) -> str:
    rss = f"{step.rss_peak / 2**20:.0f} ({step.rss_per_call / 1024:.0f})"
    lag = f"{ms_bound(step.lag_p50)} / {ms_bound(step.lag_p99)} / {ms_bound(step.lag_max)}"
    first = (
        f"{ms(step.first_audio_p50)} / {ms(step.first_audio_p95)} "
        f"({ms_bound(step.bridge_first_audio_p95)})"
    )
    frames = f"{step.frames_sent} / {step.frames_heard} / {step.frames_expected}"
    gen = f"{pct(step.gen_cpu)}, {ms(step.gen_lag_p99)} / {ms(step.gen_ramp_lag_p99)} ms"
    if step.gen_saturated:
        gen += " SATURATED"
    other = pct(step.other_cpu) + (" BUSY" if step.machine_busy else "")
    cpu = f"{pct(step.bridge_cpu)} ({pct(step.bridge_ramp_cpu)})"
    return (
        f"| {step.label} | {step.failed} | {cpu} | {rss} | {lag} | {first} "
        f"| {step.underruns} | {step.gaps} | {frames} | {gen} | {other} "
        f"| {step.load[0]:.2f} |"
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
    cpu = f"bridge CPU {best.bridge_cpu:.0f}% at {best.calls}"
    line = f"capacity per core ≈ {best.calls} calls ({cpu})"
    if stopped is not None:
        line += f"; {stopped}"
    else:
        linear = best.calls * CPU_LIMIT / max(best.bridge_cpu, 1.0)
        line = (
            f"capacity per core ≥ {best.calls} calls (bridge CPU {best.bridge_cpu:.0f}% "
            f"at {best.calls}; every step passed, CPU extrapolates to ≈ {linear:.0f} calls "
            f"at {CPU_LIMIT:.0f}%)"
        )
    return line, best


# --- main --------------------------------------------------------------------------------------


def pick_cpus() -> tuple[int | None, int | None]:
    """(bridge CPU, generator CPU), or Nones when pinning is impossible."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


async def bench_main(args: argparse.Namespace, cpus: tuple[int | None, int | None]) -> int:
    steps_n: list[int] = args.calls
    greeting = greeting_for(args.duration)
    frames_per_call = expected_frames(greeting)
    config = EmulatorConfig(
        api_keys=frozenset({KEY}),
        first_byte_delay=FIRST_BYTE_DELAY,
        synthesis_speed=SYNTHESIS_SPEED,
        ms_per_char=MS_PER_CHAR,
        max_chunk_bytes=CHUNK_BYTES,
    )
    emulator = create_emulator_app(config)
    loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}")
    bridge_uvloop = importlib.util.find_spec("uvloop") is not None
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
        )
        print(f"load average before the steps: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        results: list[StepResult] = []
        for n in [UNLOADED_CALLS, *steps_n]:
            label = f"{n} (unloaded)" if not results else str(n)
            ramp = 1.0 if not results else args.ramp
            reference = results[0].first_audio_p95 if results else None
            for attempt in range(1 + args.retries):
                step = await measure_step(bench, n, label, ramp=ramp)
                failed = bool(step.problems(reference)) or step.gen_saturated
                repeat = step.machine_busy and failed and attempt < args.retries
                if repeat:
                    step.label += " (machine busy: repeated)"
                print(row(step), flush=True)
                if not repeat:
                    break
            results.append(step)
        unloaded, loaded = results[0], results[1:]
        print()
        for step in results:
            notes = [f"{step.seconds:.0f} s, generator RSS {step.gen_rss / 2**20:.0f} MB"]
            if step.errors:
                notes.append(f"failures: {'; '.join(step.errors[:3])}")
            if step.refused:
                notes.append(f"{step.refused} streams refused")
            if step.warnings:
                notes.append(f"bridge log: {dict(sorted(step.warnings.items()))}")
            if notes:
                print(f"{step.label}: {' | '.join(notes)}")
        line, _ = verdict(unloaded, loaded)
        print(line)
        saturated = [s.calls for s in loaded if s.gen_saturated]
        if saturated:
            print(f"warning: the load generator saturated at {saturated} calls: figures invalid")
    return 0


def _separator() -> str:
    return "|" + "---|" * (HEADER.count("|") - 1)


def parse_calls(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive call counts")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Concurrent calls one bridge process (one core) carries.",
    )
    parser.add_argument("--calls", type=parse_calls, default=None, help="steps (25,50,100,200)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of audio per call (20)"
    )
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds to start a step's calls")
    parser.add_argument(
        "--quick", action="store_true", help="a ~1-minute run: steps 10,50, 8 s calls"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="repeat a step this often while other processes keep the machine busy (1)",
    )
    parser.add_argument("--log-level", default="warning", help="the bridge's BRIDGE_LOG_LEVEL")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.calls is None:
        args.calls = [10, 50] if args.quick else [25, 50, 100, 200]
    if args.duration is None:
        args.duration = 8.0 if args.quick else 20.0
    cpus = pick_cpus()
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})  # before the loop: threads inherit it
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        factory = uvloop.new_event_loop
    started = time.monotonic()
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            code = runner.run(bench_main(args, cpus))
        except RuntimeError as exc:  # the bridge did not start, or could not carry one call
            print(f"capacity: {exc}", file=sys.stderr)
            code = 1
    print(f"run time: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
