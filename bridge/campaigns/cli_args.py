"""The ``hamsa-bridge campaign …`` command line: its parsers (``add_campaign_command``, called
by ``bridge.cli.build_parser``); ``bridge.campaigns.commands.main`` runs what they parse.

Imports nothing heavy: building the parser must stay cheap for every command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from bridge.announcements.options import add_option_arguments
from bridge.cli_format import add_command
from bridge.exit_codes import ExitCode

__all__ = ["add_campaign_command"]

CAMPAIGN: Final = "ID|NAME"
"""How every subcommand names a campaign: its id (``cp_…``) or its name (the newest of it)."""


def _exit_status(*lines: tuple[ExitCode, str]) -> str:
    return "exit status:\n" + "\n".join(f"  {code.value:<3}  {text}" for code, text in lines)


RUN_EXIT: Final = _exit_status(
    (ExitCode.OK, "finished: every number has its outcome (whatever the outcomes)"),
    (ExitCode.FAILURE, "failure: a runner error, a Twilio error no call gets past, the store"),
    (ExitCode.USAGE, "usage or configuration error: nothing was created or dialled"),
    (
        ExitCode.INTERRUPTED,
        "stopped before the end: Ctrl-C, or `campaign pause` or `cancel`",
    ),
)
ONE_SHOT_EXIT: Final = _exit_status(
    (ExitCode.OK, "done"),
    (ExitCode.FAILURE, "no such campaign, or it cannot be changed (finished, cancelled)"),
    (ExitCode.USAGE, "usage or configuration error"),
)

NUMBERS: Final = """\
The numbers to call are the file's rows but the invalid ones and the
duplicates. The header ("N number(s) to call"), the progress bar's total and
the summary count the same numbers: for `resume`, those not done yet when it
starts. A number is done once it has its final outcome (its retries spent, or
none needed)."""

PROGRESS: Final = """\
Progress goes to stderr: on a terminal, one line redrawn in place and fitted to
its width (done/total, a bar, numbers per minute, ETA, counts by outcome);
otherwise a plain line at most every 5 seconds when something changed, and one
at the end."""


def add_campaign_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> argparse.ArgumentParser:
    """Add ``campaign`` and its subcommands to ``commands``. ``campaign run`` takes the voice and
    call options ``announce`` takes (``--speaker`` … ``--ring-timeout``,
    :func:`~bridge.announcements.options.add_option_arguments`)."""
    campaign = add_command(
        commands,
        "campaign",
        summary="announce to every number of a CSV file",
        description=(
            "A campaign lives in the store (BRIDGE_DATABASE_URL): `run` creates one from a\n"
            "CSV file and calls its numbers; `pause`, `cancel`, `status`, `export` and\n"
            "`list` work from any terminal or machine sharing the store. Every subcommand\n"
            f"names a campaign the same way, {CAMPAIGN}: its id (cp_…) or its name (the\n"
            "newest of that name)."
        ),
        examples="""
hamsa-bridge campaign run patients.csv --text "مرحبا {name}" --cps 5
hamsa-bridge campaign status
hamsa-bridge campaign pause cp_3f2a…   # from another terminal
hamsa-bridge campaign resume cp_3f2a…
hamsa-bridge campaign export --out results.csv
""",
    )
    sub = campaign.add_subparsers(
        dest="campaign_command", required=True, metavar="COMMAND", help="what to do"
    )
    _add_run(sub)
    _add_resume(sub)
    _add_stop(sub)
    _add_status(sub)
    _add_export(sub)
    _add_list(sub)
    return campaign


def _add_run(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = add_command(
        sub,
        "run",
        summary="create a campaign from a CSV file and run it to the end",
        description=(
            "Every row is checked before anything is created (each problem named with its\n"
            "line); then the campaign is stored, its id printed on stdout, and its numbers\n"
            "called, paced and retried as the options say. Ctrl-C stops dialling; `resume`\n"
            "goes on.\n\n" + NUMBERS + "\n\n" + PROGRESS
        ),
        examples="""
hamsa-bridge campaign run patients.csv --text "مرحبا {name}، موعدك {date}."
hamsa-bridge campaign run patients.csv --text-file msg.txt --name clinic \\
    --cps 5 --max-concurrent 20 --retries 2 --retry-delay 600 \\
    --window 09:00-20:00 --timezone Asia/Riyadh --confirm-digit 1
