"""Running the emulator: the server, its banner and the ``emulate-hamsa`` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from bridge.dev.espeak import (
    resolve_speech,
)
from bridge.dev.hamsa_emulator.config import EmulatorConfig, Fault, Range, SttFault
from bridge.dev.hamsa_emulator.realtime import create_emulator_app
from bridge.dev.hamsa_emulator.records import EmulatorState
from bridge.dev.hamsa_emulator.wire import _WS_PATH, TRUNCATED_BYTES
from bridge.dev.servers import (
    AppServer,
    port_problem,
    quiet_uvicorn,
    reachable_url,
    serve_until_stopped,
)
from bridge.errors import TraceError
from bridge.hamsa_trace import read_trace
from bridge.settings import Settings
from bridge.uvicorn_setup import exit_as_signalled


class EmulatorServer(AppServer):
    """The emulator under uvicorn in the running event loop, as an async context manager.

    ``port=0`` (the default) binds an ephemeral port; read it from :attr:`port` once started.
    uvicorn's logging configuration is left alone unless ``log_config`` is given; signal handlers
    are installed only with ``handle_signals=True`` (the CLI), so embedding it never steals Ctrl-C.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        handle_signals: bool = False,
        log_config: dict[str, Any] | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        app = create_emulator_app(self.config)
        self.state: EmulatorState = app.state.emulator
        super().__init__(
            app,
            host=host,
            port=port,
            sock=sock,
            handle_signals=handle_signals,
            log_config=log_config,
            ws_ping_interval=self.config.ping_interval,
        )

    @property
    def ws_url(self) -> str:
        return "ws" + self.http_url.removeprefix("http") + _WS_PATH

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self


async def serve_emulator(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    sock: socket.socket | None = None,
    ready: asyncio.Event | None = None,
    handle_signals: bool = True,
    log_config: dict[str, Any] | None = None,
    banner: Callable[[EmulatorServer], Iterable[str]] | None = None,
) -> signal.Signals | None:
    """Serve the emulator until a signal (or cancellation). ``ready`` is set once listening.

    Once listening, ``banner(server)``'s lines are printed on stdout (default: the one line
    ``Hamsa emulator listening on ws://…``). For an ephemeral port whose number you need, pass
    an already-bound ``sock`` or use :class:`EmulatorServer` directly.
    """
    server = EmulatorServer(
        config,
        host=host,
        port=port,
        sock=sock,
        handle_signals=handle_signals,
        log_config=log_config,
    )
    lines = banner or (lambda s: [f"Hamsa emulator listening on {_shown_ws_url(s)}"])
    return await serve_until_stopped(server, banner=lambda _: lines(server), ready=ready)


def _shown_ws_url(server: EmulatorServer) -> str:
    return "ws" + reachable_url(server).removeprefix("http") + _WS_PATH


def run_emulator(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    banner: Callable[[EmulatorServer], Iterable[str]] | None = None,
) -> None:
    """Blocking entry point for ``hamsa-bridge emulate-hamsa``.

    uvicorn's own lines are kept quiet (:func:`~bridge.dev.servers.quiet_uvicorn`): what the
    user reads is ``banner``'s. SIGTERM and Ctrl-C are re-raised after the graceful stop
    (uvicorn's behaviour), so the exit status is 143, or 130 (Ctrl-C: ``KeyboardInterrupt``,
    which the command line turns into 130).
    """
    quiet_uvicorn()
    exit_as_signalled(asyncio.run(serve_emulator(config, host, port, banner=banner)))


MODEL_SUMMARIES: Final[Mapping[str, str]] = {
    "instant": "no delays at all",
    "realistic": "connect 1.2 s, first audio 0.3-1.7 s, then 2-4x faster than real time",
    "observed": "connect 1.2 s, first audio 0.3-1.7 s, a sentence in 0.8-1.8x real time",
    "slow": "connect 1.2 s, first audio 0.3-1.7 s, then 0.9x real time (slower than playback)",
    "bursty": "connect 1.2 s, first audio 0.3-1.7 s, 4-8x real time with stalls of 0.4-1.0 s",
    "fast": "connect 1.2 s, first audio 0.2-0.4 s, a large first frame, then 3x real time",
}
"""One line per delivery model (:data:`DELIVERY_MODELS`) for ``emulate-hamsa``'s banner; the
numbers are those of the model's classmethod."""


