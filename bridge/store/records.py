"""What the store holds: announcements (one call attempt each), campaigns, their contacts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from bridge.announcements.spec import (
    AnnouncementSpec,
    AttemptState,
    CallOutcome,
    outcome_of_status,
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
    stream_started_at: float | None = None
    stream_ended_at: float | None = None
    error: str | None = None
    idempotency_key: str | None = None

    @property
    def outcome(self) -> CallOutcome | None:
        if self.state is AttemptState.NOT_PLACED:
            return CallOutcome.NOT_PLACED
        return outcome_of_status(self.status) if self.status else None

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
            "answered_by": self.answered_by,
            "duration": self.duration,
            "plays": self.plays,
            "confirmation": self.confirmation,
            "error": self.error,
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


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    id: str
    name: str
    config: dict[str, Any]
    created_at: float
    state: str = "running"
    """``running`` until every contact is done, then ``finished``."""
    finished_at: float | None = None
    lease_owner: str | None = None
    lease_until: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
