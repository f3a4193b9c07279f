"""Outbound call announcements: one call (``announce``, ``POST /v1/announcements``) or many
(``bridge.campaigns``), spoken by Hamsa, hung up after the final mark, recorded in the store."""
