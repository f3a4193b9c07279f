"""Per-call stream tokens carried in a ``<Parameter>`` of ``<Connect><Stream>``.

Twilio drops query strings from stream URLs and may not sign the WebSocket handshake
(twilio-media-streams.md §7.2), so every TwiML we serve carries a short-lived token bound to the
CallSid, HMAC-SHA256 keyed by the account's auth token. The stream handler checks it against
``start.callSid`` before anything is allocated. Tokens are stateless, so any replica can verify
a token issued by another; replay of a token for a call already streaming on this replica is
refused by the call registry.

Format: ``v1.<expiry unix seconds>.<base64url(HMAC-SHA256(key, "v1|<CallSid>|<expiry>"))>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from bridge.errors import SignatureError

_VERSION = "v1"


def _mac(key: bytes, call_sid: str, expiry: int) -> str:
    digest = hmac.new(key, f"{_VERSION}|{call_sid}|{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_token(key: bytes, call_sid: str, *, now: float, ttl: float) -> str:
    """A token for ``call_sid`` valid until ``now + ttl`` (unix seconds)."""
    expiry = int(now + ttl)
    return f"{_VERSION}.{expiry}.{_mac(key, call_sid, expiry)}"


def verify_token(key: bytes, token: str | None, call_sid: str, *, now: float) -> None:
    """Raise ``SignatureError`` unless ``token`` is live and was issued for ``call_sid``."""
    if not token:
        raise SignatureError("stream token missing", call_sid=call_sid)
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _VERSION or not parts[1].isdigit():
        raise SignatureError("stream token malformed", call_sid=call_sid)
    expiry = int(parts[1])
    if not hmac.compare_digest(parts[2], _mac(key, call_sid, expiry)):
        raise SignatureError(
            "stream token signature invalid or bound to another call", call_sid=call_sid
        )
    if now > expiry:
        raise SignatureError("stream token expired", call_sid=call_sid)
