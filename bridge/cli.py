"""The ``hamsa-bridge`` console script: the entry point, the one place that reads the environment.

``build_parser`` is the whole command line: every subcommand is added with
:func:`bridge.cli_format.add_command` (a summary, a description, help on every option, defaults
shown, examples), and ``--help`` ends with the one exit-status table
(:mod:`bridge.exit_codes`). ``tests/test_cli_help.py`` walks the parser and checks it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import ValidationError

from bridge.announcements.options import add_option_arguments
from bridge.campaigns.cli_args import add_campaign_command
from bridge.cli_format import HelpFormatter, add_command
from bridge.errors import BridgeError, ConfigError
from bridge.exit_codes import EXIT_CODES_HELP, ExitCode
from bridge.logs import configure_logging
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS
from bridge.protocols.twilio_stream_server import is_dtmf_key
from bridge.settings import Settings, environment

DESCRIPTION = """\
Bridge phone calls on Twilio to Hamsa's Arabic text-to-speech: run the bridge, wire a Twilio
number to it, place announcement calls and campaigns, and try all of it offline with the
built-in Twilio and Hamsa emulators.

Settings come from environment variables (TWILIO_*, HAMSA_*, BRIDGE_*; the README lists them).
New here? `hamsa-bridge demo` plays a whole simulated call: no credentials, no network.
`hamsa-bridge COMMAND --help` describes a command, its options and its defaults."""

EXAMPLES = """\
examples:
  hamsa-bridge demo                          # a simulated call, written to hamsa-demo.wav
  hamsa-bridge serve                         # the bridge, on 0.0.0.0:8080
  hamsa-bridge doctor                        # check every link, Twilio to Hamsa
  hamsa-bridge announce --to +966501234567 --text "موعدك غدا"
