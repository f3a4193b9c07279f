"""What the benchmarks and the tests that run ``hamsa-bridge serve`` share.

* ``hamsa-bridge serve`` in a subprocess, as users run it: :func:`serve_env` (its environment,
  aimed at a Hamsa emulator), :func:`start_serve` (the process) and :func:`served_bridge` (the
  process for a block, its JSON log read line by line into a :class:`ServedBridge`);
* the machine: ``/proc`` readings (CPU ticks, RSS, open files, CPU pinning), the CPU model, the
  load average; the event loop the benchmarks run on (uvloop where installed);
* the benchmarks' credentials (``KEY``, ``TOKEN``) and :func:`inbound_plan`, a simulated caller's
  plan for a bridge's inbound webhook.

The benchmark scripts run as scripts (``python bench/capacity.py``) and import this module as
``_common``, like ``figures``; the tests import it as ``bench._common``. It imports nothing else
of ``bench/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bridge.dev.caller import CallPlan

TOKEN: Final = "bench-twilio-auth-token-0123456789"
"""The benchmarks' ``TWILIO_AUTH_TOKEN``."""
KEY: Final = "bench-hamsa-api-key-0123456789"
"""The benchmarks' ``HAMSA_API_KEY`` (the Hamsa emulators accept only it)."""
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second, the unit of ``/proc`` CPU times."""
OWN_PREFIXES: Final = ("BRIDGE_", "HAMSA_", "TWILIO_")
"""The bridge's settings in the environment."""


# --- hamsa-bridge serve, in a subprocess -------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve_env(
    hamsa_url: str,
    *,
    hamsa_key: str,
    auth_token: str,
    public_url: str,
    clean: bool = False,
    **settings: str,
) -> dict[str, str]:
    """The environment of a ``hamsa-bridge serve`` that uses the Hamsa emulator at ``hamsa_url``
    (``http://…``: its realtime socket and its REST API), with JSON logs, one process
    (``BRIDGE_WORKERS=1``: what the benchmarks measure; ``settings`` may ask for workers), and
    ``settings``.

    It starts from this process' environment; ``clean``: without any ``BRIDGE_*``, ``HAMSA_*``
    or ``TWILIO_*`` variable (an IVR flow or a metrics port set in the shell would change what
    is measured).
    """
    inherited = {k: v for k, v in os.environ.items() if not (clean and k.startswith(OWN_PREFIXES))}
    return inherited | {
        "HAMSA_API_KEY": hamsa_key,
        "HAMSA_WS_URL": hamsa_url.replace("http://", "ws://") + "/v1/realtime/ws",
        "HAMSA_API_URL": hamsa_url,
        "TWILIO_AUTH_TOKEN": auth_token,
        "BRIDGE_PUBLIC_URL": public_url,
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_WORKERS": "1",
        **settings,
    }


async def start_serve(
    port: int | str, env: Mapping[str, str], **options: Any
) -> asyncio.subprocess.Process:
    """``python -m bridge.cli serve --host 127.0.0.1 --port PORT`` with ``env``; ``options`` go
    to ``asyncio.create_subprocess_exec`` (``stdout``, ``stderr``, ``cwd``, ``preexec_fn``…)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=dict(env),
        **options,
    )


@dataclass
class ServedBridge:
    """A ``hamsa-bridge serve`` process and its stderr (the JSON log), line by line as it comes."""

    process: asyncio.subprocess.Process
    url: str
    """``http://127.0.0.1:PORT``."""
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever a line arrives."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self) -> list[dict[str, Any]]:
        """Every line, parsed (``ValueError`` if one is not JSON)."""
        return [json.loads(line) for line in self.lines]

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e["event"] == event)

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        """Until the log satisfies ``predicate`` (a minute at most: a guard against a hang, which
        a loaded machine's slowness must not trip)."""
        async with asyncio.timeout(60):
            while not predicate(self.events()):
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def served_bridge(
    port: int,
    env: Mapping[str, str],
    *,
    graceful: bool = False,
    cwd: str | None = None,
    preexec_fn: Callable[[], None] | None = None,
    command: Sequence[str] | None = None,
) -> AsyncIterator[ServedBridge]:
    """``hamsa-bridge serve`` on ``port`` (:func:`start_serve`, stdout discarded) until the block
    exits; its stderr lines go to :attr:`ServedBridge.lines`. Not awaited: its readiness.

    ``command``: run that instead (another server under test listening on ``port``, such as the
    benchmark's floor server), the same way.

    At the end a bridge still running is killed, or with ``graceful`` sent SIGTERM (its drain,
    with no call left, exits at once) and killed only if it has not exited 15 s later.
    """
    options: dict[str, Any] = {
        "cwd": cwd,
        "stdout": asyncio.subprocess.DEVNULL,
        "stderr": asyncio.subprocess.PIPE,
        "preexec_fn": preexec_fn,
    }
    if command is None:
        process = await start_serve(port, env, **options)
    else:
        process = await asyncio.create_subprocess_exec(*command, env=dict(env), **options)
    bridge = ServedBridge(process, f"http://127.0.0.1:{port}")
    assert process.stderr is not None
    stderr = process.stderr

    async def pump() -> None:
        while line := await stderr.readline():
            bridge.lines.append(line.decode(errors="replace"))
            bridge.changed.set()

    reader = asyncio.create_task(pump())
    try:
        yield bridge
    finally:
        if process.returncode is None:
            if graceful:
                process.terminate()
                try:
                    async with asyncio.timeout(15):
                        await process.wait()
                except TimeoutError:
                    process.kill()
            else:
                process.kill()
        await process.wait()
        await reader


def inbound_plan(base_url: str, auth_token: str, **overrides: Any) -> CallPlan:
    """A simulated caller's plan for the inbound webhook of the bridge at ``base_url``; fields
    may be overridden."""
    plan = CallPlan(webhook_url=base_url + "/twiml/inbound", auth_token=auth_token)
    for name, value in overrides.items():
        setattr(plan, name, value)
    return plan


# --- the machine -------------------------------------------------------------------------------


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


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve --workers N``: the supervisor and its workers), from
    ``/proc/PID/task/TID/children``; a process that exits meanwhile is left out."""
    found = [pid]
    for parent in found:  # grows while it is walked: breadth first
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
                found.extend(int(child) for child in children)
    return found


def tree_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its live descendants, in clock ticks. A descendant that
    exited takes its ticks with it (until its parent waits for it): measure over a window in
    which none exits."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += process_ticks(member)
    return total


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its live descendants, summed (pages shared after ``fork`` are counted
    once per process: compare growth, not totals)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += rss_bytes(member)
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_busy_ticks() -> int:
    """Busy clock ticks of all CPUs together (everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
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


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: ``"0.52 0.61 0.40"``."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` where uvloop is installed (as the bridge runs), else None."""
    if not uvloop_installed():
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
