"""``X-Twilio-Signature`` checks, through twilio's ``RequestValidator``.

URLs are always built from the configured public base URL, never from the Host header: a proxy
that rewrites Host or scheme would otherwise break (or fake) validation
(docs/twilio-streams.md §7.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator


class TwilioSignatures:
    """Validates webhook and stream-handshake signatures for one auth token."""

    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def webhook_ok(
        self, url: str, params: Mapping[str, str | list[str]], signature: str | None
    ) -> bool:
        """A form POST webhook: ``url`` is the full public URL Twilio requested."""
        if not signature:
            return False
        return bool(self._validator.validate(url, dict(params), signature))

    def handshake_ok(self, stream_url: str, signature: str) -> bool:
        """A stream handshake: the exact ``wss://`` URL, with or without a trailing slash (§7.2)."""
        return any(
            self._validator.validate(url, {}, signature)
            for url in (stream_url, stream_url.rstrip("/") + "/")
        )

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """The signature Twilio would send (used by our Twilio simulator and emulator).

        As Twilio does (docs/twilio-streams.md §7.1): ``user:password@`` is removed from the
        URL and, over HTTPS/WSS, the port too; plain HTTP keeps its port.
        """
        return str(self._validator.compute_signature(_as_twilio_signs(url), dict(params)))


def _as_twilio_signs(url: str) -> str:
    parts = urlsplit(url)
    if (
        parts.username is None
        and parts.password is None
        and (parts.port is None or parts.scheme not in ("https", "wss"))
    ):
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    keep_port = parts.port is not None and parts.scheme not in ("https", "wss")
    netloc = f"{host}:{parts.port}" if keep_port else host
    return urlunsplit(parts._replace(netloc=netloc))