"""


def _version() -> str:
    try:
        return version("hamsa-bridge")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _key_press(value: str) -> tuple[float, str]:
    seconds, _, digit = value.partition(":")
    if not is_dtmf_key(digit):
        raise argparse.ArgumentTypeError("expected SECONDS:DIGIT, for example 1.5:1")
    try:
        return float(seconds), digit
    except ValueError:
        raise argparse.ArgumentTypeError("expected SECONDS:DIGIT, for example 1.5:1") from None


def _spoken(value: str) -> tuple[float, str]:
    seconds, _, phrase = value.partition(":")
    try:
        at = float(seconds)
    except ValueError:
        at = -1.0
    if at < 0 or not phrase.strip():
        raise argparse.ArgumentTypeError("expected SECONDS:PHRASE, for example 2.0:المواعيد")
    return at, phrase


def _add_press_and_answer(
    parser: argparse.ArgumentParser, *, out: str, press: str = "", answer: str = ""
) -> None:
    """The simulated caller's keys and WAV, shared by ``demo``, ``call`` and ``twilio call-in``
    (``press``, ``answer``: more help for those options)."""
    parser.add_argument(
        "--press",
        type=_key_press,
        action="append",
        default=[],
        metavar="SECONDS:DIGIT",
        help=f"press DIGIT this many seconds into the call (repeatable){press}",
    )
    parser.add_argument(
        "--answer",
        action="append",
        default=[],
        metavar="KEYS",
        help="keys pressed after the next IVR prompt that waits for input, or say:PHRASE to "
        f"say PHRASE instead (tone speech; repeatable, in order){answer}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(out),
        metavar="FILE.wav",
        help="where to write the WAV of what the caller heard",
    )


def _probe_exit_codes() -> str:
    from bridge.probe import EXIT_CODES_HELP

    return EXIT_CODES_HELP


_DELIVERY_MODELS = ("instant", "realistic", "observed", "slow", "bursty", "fast")
"""``bridge.dev.hamsa_emulator.DELIVERY_MODELS`` (the parser must not import ``bridge.dev``;
a test keeps the two equal)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hamsa-bridge",
        description=DESCRIPTION,
        epilog=EXAMPLES + "\n" + EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"hamsa-bridge {_version()}",
        help="print the installed version and exit",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="read settings from this file instead of ./.env (the environment still wins)",
    )
    commands = parser.add_subparsers(
        title="commands",
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of these (`hamsa-bridge COMMAND --help` for more):",
    )

    serve = add_command(
        commands,
        "serve",
        summary="run the bridge (Twilio's webhook and media stream, Hamsa's speech)",
        description=(
            "Serves the Voice webhook (POST /twiml/inbound), the call-status callback, the\n"
            "media stream (BRIDGE_STREAM_PATH), /livez, /readyz and /metrics; with\n"
            "BRIDGE_API_TOKEN also the announcements API. Listens on 0.0.0.0:8080 by default\n"
            "(every interface). Needs TWILIO_AUTH_TOKEN, BRIDGE_PUBLIC_URL and HAMSA_API_KEY\n"
            "(exit 2 without them). SIGTERM drains the calls in progress before it exits;\n"
            "Ctrl-C stops it the same way.\n"
            "\n"
            "By default it runs one worker process per usable CPU behind the one port (a\n"
            "supervisor forwards signals and replaces a worker that dies; BRIDGE_MAX_CALLS and\n"
            "/readyz are per worker, /metrics covers them all); --workers 1 is one process and\n"
            "no supervisor (in a container: scale with replicas)."
        ),
        examples="""
            hamsa-bridge serve
            hamsa-bridge serve --host 127.0.0.1 --port 9000
            hamsa-bridge serve --workers 1
        """,
    )
    serve.add_argument(
        "--host",
        default="0.0.0.0",  # noqa: S104 - a server; bind address is the user's choice
        help="the address to listen on (0.0.0.0: every interface; 127.0.0.1: this machine only)",
    )
    serve.add_argument("--port", type=int, default=8080, help="the port to listen on")
    serve.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="processes sharing the port: 0, one per usable CPU; 1, a single process "
        "(default: BRIDGE_WORKERS, whose default is 0)",
    )

    demo = add_command(
        commands,
        "demo",
        summary="a complete simulated call: no credentials, no network",
        description=(
            "Runs the Hamsa emulator, the bridge and a simulated Twilio caller on loopback,\n"
            "prints the call's timeline and writes what the caller heard to a WAV."
        ),
        examples="""
            hamsa-bridge demo
            hamsa-bridge demo --text "مرحبا بك في همسة." --out hello.wav
            hamsa-bridge demo --flow clinic --answer 2 --answer 9
            hamsa-bridge demo --model observed
        """,
    )
    demo.add_argument("--text", help="what the bridge says (default: BRIDGE_GREETING)")
    demo.add_argument(
        "--fast", action="store_true", help="no latency model in the Hamsa emulator (instant)"
    )
    demo.add_argument(
        "--model",
        choices=_DELIVERY_MODELS,
        default="realistic",
        help="how the Hamsa emulator delivers: try observed or slow to hear the start policy "
        "at work",
    )
    demo.add_argument(
        "--flow", help="run an IVR flow instead: a flow file, or `clinic` (the shipped example)"
    )
    demo.add_argument(
        "--speech",
        choices=("auto", "espeak", "tones"),
        default="auto",
        help="what the emulated Hamsa says: Arabic from espeak-ng, or one tone per character "
        "(auto: espeak-ng when it is installed)",
    )
    _add_press_and_answer(
        demo, out="hamsa-demo.wav", press="; it skips the greeting", answer="; with --flow"
    )

    call = add_command(
        commands,
        "call",
        summary="simulate Twilio calling a running bridge",
        description=(
            "Does what Twilio does for an inbound call: POSTs the signed Voice webhook at --url,\n"
            "opens the media stream its TwiML names (signed handshake), plays the caller's\n"
            "side, and writes what the caller heard to a WAV. Signs with TWILIO_AUTH_TOKEN,\n"
            "which must be the bridge's (exit 2 without it)."
        ),
        examples="""
            hamsa-bridge call --url http://127.0.0.1:8080/twiml/inbound
            hamsa-bridge call --url https://bridge.example.com/twiml/inbound --press 1.5:1
            hamsa-bridge call --url http://127.0.0.1:8080/twiml/inbound --say 2.0:المواعيد
            hamsa-bridge call --url http://127.0.0.1:8080/twiml/inbound --answer say:المواعيد
        """,
    )
    call.add_argument(
        "--url",
        required=True,
        help="the bridge's Voice webhook, e.g. https://bridge.example.com/twiml/inbound",
    )
    call.add_argument(
        "--from", dest="from_number", default="+966500000001", metavar="E164", help="the caller"
    )
    call.add_argument(
        "--to",
        dest="to_number",
        default="+966110000000",
        metavar="E164",
        help="the number called",
    )
    call.add_argument(
        "--hangup-after",
        type=float,
        metavar="SECONDS",
        help="the caller hangs up after this many seconds (default: wait for the bridge)",
    )
    call.add_argument(
        "--max-duration",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up on the call after this many seconds",
    )
    call.add_argument(
        "--connect-url",
        metavar="URL",
        help="open the stream here instead of the TwiML's URL (same path; e.g. behind a tunnel)",
    )
    call.add_argument(
        "--say",
        type=_spoken,
        action="append",
        default=[],
        metavar="SECONDS:PHRASE",
        help="the caller says PHRASE this many seconds into the call (repeatable): tone speech, "
        "80 ms a character, sent as its audio (a flow listening for speech hears it)",
    )
    call.add_argument(
        "--no-sign-handshake",
        action="store_true",
        help="do not sign the stream handshake (the bridge must refuse it with 403)",
    )
    _add_press_and_answer(call, out="hamsa-call.wav")

    twilio = add_command(
        commands,
        "twilio",
        summary="wire Twilio numbers to this bridge",
        description=(
            "Uses the Twilio REST API at TWILIO_API_URL with TWILIO_ACCOUNT_SID (AC and 32 hex\n"
            "digits) and TWILIO_AUTH_TOKEN; both are checked before anything is sent (exit 2)."
        ),
        examples="""
            hamsa-bridge twilio show
            hamsa-bridge twilio configure --number +966501234567 --dry-run
        """,
    )
    twilio_commands = twilio.add_subparsers(
        title="commands", dest="twilio_command", required=True, metavar="COMMAND", help="one of:"
    )
    configure = add_command(
        twilio_commands,
        "configure",
        summary="point a number's Voice webhook and status callback at this bridge",
        description=(
            "Sets the number's VoiceUrl to BRIDGE_PUBLIC_URL/twiml/inbound and its\n"
            "StatusCallback to BRIDGE_PUBLIC_URL/twilio/status (both POST), clears a TwiML App,\n"
            "and changes only what differs: a second run changes nothing."
        ),
        examples="""
            hamsa-bridge twilio configure --dry-run
            hamsa-bridge twilio configure --number +966501234567
        """,
    )
    configure.add_argument(
        "--number", metavar="E164", help="the number to wire (default: TWILIO_PHONE_NUMBER)"
    )
    configure.add_argument("--dry-run", action="store_true", help="show the change, make none")
    show = add_command(
        twilio_commands,
        "show",
        summary="the account's numbers and where each one points",
        examples="""
            hamsa-bridge twilio show
            hamsa-bridge twilio show --json
        """,
    )
    show.add_argument("--json", action="store_true", help="print the account and numbers as JSON")
    call_in = add_command(
        twilio_commands,
        "call-in",
        summary="(Twilio emulator only) someone dials a number; writes what they heard",
        description=(
            "Asks the Twilio emulator at TWILIO_API_URL (`hamsa-bridge emulate-twilio`) to place\n"
            "an inbound call to the number: it requests the number's Voice webhook, runs the\n"
            "TwiML and the stream, and sends the status callbacks, all signed. Prints each hop."
        ),
        examples="""
            hamsa-bridge twilio call-in
            hamsa-bridge twilio call-in --number +966501234567 --answer 2 --out heard.wav
        """,
    )
    call_in.add_argument(
        "--number", metavar="E164", help="the number dialled (default: TWILIO_PHONE_NUMBER)"
    )
    call_in.add_argument(
        "--from",
        dest="from_number",
        default="+966500000001",
        metavar="E164",
        help="the caller",
    )
    call_in.add_argument(
        "--hangup-after",
        type=float,
        metavar="SECONDS",
        help="the caller hangs up after this many seconds (default: wait for the bridge)",
    )
    _add_press_and_answer(call_in, out="hamsa-call-in.wav")

    twiml = add_command(
        commands,
        "twiml",
        summary="print TwiML for configuring Twilio by hand",
        examples="hamsa-bridge twiml inbound",
    )
    twiml_commands = twiml.add_subparsers(
        title="commands", dest="twiml_command", required=True, metavar="COMMAND", help="one of:"
    )
    add_command(
        twiml_commands,
        "inbound",
        summary="TwiML for a TwiML Bin that reaches this bridge",
        description=(
            "A <Redirect> to BRIDGE_PUBLIC_URL/twiml/inbound (exit 2 without it): the bridge's\n"
            "signed webhook then answers with the stream."
        ),
        examples="hamsa-bridge twiml inbound > bin.xml",
    )

    ivr = add_command(
        commands,
        "ivr",
        summary="IVR flows: validate, draw, warm the prompt cache",
        description="FLOW is a flow file (TOML), or the name of a shipped example (clinic).",
        examples="""
            hamsa-bridge ivr validate clinic
            hamsa-bridge ivr graph clinic --png clinic.png
        """,
    )
    ivr_commands = ivr.add_subparsers(
        title="commands", dest="ivr_command", required=True, metavar="COMMAND", help="one of:"
    )
    for name, summary, description, examples in (
        (
            "validate",
            "report every error in a flow, with its location",
            "",
            "hamsa-bridge ivr validate clinic\nhamsa-bridge ivr validate my-flow.toml",
        ),
        (
            "graph",
            "draw a flow: Mermaid text, and a PNG with --png (needs graphviz)",
            "Without graphviz's `dot`, --png prints the Mermaid text and exits 1.",
            "hamsa-bridge ivr graph clinic\nhamsa-bridge ivr graph clinic --png clinic.png",
        ),
        (
            "warm",
            "synthesise a flow's static prompts into BRIDGE_PROMPT_CACHE_DIR",
            "Calls then play those prompts from disk, with no Hamsa request (spends Hamsa\n"
            "balance once). Needs BRIDGE_PROMPT_CACHE_DIR (exit 2 without it) and HAMSA_API_KEY.",
            "BRIDGE_PROMPT_CACHE_DIR=prompts hamsa-bridge ivr warm clinic",
        ),
    ):
        sub = add_command(
            ivr_commands, name, summary=summary, description=description, examples=examples
        )
        sub.add_argument("flow", metavar="FLOW", help="a flow file, or `clinic`")
        if name == "graph":
            sub.add_argument(
                "--png", type=Path, metavar="FILE.png", help="also write a PNG (needs graphviz)"
            )

    announce = add_command(
        commands,
        "announce",
        summary="place one announcement call and wait for its outcome",
        description=(
            "Places the call through the Twilio REST API; the bridge at BRIDGE_PUBLIC_URL plays\n"
            "it and records what happened in the database both share (BRIDGE_DATABASE_URL).\n"
            "Needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and BRIDGE_PUBLIC_URL (exit 2 without\n"
            "them). The exit status says what the callee experienced: 0 heard, 3 answered but\n"
            "not confirmed heard, 4 not reached (busy, no answer, failed), 1 an error\n"
            "(including a stream that never reached the bridge); docs/outcomes.md."
        ),
        examples="""
            hamsa-bridge announce --to +966501234567 --text "موعدك غدا صباحا."
            hamsa-bridge announce --to +966501234567 --text "موعدك غدا." --confirm-digit 1 --json
        """,
    )
    announce.add_argument("--to", required=True, metavar="E164", help="the number to call")
    announce.add_argument(
        "--from",
        dest="from_number",
        metavar="E164",
        help="caller ID (default: TWILIO_PHONE_NUMBER)",
    )
    announce.add_argument(
        "--text", required=True, help=f"what to say (up to {MAX_TEXT_CHARS} characters)"
    )
    add_option_arguments(announce)
    announce.add_argument("--json", action="store_true", help="print the outcome as JSON")

    add_campaign_command(commands)

    doctor = add_command(
        commands,
        "doctor",
        summary="check every link from Twilio to Hamsa",
        description=(
            "One line per link, ✓ or ✗, and how to fix a ✗: the settings, the Twilio\n"
            "credentials, the number and where it points, the bridge at BRIDGE_PUBLIC_URL\n"
            "(/livez and a signed stream handshake), the Hamsa key, custom voices and a test\n"
            "phrase (a few characters of Hamsa balance). Exit 0 only when every link holds."
        ),
        examples="""
            hamsa-bridge doctor
            hamsa-bridge doctor --number +966501234567 --json
        """,
    )
    doctor.add_argument(
        "--number", metavar="E164", help="the number to check (default: TWILIO_PHONE_NUMBER)"
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")

    hamsa = add_command(
        commands,
        "hamsa",
        summary="measure the real Hamsa",
        examples="hamsa-bridge hamsa probe --out trace.jsonl",
    )
    hamsa_commands = hamsa.add_subparsers(
        title="commands", dest="hamsa_command", required=True, metavar="COMMAND", help="one of:"
    )
    probe = add_command(
        hamsa_commands,
        "probe",
        summary="speak a few phrases through Hamsa and record its reply's format and pace",
        description=(
            "Speak a few built-in Arabic phrases through Hamsa's realtime WebSocket\n"
            "(HAMSA_WS_URL, HAMSA_API_KEY, the configured voice, mulaw: true), print the\n"
            "reply's format, chunking and pace, and write a JSON-lines trace for\n"
            "`emulate-hamsa --replay` (docs/hamsa-probe.md).\n\n"
            "It spends Hamsa balance: it asks first on a terminal, and needs --yes otherwise."
        ),
        examples="""
            hamsa-bridge hamsa probe --out trace.jsonl
            hamsa-bridge hamsa probe --out trace.jsonl --yes --phrases 2
        """,
        epilog=_probe_exit_codes(),
    )
    probe.add_argument(
        "--out", type=Path, required=True, metavar="TRACE.jsonl", help="where to write the trace"
    )
    probe.add_argument("--yes", action="store_true", help="do not ask before spending balance")
    probe.add_argument(
        "--phrases", type=int, default=4, metavar="N", help="how many phrases to speak"
    )

    emulate_twilio = add_command(
        commands,
        "emulate-twilio",
        summary="run the Twilio emulator (REST API + voice platform)",
        description=(
            "Twilio's REST API (calls, numbers) and voice platform (webhooks, TwiML, media\n"
            "streams, status callbacks) on this machine: point TWILIO_API_URL at it. Uses\n"
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or makes up and prints a pair. A number's\n"
            "Voice webhook defaults to BRIDGE_PUBLIC_URL/twiml/inbound when that is set."
        ),
        examples="""
            hamsa-bridge emulate-twilio
            hamsa-bridge emulate-twilio --number +966501234567 --outcome +966500000002=busy
        """,
    )
    emulate_twilio.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    emulate_twilio.add_argument("--port", type=int, default=8766, help="the port to listen on")
    emulate_twilio.add_argument(
        "--number",
        action="append",
        default=[],
        metavar="E164[=VOICE_URL]",
        help="a number of the emulated account, with its Voice webhook (repeatable; default: "
        "TWILIO_PHONE_NUMBER, else +15005550006)",
    )
    emulate_twilio.add_argument(
        "--status-callback",
        metavar="URL",
        help="the numbers' call-status callback (default: BRIDGE_PUBLIC_URL/twilio/status)",
    )
    emulate_twilio.add_argument(
        "--ring-seconds",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long a call rings before it is answered",
    )
    emulate_twilio.add_argument(
        "--outcome",
        action="append",
        default=[],
        metavar="E164=OUTCOME",
        help="what calls to E164 do: busy, no-answer, failed, human or machine_end_beep "
        "(repeatable; default: answered by a human)",
    )
    emulate_twilio.add_argument(
        "--max-call-seconds",
        type=float,
        default=4 * 3600.0,
        metavar="SECONDS",
        help="end any call that lasts longer",
    )
    emulate_twilio.add_argument(
        "--seed", type=int, help="seed for the emulator's random choices (default: random)"
    )

    emulate = add_command(
        commands,
        "emulate-hamsa",
        summary="run the Hamsa emulator (realtime WebSocket + preload REST)",
        description=(
            "Hamsa's realtime WebSocket (ws://HOST:PORT/v1/realtime/ws) and voice preload REST\n"
            "API on this machine: point HAMSA_WS_URL and HAMSA_API_URL at it. With\n"
            "HAMSA_API_KEY set it accepts only that key, else any key."
        ),
        examples="""
            hamsa-bridge emulate-hamsa
            hamsa-bridge emulate-hamsa --model observed --port 9765
            hamsa-bridge emulate-hamsa --replay trace.jsonl
        """,
    )
    emulate.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    emulate.add_argument("--port", type=int, default=8765, help="the port to listen on")
    emulate.add_argument(
        "--model",
        choices=_DELIVERY_MODELS,
        help="delivery model: connect, first byte, frame sizes and pace (default: instant; "
        "see EmulatorConfig in bridge/dev/hamsa_emulator.py)",
    )
    emulate.add_argument(
        "--realistic",
        action="store_true",
        help="the same as --model realistic (connect ~1.2 s, first byte 0.3-1.7 s)",
    )
    emulate.add_argument(
        "--replay",
        metavar="TRACE.jsonl",
        help="replay the timing of a trace recorded by `hamsa-bridge hamsa probe`",
    )
    emulate.add_argument(
        "--speech",
        choices=("auto", "espeak", "tones"),
        default="auto",
        help="what the audio says: Arabic from espeak-ng, or one tone per character "
        "(auto: espeak-ng when it is installed)",
    )
    emulate.add_argument(
        "--truncate-rate",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of replies cut to 640 bytes (0 to 1)",
    )
    emulate.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="N=FAULT",
        help="inject FAULT on the N-th request, e.g. 2=TRUNCATE_640 (repeatable)",
    )
    emulate.add_argument(
        "--stt-delay",
        default="0.2-0.4",
        metavar="SECONDS",
        help="how long each speech-to-text answer takes: SECONDS or MIN-MAX (default 0.2-0.4)",
    )
    emulate.add_argument(
        "--stt-answer",
        choices=("text", "json"),
        default="text",
        help='the transcript form: plain text, or a {"type":"response",...} frame (default text)',
    )
    emulate.add_argument(
        "--stt-transcript",
        default="",
        metavar="TEXT",
        help="the transcript of audio without the emulator's tones in it (default: empty)",
    )
    emulate.add_argument(
        "--stt-error-rate",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of speech-to-text requests answered with an error (0 to 1)",
    )
    emulate.add_argument(
        "--stt-thinking-rate",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of speech-to-text requests answered [THINKING] and nothing more (0 to 1)",
    )
    emulate.add_argument(
        "--stt-fault",
        action="append",
        default=[],
        metavar="N=FAULT",
        help="answer the N-th speech-to-text request so, e.g. 1=THINKING (repeatable)",
    )
    emulate.add_argument(
        "--custom-voice",
        action="append",
        default=[],
        metavar="VOICE_ID",
        help="a custom voice id that preloads (repeatable)",
    )
    emulate.add_argument(
        "--seed", type=int, default=0, help="seed for the delivery model's random draws"
    )
    return parser


