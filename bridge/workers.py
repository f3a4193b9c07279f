"""``hamsa-bridge serve --workers N``: N bridge processes on one machine, behind one port.

One ``serve`` process runs one event loop on one core. With ``--workers N`` (``BRIDGE_WORKERS``;
0, the default, is one per usable CPU) ``serve`` becomes a small supervisor, this module: no event
loop, no thread of its own, no call ever runs in it.

* **One socket.** It binds the port (and ``BRIDGE_METRICS_PORT``'s) once, then forks the workers,
  which inherit it: the kernel hands each new connection to one of the workers accepting on it.
  A proxy (Caddy) needs one upstream; no worker is addressed on its own; the socket outlives any
  worker, so a restart loses no connection waiting to be accepted.
* **Each worker is a whole bridge** (``bridge.server.serve_worker``): its own app, event loop,
  calls, drain, warm Hamsa sockets and ``BRIDGE_MAX_CALLS`` (per worker; ``/readyz`` answers for
  the worker that took the request and says so).
* **Signals.** SIGTERM and SIGINT are forwarded to every worker: the first drains each of them
  (``bridge.drain``: no call is cut), a second makes them exit at once. The supervisor waits for
  all of them and then exits as one ``serve`` does, re-raising the signal (status 143 for
  SIGTERM; 130 for Ctrl-C). Workers run in their own process group, so Ctrl-C in a terminal
  reaches the supervisor alone (and is forwarded once), and they get SIGTERM if the supervisor
  dies (Linux ``PR_SET_PDEATHSIG``): they drain rather than serve on unsupervised.
* **Restarts.** A worker that dies while serving (killed, or by a signal) is replaced; the others
  are not touched. One that lived less than ``RESTART_QUICK`` seconds is replaced after a pause
  (1 s, doubling up to ``RESTART_BACKOFF_MAX``). A worker that exits with a failure status
  (startup failed: a voice preload) stops the others (drained) and the supervisor exits 1, as
  ``serve`` alone would. Settings are checked once, before anything listens (exit 2).
* **Shared state**, in a private runtime directory removed at exit: prometheus-client's
  multiprocess files (``/metrics`` reports the whole machine: ``bridge.metrics``) and the SQLite
  file of the stream tokens already used (``SharedUsedTokens``: a token replayed to another
  worker is refused).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import structlog
from prometheus_client.multiprocess import mark_process_dead

from bridge.calls.registry import SharedUsedTokens
from bridge.exit_codes import ExitCode
from bridge.logs import bind_process_fields
from bridge.settings import Settings
from bridge.uvicorn_setup import listening_socket

log = structlog.get_logger("bridge.workers")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (*STOP_SIGNALS, signal.SIGCHLD)
RESTART_QUICK = 10.0
"""A worker that died sooner than this after it started is replaced after a pause."""
RESTART_BACKOFF_MAX = 30.0
_PR_SET_PDEATHSIG = 1


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's cpuset, ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux, or the syscall filtered
        return os.cpu_count() or 1


def worker_count(requested: int) -> int:
    """``--workers``/``BRIDGE_WORKERS`` as a number of processes: 0 is one per usable CPU."""
    return requested if requested > 0 else usable_cpus()


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """What a worker gets from the supervisor."""

    index: int
    """1 to ``count``; a replacement keeps the number of the worker it replaces."""
    count: int
    host: str
    port: int
    sockets: tuple[socket.socket, ...]
    """Listening: the main port, then ``BRIDGE_METRICS_PORT``'s when set."""
    runtime_dir: Path

    @property
    def metrics_dir(self) -> Path:
        return self.runtime_dir / "metrics"

    @property
    def used_tokens(self) -> Path:
        return self.runtime_dir / "used-tokens.sqlite3"


WorkerMain = Callable[[Settings, WorkerSlot], int]
"""Runs one worker to its end; its exit status (``bridge.server.serve_worker``)."""


def supervise(
    settings: Settings, *, host: str, port: int, workers: int, worker_main: WorkerMain
) -> int:
    """Run ``workers`` workers until stopped; the exit status, as ``serve`` alone (the signal
    that stopped them is raised again here, after the runtime directory is removed)."""
    runtime = Path(tempfile.mkdtemp(prefix="hamsa-bridge-"))
    try:
        outcome = _Supervisor(settings, host, port, workers, runtime, worker_main).run()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    if isinstance(outcome, signal.Signals):
        # The original handlers are back: SIGTERM ends the process (143), SIGINT raises
        # KeyboardInterrupt (the CLI's 130), as uvicorn does for one process.
        signal.raise_signal(outcome)
        return ExitCode.INTERRUPTED
    return outcome


@dataclass(slots=True)
class _Worker:
    index: int
    pid: int
    started: float


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """The signal's number reaches the wake-up pipe; the loop acts on it there."""


