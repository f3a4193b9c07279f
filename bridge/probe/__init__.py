"""``hamsa-bridge hamsa probe``: measure the real Hamsa's ``mulaw: true`` reply (format, rate,
chunking, pace) and write it as a trace (``docs/hamsa-probe.md``).

* :mod:`bridge.probe.phrases` — the built-in phrases and the cost estimate;
* :mod:`bridge.probe.recorder` — the sans-I/O recorder: events with times in, trace records out;
* :mod:`bridge.probe.report` — what the records say, as text (pure);
* :mod:`bridge.probe.runner` — the I/O: confirmation, the socket, the clock, the trace file.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_NO_TRACE: Final = 1
EXIT_USAGE: Final = 2
EXIT_DECLINED: Final = 3
EXIT_KEY_REJECTED: Final = 4
EXIT_NO_BALANCE: Final = 5

EXIT_CODES_HELP: Final = """\
exit status:
  0  the trace was written
  1  nothing written: no successful reply, or Hamsa unreachable
  2  refused to start: no terminal and no --yes, HAMSA_API_KEY unset, bad --phrases or --out
  3  declined at the question: nothing sent
  4  Hamsa rejected the key (close 4001 or HTTP 401/403): check HAMSA_API_KEY; nothing written
  5  Hamsa says the balance is empty (close 4003): top up the wallet; nothing written
"""
