"""Twilio's 2010-04-01 REST API as a sans-I/O core: resource shapes, errors, forms, call states.

Everything the Twilio emulator (:mod:`bridge.dev.twilio_emulator`) answers or sends is built here
from plain values. Nothing here opens a socket, reads a clock or draws a random number of its own:
times (aware ``datetime``) and random sources are passed in. References:
docs/twilio-streams.md §8 (REST calls and shapes), §9 (the official OpenAPI spec,
``twilio_api_v2010.json``), §10 (webhooks and status callbacks).

Resources
=========

==========================================  ===============================================
builder                                     spec schema (``components.schemas``)
==========================================  ===============================================
:func:`account_resource` (``AccountInfo``)  ``api.v2010.account``
:func:`call_resource` (``CallInfo``)        ``api.v2010.account.call``
:func:`incoming_phone_number_resource`      ``api.v2010.account.incoming_phone_number``
(``IncomingNumber``)
:func:`list_page`                           ``ListCallResponse``,
                                            ``ListIncomingPhoneNumberResponse``
==========================================  ===============================================

Every property the schema defines is present, ``None`` (JSON ``null``) where Twilio has nothing
and the schema allows it; SID-typed fields are either ``None`` or match their spec pattern (so an
empty string is never used for them); dates are RFC 2822 with ``+0000``
(``Tue, 31 Aug 2010 20:36:28 +0000``); ``uri`` and ``subresource_uris`` are paths relative to
``https://api.twilio.com``, as Twilio returns them. The incoming-number schema has no
``subresource_uris``, so none is sent.

Errors
======

:class:`ApiError` is Twilio's error body ``{"code", "message", "more_info", "status"}``:

=====  ======  ===============================================================================
code   status  when
=====  ======  ===============================================================================
20003  401     bad or missing Basic credentials ("Authenticate") — byte-matched to live
               fixtures by a public Twilio-compatible project
20004  405     method not allowed on a resource
20404  404     unknown resource ("The requested resource /2010-04-01/… was not found")
21201  400     create call without ``To`` ("No 'To' number is specified")
21205  400     create call without ``Url``/``Twiml``/``ApplicationSid`` ("Url parameter is
               required.")
21213  400     create call without ``From`` (message **UNCERTAIN**; Twilio checks To, then Url,
               then From)
21210  400     ``From`` is neither a number of the account nor a verified caller ID
21211  400     ``To`` is not a valid phone number, SIP address or client
21220  400     update of a call that is not queued, ringing or in progress ("Call is not
               in-progress. Cannot redirect.")
32018  400     ``Twiml`` longer than 4000 characters
20001  400     any other invalid parameter (enum values, PageSize, …) — code **UNCERTAIN**
=====  ======  ===============================================================================

Call status
===========

:class:`CallStatus` and :func:`next_status` make the lifecycle explicit::

    queued ──► ringing ──► in-progress ──► completed
      │           │
      ├───────────┴──► busy | no-answer | failed | canceled
      └──► busy | failed | canceled

Inbound calls start in ``ringing``. The final states accept nothing; a forbidden transition is a
bug in the caller (:class:`~bridge.errors.InvalidState`).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import enum
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, TypedDict
from urllib.parse import parse_qsl, quote, urlencode

from bridge.errors import InvalidState
from bridge.protocols.twilio_ids import E164, SID
from twiml.announcement import MAX_TWIML_CHARS

__all__ = [
    "API_VERSION",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_TWIML_CHARS",
    "AccountInfo",
    "AccountResource",
    "ApiError",
    "CallEvent",
    "CallInfo",
    "CallResource",
    "CallRequest",
    "CallStatus",
    "CallUpdate",
    "Direction",
    "ErrorBody",
    "Form",
    "IncomingNumber",
    "IncomingNumberResource",
    "UpdateAction",
    "account_resource",
    "account_uri",
    "authenticate",
    "basic_auth_header",
    "call_not_in_progress",
    "call_resource",
    "call_uri",
    "callback_status",
    "calls_uri",
    "format_number",
    "incoming_phone_number_resource",
    "invalid_caller_id",
    "invalid_parameter",
    "invalid_to",
    "is_e164",
    "is_sid",
    "list_page",
    "make_sid",
    "method_not_allowed",
    "missing_from",
    "missing_to",
    "missing_url",
    "next_status",
    "not_found",
    "number_uri",
    "numbers_uri",
    "parse_basic_auth",
    "parse_call_create",
    "parse_call_update",
    "parse_method",
    "parse_paging",
    "rfc2822",
    "twiml_too_long",
    "update_action",
    "update_number",
]

API_VERSION: Final = "2010-04-01"
API_ROOT: Final = "/" + API_VERSION
ERRORS_URL: Final = "https://www.twilio.com/docs/errors/"
# MAX_TWIML_CHARS (Twilio's 4000, from twiml.announcement) limits ``Twiml`` on create (and, per
# the spec's wording, update). Twilio accepts exactly that many characters, so the emulator
# refuses only longer documents, while the bridge's builder stays strictly below it.
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
MAX_FORM_FIELDS: Final = 1000
HTTP_METHODS: Final = frozenset({"GET", "POST"})


# --- small values ---------------------------------------------------------------------------------


def is_e164(value: str) -> bool:
    """``+`` and 7–15 digits, the first not 0 (Twilio's phone-number format)."""
    return E164.fullmatch(value) is not None


def is_sid(value: str, prefix: str) -> bool:
    """``prefix`` + 32 hex digits (the spec's ``^XX[0-9a-fA-F]{32}$``)."""
    return value.startswith(prefix) and SID.fullmatch(value) is not None


def make_sid(prefix: str, rng: random.Random) -> str:
    """A SID drawn from ``rng`` (lower-case hex, like Twilio's)."""
    if len(prefix) != 2 or not prefix.isupper():
        raise ValueError(f"a SID prefix is two capital letters, not {prefix!r}")
    return f"{prefix}{rng.getrandbits(128):032x}"


def rfc2822(moment: datetime) -> str:
    """``Tue, 31 Aug 2010 20:36:28 +0000``: Twilio's date format (always UTC, ``+0000``)."""
    if moment.tzinfo is None:
        raise ValueError("rfc2822() needs an aware datetime")
    return email.utils.format_datetime(moment.astimezone(UTC).replace(microsecond=0))


def format_number(number: str) -> str:
    """Twilio's ``*_formatted``: ``(415) 867-5309`` for NANP numbers, else the number as is."""
    if re.fullmatch(r"\+1[2-9][0-9]{9}", number):
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def parse_method(value: str | None, default: str = "POST") -> str | None:
    """``GET``/``POST`` (any case) upper-cased; ``default`` when absent; ``None`` if invalid."""
    if value is None or value == "":
        return default
    upper = value.upper()
    return upper if upper in HTTP_METHODS else None


# --- URIs -----------------------------------------------------------------------------------------


def account_uri(account_sid: str) -> str:
    return f"{API_ROOT}/Accounts/{account_sid}.json"


def calls_uri(account_sid: str) -> str:
    return f"{API_ROOT}/Accounts/{account_sid}/Calls.json"


def call_uri(account_sid: str, call_sid: str) -> str:
    return f"{API_ROOT}/Accounts/{account_sid}/Calls/{call_sid}.json"


def numbers_uri(account_sid: str) -> str:
    return f"{API_ROOT}/Accounts/{account_sid}/IncomingPhoneNumbers.json"


def number_uri(account_sid: str, number_sid: str) -> str:
    return f"{API_ROOT}/Accounts/{account_sid}/IncomingPhoneNumbers/{number_sid}.json"


# --- forms and credentials ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Form:
    """A form-encoded body or query string, repeated keys kept (``StatusCallbackEvent``)."""

    pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, data: bytes | str) -> Form:
        """Parse ``application/x-www-form-urlencoded`` (UTF-8; at most 1000 fields).

        Raises ``ValueError`` for more fields than that.
        """
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        return cls(tuple(pairs))

    @classmethod
    def of(cls, items: Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]) -> Form:
        """From a mapping (a sequence value becomes repeated keys) or from pairs."""
        if isinstance(items, Mapping):
            pairs: list[tuple[str, str]] = []
            for key, value in items.items():
                if isinstance(value, str):
                    pairs.append((key, value))
                else:
                    pairs.extend((key, v) for v in value)
            return cls(tuple(pairs))
        return cls(tuple(items))

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.pairs)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``."""
        for key, value in self.pairs:
            if key == name:
                return value
        return default

    def getall(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]

    def names(self) -> list[str]:
        return list(dict.fromkeys(key for key, _ in self.pairs))

    def to_dict(self) -> dict[str, str | list[str]]:
        """Each name once: its value, or the list of its values when repeated."""
        out: dict[str, str | list[str]] = {}
        for key in self.names():
            values = self.getall(key)
            out[key] = values[0] if len(values) == 1 else values
        return out

    def encode(self) -> str:
        return urlencode(self.pairs)


def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic base64(user:password)`` → ``(user, password)``; ``None`` if absent
    or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


# --- errors ---------------------------------------------------------------------------------------


class ErrorBody(TypedDict):
    code: int
    message: str
    more_info: str
    status: int


@dataclass(frozen=True, slots=True)
class ApiError:
    """A Twilio REST error: HTTP ``status`` and Twilio's error ``code``."""

    status: int
    code: int
    message: str

    @property
    def more_info(self) -> str:
        return f"{ERRORS_URL}{self.code}"

    def body(self) -> ErrorBody:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": self.more_info,
            "status": self.status,
        }


