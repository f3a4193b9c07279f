"""How long an announcement's message audio (personal data) may be kept.

The message is held by its announcement's id (``PromptCache.hold``) from the call's creation
until the call was played to its end (the bridge) or its final outcome is known (the placing
process), whichever comes first; and never longer than ring timeout + the call's time limit +
``RETENTION_MARGIN``: audio of a process killed before it let go is removed by a sweep then
(the bridge sweeps every ``SWEEP_INTERVAL``).
"""

from __future__ import annotations

from typing import Final

from bridge.announcements.spec import call_time_limit
from bridge.settings import Settings

__all__ = ["RETENTION_MARGIN", "SWEEP_INTERVAL", "retention"]

RETENTION_MARGIN: Final = 60.0
"""Seconds a held message outlives its call's longest possible life."""
SWEEP_INTERVAL: Final = 30.0
"""Seconds between the bridge's sweeps of expired holds."""


def retention(text: str, repeat: int, confirm_digit: str | None, settings: Settings) -> float:
    """Seconds a message may be held once its call is answered: the call's time limit plus the
    margin (add the ring timeout when counting from the call's creation)."""
    limit = call_time_limit(text, repeat, confirm_digit, settings.bridge_confirm_max_repeats)
    return limit + RETENTION_MARGIN
