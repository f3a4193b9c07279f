"""Per-call stream tokens carried in a ``<Parameter>`` of ``<Connect><Stream>``.

Twilio drops query strings from stream URLs and may not sign the WebSocket handshake
(docs/twilio-streams.md §7.2), so every TwiML we serve carries a short-lived token bound
to the CallSid, HMAC-SHA256 keyed by the account's auth token. The stream handler checks it against
``start.callSid`` before anything is allocated. Tokens are stateless, so any replica can verify
a token issued by another; each replica refuses a token it has already accepted (until it
expires; the workers of ``serve --workers N`` share that memory: ``SharedUsedTokens``), and a
second stream for a call already streaming there.

Format: ``v1.<expiry>.<nonce>.<mac>``: expiry in unix seconds, a random nonce, and
``mac = base64url(HMAC-SHA256(key, "v1|<CallSid>|<expiry>|<nonce>"))``.
The random nonce makes every token unique, so single-use never refuses a legitimate new stream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from bridge.errors import SignatureError

_VERSION = "v1"
_TOKEN = re.compile(r"v1\.([1-9][0-9]{0,11})\.([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{43})")
"""Exactly the form :func:`issue_token` makes, so a token cannot be re-encoded into a new one."""


def _mac(key: bytes, call_sid: str, expiry: int, nonce: str) -> str:
    message = f"{_VERSION}|{call_sid}|{expiry}|{nonce}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_token(key: bytes, call_sid: str, *, now: float, ttl: float) -> str:
    """A token for ``call_sid`` valid until ``now + ttl`` (unix seconds)."""
    expiry = int(now + ttl)
    nonce = secrets.token_urlsafe(9)
    return f"{_VERSION}.{expiry}.{nonce}.{_mac(key, call_sid, expiry, nonce)}"


def verify_token(key: bytes, token: str | None, call_sid: str, *, now: float) -> int:
    """Raise ``SignatureError`` unless ``token`` is live and was issued for ``call_sid``.

    Returns the token's expiry (unix seconds), until which the caller should remember it as used.
    """
    if not token:
        raise SignatureError("stream token missing", call_sid=call_sid)
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise SignatureError("stream token malformed", call_sid=call_sid)
    expiry = int(match[1])
    if not hmac.compare_digest(match[3], _mac(key, call_sid, expiry, match[2])):
        raise SignatureError(
            "stream token signature invalid or bound to another call", call_sid=call_sid
        )
    if now > expiry:
        raise SignatureError("stream token expired", call_sid=call_sid)
    return expiry
