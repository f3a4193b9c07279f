"""Twilio's identifiers and phone numbers: the one place their formats are written.

SIDs are two capital letters naming the resource and 32 hex digits
(https://www.twilio.com/docs/glossary/what-is-a-sid); phone numbers are E.164: ``+``, then up to
15 digits, the first not 0. Twilio itself needs 7 or more for a full number.

Standard library only: ``bridge.settings`` validates its fields with these, and every command
imports the settings.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ACCOUNT_SID",
    "API_KEY_SID",
    "CALL_SID",
    "E164",
    "E164_NUMBER",
    "E164_PREFIX",
    "SID",
]

_HEX32: Final = "[0-9a-fA-F]{32}"

SID: Final = re.compile(rf"^[A-Z]{{2}}{_HEX32}$")
"""Any SID: two capital letters (the resource) and 32 hex digits."""
ACCOUNT_SID: Final = re.compile(rf"^AC{_HEX32}$")
"""An Account SID (``TWILIO_ACCOUNT_SID``)."""
API_KEY_SID: Final = re.compile(rf"^SK{_HEX32}$")
"""An API key's SID (``TWILIO_API_KEY``; https://www.twilio.com/docs/iam/api-keys)."""
CALL_SID: Final = re.compile(rf"^CA{_HEX32}$")
"""A call's SID (``CallSid`` of webhooks and status callbacks)."""

E164_NUMBER: Final = r"\+[1-9][0-9]{6,14}"
"""An E.164 number as a regular expression, unanchored: to build patterns that include one."""
E164: Final = re.compile(rf"^{E164_NUMBER}$")
"""A whole E.164 phone number such as ``+966501234567``."""
E164_PREFIX: Final = re.compile(r"^\+[1-9][0-9]{0,14}$")
"""The start of E.164 numbers, as ``BRIDGE_ALLOWED_PREFIXES`` lists them (``+966``, ``+9715``)."""
