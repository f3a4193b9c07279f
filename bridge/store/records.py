"""What the store holds: announcements (one call attempt each), campaigns, their contacts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from bridge.announcements.spec import (
    AnnouncementSpec,
    AttemptState,
    CallOutcome,
    Evidence,
    OutcomeReason,
    Verdict,
    decide_outcome,
)


@dataclass(frozen=True, slots=True)
class AnnouncementRecord:
    """One call attempt: recorded (``PLANNED``) before ``calls.create`` is sent."""

    id: str
    spec: AnnouncementSpec
    state: AttemptState
    created_at: float
    """Unix seconds (wall clock: the record outlives the process)."""
    campaign_id: str | None = None
    contact_idx: int | None = None
    attempt: int = 1
    call_sid: str | None = None
    sent_at: float | None = None
    """When a placer committed to sending ``calls.create`` (``None``: certainly never sent,
    by placers that use :meth:`Store.begin_placing`)."""
    placed_at: float | None = None
    ended_at: float | None = None
    status: str | None = None
    """Twilio's latest ``CallStatus`` (``queued`` … ``completed``)."""
    status_seq: int = -1
    """``SequenceNumber`` of the callback that set ``status`` (-1: none; polling keeps it)."""
    status_at: float | None = None
    """When ``status`` was last learnt (callback or poll)."""
    answered_by: str | None = None
    duration: int | None = None
    confirmation: str | None = None
    """``confirmed`` / ``no-confirmation`` when a confirm digit was asked for."""
    plays: int = 0
    """Times the message was heard to its end (its final mark came back)."""
    plays_unconfirmed: int = 0
    """Times the message was played to its end but its final mark never came back."""
    stream_started_at: float | None = None
    stream_ended_at: float | None = None
    error: str | None = None
    idempotency_key: str | None = None

    @property
    def evidence(self) -> Evidence:
        return Evidence(
            not_placed=self.state is AttemptState.NOT_PLACED,
            status=self.status,
            stream_started=self.stream_started_at is not None,
            plays=self.plays,
            plays_unconfirmed=self.plays_unconfirmed,
        )

    @property
    def verdict(self) -> Verdict | None:
        return decide_outcome(self.evidence)

    @property
    def outcome(self) -> CallOutcome | None:
        verdict = self.verdict
        return verdict.outcome if verdict is not None else None

    @property
    def reason(self) -> OutcomeReason | None:
        verdict = self.verdict
        return verdict.reason if verdict is not None else None

    @property
    def outcome_error(self) -> str | None:
        """The recorded error, else the outcome's reason when it is an error."""
        if self.error:
            return self.error
        reason = self.reason
        return reason.description if reason is not None and reason.is_error else None

    @property
    def final(self) -> bool:
        return self.state in (AttemptState.ENDED, AttemptState.NOT_PLACED)

    def to_json(self) -> dict[str, Any]:
        """The public view (HTTP API, ``announce --json``)."""
        spec = self.spec
        return {
            "id": self.id,
            "state": self.state.value,
            "to": spec.to,
            "from": spec.from_,
            "call_sid": self.call_sid,
            "status": self.status,
            "outcome": self.outcome.value if self.outcome else None,
            "reason": self.reason.value if self.reason else None,
            "answered_by": self.answered_by,
            "duration": self.duration,
            "plays": self.plays,
            "plays_unconfirmed": self.plays_unconfirmed,
            "confirmation": self.confirmation,
            "error": self.outcome_error,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "campaign_id": self.campaign_id,
            "attempt": self.attempt,
        }


class ContactState(enum.StrEnum):
    PENDING = "pending"
    """Waiting for its (next) attempt, at ``next_at``."""
    ACTIVE = "active"
    """An attempt is planned or in progress."""
    DONE = "done"
    INVALID = "invalid"
    """Never called: the row failed validation (number, prefix, template)."""


@dataclass(frozen=True, slots=True)
class ContactRecord:
    campaign_id: str
    idx: int
    """The row's position in the campaign (0-based, input order)."""
    number: str
    variables: dict[str, str]
    text: str
    state: ContactState = ContactState.PENDING
    attempts: int = 0
    next_at: float = 0.0
    outcome: str | None = None
    error: str | None = None
    timezone: str | None = None


class CampaignState(enum.StrEnum):
    """Where a campaign stands (the ``campaigns.state`` column: free text, so these values need
    no migration)."""

    RUNNING = "running"
    """Created, or resumed: a runner calls its contacts (or will, at ``campaign resume``)."""
    PAUSED = "paused"
    """``campaign pause``: its runner placed no further call and stopped once the calls in
    progress ended; ``campaign resume`` goes on where it stopped."""
    CANCELLED = "cancelled"
    """``campaign cancel``: no further call is ever placed; ``resume`` refuses it."""
    FINISHED = "finished"
    """Every contact is done (or invalid, or a duplicate)."""


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    id: str
    name: str
    config: dict[str, Any]
    created_at: float
    state: CampaignState = CampaignState.RUNNING
    """``running`` until every contact is done, then ``finished``; or ``paused``/``cancelled``
    on request (:class:`CampaignState`)."""
    finished_at: float | None = None
    """When it finished, or was cancelled."""
    lease_owner: str | None = None
    lease_until: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
