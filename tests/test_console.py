"""Pure parts of the console tools: what to change, how a number points, URL rules."""

from __future__ import annotations

import pytest

from bridge.console import (
    changes_needed,
    how_it_points,
    public_url_problem,
    redact_url,
    twiml_for_bin,
)
from bridge.settings import Settings
from bridge.twilio_rest_client import PhoneNumber

PUBLIC = "https://bridge.example.com"


def number(**fields: str) -> PhoneNumber:
    base = {
        "sid": "PN" + "1" * 32,
        "phone_number": "+966501234567",
        "friendly_name": "clinic",
        "voice_url": "",
        "voice_method": "POST",
        "status_callback": "",
        "status_callback_method": "POST",
        "voice_application_sid": "",
    }
    return PhoneNumber(**{**base, **fields})


SETTINGS = Settings(bridge_public_url=PUBLIC)


def test_unconfigured_number_needs_its_url_and_callback() -> None:
    changes = changes_needed(number(), SETTINGS)
    assert [(c.api_name, c.after) for c in changes] == [
        ("VoiceUrl", PUBLIC + "/twiml/inbound"),
        ("StatusCallback", PUBLIC + "/twilio/status"),
    ]


def test_configured_number_needs_nothing_and_method_case_is_ignored() -> None:
    wired = number(
        voice_url=PUBLIC + "/twiml/inbound",
        voice_method="post",
        status_callback=PUBLIC + "/twilio/status",
    )
    assert changes_needed(wired, SETTINGS) == []
    assert how_it_points(wired, SETTINGS) == "points here ✓"


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({}, "no voice webhook"),
        ({"voice_url": "https://other.example.com/voice"}, "points elsewhere"),
        ({"voice_url": PUBLIC + "/twiml/inbound", "voice_method": "GET"}, "needs POST"),
        ({"voice_url": PUBLIC + "/twiml/inbound"}, "call-status callback is not this bridge's"),
        (
            {
                "voice_url": PUBLIC + "/twiml/inbound",
                "status_callback": PUBLIC + "/twilio/status",
                "status_callback_method": "GET",
            },
            "call-status callback is not this bridge's",
        ),
        ({"trunk_sid": "TK" + "3" * 32}, "SIP trunk"),
        ({"voice_application_sid": "AP" + "2" * 32}, "TwiML App"),
    ],
)
def test_how_a_number_points(fields: dict[str, str], phrase: str) -> None:
    assert phrase in how_it_points(number(**fields), SETTINGS)


EMULATOR = "http://127.0.0.1:8766"


@pytest.mark.parametrize(
    ("url", "api", "ok"),
    [
        ("https://bridge.example.com", "https://api.twilio.com", True),
        ("https://bridge.example.com:443", "https://api.twilio.com", True),
        ("http://127.0.0.1:8080", EMULATOR, True),
        ("http://localhost:8080", EMULATOR, True),
        ("http://[::1]:8080", EMULATOR, True),
        # loopback is only for the emulators: real Twilio can't reach this machine's loopback
        ("http://127.0.0.1:8080", "https://api.twilio.com", False),
        ("http://localhost:8080", "https://api.twilio.com", False),
        ("https://localhost", "https://api.twilio.com", False),
        ("", EMULATOR, False),
    ],
)
def test_a_loopback_public_url_is_only_for_the_emulators(url: str, api: str, ok: bool) -> None:
    """The URL's form is checked by Settings (tests/test_settings_public_url.py); what is left
    for configure, twiml and doctor: it is set, and Twilio can reach it."""
    settings = Settings(bridge_public_url=url, twilio_api_url=api)
    assert (public_url_problem(settings) is None) is ok


def test_a_twiml_app_on_the_number_is_cleared_by_configure() -> None:
    wired = number(
        voice_url=PUBLIC + "/twiml/inbound",
        status_callback=PUBLIC + "/twilio/status",
        voice_application_sid="AP" + "2" * 32,
    )
    assert [(c.api_name, c.after) for c in changes_needed(wired, SETTINGS)] == [
        ("VoiceApplicationSid", "")
    ]


def test_credentials_in_webhook_urls_are_never_shown() -> None:
    assert redact_url("https://user:s3cret@hooks.example.com/voice") == (
        "https://***@hooks.example.com/voice"
    )
    assert redact_url("https://hooks.example.com/voice") == "https://hooks.example.com/voice"
    shown = how_it_points(number(voice_url="https://u:s3cret@hooks.example.com/v"), SETTINGS)
    assert "s3cret" not in shown


def test_twiml_bin_redirects_to_the_signed_webhook() -> None:
    xml = twiml_for_bin(SETTINGS)
    assert '<Redirect method="POST">https://bridge.example.com/twiml/inbound</Redirect>' in xml
