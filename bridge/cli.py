"""The ``hamsa-bridge`` console script: the entry point, the one place that reads the environment.

Commands::

    hamsa-bridge serve --host H --port P     the bridge (needs TWILIO_AUTH_TOKEN,
                                             BRIDGE_PUBLIC_URL, HAMSA_API_KEY)
    hamsa-bridge demo                        a complete simulated call: no credentials,
                                             no network
    hamsa-bridge call --url URL ...          a simulated Twilio caller against any bridge
    hamsa-bridge twilio configure|show       wire a Twilio number to this bridge / list numbers
    hamsa-bridge twiml inbound               TwiML for a TwiML Bin
    hamsa-bridge doctor                      check every link, Twilio to Hamsa
    hamsa-bridge hamsa probe --out T.jsonl   measure the real Hamsa's reply (spends balance)
    hamsa-bridge emulate-hamsa ...           the Hamsa emulator (realtime WebSocket + preload REST)
    hamsa-bridge emulate-twilio ...          the Twilio emulator (REST API + voice platform)
    hamsa-bridge announce --to N --text T    place one announcement call, print its outcome
    hamsa-bridge campaign run|resume|status|export|list
                                             announce to every number of a CSV file
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from bridge.errors import BridgeError
from bridge.logs import configure_logging
from bridge.settings import Settings


def _key_press(value: str) -> tuple[float, str]:
    seconds, _, digit = value.partition(":")
    if not digit or digit not in "0123456789*#" or len(digit) != 1:
        raise argparse.ArgumentTypeError("expected SECONDS:DIGIT, for example 1.5:1")
    return float(seconds), digit


def _add_call_options(parser: argparse.ArgumentParser) -> None:
    """The voice and call options ``announce`` and ``campaign run`` share."""
    parser.add_argument("--speaker", help="Hamsa speaker (default HAMSA_SPEAKER)")
    parser.add_argument("--dialect", help="Hamsa dialect (default HAMSA_DIALECT)")
    parser.add_argument("--language", help="Hamsa language (default HAMSA_LANGUAGE)")
    parser.add_argument("--repeat", type=int, default=1, help="play the message N times")
    parser.add_argument(
        "--confirm-digit",
        help="ask to press this digit to confirm (and --repeat-digit to hear it again)",
    )
    parser.add_argument("--repeat-digit", default="2", help="the digit that repeats (2)")
    parser.add_argument(
        "--machine-detection",
        action="store_true",
        help="answering-machine detection: voicemail gets the message after the beep",
    )
    parser.add_argument(
        "--ring-timeout", type=int, help="seconds to let it ring (default BRIDGE_RING_TIMEOUT)"
    )


def _probe_exit_codes() -> str:
    from bridge.probe import EXIT_CODES_HELP

    return EXIT_CODES_HELP


_DELIVERY_MODELS = ("instant", "realistic", "observed", "slow", "bursty", "fast")
"""``bridge.dev.hamsa_emulator.DELIVERY_MODELS`` (the parser must not import ``bridge.dev``;
a test keeps the two equal)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hamsa-bridge", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the bridge")
    serve.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a server; bind address is the user's choice
    serve.add_argument("--port", type=int, default=8080)

    demo = commands.add_parser("demo", help="a complete simulated call, no credentials, no network")
    demo.add_argument(
        "--out", type=Path, default=Path("hamsa-demo.wav"), help="WAV of what the caller heard"
    )
    demo.add_argument("--text", help="what the bridge says (default: BRIDGE_GREETING)")
    demo.add_argument(
        "--press",
        type=_key_press,
        action="append",
        default=[],
        metavar="SECONDS:DIGIT",
        help="press a key during the call (skips the greeting)",
    )
    demo.add_argument("--fast", action="store_true", help="no latency model in the Hamsa emulator")
    demo.add_argument(
        "--model",
        choices=_DELIVERY_MODELS,
        default="realistic",
        help="how the Hamsa emulator delivers (default realistic; try observed or slow to hear "
        "the start policy at work)",
    )
    demo.add_argument("--flow", help="run an IVR flow (a file, or `clinic`, the shipped example)")
    demo.add_argument(
        "--speech",
        choices=("auto", "espeak", "tones"),
        default="auto",
        help="what the emulated Hamsa says: Arabic from espeak-ng, or one tone per character "
        "(default auto: espeak-ng when it is installed)",
    )
    demo.add_argument(
        "--answer",
        action="append",
        default=[],
        metavar="KEYS",
        help="with --flow: keys pressed after each prompt that waits for input",
    )

    call = commands.add_parser("call", help="simulate Twilio calling a bridge")
    call.add_argument(
        "--url", required=True, help="the bridge's Voice webhook, e.g. https://host/twiml/inbound"
    )
    call.add_argument("--from", dest="from_number", default="+966500000001")
    call.add_argument("--to", dest="to_number", default="+966110000000")
    call.add_argument(
        "--press", type=_key_press, action="append", default=[], metavar="SECONDS:DIGIT"
    )
    call.add_argument(
        "--hangup-after", type=float, help="the caller hangs up after this many seconds"
    )
    call.add_argument(
        "--answer",
        action="append",
        default=[],
        metavar="KEYS",
        help="keys pressed after the next IVR prompt that waits for input (repeatable, in order)",
    )
    call.add_argument("--max-duration", type=float, default=300.0)
    call.add_argument("--connect-url", help="connect the stream here instead of the TwiML's URL")
    call.add_argument("--no-sign-handshake", action="store_true")
    call.add_argument("--out", type=Path, default=Path("hamsa-call.wav"))

    twilio = commands.add_parser("twilio", help="wire Twilio numbers to this bridge")
    twilio_commands = twilio.add_subparsers(dest="twilio_command", required=True)
    configure = twilio_commands.add_parser(
        "configure", help="point a number's Voice webhook and status callback at this bridge"
    )
    configure.add_argument("--number", help="E.164 number (default: TWILIO_PHONE_NUMBER)")
    configure.add_argument("--dry-run", action="store_true", help="show the change, make none")
    twilio_commands.add_parser("show", help="the account's numbers and where they point")
    call_in = twilio_commands.add_parser(
        "call-in", help="(Twilio emulator only) someone dials a number; writes what they heard"
    )
    call_in.add_argument("--number", help="E.164 number dialled (default: TWILIO_PHONE_NUMBER)")
    call_in.add_argument("--from", dest="from_number", default="+966500000001")
    call_in.add_argument(
        "--press", type=_key_press, action="append", default=[], metavar="SECONDS:DIGIT"
    )
    call_in.add_argument(
        "--answer",
        action="append",
        default=[],
        metavar="KEYS",
        help="keys pressed after each IVR prompt that waits for input",
    )
    call_in.add_argument("--hangup-after", type=float)
    call_in.add_argument("--out", type=Path, default=Path("hamsa-call-in.wav"))

    twiml = commands.add_parser("twiml", help="print TwiML for configuring by hand")
    twiml_commands = twiml.add_subparsers(dest="twiml_command", required=True)
    twiml_commands.add_parser("inbound", help="TwiML for a TwiML Bin that reaches this bridge")

    ivr = commands.add_parser("ivr", help="IVR flows: validate, draw, warm the prompt cache")
    ivr_commands = ivr.add_subparsers(dest="ivr_command", required=True)
    for name, help_text in (
        ("validate", "report every error in a flow, with its location"),
        ("graph", "draw a flow (Mermaid text; --png with graphviz)"),
        ("warm", "synthesise a flow's static prompts into BRIDGE_PROMPT_CACHE_DIR"),
    ):
        sub = ivr_commands.add_parser(name, help=help_text)
        sub.add_argument("flow", help="a flow file, or the name of a shipped example (clinic)")
        if name == "graph":
            sub.add_argument("--png", type=Path, help="also write a PNG (needs graphviz)")

    announce = commands.add_parser(
        "announce", help="place one announcement call and wait for its outcome"
    )
    announce.add_argument("--to", required=True, metavar="E164", help="the number to call")
    announce.add_argument(
        "--from",
        dest="from_number",
        metavar="E164",
        help="caller ID (default: TWILIO_PHONE_NUMBER)",
    )
    announce.add_argument("--text", required=True, help="what to say (up to 2000 characters)")
    _add_call_options(announce)
    announce.add_argument("--json", action="store_true", help="print the outcome as JSON")

    campaign = commands.add_parser("campaign", help="announce to every number of a CSV file")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    run = campaign_commands.add_parser(
        "run", help="create a campaign from a CSV file and run it to the end"
    )
    run.add_argument("file", type=Path, help="CSV with a number column (number/phone/to)")
    text = run.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the message; {column} inserts a CSV column")
    text.add_argument("--text-file", type=Path, help="read the message from a UTF-8 file")
    run.add_argument("--name", help="a name to find the campaign by (default: file and time)")
    run.add_argument(
        "--from",
        dest="from_number",
        metavar="E164",
        help="caller ID (default: TWILIO_PHONE_NUMBER)",
    )
    _add_call_options(run)
    run.add_argument(
        "--cps",
        type=float,
        help="this campaign's calls created per second (default and most: "
        "BRIDGE_CALLS_PER_SECOND, the account's budget shared with every process calling)",
    )
    run.add_argument(
        "--max-concurrent",
        type=int,
        help="calls in progress at once (default BRIDGE_MAX_CONCURRENT_CALLS)",
    )
    run.add_argument("--retries", type=int, default=2, help="further attempts (default 2)")
    run.add_argument(
        "--retry-delay", type=float, default=300.0, help="seconds between attempts (300)"
    )
    run.add_argument(
        "--retry-on",
        default="busy,no-answer,failed",
        help=(
            "outcomes worth another attempt: busy, no-answer, failed, stream-never-connected "
            "(default busy,no-answer,failed)"
        ),
    )
    run.add_argument("--window", help="local calling hours, e.g. 09:00-20:00 (end exclusive)")
    run.add_argument(
        "--timezone", default="UTC", help="time zone of --window (a CSV timezone column wins)"
    )
    run.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record invalid rows as invalid and call the others (default: refuse to start)",
    )
    resume = campaign_commands.add_parser(
        "resume", help="go on with a stopped campaign (default: the newest unfinished)"
    )
    resume.add_argument("campaign", nargs="?", metavar="ID|NAME")
    status = campaign_commands.add_parser("status", help="counts, state and runner")
    status.add_argument("campaign", nargs="?", metavar="ID|NAME")
    export = campaign_commands.add_parser("export", help="write the results as CSV")
    export.add_argument("out", type=Path, metavar="OUT.csv")
    export.add_argument("--campaign", metavar="ID|NAME", help="default: the newest campaign")
    campaign_commands.add_parser("list", help="every campaign")

    doctor = commands.add_parser("doctor", help="check every link from Twilio to Hamsa")
    doctor.add_argument("--number", help="E.164 number (default: TWILIO_PHONE_NUMBER)")

    hamsa = commands.add_parser("hamsa", help="measure the real Hamsa")
    hamsa_commands = hamsa.add_subparsers(dest="hamsa_command", required=True)
    probe = hamsa_commands.add_parser(
        "probe",
        help="speak a few phrases through Hamsa and record its reply's format and pace",
        description=(
            "Speak a few built-in Arabic phrases through Hamsa's realtime WebSocket\n"
            "(HAMSA_WS_URL, HAMSA_API_KEY, the configured voice, mulaw: true), print the\n"
            "reply's format, chunking and pace, and write a JSON-lines trace for\n"
            "`emulate-hamsa --replay` (docs/hamsa-probe.md).\n\n"
            "It spends Hamsa balance: it asks first on a terminal, and needs --yes otherwise."
        ),
        epilog=_probe_exit_codes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe.add_argument(
        "--out", type=Path, required=True, metavar="TRACE.jsonl", help="where to write the trace"
    )
    probe.add_argument("--yes", action="store_true", help="do not ask before spending balance")
    probe.add_argument(
        "--phrases", type=int, default=4, metavar="N", help="how many phrases to speak (4)"
    )

    emulate_twilio = commands.add_parser(
        "emulate-twilio", help="run the Twilio emulator (REST API + voice platform)"
    )
    emulate_twilio.add_argument("--host", default="127.0.0.1")
    emulate_twilio.add_argument("--port", type=int, default=8766)
    emulate_twilio.add_argument(
        "--number",
        action="append",
        default=[],
        metavar="E164[=VOICE_URL]",
        help="a number of the emulated account (default: TWILIO_PHONE_NUMBER)",
    )
    emulate_twilio.add_argument("--status-callback", help="the numbers' call-status callback URL")
    emulate_twilio.add_argument("--ring-seconds", type=float, default=2.0)
    emulate_twilio.add_argument(
        "--outcome",
        action="append",
        default=[],
        metavar="E164=OUTCOME",
        help="busy, no-answer, failed, human or machine_end_beep for calls to E164",
    )
    emulate_twilio.add_argument("--max-call-seconds", type=float, default=4 * 3600.0)
    emulate_twilio.add_argument("--seed", type=int)

    emulate = commands.add_parser("emulate-hamsa", help="run the Hamsa emulator")
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=8765)
    emulate.add_argument(
        "--model",
        choices=_DELIVERY_MODELS,
        help="delivery model: connect, first byte, frame sizes and pace (default instant; "
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
        help="replay the timing of a trace recorded by 'hamsa-bridge hamsa probe'",
    )
    emulate.add_argument(
        "--speech",
        choices=("auto", "espeak", "tones"),
        default="auto",
        help="what the audio says: Arabic from espeak-ng, or one tone per character "
        "(default auto: espeak-ng when it is installed)",
    )
    emulate.add_argument(
        "--truncate-rate", type=float, default=0.0, help="share of replies cut to 640 bytes"
    )
    emulate.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="N=FAULT",
        help="inject FAULT on the N-th request (e.g. 2=TRUNCATE_640)",
    )
    emulate.add_argument(
        "--custom-voice", action="append", default=[], help="a custom voice id that preloads"
    )
    emulate.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(env)
    except ValidationError as exc:
        # Name the variable and the problem, never the value (it may be a secret).
        print("hamsa-bridge: invalid configuration:", file=sys.stderr)
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            print(f"  {name}: {error['msg']}", file=sys.stderr)
        return 2
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
    quiet = quiet and "BRIDGE_LOG_LEVEL" not in env
    configure_logging(
        level="warning" if quiet else settings.bridge_log_level,
        fmt=settings.bridge_log_format,
        secrets=settings.secret_values(),
    )
    try:
        if args.command == "serve":
            from bridge.server import serve

            return serve(settings, host=args.host, port=args.port)
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

            if args.twilio_command == "configure":
                number = args.number or settings.twilio_phone_number
                if not number:
                    print("hamsa-bridge: pass --number +E164 or set TWILIO_PHONE_NUMBER")
                    return 2
                return console.configure(settings, number, dry_run=args.dry_run)
            if args.twilio_command == "call-in":
                number = args.number or settings.twilio_phone_number
                if not number:
                    print("hamsa-bridge: pass --number +E164 or set TWILIO_PHONE_NUMBER")
                    return 2
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
            return console.show(settings)
        if args.command == "twiml":
            from bridge.console import public_url_problem, twiml_for_bin

            problem = public_url_problem(settings)
            if problem:
                print(f"hamsa-bridge: {problem}", file=sys.stderr)
                return 2
            print(twiml_for_bin(settings))
            return 0
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

            return asyncio.run(
                announce(
                    settings,
                    to=args.to,
                    from_=args.from_number,
                    text=args.text,
                    speaker=args.speaker,
                    dialect=args.dialect,
                    language=args.language,
                    repeat=args.repeat,
                    confirm_digit=args.confirm_digit,
                    repeat_digit=args.repeat_digit,
                    machine_detection=args.machine_detection,
                    ring_timeout=args.ring_timeout,
                    as_json=args.json,
                )
            )
        if args.command == "campaign":
            from bridge.campaigns import commands as campaign_commands

            streams = {"out": sys.stdout, "err": sys.stderr}
            if args.campaign_command == "run":
                return asyncio.run(campaign_commands.run(settings, args, **streams))
            if args.campaign_command == "resume":
                return asyncio.run(campaign_commands.resume(settings, args.campaign, **streams))
            if args.campaign_command == "status":
                return asyncio.run(campaign_commands.status(settings, args.campaign, **streams))
            if args.campaign_command == "export":
                return asyncio.run(
                    campaign_commands.export(settings, args.out, args.campaign, **streams)
                )
            return asyncio.run(campaign_commands.list_campaigns(settings, **streams))
        if args.command == "doctor":
            from bridge.doctor import doctor

            return asyncio.run(doctor(settings, args.number))
        if args.command == "hamsa":
            from bridge.probe.runner import probe_command

            return probe_command(settings, out=args.out, yes=args.yes, count=args.phrases)
        if args.command == "emulate-twilio":
            from bridge.dev.twilio_emulator import run_twilio_emulator_command

            return run_twilio_emulator_command(settings, args)
        if args.command == "emulate-hamsa":
            from bridge.dev.hamsa_emulator import run_emulator_command

            return run_emulator_command(settings, args)
    except BridgeError as exc:
        print(f"hamsa-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
