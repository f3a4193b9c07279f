"""Durable state of announcements and campaigns (SQLite by default, ``BRIDGE_DATABASE_URL``)."""

from bridge.store.records import AnnouncementRecord, CampaignRecord, ContactRecord, ContactState
from bridge.store.store import Store

__all__ = ["AnnouncementRecord", "CampaignRecord", "ContactRecord", "ContactState", "Store"]