def startup_lines(
    config: EmulatorConfig,
    server: EmulatorServer,
    *,
    model: str,
    speech: str,
    replay: str | None = None,
    key_source: str | None = None,
) -> list[str]:
    """``emulate-hamsa``'s banner, in plain words: where it listens (the first line, which says
    "listening"), the delivery model or the replayed trace, the speech, the API key (its
    source, never its value), faults and where the records are."""
    http = reachable_url(server)
    lines = [
        f"Hamsa emulator listening on {_shown_ws_url(server)}",
        f"  set HAMSA_WS_URL to that, and HAMSA_API_URL to {http} (voice preload)",
    ]
    if config.replay is not None:
        count = len(config.replay.successful)
        lines.append(f"  delivery: the timing of {replay} replayed ({count} recorded replies)")
    else:
        lines.append(f"  delivery: {model} ({MODEL_SUMMARIES.get(model, 'see EmulatorConfig')})")
    lines.append(f"  {speech}")
    delay = config.stt_delay
    shown = f"{delay[0]:g}-{delay[1]:g}" if isinstance(delay, tuple) else f"{delay:g}"
    lines.append(
        f"  speech to text: the caller's tones heard back, as {config.stt_answer}, after {shown} s"
    )
    if key_source:
        lines.append(f"  API key: the value of {key_source}")
    else:
        lines.append("  API key: any non-empty key (HAMSA_API_KEY is unset)")
    faults = [f"request {n} {f.name}" for n, f in sorted(config.faults.items())]
    if config.truncate_rate:
        faults.append(f"{config.truncate_rate:.0%} of replies cut to {TRUNCATED_BYTES} bytes")
    faults += [f"stt request {n} {f.name}" for n, f in sorted(config.stt_faults.items())]
    if config.stt_error_rate:
        faults.append(f"{config.stt_error_rate:.0%} of stt requests answered with an error")
    if config.stt_thinking_rate:
        faults.append(f"{config.stt_thinking_rate:.0%} of stt requests answered [THINKING]")
    if faults:
        lines.append(f"  faults: {', '.join(faults)}")
    if config.custom_voices:
        lines.append(f"  custom voices: {', '.join(sorted(config.custom_voices))}")
    lines.append(f"  records: GET {http}/_emulator/log; Ctrl-C stops it")
    return lines


def _seconds_or_range(text: str) -> float | Range:
    """``--stt-delay``: ``"0.3"`` or ``"0.2-0.4"`` (``ValueError`` otherwise)."""
    low, dash, high = text.strip().partition("-")
    if not dash:
        return float(low)
    return float(low), float(high)


def run_emulator_command(settings: Settings, args: argparse.Namespace) -> int:
    """``hamsa-bridge emulate-hamsa``: the emulator with the CLI's options."""
    faults: dict[int, Fault] = {}
    for item in args.fault:
        number, _, name = item.partition("=")
        try:
            faults[int(number)] = Fault[name.strip().upper()]
        except (KeyError, ValueError):
            choices = ", ".join(f.name for f in Fault)
            print(
                f"emulate-hamsa: bad --fault {item!r}; expected N=NAME with NAME one of {choices}",
                file=sys.stderr,
            )
            return 2
    stt_faults: dict[int, SttFault] = {}
    for item in getattr(args, "stt_fault", []):
        number, _, name = item.partition("=")
        try:
            stt_faults[int(number)] = SttFault[name.strip().upper()]
        except (KeyError, ValueError):
            choices = ", ".join(f.name for f in SttFault)
            print(
                f"emulate-hamsa: bad --stt-fault {item!r}; expected N=NAME with NAME one of "
                f"{choices}",
                file=sys.stderr,
            )
            return 2
    try:
        stt_delay = _seconds_or_range(getattr(args, "stt_delay", "0.2-0.4"))
    except ValueError:
        print(
            f"emulate-hamsa: bad --stt-delay {args.stt_delay!r}; expected SECONDS or MIN-MAX",
            file=sys.stderr,
        )
        return 2
    key = settings.hamsa_api_key.get_secret_value()
    try:
        speech, speech_line = resolve_speech(getattr(args, "speech", "auto"))
    except ValueError as exc:
        print(f"emulate-hamsa: --speech espeak: {exc}")
        return 2
    overrides: dict[str, Any] = {
        "api_keys": frozenset({key}) if key else None,
        "faults": faults,
        "truncate_rate": args.truncate_rate,
        "custom_voices": frozenset(args.custom_voice),
        "seed": args.seed,
        "speech": speech,
        "stt_faults": stt_faults,
        "stt_delay": stt_delay,
        "stt_answer": getattr(args, "stt_answer", "text"),
        "stt_fixed_transcript": getattr(args, "stt_transcript", ""),
        "stt_error_rate": getattr(args, "stt_error_rate", 0.0),
        "stt_thinking_rate": getattr(args, "stt_thinking_rate", 0.0),
    }
    name = "realistic" if args.realistic else (args.model or "instant")
    if args.realistic and args.model not in (None, "realistic"):
        print(
            f"emulate-hamsa: --realistic is --model realistic; it contradicts --model {args.model}",
            file=sys.stderr,
        )
        return 2
    if args.replay is not None:
        try:
            overrides["replay"] = read_trace(args.replay)
        except TraceError as exc:
            print(f"emulate-hamsa: {exc}", file=sys.stderr)
            return 2
    try:
        config = EmulatorConfig.model(name, **overrides)
    except ValueError as exc:
        print(f"emulate-hamsa: {exc}", file=sys.stderr)
        return 2
    problem = port_problem(args.host, args.port)
    if problem:
        print(f"emulate-hamsa: {problem}", file=sys.stderr)
        return 2

    def banner(server: EmulatorServer) -> list[str]:
        return startup_lines(
            config,
            server,
            model=name,
            speech=speech_line,
            replay=args.replay,
            key_source="HAMSA_API_KEY" if key else None,
        )

    run_emulator(config, args.host, args.port, banner=banner)
    return 0