class _Supervisor:
    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        count: int,
        runtime: Path,
        worker_main: WorkerMain,
    ) -> None:
        self._settings = settings
        self._host = host
        self._port = port
        self._count = count
        self._runtime = runtime
        self._worker_main = worker_main
        self._pid = os.getpid()
        self._sockets: tuple[socket.socket, ...] = ()
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, float] = {}
        """Worker number → when (monotonic) to start its replacement."""
        self._quick_deaths: dict[int, int] = {}
        self._stopping: signal.Signals | None = None
        self._failed: int | None = None
        self._handlers: dict[int, Any] = {}
        self._wake_r = self._wake_w = -1

    def run(self) -> int | signal.Signals:
        (self._runtime / "metrics").mkdir()
        SharedUsedTokens.create(self._slot(0).used_tokens)
        try:
            self._sockets = tuple(self._listen())
        except OSError as exc:
            log.error("startup_failed", reason=f"cannot listen on {self._host}: {exc}")
            return ExitCode.FAILURE
        self._port = self._sockets[0].getsockname()[1]  # the one bound, if 0 was asked
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._handlers = {sig: signal.signal(sig, _note_signal) for sig in _HANDLED}
        try:
            log.info(
                "workers_starting",
                workers=self._count,
                url=f"http://{self._host}:{self._port}",
                supervisor_pid=self._pid,
            )
            for index in range(1, self._count + 1):
                self._start(index)
            self._loop()
        finally:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(self._wake_r)
            os.close(self._wake_w)
            for sock in self._sockets:
                sock.close()
        if self._failed is not None:
            log.error("workers_stopped", exit_status=self._failed)
            return self._failed
        log.info("workers_stopped", signal=self._stopping.name if self._stopping else None)
        return self._stopping if self._stopping is not None else ExitCode.OK

    def _listen(self) -> list[socket.socket]:
        ports = [self._port]
        if self._settings.bridge_metrics_port:
            ports.append(self._settings.bridge_metrics_port)
        return [listening_socket(self._host, port) for port in ports]

    def _slot(self, index: int) -> WorkerSlot:
        return WorkerSlot(
            index=index,
            count=self._count,
            host=self._host,
            port=self._port,
            sockets=self._sockets,
            runtime_dir=self._runtime,
        )

    def _loop(self) -> None:
        while self._workers or (self._stopping is None and self._restarts):
            timeout = None
            if self._restarts:
                timeout = max(0.0, min(self._restarts.values()) - time.monotonic())
            readable, _, _ = select.select([self._wake_r], [], [], timeout)
            if readable:
                for number in os.read(self._wake_r, 512):
                    if number in STOP_SIGNALS:
                        self._stop(signal.Signals(number))
            self._reap()  # after SIGCHLD, or any wake-up: WNOHANG, and SIGCHLD may coalesce
            now = time.monotonic()
            for index, due in list(self._restarts.items()):
                if due <= now:
                    del self._restarts[index]
                    self._start(index)

    def _start(self, index: int) -> None:
        # Signals stay blocked in this thread across fork: the child must not run our handler
        # (it would write to the supervisor's wake-up pipe) before it restores its own.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(index, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._workers[pid] = _Worker(index, pid, time.monotonic())
        log.info("worker_started", worker=index, worker_pid=pid)

    def _child(self, index: int, mask: set[int | signal.Signals]) -> NoReturn:
        code: int = ExitCode.FAILURE
        try:
            signal.set_wakeup_fd(-1)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)  # Ctrl-C in a terminal: only the supervisor gets it
            _die_with_parent()
            bind_process_fields(worker=index, pid=os.getpid())
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if os.getppid() != self._pid:
                code = ExitCode.OK  # the supervisor died before PR_SET_PDEATHSIG took hold
            else:
                code = self._worker_main(self._settings, self._slot(index))
        except KeyboardInterrupt:
            code = ExitCode.INTERRUPTED
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else ExitCode.FAILURE
        except BaseException:
            log.exception("worker_crashed")
            code = ExitCode.FAILURE
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _stop(self, sig: signal.Signals) -> None:
        if self._stopping is None:
            self._stopping = sig
            self._restarts.clear()
            log.info("workers_stopping", signal=sig.name, workers=len(self._workers))
        else:
            log.warning("workers_stopping_now", signal=sig.name, workers=len(self._workers))
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            # Its live gauges leave the sums; its counters stay (they count what happened).
            mark_process_dead(pid, str(self._slot(0).metrics_dir))  # type: ignore[no-untyped-call]
            self._exited(worker, os.waitstatus_to_exitcode(status))

    def _exited(self, worker: _Worker, code: int) -> None:
        status = signal.Signals(-code).name if code < 0 else code
        fields = {"worker": worker.index, "worker_pid": worker.pid, "exit_status": status}
        if self._stopping is not None:
            log.info("worker_exited", **fields)
            if code > 0 and code != ExitCode.INTERRUPTED and self._failed is None:
                self._failed = ExitCode.FAILURE
            return
        if code > 0 and code != ExitCode.INTERRUPTED:
            # Startup failed (or the worker crashed): every restart would fail the same way.
            log.error("worker_failed", **fields, hint="see the worker's lines above")
            self._failed = ExitCode.USAGE if code == ExitCode.USAGE else ExitCode.FAILURE
            self._stop(signal.SIGTERM)
            return
        now = time.monotonic()
        if now - worker.started >= RESTART_QUICK:
            self._quick_deaths.pop(worker.index, None)
            delay = 0.0
        else:
            deaths = self._quick_deaths.get(worker.index, 0)
            self._quick_deaths[worker.index] = deaths + 1
            delay = min(RESTART_BACKOFF_MAX, 2.0**deaths)
        log.warning("worker_died", **fields, restart_in=delay)
        self._restarts[worker.index] = now + delay


def _die_with_parent() -> None:
    """SIGTERM (a drain) to this process when the supervisor dies (Linux only)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
