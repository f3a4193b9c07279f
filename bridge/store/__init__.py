"""Durable state of announcements and campaigns: SQLite by default, or PostgreSQL to share it
between machines (``BRIDGE_DATABASE_URL``; :func:`check_database_url` vets one)."""

from bridge.store.records import (
    AnnouncementRecord,
    CampaignRecord,
    CampaignState,
    ContactRecord,
    ContactState,
)
from bridge.store.store import Store
from bridge.store.url import check_database_url, redact_url

__all__ = [
    "AnnouncementRecord",
    "CampaignRecord",
    "CampaignState",
    "ContactRecord",
    "ContactState",
    "Store",
    "check_database_url",
    "redact_url",
]