def authenticate() -> ApiError:
    return ApiError(401, 20003, "Authenticate")


def not_found(path: str) -> ApiError:
    return ApiError(404, 20404, f"The requested resource {path} was not found")


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, 20004, f"Method {method} not allowed")


def missing_to() -> ApiError:
    return ApiError(400, 21201, "No 'To' number is specified")


def missing_url() -> ApiError:
    return ApiError(400, 21205, "Url parameter is required.")


def missing_from() -> ApiError:
    return ApiError(400, 21213, "No 'From' number is specified")


def invalid_to(to: str) -> ApiError:
    return ApiError(400, 21211, f"The phone number you are attempting to call, {to}, is not valid.")


def invalid_caller_id(from_: str) -> ApiError:
    return ApiError(
        400,
        21210,
        f"The source phone number provided, {from_}, is not yet verified for your account. "
        "You may only make calls from phone numbers that you've verified or purchased from "
        "Twilio.",
    )


def call_not_in_progress() -> ApiError:
    return ApiError(400, 21220, "Call is not in-progress. Cannot redirect.")


def twiml_too_long() -> ApiError:
    return ApiError(
        400, 32018, f"Twiml size exceeded maximum allowed value of {MAX_TWIML_CHARS} characters"
    )


def invalid_parameter(name: str, value: str, expected: str = "") -> ApiError:
    detail = f" ({expected})" if expected else ""
    return ApiError(400, 20001, f"Invalid parameter {name}: {value!r}{detail}")