""",
        epilog=RUN_EXIT,
    )
    run.add_argument(
        "file",
        type=Path,
        metavar="FILE.csv",
        help="CSV with a header and a number column (number, phone, phone_number or to); "
        "other columns are {variables} of the text, an optional timezone column overrides "
        "--timezone",
    )
    text = run.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the message; {column} inserts a CSV column")
    text.add_argument(
        "--text-file", type=Path, metavar="PATH", help="read the message from a UTF-8 file"
    )
    run.add_argument(
        "--name",
        metavar="NAME",
        help="a name to find the campaign by (default: the file's name and the time)",
    )
    run.add_argument(
        "--from",
        dest="from_number",
        metavar="E164",
        help="caller ID (default: TWILIO_PHONE_NUMBER)",
    )
    add_option_arguments(run)
    run.add_argument(
        "--cps",
        type=float,
        metavar="N",
        help="this campaign's calls created per second; at most the account's budget shared "
        "with every process calling (default: BRIDGE_CALLS_PER_SECOND)",
    )
    run.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="calls in progress at once (default: BRIDGE_MAX_CONCURRENT_CALLS)",
    )
    run.add_argument(
        "--retries", type=int, default=2, metavar="N", help="further attempts per number"
    )
    run.add_argument(
        "--retry-delay",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="from a call's end to its retry",
    )
    run.add_argument(
        "--retry-on",
        default="busy,no-answer,failed",
        metavar="OUTCOMES",
        help="outcomes worth another attempt, comma-separated: busy, no-answer, failed, "
        "stream-never-connected",
    )
    run.add_argument(
        "--window",
        metavar="HH:MM-HH:MM",
        help="local calling hours, end exclusive, e.g. 09:00-20:00 (default: any hour)",
    )
    run.add_argument(
        "--timezone",
        default="UTC",
        metavar="ZONE",
        help="time zone of --window (a CSV timezone column wins)",
    )
    run.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record invalid rows as invalid and call the others (default: refuse to start)",
    )


def _campaign_argument(parser: argparse.ArgumentParser, help_text: str, *, optional: bool) -> None:
    parser.add_argument(
        "campaign", nargs="?" if optional else None, metavar=CAMPAIGN, help=help_text
    )


def _add_resume(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resume = add_command(
        sub,
        "resume",
        summary="go on with a stopped or paused campaign",
        description=(
            "Settles the calls a stopped runner left in flight (never calling a number\n"
            "twice), then calls the numbers not done yet, with the options the campaign was\n"
            "created with. A paused campaign runs again; a cancelled one is refused.\n\n"
            + NUMBERS
            + "\n\n"
            + PROGRESS
        ),
        examples="""
hamsa-bridge campaign resume
hamsa-bridge campaign resume clinic
""",
        epilog=RUN_EXIT,
    )
    _campaign_argument(
        resume,
        "the campaign (default: the newest one running or paused)",
        optional=True,
    )


def _add_stop(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pause = add_command(
        sub,
        "pause",
        summary="stop a campaign's runner once its calls in progress end; resume goes on",
        description=(
            "Marks the campaign paused in the store. Its runner (in any terminal or on any\n"
            "machine sharing the store) notices at its next lease renewal, within a few\n"
            "seconds: it dials nothing more, waits for the calls in progress to end, records\n"
            "their outcomes and exits (status 130). `resume` goes on where it stopped."
        ),
        examples="""
hamsa-bridge campaign pause clinic
hamsa-bridge campaign status clinic     # state: paused
hamsa-bridge campaign resume clinic
""",
        epilog=ONE_SHOT_EXIT,
    )
    _campaign_argument(pause, "the campaign to pause", optional=False)
    cancel = add_command(
        sub,
        "cancel",
        summary="stop a campaign for good: no further call is placed",
        description=(
            "Marks the campaign cancelled in the store: its runner dials nothing more\n"
            "(within a few seconds), lets the calls in progress end and records their\n"
            "outcomes; `resume` refuses it. Calls a stopped runner left in flight (Ctrl-C,\n"
            "a crash) are settled by this command. The export gives each number never\n"
            "called the outcome not-called."
        ),
        examples="""
hamsa-bridge campaign cancel clinic
hamsa-bridge campaign export clinic --out results.csv
""",
        epilog=ONE_SHOT_EXIT,
    )
    _campaign_argument(cancel, "the campaign to cancel", optional=False)


def _add_status(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    status = add_command(
        sub,
        "status",
        summary="a campaign's state, runner, counts by outcome and options",
        description=(
            "State: running, paused, cancelled or finished. Counts: numbers to call, done,\n"
            "and by outcome. --json prints one object (times in Unix seconds)."
        ),
        examples="""
hamsa-bridge campaign status
hamsa-bridge campaign status clinic --json
""",
        epilog=ONE_SHOT_EXIT,
    )
    _campaign_argument(status, "the campaign (default: the newest one)", optional=True)
    status.add_argument("--json", action="store_true", help="print it as one JSON object")


def _add_export(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = add_command(
        sub,
        "export",
        summary="write a campaign's results as CSV, one row per input row",
        description=(
            "Columns: number, attempts (that reached Twilio), outcome, reason, duration,\n"
            "confirmation, answered_by, call_sid, error, then the input's own columns.\n\n"
            "Encoding: UTF-8 with a byte-order mark (BOM) first, so that Excel reads Arabic\n"
            "text correctly (without it, Excel assumes the local code page); Python\n"
            '(encoding="utf-8-sig"), pandas and LibreOffice read it as well. --no-bom leaves\n'
            "it out for tools that would take it for part of the first column's name."
        ),
        examples="""
hamsa-bridge campaign export --out results.csv
hamsa-bridge campaign export clinic -o clinic.csv --no-bom
""",
        epilog=ONE_SHOT_EXIT,
    )
    _campaign_argument(export, "the campaign (default: the newest one)", optional=True)
    export.add_argument(
        "-o", "--out", type=Path, metavar="OUT.csv", help="the CSV file to write (required)"
    )
    export.add_argument(
        "--no-bom",
        action="store_true",
        help="UTF-8 without the byte-order mark (default: with it, for Excel)",
    )
    export.add_argument(
        "--campaign",
        dest="legacy_campaign",
        metavar=CAMPAIGN,
        help="deprecated (removed in the next release): name the campaign before the options, "
        "as the other subcommands do",
    )


def _add_list(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    listing = add_command(
        sub,
        "list",
        summary="every campaign, oldest first: id, created, state, done/to call, name",
        description="--json prints one array of objects (times in Unix seconds).",
        examples="""
hamsa-bridge campaign list
hamsa-bridge campaign list --json
""",
        epilog=ONE_SHOT_EXIT,
    )
    listing.add_argument("--json", action="store_true", help="print it as a JSON array")
