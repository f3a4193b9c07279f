"""A campaign's options, stored with it so ``campaign resume`` runs exactly as ``run`` did.

Only credentials and URLs come from the environment of the process that runs it; what to say,
how to call and how to retry are fixed when the campaign is created.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import tzinfo
from typing import Any, Final

from bridge.announcements.options import FIELD_NAMES, AnnouncementOptions
from bridge.announcements.spec import AnnouncementSpec, CallOutcome, OutcomeReason
from bridge.campaigns.window import CallingWindow, zone
from bridge.errors import CampaignInvalid
from bridge.settings import Settings

__all__ = ["RETRYABLE", "RETRY_DEFAULT", "CampaignConfig", "RetryKey"]

RetryKey = CallOutcome | OutcomeReason
"""What ``--retry-on`` names: an outcome, or an error reason (``stream-never-connected``)."""
RETRY_DEFAULT: Final = (CallOutcome.BUSY, CallOutcome.NO_ANSWER, CallOutcome.FAILED)
RETRYABLE: Final[tuple[RetryKey, ...]] = (
    *RETRY_DEFAULT,
    OutcomeReason.STREAM_NEVER_CONNECTED,
)
"""What ``--retry-on`` may name (the default: :data:`RETRY_DEFAULT`). ``failed`` is Twilio's
failure; ``stream-never-connected`` (also ``failed``) is retried only when named."""


def retry_key(value: str) -> RetryKey:
    """The outcome or reason ``value`` names (``ValueError`` for neither)."""
    try:
        return CallOutcome(value)
    except ValueError:
        return OutcomeReason(value)


MAX_RETRIES: Final = 10


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """Stored flat (:meth:`to_dict`): the options' fields beside the campaign's own."""

    text: str
    """The template, as given (``{name}`` variables)."""
    from_: str
    options: AnnouncementOptions
    """With the settings' defaults filled in (:meth:`AnnouncementOptions.with_defaults`) when the
    campaign is created; checked for each call (:meth:`spec`)."""
    cps: float = 1.0
    max_concurrent: int = 10
    retries: int = 2
    retry_delay: float = 300.0
    retry_on: tuple[str, ...] = tuple(o.value for o in RETRY_DEFAULT)
    window: str | None = None
    timezone: str = "UTC"
    source: str = ""
    """The CSV file the campaign was created from (for ``status``)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 0 < self.cps <= 100:
            problems.append("--cps must be more than 0 and at most 100")
        if self.max_concurrent < 1:
            problems.append("--max-concurrent must be at least 1")
        if not 0 <= self.retries <= MAX_RETRIES:
            problems.append(f"--retries must be 0 to {MAX_RETRIES}")
        if self.retry_delay < 0:
            problems.append("--retry-delay must be 0 or more seconds")
        allowed = {o.value for o in RETRYABLE}
        unknown = [o for o in self.retry_on if o not in allowed]
        if unknown:
            problems.append(
                f"--retry-on: unknown outcome(s) {', '.join(unknown)}: "
                f"choose from {', '.join(sorted(allowed))}"
            )
        for check in (self.calling_window, self.zone):
            try:
                check()
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise CampaignInvalid("; ".join(problems), tuple(problems))

    def calling_window(self) -> CallingWindow | None:
        return CallingWindow.parse(self.window) if self.window else None

    def zone(self) -> tzinfo:
        return zone(self.timezone)

    @property
    def retry_outcomes(self) -> frozenset[RetryKey]:
        return frozenset(retry_key(o) for o in self.retry_on)

    def spec(self, settings: Settings, number: str, text: str) -> AnnouncementSpec:
        """The call for one contact. Raises ``AnnouncementInvalid``."""
        return AnnouncementSpec.create(
            settings, to=number, from_=self.from_, text=text, options=self.options
        )

    def to_dict(self) -> dict[str, Any]:
        own = asdict(self)
        options = own.pop("options")
        data = {"text": own.pop("text"), "from_": own.pop("from_"), **options, **own}
        data["retry_on"] = list(self.retry_on)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["options"] = AnnouncementOptions(
            **{k: v for k, v in data.items() if k in FIELD_NAMES}
        )
        if "retry_on" in values:
            values["retry_on"] = tuple(values["retry_on"])
        return cls(**values)
