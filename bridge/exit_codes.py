"""The one exit-status table of the ``hamsa-bridge`` command line.

Every subcommand returns one of these. 0, 1 and 2 follow the common convention (argparse itself
exits 2 on a usage error); the outcome codes of ``announce`` and ``hamsa probe`` are distinct from
those three and from each other, so a script can tell a busy callee from a configuration error.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class ExitCode(IntEnum):
    """What a ``hamsa-bridge`` process's exit status means (the same for every subcommand)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_CONFIRMED = 3
    NOT_REACHED = 4
    HAMSA_KEY_REJECTED = 5
    HAMSA_NO_BALANCE = 6
    DECLINED = 7
    INTERRUPTED = 130


MEANING: Final[dict[ExitCode, str]] = {
    ExitCode.OK: "success (announce: the callee heard the message, playback confirmed)",
    ExitCode.FAILURE: "runtime failure: a link down, a peer refused, a check failed, a call's "
    "stream never came",
    ExitCode.USAGE: "usage or configuration error (bad option, invalid or missing setting)",
    ExitCode.NOT_CONFIRMED: "announce: answered and played, end of playback not confirmed",
    ExitCode.NOT_REACHED: "announce: not reached (busy, no answer, canceled, failed by Twilio)",
    ExitCode.HAMSA_KEY_REJECTED: "Hamsa rejected the API key (close 4001, HTTP 401/403)",
    ExitCode.HAMSA_NO_BALANCE: "Hamsa says the balance is empty (close 4003)",
    ExitCode.DECLINED: "declined at a confirmation question: nothing was sent",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C; campaign run/resume: stopped by pause or cancel)",
}
"""One line per code: the README's table and ``--help`` print these."""

EXIT_CODES_HELP: Final = "exit status:\n" + "\n".join(
    f"  {code.value:<3}  {MEANING[code]}" for code in ExitCode
)
"""The table as ``--help`` prints it."""
