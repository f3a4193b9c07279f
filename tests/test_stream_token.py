"""Stream tokens: bound to the CallSid, keyed by the auth token, short-lived."""

from __future__ import annotations

import pytest

from bridge.errors import SignatureError
from bridge.stream_token import issue_token, verify_token

KEY = b"auth-token-secret"
CALL = "CA" + "1" * 32


def test_valid_token_verifies() -> None:
    verify_token(KEY, issue_token(KEY, CALL, now=1000, ttl=300), CALL, now=1200)


@pytest.mark.parametrize(
    ("token", "call", "now", "message"),
    [
        (None, CALL, 1000, "missing"),
        ("", CALL, 1000, "missing"),
        ("garbage", CALL, 1000, "malformed"),
        ("v2.1300.n.abc", CALL, 1000, "malformed"),
        ("v1.notanumber.n.abc", CALL, 1000, "malformed"),
        ("v1.1300.abc", CALL, 1000, "malformed"),
        ("v1.1300..abc", CALL, 1000, "malformed"),
        (issue_token(KEY, CALL, now=1000, ttl=300), "CA" + "2" * 32, 1000, "another call"),
        (issue_token(b"other key", CALL, now=1000, ttl=300), CALL, 1000, "invalid"),
        (issue_token(KEY, CALL, now=1000, ttl=300), CALL, 1301, "expired"),
    ],
    ids=[  # fixed ids: issued tokens are random, and test ids must not differ between runs
        "none",
        "empty",
        "garbage",
        "v2-prefix",
        "expiry-not-a-number",
        "three-parts",
        "empty-nonce",
        "another-call",
        "other-key",
        "expired",
    ],
)
def test_bad_tokens_are_refused(token: str | None, call: str, now: float, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_token(KEY, token, call, now=now)


def test_tampered_expiry_or_nonce_is_refused() -> None:
    token = issue_token(KEY, CALL, now=1000, ttl=300)
    version, expiry, nonce, mac = token.split(".")
    with pytest.raises(SignatureError):
        verify_token(KEY, f"{version}.99999999.{nonce}.{mac}", CALL, now=1000)
    with pytest.raises(SignatureError):
        verify_token(KEY, f"{version}.{expiry}.other.{mac}", CALL, now=1000)


def test_every_token_is_unique() -> None:
    assert issue_token(KEY, CALL, now=1000, ttl=300) != issue_token(KEY, CALL, now=1000, ttl=300)


def test_verify_returns_the_expiry() -> None:
    assert verify_token(KEY, issue_token(KEY, CALL, now=1000, ttl=300), CALL, now=1000) == 1300


def test_token_fits_a_twilio_parameter() -> None:
    assert len("token") + len(issue_token(KEY, CALL, now=1000, ttl=300)) < 500
