"""Placing an announcement call through the Twilio REST API (``calls.create``)."""

from __future__ import annotations

from typing import Any

from bridge.announcements import parameters
from bridge.announcements.spec import AnnouncementSpec
from bridge.settings import Settings
from bridge.twilio_rest_client import CallSnapshot, TwilioApi
from twiml.announcement import announcement_twiml

__all__ = ["STATUS_EVENTS", "call_request", "place_call", "status_callback_url"]

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
STATUS_PATH = "/twilio/status"


def status_callback_url(settings: Settings, announcement_id: str) -> str:
    """The signed status callback of one announcement (its id in the query: the callback
    needs no lookup by CallSid, which may not be recorded yet when ``initiated`` arrives)."""
    return settings.webhook_url(STATUS_PATH) + "?announcement=" + announcement_id


def call_request(
    settings: Settings, announcement_id: str, spec: AnnouncementSpec, *, now: float
) -> dict[str, Any]:
    """The ``calls.create`` arguments (twilio-python names). Raises ``TwimlTooLong``."""
    params = parameters.encode(announcement_id, spec)
    key = settings.twilio_auth_token.get_secret_value().encode()
    ttl = settings.bridge_announce_token_ttl
    params["token"] = parameters.sign(key, params, now=now, ttl=ttl)
    request: dict[str, Any] = {
        "to": spec.to,
        "from_": spec.from_,
        "twiml": announcement_twiml(settings.stream_url, params),
        "status_callback": status_callback_url(settings, announcement_id),
        "status_callback_event": STATUS_EVENTS,
        "status_callback_method": "POST",
        "timeout": spec.options.ring_seconds,
        "time_limit": spec.time_limit(settings.bridge_confirm_max_repeats),
    }
    if spec.options.machine_detection:
        # DetectMessageEnd: the TwiML runs after a voicemail greeting's beep (or at once for a
        # human), so the message lands in the mailbox whole; AnsweredBy says which.
        request["machine_detection"] = "DetectMessageEnd"
    return request


def place_call(
    api: TwilioApi,
    settings: Settings,
    announcement_id: str,
    spec: AnnouncementSpec,
    *,
    now: float,
) -> CallSnapshot:
    """Create the call (blocking; run it in a thread). Raises ``TwilioApiError``."""
    return api.create_call(**call_request(settings, announcement_id, spec, now=now))
