"""Rows ↔ records, and the statements several of the store's methods share (any dialect)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from bridge.announcements.options import AnnouncementOptions
from bridge.announcements.spec import AnnouncementSpec, AttemptState
from bridge.errors import StoreError
from bridge.store.backend import Row, Tx
from bridge.store.records import (
    AnnouncementRecord,
    CampaignRecord,
    CampaignState,
    ContactRecord,
    ContactState,
)

__all__ = [
    "announcement_from_row",
    "contact_from_row",
    "contact_values",
    "get_announcement",
    "get_campaign",
    "insert_announcement",
    "new_id",
    "update",
]


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def update(tx: Tx, table: str, updates: dict[str, Any], where: str, args: tuple[Any, ...]) -> None:
    columns = ", ".join(f"{name} = ?" for name in updates)  # names are ours, never input
    tx.execute(f"UPDATE {table} SET {columns} WHERE {where}", (*updates.values(), *args))  # noqa: S608


def insert_announcement(
    tx: Tx,
    announcement_id: str,
    spec: AnnouncementSpec,
    *,
    now: float,
    campaign_id: str | None = None,
    contact_idx: int | None = None,
    attempt: int = 1,
    idempotency_key: str | None = None,
) -> bool:
    """``False``: an announcement with this ``idempotency_key`` exists (nothing inserted)."""
    options = spec.options
    voice = options.voice
    result = tx.execute(
        "INSERT INTO announcements (id, campaign_id, contact_idx, attempt, to_number, "
        "from_number, text, speaker, dialect, language, repeat, confirm_digit, repeat_digit, "
        "machine_detection, ring_timeout, state, created_at, idempotency_key) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (idempotency_key) DO NOTHING",
        (
            announcement_id,
            campaign_id,
            contact_idx,
            attempt,
            spec.to,
            spec.from_,
            spec.text,
            voice.speaker,
            voice.dialect,
            voice.language,
            options.repeat,
            options.confirm_digit,
            options.repeat_digit,
            int(options.machine_detection),
            options.ring_seconds,
            AttemptState.PLANNED.value,
            now,
            idempotency_key,
        ),
    )
    return result.rowcount == 1


def get_announcement(tx: Tx, announcement_id: str) -> AnnouncementRecord:
    row = tx.execute("SELECT * FROM announcements WHERE id = ?", (announcement_id,)).first()
    if row is None:
        raise StoreError(f"no announcement {announcement_id}")
    return announcement_from_row(row)


def announcement_from_row(row: Row) -> AnnouncementRecord:
    spec = AnnouncementSpec(
        to=row["to_number"],
        from_=row["from_number"],
        text=row["text"],
        options=AnnouncementOptions(
            speaker=row["speaker"],
            dialect=row["dialect"],
            language=row["language"],
            repeat=row["repeat"],
            confirm_digit=row["confirm_digit"],
            repeat_digit=row["repeat_digit"],
            machine_detection=bool(row["machine_detection"]),
            ring_timeout=row["ring_timeout"],
        ),
    )
    return AnnouncementRecord(
        id=row["id"],
        spec=spec,
        state=AttemptState(row["state"]),
        created_at=row["created_at"],
        campaign_id=row["campaign_id"],
        contact_idx=row["contact_idx"],
        attempt=row["attempt"],
        call_sid=row["call_sid"],
        sent_at=row["sent_at"],
        placed_at=row["placed_at"],
        ended_at=row["ended_at"],
        status=row["status"],
        status_seq=row["status_seq"],
        status_at=row["status_at"],
        answered_by=row["answered_by"],
        duration=row["duration"],
        confirmation=row["confirmation"],
        plays=row["plays"],
        plays_unconfirmed=row["plays_unconfirmed"],
        stream_started_at=row["stream_started_at"],
        stream_ended_at=row["stream_ended_at"],
        error=row["error"],
        idempotency_key=row["idempotency_key"],
    )


def contact_values(campaign_id: str, contact: ContactRecord) -> tuple[Any, ...]:
    """The ``contacts`` row of a new contact, in the column order of ``create_campaign``."""
    return (
        campaign_id,
        contact.idx,
        contact.number,
        json.dumps(contact.variables, ensure_ascii=False),
        contact.text,
        contact.timezone,
        contact.state.value,
        contact.attempts,
        contact.next_at,
        contact.outcome,
        contact.error,
    )


def contact_from_row(row: Row) -> ContactRecord:
    return ContactRecord(
        campaign_id=row["campaign_id"],
        idx=row["idx"],
        number=row["number"],
        variables=json.loads(row["variables"]),
        text=row["text"],
        state=ContactState(row["state"]),
        attempts=row["attempts"],
        next_at=row["next_at"],
        outcome=row["outcome"],
        error=row["error"],
        timezone=row["timezone"],
    )


def get_campaign(tx: Tx, campaign_id: str) -> CampaignRecord:
    row = tx.execute("SELECT * FROM campaigns WHERE id = ?", (campaign_id,)).first()
    if row is None:
        raise StoreError(f"no campaign {campaign_id}")
    counts: dict[str, int] = {}
    for group in tx.execute(
        "SELECT state, outcome, COUNT(*) AS n FROM contacts WHERE campaign_id = ? "
        "GROUP BY state, outcome",
        (campaign_id,),
    ).rows:
        state, outcome = group["state"], group["outcome"]
        key = outcome if state == ContactState.DONE.value and outcome else state
        counts[key] = counts.get(key, 0) + int(group["n"])
    return CampaignRecord(
        id=row["id"],
        name=row["name"],
        config=json.loads(row["config"]),
        created_at=row["created_at"],
        state=CampaignState(row["state"]),
        finished_at=row["finished_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        counts=counts,
    )
