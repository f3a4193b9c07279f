"""The bridge's Twilio REST client: twilio's own ``Client``, aimed at ``TWILIO_API_URL``.

Every Twilio-facing command goes through here, so pointing ``TWILIO_API_URL`` at the Twilio
emulator makes all of them work offline, unchanged. Failures become ``TwilioApiError`` with a
message that says which setting to check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from bridge.errors import TwilioApiError
from bridge.protocols.twilio_ids import ACCOUNT_SID
from bridge.settings import Settings

REQUEST_TIMEOUT = 15.0
"""Seconds for one Twilio REST request (twilio-python's default is to wait forever)."""


def credentials_problem(settings: Settings) -> str | None:
    """Why the Twilio credentials cannot work, found without asking Twilio (None: they may)."""
    missing = [
        name
        for name, value in (
            ("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
            ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token.get_secret_value()),
        )
        if not value
    ]
    if missing:
        return f"set {' and '.join(missing)} (the Twilio console, Account info)"
    if not ACCOUNT_SID.match(settings.twilio_account_sid):
        return (
            "TWILIO_ACCOUNT_SID must be AC followed by 32 hex digits (the Account SID in the "
            "Twilio console, Account info)"
        )
    return None


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """The parts of an IncomingPhoneNumber the bridge cares about."""

    sid: str
    phone_number: str
    friendly_name: str
    voice_url: str
    voice_method: str
    status_callback: str
    status_callback_method: str
    voice_application_sid: str
    trunk_sid: str = ""

    @classmethod
    def from_resource(cls, resource: Any) -> PhoneNumber:
        return cls(
            sid=str(resource.sid),
            phone_number=str(resource.phone_number),
            friendly_name=str(resource.friendly_name or ""),
            voice_url=str(resource.voice_url or ""),
            voice_method=str(resource.voice_method or ""),
            status_callback=str(resource.status_callback or ""),
            status_callback_method=str(resource.status_callback_method or ""),
            voice_application_sid=str(resource.voice_application_sid or ""),
            trunk_sid=str(getattr(resource, "trunk_sid", None) or ""),
        )


def _status_of(exc: Exception) -> tuple[int | None, int | None, str]:
    """(HTTP status, Twilio code, message) of a twilio-python error, when Twilio answered."""
    if isinstance(exc, TwilioRestException):
        return exc.status, exc.code, str(exc.msg)
    # list() raises TwilioException("Unable to fetch page", response) for a non-200 page
    response = exc.args[1] if len(exc.args) > 1 else None
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        return None, None, str(exc)
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
    except ValueError:
        body = {}
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message", "") if isinstance(body, dict) else ""
    return status, code if isinstance(code, int) else None, str(message)


def credentials_hint(settings: Settings) -> str:
    """Which settings authenticate REST requests (what to check after a 401)."""
    if settings.twilio_api_key:
        return (
            "TWILIO_API_KEY and TWILIO_API_SECRET (a Standard or Main key of account "
            "TWILIO_ACCOUNT_SID, not revoked)"
        )
    return "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (the account's primary auth token)"


def _explain(exc: Exception, settings: Settings) -> TwilioApiError:
    status, code, message = _status_of(exc)
    if status is not None:
        if status == 401:
            return TwilioApiError(
                f"Twilio rejected the credentials (HTTP 401, code {code}): check "
                + credentials_hint(settings),
                status=status,
                code=code,
            )
        return TwilioApiError(
            f"Twilio answered HTTP {status} (code {code}): {message}", status=status, code=code
        )
    return TwilioApiError(
        f"cannot reach the Twilio API at {settings.twilio_api_url}: {type(exc).__name__}; "
        "check TWILIO_API_URL and the network"
    )


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    """The parts of a Call resource an announcement's outcome needs."""

    sid: str
    to: str
    from_: str
    status: str
    duration: int | None
    answered_by: str | None
    date_created: datetime | None

    @classmethod
    def from_resource(cls, resource: Any) -> CallSnapshot:
        duration = getattr(resource, "duration", None)
        created = getattr(resource, "date_created", None)
        return cls(
            sid=str(resource.sid),
            to=str(resource.to or ""),
            from_=str(getattr(resource, "from_", None) or ""),
            status=str(resource.status or ""),
            duration=int(duration) if duration not in (None, "") else None,
            answered_by=str(resource.answered_by) if resource.answered_by else None,
            date_created=created if isinstance(created, datetime) else None,
        )


class TwilioApi:
    """A few typed Twilio REST operations (sync: used by the command-line tools)."""

    def __init__(self, settings: Settings) -> None:
        user, password = settings.twilio_rest_auth
        if not settings.twilio_account_sid or not password:
            raise TwilioApiError(
                "set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and "
                "TWILIO_API_SECRET)"
            )
        self._settings = settings
        # HTTP Basic with the API key and its secret when set (else the account SID and auth
        # token); the account SID is always the one in the URL path.
        self._client = Client(
            user,
            password,
            account_sid=settings.twilio_account_sid,
            http_client=TwilioHttpClient(timeout=REQUEST_TIMEOUT),
        )
        self._client.api.base_url = settings.twilio_api_url.rstrip("/")

    def _call(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(*args, **kwargs)
        except (TwilioException, OSError) as exc:
            raise _explain(exc, self._settings) from None
        except Exception as exc:  # requests' ConnectionError and friends
            if type(exc).__module__.startswith(("requests", "urllib3")):
                raise _explain(exc, self._settings) from None
            raise

    def account_name(self) -> str:
        """Prove the credentials; what they are: the account's friendly name, or ``API key SK…``.

        With an API key the Account resource is not read: a Standard key may not (Twilio
        answers 401/20003 there), so one page of the account's numbers proves the key instead.
        """
        key = self._settings.twilio_api_key
        if key:
            self._call(lambda: self._client.incoming_phone_numbers.list(limit=1, page_size=1))
            return f"API key {key}"
        sid = self._settings.twilio_account_sid
        account = self._call(lambda: self._client.api.v2010.accounts(sid).fetch())
        return str(account.friendly_name or sid)

    def numbers(self) -> list[PhoneNumber]:
        records = self._call(lambda: self._client.incoming_phone_numbers.list(page_size=100))
        return [PhoneNumber.from_resource(r) for r in records]

    def find_number(self, phone_number: str) -> PhoneNumber | None:
        records = self._call(
            lambda: self._client.incoming_phone_numbers.list(phone_number=phone_number, limit=20)
        )
        for record in records:
            if record.phone_number == phone_number:
                return PhoneNumber.from_resource(record)
        return None

    def update_number(self, sid: str, **fields: str) -> PhoneNumber:
        """Change only the given fields (snake_case twilio-python names) of a number."""
        record = self._call(lambda: self._client.incoming_phone_numbers(sid).update(**fields))
        return PhoneNumber.from_resource(record)

    def update_call(self, call_sid: str, **fields: str) -> str:
        """Update a live call (``twiml=…``, ``status="completed"``); its new status.

        An ended call answers 21220 (or 20404): raised as ``TwilioApiError`` with that code.
        """
        record = self._call(lambda: self._client.calls(call_sid).update(**fields))
        return str(record.status)

    def create_call(self, **fields: Any) -> CallSnapshot:
        """``calls.create`` (snake_case twilio-python arguments); the new call."""
        record = self._call(lambda: self._client.calls.create(**fields))
        return CallSnapshot.from_resource(record)

    def fetch_call(self, call_sid: str) -> CallSnapshot:
        record = self._call(lambda: self._client.calls(call_sid).fetch())
        return CallSnapshot.from_resource(record)

    def list_calls(self, *, to: str, from_: str, limit: int = 50) -> list[CallSnapshot]:
        """The most recent calls from ``from_`` to ``to`` (newest first)."""
        records = self._call(
            lambda: self._client.calls.list(to=to, from_=from_, limit=limit, page_size=limit)
        )
        return [CallSnapshot.from_resource(r) for r in records]

    def hang_up(self, call_sid: str) -> bool:
        """End a call (``Status=completed``). ``True`` if it was live, ``False`` if Twilio says it
        had already ended (20404, 21220), which counts as success."""
        try:
            self.update_call(call_sid, status="completed")
        except TwilioApiError as exc:
            if exc.code in (20404, 21220) or exc.status == 404:
                return False
            raise
        return True