def _worker_count(text: str) -> int:
    """``--workers``: a whole number, 0 (one per usable CPU) up to 256."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of workers: {text!r}") from None
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{value} workers: give 0 (one per CPU) to 256")
    return value


def _error(message: str) -> None:
    print(f"hamsa-bridge: {message}", file=sys.stderr)


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """The console script. ``environ`` defaults to the process environment and then ``./.env``
    is read too; a caller passing ``environ`` (a test) passes the whole environment, and a
    ``.env`` is then read only from an explicit ``cwd``: no stray ``.env`` reaches a test."""
    args = build_parser().parse_args(argv)
    if cwd is None and environ is None:
        cwd = Path.cwd()
    try:
        env = environment(os.environ if environ is None else environ, args.env_file, cwd)
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"hamsa-bridge: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except ValidationError as exc:
        # The variable and the problem; a value only where the message shows it on purpose
        # (BRIDGE_PUBLIC_URL), never a secret's.
        print("hamsa-bridge: invalid configuration:", file=sys.stderr)
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"  {name}: {message}" if name else f"  {message}", file=sys.stderr)
        return ExitCode.USAGE
    quiet = args.command in (
        "demo",
        "call",
        "twilio",
        "twiml",
        "doctor",
        "hamsa",
        "ivr",
        "announce",
        "campaign",
    )
    quiet = quiet and "bridge_log_level" not in settings.model_fields_set
    configure_logging(
        level="warning" if quiet else settings.bridge_log_level,
        fmt=settings.bridge_log_format,
        secrets=settings.secret_values(),
    )
    try:
        if args.command == "serve":
            from bridge.server import serve
            from bridge.workers import worker_count

            requested = settings.bridge_workers if args.workers is None else args.workers
            return serve(settings, host=args.host, port=args.port, workers=worker_count(requested))
        if args.command == "demo":
            from bridge.dev.demo import run_demo

            return asyncio.run(
                run_demo(
                    settings,
                    out=args.out,
                    text=args.text,
                    keys=args.press,
                    fast=args.fast,
                    model=args.model,
                    flow=args.flow,
                    answers=args.answer,
                    speech=args.speech,
                )
            )
        if args.command == "call":
            from bridge.dev.caller import run_call_command

            return asyncio.run(run_call_command(settings, args))
        if args.command == "twilio":
            from bridge import console

            if args.twilio_command == "show":
                return console.show(settings, as_json=args.json)
            number = args.number or settings.twilio_phone_number
            if not number:
                _error("pass --number +E164 or set TWILIO_PHONE_NUMBER")
                return ExitCode.USAGE
            if args.twilio_command == "configure":
                return console.configure(settings, number, dry_run=args.dry_run)
            return asyncio.run(
                console.call_in(
                    settings,
                    number,
                    from_number=args.from_number,
                    keys=args.press,
                    hangup_after=args.hangup_after,
                    out_path=args.out,
                    answers=args.answer,
                )
            )
        if args.command == "twiml":
            from bridge.console import public_url_problem, twiml_for_bin

            problem = public_url_problem(settings)
            if problem:
                _error(problem)
                return ExitCode.USAGE
            print(twiml_for_bin(settings))
            return ExitCode.OK
        if args.command == "ivr":
            from bridge.ivr import commands as ivr_commands

            path = ivr_commands.flow_path(args.flow)
            if args.ivr_command == "validate":
                return ivr_commands.validate(path)
            if args.ivr_command == "graph":
                return ivr_commands.graph(path, png=args.png)
            return asyncio.run(ivr_commands.warm(settings, path))
        if args.command == "announce":
            from bridge.announcements.commands import announce
            from bridge.announcements.options import options_from_arguments

            return asyncio.run(
                announce(
                    settings,
                    to=args.to,
                    from_=args.from_number,
                    text=args.text,
                    options=options_from_arguments(args),
                    as_json=args.json,
                )
            )
        if args.command == "campaign":
            from bridge.campaigns.commands import main as campaign_main

            return campaign_main(settings, args, out=sys.stdout, err=sys.stderr)
        if args.command == "doctor":
            from bridge.doctor import doctor

            return asyncio.run(doctor(settings, args.number, as_json=args.json))
        if args.command == "hamsa":
            from bridge.probe.runner import probe_command

            return probe_command(settings, out=args.out, yes=args.yes, count=args.phrases)
        if args.command == "emulate-twilio":
            from bridge.dev.twilio_emulator import run_twilio_emulator_command

            return run_twilio_emulator_command(settings, args)
        if args.command == "emulate-hamsa":
            from bridge.dev.hamsa_emulator import run_emulator_command

            return run_emulator_command(settings, args)
    except ConfigError as exc:  # a missing or contradictory setting, found before any work
        _error(str(exc))
        return ExitCode.USAGE
    except BridgeError as exc:
        _error(str(exc))
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
