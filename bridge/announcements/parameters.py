"""An announcement as ``<Stream>`` ``<Parameter>``s, so any replica can serve its stream.

Sans-I/O. Nothing about an announcement lives only in the memory of the process that placed
it: the whole request travels in the inline TwiML, within Twilio's limits (a ``<Parameter>``'s
name plus value under 500 characters, the ``Twiml`` under 4000), and a ``v2`` stream token MACs
every other parameter, so the text, voice and options cannot be altered or replayed.

Names: ``kind=announcement``, ``id``, ``to``, ``speaker``, ``dialect``, ``language``, ``repeat``,
``confirm`` (the digit; absent when not asked), ``again`` (the repeat digit), ``amd``
(``0``/``1``), and the text in pieces ``text.0``, ``text.1``, …; plus ``token``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bridge.announcements.options import MAX_REPEAT
from bridge.announcements.spec import AnnouncementSpec
from bridge.errors import SignatureError
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS
from bridge.protocols.twilio_stream_server import is_dtmf_key
from bridge.voice import Voice
from twiml.stream import MAX_PARAMETER_CHARS

__all__ = [
    "KIND",
    "MAX_PARAMETER_CHARS",
    "StreamAnnouncement",
    "decode",
    "encode",
    "has_announcement_token",
    "sign",
    "verify",
]

KIND: Final = "announcement"
_TEXT: Final = "text."
_VERSION: Final = "v2"
_TOKEN: Final = re.compile(r"v2\.([0-9]{1,12})\.([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{43})")
"""Exactly the form :func:`sign` makes: no re-encoding (leading zeros, other digits) can turn
one token into a "new" one that single-use checks would not recognise."""


def _utf16_len(text: str) -> int:
    """Characters as Twilio (Java) probably counts them: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def _pieces(text: str, name_chars: int) -> list[str]:
    budget = MAX_PARAMETER_CHARS - 1 - name_chars
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for ch in text:
        width = 2 if ord(ch) > 0xFFFF else 1
        if size + width > budget:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += width
    if current:
        pieces.append("".join(current))
    return pieces


def encode(announcement_id: str, spec: AnnouncementSpec) -> dict[str, str]:
    """Every parameter but ``token`` (see :func:`sign`)."""
    options = spec.options
    voice = options.voice
    params = {
        "kind": KIND,
        "id": announcement_id,
        "to": spec.to,
        "speaker": voice.speaker,
        "dialect": voice.dialect,
        "language": voice.language,
        "repeat": str(options.repeat),
        "again": options.repeat_digit,
        "amd": "1" if options.machine_detection else "0",
    }
    if options.confirm_digit:  # no empty values: Twilio may drop them, and the MAC covers all
        params["confirm"] = options.confirm_digit
    for index, piece in enumerate(_pieces(spec.text, len(_TEXT) + 2)):
        params[f"{_TEXT}{index}"] = piece
    for name, value in params.items():
        assert _utf16_len(name) + _utf16_len(value) < MAX_PARAMETER_CHARS, name
    return params


@dataclass(frozen=True, slots=True)
class StreamAnnouncement:
    """What the bridge needs from a stream's parameters to play an announcement."""

    id: str
    to: str
    text: str
    voice: Voice
    repeat: int
    confirm_digit: str | None
    repeat_digit: str
    machine_detection: bool


def _canonical(params: Mapping[str, str]) -> bytes:
    items = sorted((k, v) for k, v in params.items() if k != "token")
    return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()


def _mac(key: bytes, expiry: int, nonce: str, params: Mapping[str, str]) -> str:
    message = f"{_VERSION}|{expiry}|{nonce}|".encode() + _canonical(params)
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def has_announcement_token(params: Mapping[str, str]) -> bool:
    """Whether a stream's parameters carry a ``v2`` token (an announcement's, to be verified)."""
    token = params.get("token")
    return token is not None and token.startswith(f"{_VERSION}.")


def sign(key: bytes, params: Mapping[str, str], *, now: float, ttl: float) -> str:
    """A ``v2`` token over every other parameter, valid until ``now + ttl`` (unix seconds)."""
    expiry = int(now + ttl)
    nonce = secrets.token_urlsafe(9)
    return f"{_VERSION}.{expiry}.{nonce}.{_mac(key, expiry, nonce, params)}"


def verify(key: bytes, params: Mapping[str, str], *, now: float, call_sid: str) -> int:
    """Raise ``SignatureError`` unless ``params['token']`` is a live ``v2`` token over exactly
    these parameters; the token's expiry (unix seconds) otherwise."""
    token = params.get("token")
    if not token:
        raise SignatureError("stream token missing", call_sid=call_sid)
    match = _TOKEN.fullmatch(token)
    if match is None or match[1].startswith("0"):
        raise SignatureError("stream token malformed", call_sid=call_sid)
    expiry = int(match[1])
    if not hmac.compare_digest(match[3], _mac(key, expiry, match[2], params)):
        raise SignatureError(
            "announcement token invalid: parameters altered or signed with another key",
            call_sid=call_sid,
        )
    if now > expiry:
        raise SignatureError("stream token expired", call_sid=call_sid)
    return expiry


def decode(params: Mapping[str, str]) -> StreamAnnouncement:
    """The announcement in verified parameters; ``ValueError`` if they are not well formed."""
    if params.get("kind") != KIND:
        raise ValueError("not an announcement stream")
    pieces: list[str] = []
    while f"{_TEXT}{len(pieces)}" in params:
        pieces.append(params[f"{_TEXT}{len(pieces)}"])
    text = "".join(pieces)
    if not text or len(text) > MAX_TEXT_CHARS:
        raise ValueError("announcement text missing or too long")
    repeat = params.get("repeat", "")
    if not repeat.isdigit() or not 1 <= int(repeat) <= MAX_REPEAT:
        raise ValueError("announcement repeat out of range")
    confirm = params.get("confirm", "")
    again = params.get("again", "")
    for digit in (confirm, again):
        if digit and not is_dtmf_key(digit):
            raise ValueError("announcement digit invalid")
    voice = Voice(params.get("speaker", ""), params.get("dialect", ""), params.get("language", ""))
    if not (voice.speaker and voice.dialect and voice.language and params.get("id")):
        raise ValueError("announcement voice or id missing")
    return StreamAnnouncement(
        id=params["id"],
        to=params.get("to", ""),
        text=text,
        voice=voice,
        repeat=int(repeat),
        confirm_digit=confirm or None,
        repeat_digit=again or "2",
        machine_detection=params.get("amd") == "1",
    )