def parse_paging(query: Form) -> tuple[int, int] | ApiError:
    """``(Page, PageSize)`` from a list query: page ≥ 0, 1 ≤ size ≤ 1000 (default 50)."""
    values: dict[str, int] = {}
    for name, default, low, high in (
        ("Page", 0, 0, 10**9),
        ("PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
    ):
        raw = query.get(name)
        if raw is None or raw == "":
            values[name] = default
            continue
        try:
            number = int(raw)
        except ValueError:
            return invalid_parameter(name, raw, "an integer")
        if not low <= number <= high:
            return invalid_parameter(name, raw, f"between {low} and {high}")
        values[name] = number
    return values["Page"], values["PageSize"]


# --- call status ----------------------------------------------------------------------------------


class CallStatus(enum.StrEnum):
    """The spec's ``call_enum_status``."""

    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def is_live(self) -> bool:
        """Queued, ringing or in progress: REST updates are accepted."""
        return self not in _FINAL


_FINAL: Final = frozenset(
    {
        CallStatus.COMPLETED,
        CallStatus.BUSY,
        CallStatus.FAILED,
        CallStatus.NO_ANSWER,
        CallStatus.CANCELED,
    }
)

_TRANSITIONS: Final[Mapping[CallStatus, frozenset[CallStatus]]] = {
    CallStatus.QUEUED: frozenset(
        {CallStatus.RINGING, CallStatus.BUSY, CallStatus.FAILED, CallStatus.CANCELED}
    ),
    CallStatus.RINGING: frozenset(
        {
            CallStatus.IN_PROGRESS,
            CallStatus.BUSY,
            CallStatus.NO_ANSWER,
            CallStatus.FAILED,
            CallStatus.CANCELED,
        }
    ),
    CallStatus.IN_PROGRESS: frozenset({CallStatus.COMPLETED}),
}


def next_status(current: CallStatus, new: CallStatus) -> CallStatus:
    """``new`` if the lifecycle allows ``current → new``; else :class:`InvalidState`."""
    if new not in _TRANSITIONS.get(current, frozenset()):
        raise InvalidState(f"call status cannot go from {current} to {new}")
    return new


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND_API = "outbound-api"
    OUTBOUND_DIAL = "outbound-dial"


class CallEvent(enum.StrEnum):
    """The spec's ``call_enum_event``: what ``StatusCallbackEvent`` may ask for."""

    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    COMPLETED = "completed"


def callback_status(event: CallEvent, status: CallStatus) -> str:
    """``CallStatus`` in a status callback: ``initiated``/``ringing``/``in-progress``, or the final
    status (``completed``, ``busy``, ``no-answer``, ``failed``, ``canceled``) on ``completed``."""
    if event is CallEvent.INITIATED:
        return "initiated"
    if event is CallEvent.RINGING:
        return "ringing"
    if event is CallEvent.ANSWERED:
        return CallStatus.IN_PROGRESS.value
    return status.value


# --- account --------------------------------------------------------------------------------------


class AccountResource(TypedDict):
    auth_token: str | None
    date_created: str | None
    date_updated: str | None
    friendly_name: str | None
    owner_account_sid: str | None
    sid: str | None
    status: str
    subresource_uris: dict[str, str] | None
    type: str
    uri: str | None


_ACCOUNT_SUBRESOURCES: Final = (
    ("available_phone_numbers", "AvailablePhoneNumbers"),
    ("calls", "Calls"),
    ("conferences", "Conferences"),
    ("incoming_phone_numbers", "IncomingPhoneNumbers"),
    ("notifications", "Notifications"),
    ("outgoing_caller_ids", "OutgoingCallerIds"),
    ("recordings", "Recordings"),
    ("transcriptions", "Transcriptions"),
    ("addresses", "Addresses"),
    ("signing_keys", "SigningKeys"),
    ("connect_apps", "ConnectApps"),
    ("sip", "SIP"),
    ("authorized_connect_apps", "AuthorizedConnectApps"),
    ("usage", "Usage"),
    ("keys", "Keys"),
    ("applications", "Applications"),
    ("short_codes", "SMS/ShortCodes"),
    ("queues", "Queues"),
    ("messages", "Messages"),
    ("balance", "Balance"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountInfo:
    sid: str
    auth_token: str
    friendly_name: str
    date_created: datetime
    date_updated: datetime
    status: str = "active"
    type: str = "Full"


def account_resource(account: AccountInfo) -> AccountResource:
    base = f"{API_ROOT}/Accounts/{account.sid}"
    return {
        "auth_token": account.auth_token,
        "date_created": rfc2822(account.date_created),
        "date_updated": rfc2822(account.date_updated),
        "friendly_name": account.friendly_name,
        "owner_account_sid": account.sid,
        "sid": account.sid,
        "status": account.status,
        "subresource_uris": {name: f"{base}/{path}.json" for name, path in _ACCOUNT_SUBRESOURCES},
        "type": account.type,
        "uri": account_uri(account.sid),
    }


# --- call -----------------------------------------------------------------------------------------

CallResource = TypedDict(
    "CallResource",
    {
        "sid": str | None,
        "date_created": str | None,
        "date_updated": str | None,
        "parent_call_sid": str | None,
        "account_sid": str | None,
        "to": str | None,
        "to_formatted": str | None,
        "from": str | None,
        "from_formatted": str | None,
        "phone_number_sid": str | None,
        "status": str,
        "start_time": str | None,
        "end_time": str | None,
        "duration": str | None,
        "price": str | None,
        "price_unit": str | None,
        "direction": str | None,
        "answered_by": str | None,
        "api_version": str | None,
        "forwarded_from": str | None,
        "group_sid": str | None,
        "caller_name": str | None,
        "queue_time": str | None,
        "trunk_sid": str | None,
        "uri": str | None,
        "subresource_uris": dict[str, str] | None,
    },
)

_CALL_SUBRESOURCES: Final = (
    ("events", "Events"),
    ("notifications", "Notifications"),
    ("payments", "Payments"),
    ("recordings", "Recordings"),
    ("siprec", "Siprec"),
    ("streams", "Streams"),
    ("transcriptions", "Transcriptions"),
    ("user_defined_message_subscriptions", "UserDefinedMessageSubscriptions"),
    ("user_defined_messages", "UserDefinedMessages"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallInfo:
    """The facts behind a Call resource. Change it only through :meth:`moved_to`/``replace``."""

    sid: str
    account_sid: str
    to: str
    from_: str
    direction: Direction
    status: CallStatus
    date_created: datetime
    date_updated: datetime
    start_time: datetime | None = None
    """When dialing began (outbound) or the call arrived (inbound)."""
    answered_at: datetime | None = None
    """When the call was answered; ``duration`` counts from here (not in the resource)."""
    end_time: datetime | None = None
    """Set only for ``completed`` calls ("empty if the call did not complete successfully")."""
    answered_by: str | None = None
    phone_number_sid: str | None = None
    parent_call_sid: str | None = None
    forwarded_from: str | None = None
    caller_name: str | None = None

    @property
    def duration(self) -> int | None:
        """Whole seconds from answer to hang-up; ``None`` unless ``completed``."""
        if self.status is not CallStatus.COMPLETED or self.end_time is None:
            return None
        if self.answered_at is None:
            return 0
        return max(0, int((self.end_time - self.answered_at).total_seconds()))

    def moved_to(self, status: CallStatus, now: datetime) -> CallInfo:
        """This call in ``status`` (checked by :func:`next_status`), times stamped at ``now``."""
        new = next_status(self.status, status)
        changes: dict[str, Any] = {"status": new, "date_updated": now}
        if new is CallStatus.RINGING and self.start_time is None:
            changes["start_time"] = now
        if new is CallStatus.IN_PROGRESS:
            changes["answered_at"] = now
            if self.start_time is None:
                changes["start_time"] = now
        if new is CallStatus.COMPLETED:
            changes["end_time"] = now
        return replace(self, **changes)


def call_resource(call: CallInfo) -> CallResource:
    base = f"{API_ROOT}/Accounts/{call.account_sid}/Calls/{call.sid}"
    duration = call.duration
    return {
        "sid": call.sid,
        "date_created": rfc2822(call.date_created),
        "date_updated": rfc2822(call.date_updated),
        "parent_call_sid": call.parent_call_sid,
        "account_sid": call.account_sid,
        "to": call.to,
        "to_formatted": format_number(call.to),
        "from": call.from_,
        "from_formatted": format_number(call.from_),
        "phone_number_sid": call.phone_number_sid,
        "status": call.status.value,
        "start_time": rfc2822(call.start_time) if call.start_time else None,
        "end_time": rfc2822(call.end_time) if call.end_time else None,
        "duration": None if duration is None else str(duration),
        "price": None,
        "price_unit": "USD",
        "direction": call.direction.value,
        "answered_by": call.answered_by,
        "api_version": API_VERSION,
        "forwarded_from": call.forwarded_from,
        "group_sid": None,
        "caller_name": call.caller_name,
        "queue_time": "0",
        "trunk_sid": None,
        "uri": call_uri(call.account_sid, call.sid),
        "subresource_uris": {name: f"{base}/{path}.json" for name, path in _CALL_SUBRESOURCES},
    }


# --- incoming phone number ------------------------------------------------------------------------


class IncomingNumberResource(TypedDict):
    account_sid: str | None
    address_sid: str | None
    address_requirements: str
    api_version: str | None
    beta: bool | None
    capabilities: dict[str, bool] | None
    date_created: str | None
    date_updated: str | None
    friendly_name: str | None
    identity_sid: str | None
    phone_number: str | None
    origin: str | None
    sid: str | None
    sms_application_sid: str | None
    sms_fallback_method: str | None
    sms_fallback_url: str | None
    sms_method: str | None
    sms_url: str | None
    status_callback: str | None
    status_callback_method: str | None
    trunk_sid: str | None
    uri: str | None
    voice_receive_mode: str
    voice_application_sid: str | None
    voice_caller_id_lookup: bool | None
    voice_fallback_method: str | None
    voice_fallback_url: str | None
    voice_method: str | None
    voice_url: str | None
    emergency_status: str
    emergency_address_sid: str | None
    emergency_address_status: str
    bundle_sid: str | None
    status: str | None
    type: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingNumber:
    """The facts behind an IncomingPhoneNumber resource (unset URLs are ``None``)."""

    sid: str
    account_sid: str
    phone_number: str
    friendly_name: str
    date_created: datetime
    date_updated: datetime
    voice_url: str | None = None
    voice_method: str = "POST"
    voice_fallback_url: str | None = None
    voice_fallback_method: str = "POST"
    voice_caller_id_lookup: bool = False
    voice_application_sid: str | None = None
    voice_receive_mode: str = "voice"
    status_callback: str | None = None
    status_callback_method: str = "POST"
    sms_url: str | None = None
    sms_method: str = "POST"
    sms_fallback_url: str | None = None
    sms_fallback_method: str = "POST"
    sms_application_sid: str | None = None
    trunk_sid: str | None = None
    capabilities: Mapping[str, bool] = field(
        default_factory=lambda: {"voice": True, "sms": True, "mms": True, "fax": False}
    )


def incoming_phone_number_resource(number: IncomingNumber) -> IncomingNumberResource:
    return {
        "account_sid": number.account_sid,
        "address_sid": None,
        "address_requirements": "none",
        "api_version": API_VERSION,
        "beta": False,
        "capabilities": dict(number.capabilities),
        "date_created": rfc2822(number.date_created),
        "date_updated": rfc2822(number.date_updated),
        "friendly_name": number.friendly_name,
        "identity_sid": None,
        "phone_number": number.phone_number,
        "origin": "twilio",
        "sid": number.sid,
        "sms_application_sid": number.sms_application_sid,
        "sms_fallback_method": number.sms_fallback_method,
        "sms_fallback_url": number.sms_fallback_url,
        "sms_method": number.sms_method,
        "sms_url": number.sms_url,
        "status_callback": number.status_callback,
        "status_callback_method": number.status_callback_method,
        "trunk_sid": number.trunk_sid,
        "uri": number_uri(number.account_sid, number.sid),
        "voice_receive_mode": number.voice_receive_mode,
        "voice_application_sid": number.voice_application_sid,
        "voice_caller_id_lookup": number.voice_caller_id_lookup,
        "voice_fallback_method": number.voice_fallback_method,
        "voice_fallback_url": number.voice_fallback_url,
        "voice_method": number.voice_method,
        "voice_url": number.voice_url,
        "emergency_status": "Inactive",
        "emergency_address_sid": None,
        "emergency_address_status": "unregistered",
        "bundle_sid": None,
        "status": "in-use",
        "type": "local",
    }


# Form name → (field, kind) for IncomingPhoneNumber updates ("change only what is sent");
# :func:`update_number` ignores any other field.
_NUMBER_FIELDS: Final[Mapping[str, tuple[str, str]]] = {
    "FriendlyName": ("friendly_name", "text"),
    "VoiceUrl": ("voice_url", "url"),
    "VoiceMethod": ("voice_method", "method"),
    "VoiceFallbackUrl": ("voice_fallback_url", "url"),
    "VoiceFallbackMethod": ("voice_fallback_method", "method"),
    "VoiceCallerIdLookup": ("voice_caller_id_lookup", "bool"),
    "VoiceApplicationSid": ("voice_application_sid", "sid:AP"),
    "VoiceReceiveMode": ("voice_receive_mode", "mode"),
    "StatusCallback": ("status_callback", "url"),
    "StatusCallbackMethod": ("status_callback_method", "method"),
    "SmsUrl": ("sms_url", "url"),
    "SmsMethod": ("sms_method", "method"),
    "SmsFallbackUrl": ("sms_fallback_url", "url"),
    "SmsFallbackMethod": ("sms_fallback_method", "method"),
    "SmsApplicationSid": ("sms_application_sid", "sid:AP"),
    "TrunkSid": ("trunk_sid", "sid:TK"),
}


def _is_url(value: str) -> bool:
    return re.fullmatch(r"https?://[^\s/?#]+[^\s]*", value) is not None


def update_number(number: IncomingNumber, form: Form, now: datetime) -> IncomingNumber | ApiError:
    """``number`` with the sent fields changed (empty URL/SID values clear them)."""
    changes: dict[str, Any] = {}
    for name, (attr, kind) in _NUMBER_FIELDS.items():
        raw = form.get(name)
        if raw is None:
            continue
        value: Any = raw
        if kind == "url":
            if raw and not _is_url(raw):
                return invalid_parameter(name, raw, "an absolute http(s) URL")
            value = raw or None
        elif kind == "method":
            value = parse_method(raw)
            if value is None:
                return invalid_parameter(name, raw, "GET or POST")
        elif kind == "bool":
            if raw.lower() not in ("true", "false"):
                return invalid_parameter(name, raw, "true or false")
            value = raw.lower() == "true"
        elif kind == "mode":
            if raw not in ("voice", "fax"):
                return invalid_parameter(name, raw, "voice or fax")
        elif kind.startswith("sid:"):
            if raw and not is_sid(raw, kind[4:]):
                return invalid_parameter(name, raw, f"a {kind[4:]} SID")
            value = raw or None
        changes[attr] = value
    if not changes:
        return number
    return replace(number, date_updated=now, **changes)


# --- list pages -----------------------------------------------------------------------------------


def list_page(
    key: str,
    records: Sequence[Mapping[str, Any]],
    *,
    path: str,
    filters: Sequence[tuple[str, str]],
    page: int,
    page_size: int,
) -> dict[str, Any]:
    """One page of ``records`` (all matches, already filtered and ordered) under ``key``.

    ``uri``/``first_page_uri``/``next_page_uri``/``previous_page_uri`` repeat the filters, then
    ``PageSize`` and ``Page`` (and ``PageToken``, as Twilio's do; the emulator pages by ``Page``).
    """

    def uri(number: int, token: str | None = None) -> str:
        params = [*filters, ("PageSize", str(page_size)), ("Page", str(number))]
        if token is not None:
            params.append(("PageToken", token))
        return f"{path}?{urlencode(params, quote_via=quote)}"

    start = page * page_size
    items = list(records[start : start + page_size])
    more = start + page_size < len(records)
    next_uri = uri(page + 1, f"PA{items[-1].get('sid', '')}") if more and items else None
    previous = None
    if page > 0:
        previous = uri(page - 1, f"PB{items[0].get('sid', '')}" if items else None)
    return {
        key: items,
        "end": start + len(items) - 1 if items else start,
        "first_page_uri": uri(0),
        "next_page_uri": next_uri,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": previous,
        "start": start,
        "uri": uri(page),
    }


# --- call requests --------------------------------------------------------------------------------

MACHINE_DETECTION: Final = frozenset({"Enable", "DetectMessageEnd"})
DEFAULT_TIMEOUT: Final = 60
MAX_TIMEOUT: Final = 600
DEFAULT_TIME_LIMIT: Final = 4 * 60 * 60


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequest:
    """A valid ``POST …/Calls.json``."""

    to: str
    from_: str
    url: str | None
    method: str
    twiml: str | None
    """``None`` when ``Url`` is given (Twilio ignores ``Twiml`` then)."""
    fallback_url: str | None
    fallback_method: str
    status_callback: str | None
    status_callback_method: str
    status_callback_events: frozenset[CallEvent]
    timeout: int
    time_limit: int
    machine_detection: str | None


def _url_param(form: Form, name: str) -> str | None | ApiError:
    raw = form.get(name)
    if raw is None or raw == "":
        return None
    if not _is_url(raw):
        if name == "Url":
            return ApiError(400, 21205, f"Url is not a valid URL: {raw}")
        return invalid_parameter(name, raw, "an absolute http(s) URL")
    return raw


def _method_param(form: Form, name: str) -> str | ApiError:
    raw = form.get(name)
    method = parse_method(raw)
    if method is None:
        return invalid_parameter(name, raw or "", "GET or POST")
    return method


def _int_param(form: Form, name: str, default: int, low: int) -> int | ApiError:
    raw = form.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        return invalid_parameter(name, raw, "an integer")
    if value < low:
        return invalid_parameter(name, raw, f"at least {low}")
    return value


def _callback_events(form: Form) -> frozenset[CallEvent] | ApiError:
    events: set[CallEvent] = set()
    for raw in form.getall("StatusCallbackEvent"):
        # Some clients send one space-separated value ("initiated ringing"); accept both.
        for item in raw.split():
            try:
                events.add(CallEvent(item))
            except ValueError:
                return invalid_parameter(
                    "StatusCallbackEvent", item, "initiated, ringing, answered or completed"
                )
    return frozenset(events) or frozenset({CallEvent.COMPLETED})


def _is_endpoint(to: str) -> bool:
    return is_e164(to) or to.startswith(("sip:", "client:"))


def parse_call_create(form: Form, caller_ids: Iterable[str] | None) -> CallRequest | ApiError:
    """Validate a create-call form in Twilio's order: ``To``, then ``Url``/``Twiml``, then
    ``From`` (docs/twilio-streams.md §8). ``caller_ids``: numbers ``From`` may use (``None``:
    any)."""
    to = form.get("To") or ""
    if not to:
        return missing_to()
    url = _url_param(form, "Url")
    if isinstance(url, ApiError):
        return url
    twiml = form.get("Twiml") or None
    if url is None and twiml is None:
        if form.get("ApplicationSid"):
            return ApiError(400, 21218, "Invalid ApplicationSid")
        return missing_url()
    from_ = form.get("From") or ""
    if not from_:
        return missing_from()
    if not _is_endpoint(to):
        return invalid_to(to)
    if caller_ids is not None and from_ not in set(caller_ids) and not from_.startswith("client:"):
        return invalid_caller_id(from_)
    if url is None and twiml is not None and len(twiml) > MAX_TWIML_CHARS:
        return twiml_too_long()
    methods: dict[str, str] = {}
    for name in ("Method", "FallbackMethod", "StatusCallbackMethod"):
        method = _method_param(form, name)
        if isinstance(method, ApiError):
            return method
        methods[name] = method
    urls: dict[str, str | None] = {}
    for name in ("FallbackUrl", "StatusCallback"):
        value = _url_param(form, name)
        if isinstance(value, ApiError):
            return value
        urls[name] = value
    events = _callback_events(form)
    if isinstance(events, ApiError):
        return events
    timeout = _int_param(form, "Timeout", DEFAULT_TIMEOUT, 1)
    if isinstance(timeout, ApiError):
        return timeout
    time_limit = _int_param(form, "TimeLimit", DEFAULT_TIME_LIMIT, 1)
    if isinstance(time_limit, ApiError):
        return time_limit
    amd = form.get("MachineDetection") or None
    if amd is not None and amd not in MACHINE_DETECTION:
        return invalid_parameter("MachineDetection", amd, "Enable or DetectMessageEnd")
    return CallRequest(
        to=to,
        from_=from_,
        url=url,
        method=methods["Method"],
        twiml=None if url is not None else twiml,
        fallback_url=urls["FallbackUrl"],
        fallback_method=methods["FallbackMethod"],
        status_callback=urls["StatusCallback"],
        status_callback_method=methods["StatusCallbackMethod"],
        status_callback_events=events,
        timeout=min(timeout, MAX_TIMEOUT),
        time_limit=time_limit,
        machine_detection=amd,
    )


class UpdateAction(enum.StrEnum):
    """What a valid update does to a live call (:func:`update_action`)."""

    NONE = "none"
    """Nothing to the call itself (``Status=canceled`` on an answered call; callback changes)."""
    CANCEL = "cancel"
    """Hang up a queued or ringing call: it ends ``canceled``."""
    HANG_UP = "hang-up"
    """Hang up an answered call: it ends ``completed``."""
    REDIRECT = "redirect"
    """Run new TwiML (``Twiml`` or ``Url``): now if answered, else once answered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallUpdate:
    """A valid ``POST …/Calls/{Sid}.json``; ``None`` means "not sent"."""

    status: CallStatus | None = None
    url: str | None = None
    method: str = "POST"
    twiml: str | None = None
    fallback_url: str | None = None
    fallback_method: str | None = None
    status_callback: str | None = None
    status_callback_method: str | None = None
    time_limit: int | None = None

    @property
    def redirects(self) -> bool:
        return self.url is not None or self.twiml is not None


def parse_call_update(current: CallStatus, form: Form) -> CallUpdate | ApiError:
    """Validate an update; an ended call gets 21220 whatever was sent."""
    if current.is_final:
        return call_not_in_progress()
    status: CallStatus | None = None
    raw_status = form.get("Status")
    if raw_status:
        if raw_status not in (CallStatus.COMPLETED, CallStatus.CANCELED):
            return invalid_parameter("Status", raw_status, "completed or canceled")
        status = CallStatus(raw_status)
    url = _url_param(form, "Url")
    if isinstance(url, ApiError):
        return url
    twiml = form.get("Twiml") or None
    if url is None and twiml is not None and len(twiml) > MAX_TWIML_CHARS:
        return twiml_too_long()
    method = _method_param(form, "Method")
    if isinstance(method, ApiError):
        return method
    optional_methods: dict[str, str | None] = {}
    for name in ("FallbackMethod", "StatusCallbackMethod"):
        if form.get(name):
            value = _method_param(form, name)
            if isinstance(value, ApiError):
                return value
            optional_methods[name] = value
        else:
            optional_methods[name] = None
    urls: dict[str, str | None] = {}
    for name in ("FallbackUrl", "StatusCallback"):
        found = _url_param(form, name)
        if isinstance(found, ApiError):
            return found
        urls[name] = found
    time_limit: int | None = None
    if form.get("TimeLimit"):
        limit = _int_param(form, "TimeLimit", DEFAULT_TIME_LIMIT, 1)
        if isinstance(limit, ApiError):
            return limit
        time_limit = limit
    return CallUpdate(
        status=status,
        url=url,
        method=method,
        twiml=None if url is not None else twiml,
        fallback_url=urls["FallbackUrl"],
        fallback_method=optional_methods["FallbackMethod"],
        status_callback=urls["StatusCallback"],
        status_callback_method=optional_methods["StatusCallbackMethod"],
        time_limit=time_limit,
    )


def update_action(current: CallStatus, update: CallUpdate) -> UpdateAction:
    """``completed`` hangs up any live call; ``canceled`` only a queued or ringing one ("it will
    not affect calls already in progress"); new TwiML/URL redirects."""
    unanswered = current in (CallStatus.QUEUED, CallStatus.RINGING)
    if update.status is CallStatus.COMPLETED:
        return UpdateAction.CANCEL if unanswered else UpdateAction.HANG_UP
    if update.status is CallStatus.CANCELED and unanswered:
        return UpdateAction.CANCEL
    if update.redirects and current.is_live:
        return UpdateAction.REDIRECT
    return UpdateAction.NONE
