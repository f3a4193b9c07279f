"""``hamsa-bridge hamsa probe``: measure the real Hamsa's ``mulaw: true`` reply (format, rate,
chunking, pace) and write it as a trace (``docs/hamsa-probe.md``).

* :mod:`bridge.probe.phrases` — the built-in phrases and the cost estimate;
* :mod:`bridge.probe.recorder` — the sans-I/O recorder: events with times in, trace records out;
* :mod:`bridge.probe.report` — what the records say, as text (pure);
* :mod:`bridge.probe.runner` — the I/O: confirmation, the socket, the clock, the trace file.
"""

from __future__ import annotations

from typing import Final

from bridge.exit_codes import ExitCode

EXIT_OK: Final = ExitCode.OK
EXIT_NO_TRACE: Final = ExitCode.FAILURE
EXIT_USAGE: Final = ExitCode.USAGE
EXIT_DECLINED: Final = ExitCode.DECLINED
EXIT_KEY_REJECTED: Final = ExitCode.HAMSA_KEY_REJECTED
EXIT_NO_BALANCE: Final = ExitCode.HAMSA_NO_BALANCE

PROBE_MEANING: Final[dict[ExitCode, str]] = {
    EXIT_OK: "the trace was written",
    EXIT_NO_TRACE: "nothing written: no successful reply, or Hamsa unreachable",
    EXIT_USAGE: "refused to start: no terminal and no --yes, HAMSA_API_KEY unset, bad --phrases "
    "or --out",
    EXIT_DECLINED: "declined at the question: nothing sent",
    EXIT_KEY_REJECTED: "Hamsa rejected the key (close 4001 or HTTP 401/403): check HAMSA_API_KEY; "
    "nothing written",
    EXIT_NO_BALANCE: "Hamsa says the balance is empty (close 4003): top up the wallet; "
    "nothing written",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): nothing written",
}
"""What each of the command line's codes (:mod:`bridge.exit_codes`) means for a probe."""

EXIT_CODES_HELP: Final = "exit status:\n" + "\n".join(
    f"  {code.value:<3}  {meaning}" for code, meaning in sorted(PROBE_MEANING.items())
)
