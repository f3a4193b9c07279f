"""TwiML for inbound calls and Twilio signatures."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bridge.signatures import TwilioSignatures
from twiml.inbound import connect_stream


def test_connect_stream_has_parameters_and_nothing_after_connect() -> None:
    xml = connect_stream(
        "wss://bridge.example.com/twilio/stream", {"token": "v1.1.x", "from": "+966"}
    )
    root = ET.fromstring(xml)
    assert [child.tag for child in root] == ["Connect"]
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://bridge.example.com/twilio/stream"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {
        "token": "v1.1.x",
        "from": "+966",
    }


@pytest.mark.parametrize("url", ["wss://h/p?token=1", "https://h/p", "h/p"])
def test_stream_url_must_be_wss_without_query(url: str) -> None:
    with pytest.raises(ValueError):
        connect_stream(url, {})


def test_parameter_over_500_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="500"):
        connect_stream("wss://h/p", {"x": "y" * 499})


def test_signature_matches_twilio_documented_vector() -> None:
    sig = TwilioSignatures("12345")
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert sig.sign(url, params) == "L/OH5YylLD5NRKLltdqwSvS0BnU="
    assert sig.webhook_ok(url, params, "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    assert not sig.webhook_ok(url, {**params, "Digits": "1235"}, "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    assert not sig.webhook_ok(url, params, None)


def test_handshake_accepts_trailing_slash_variant_only_for_the_exact_url() -> None:
    sig = TwilioSignatures("secret")
    url = "wss://bridge.example.com/twilio/stream"
    assert sig.handshake_ok(url, sig.sign(url, {}))
    assert sig.handshake_ok(url, sig.sign(url + "/", {}))
    assert not sig.handshake_ok(url, sig.sign("https://bridge.example.com/twilio/stream", {}))
    assert not sig.handshake_ok(url, sig.sign("wss://evil.example.com/twilio/stream", {}))


def test_signing_drops_credentials_and_the_https_port_as_twilio_does() -> None:
    sig = TwilioSignatures("secret")
    base = sig.sign("https://example.com/voice", {"a": "1"})
    assert sig.sign("https://user:pw@example.com:8443/voice", {"a": "1"}) == base
    assert sig.sign("wss://example.com:443/s", {}) == sig.sign("wss://example.com/s", {})
    # plain HTTP keeps its port
    assert sig.sign("http://127.0.0.1:8080/v", {}) != sig.sign("http://127.0.0.1/v", {})
