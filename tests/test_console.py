"""Pure parts of the console tools: what to change, how a number points, URL rules."""

from __future__ import annotations

import pytest

from bridge.console import changes_needed, how_it_points, public_url_problem, twiml_for_bin
from bridge.settings import Settings
from bridge.twilio_api import PhoneNumber

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
        ({"voice_url": PUBLIC + "/twiml/inbound"}, "call-status callback not set"),
        ({"voice_application_sid": "AP" + "2" * 32}, "TwiML App"),
    ],
)
def test_how_a_number_points(fields: dict[str, str], phrase: str) -> None:
    assert phrase in how_it_points(number(**fields), SETTINGS)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://bridge.example.com", True),
        ("http://bridge.example.com", False),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://10.0.0.5:8080", False),
        ("", False),
    ],
)
def test_public_url_must_be_https_except_on_loopback(url: str, ok: bool) -> None:
    assert (public_url_problem(Settings(bridge_public_url=url)) is None) is ok


def test_twiml_bin_redirects_to_the_signed_webhook() -> None:
    xml = twiml_for_bin(SETTINGS)
    assert '<Redirect method="POST">https://bridge.example.com/twiml/inbound</Redirect>' in xml
