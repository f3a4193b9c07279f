"""Each protocol fact is written once, by the module that owns it; this fails if a copy comes back.

Owners: Hamsa's text limit and refusal codes, ``bridge/protocols/hamsa_client.py``; the DTMF keys,
``bridge/protocols/twilio_stream_server.py``; Twilio's SID and E.164 patterns,
``bridge/protocols/twilio_ids.py``; every TwiML document, ``twiml/``; the announcement options
(fields, defaults, command-line options), ``bridge/announcements/options.py``. Everything else
imports them. The Hamsa emulator sends Hamsa's close codes itself: it plays the vendor, and a
client that misread them must fail against it.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.announcements.options import FIELD_NAMES, option_flag
from bridge.protocols.hamsa_client import (
    MAX_TEXT_CHARS,
    ConnectRefusal,
    classify_close,
    classify_connect_error,
)
from bridge.protocols.twilio_ids import ACCOUNT_SID, API_KEY_SID, CALL_SID, E164, E164_PREFIX
from bridge.protocols.twilio_stream_server import DTMF_KEYS, is_dtmf_key

ROOT = Path(__file__).resolve().parent.parent
HAMSA_CLIENT = "bridge/protocols/hamsa_client.py"
STREAM_SERVER = "bridge/protocols/twilio_stream_server.py"
TWILIO_IDS = "bridge/protocols/twilio_ids.py"
OPTIONS = "bridge/announcements/options.py"


def sources() -> Iterator[tuple[str, str]]:
    """``(path relative to the checkout, text)`` of every module of ``bridge/`` and ``twiml/``."""
    for package in ("bridge", "twiml"):
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def numbers(text: str) -> Iterator[tuple[int, float, str]]:
    """``(line, value, the line)`` of every numeric literal in code (not in strings or comments)."""
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.NUMBER:
            try:
                value = float(token.string.replace("_", ""))
            except ValueError:  # complex literals and the like
                continue
            yield token.start[0], value, token.line.strip()


def found(pattern: str, *, owners: tuple[str, ...]) -> list[str]:
    """Where ``pattern`` (a regular expression) occurs outside ``owners`` (paths or folders)."""
    where = []
    for path, text in sources():
        if path.startswith(owners):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(pattern, line):
                where.append(f"{path}:{number}: {line.strip()}")
    return where


# --- Hamsa ---------------------------------------------------------------------------------------

NOT_THE_TEXT_LIMIT = {
    ("bridge/settings.py", "bridge_start_margin_ms"),  # milliseconds, not characters
}


def test_hamsas_text_limit_is_written_only_by_the_hamsa_client() -> None:
    copies = [
        f"{path}:{line}: {code}"
        for path, text in sources()
        if path != HAMSA_CLIENT
        for line, value, code in numbers(text)
        if value == MAX_TEXT_CHARS
        and not any(path == p and marker in code for p, marker in NOT_THE_TEXT_LIMIT)
    ]
    assert copies == [], "import MAX_TEXT_CHARS from bridge.protocols.hamsa_client"


def test_hamsas_refusal_codes_are_read_only_by_the_hamsa_client() -> None:
    owners = (HAMSA_CLIENT, "bridge/dev/hamsa_emulator/")  # the emulator sends them, as Hamsa
    copies = [
        f"{path}:{line}: {code}"
        for path, text in sources()
        if not path.startswith(owners)
        for line, value, code in numbers(text)
        if value in (4001, 4003)
    ]
    assert copies == [], "classify with bridge.protocols.hamsa_client.classify_connect_error"


@pytest.mark.parametrize(
    ("code", "refusal"),
    [
        (4001, ConnectRefusal.KEY_REJECTED),
        (401, ConnectRefusal.KEY_REJECTED),
        (403, ConnectRefusal.KEY_REJECTED),
        (4003, ConnectRefusal.NO_BALANCE),
        (None, ConnectRefusal.OTHER),
        (1000, ConnectRefusal.OTHER),
        (4500, ConnectRefusal.OTHER),
        (503, ConnectRefusal.OTHER),
    ],
)
def test_one_classification_of_hamsas_refusals(code: int | None, refusal: ConnectRefusal) -> None:
    assert classify_connect_error(code) is refusal
    if code is None or code >= 1000:  # a close code
        assert classify_close(code).retryable is (refusal is ConnectRefusal.OTHER)


# --- Twilio --------------------------------------------------------------------------------------


def test_the_dtmf_keys_are_written_only_by_the_stream_server() -> None:
    assert found(re.escape(DTMF_KEYS), owners=(STREAM_SERVER,)) == []
    assert [k for k in DTMF_KEYS if is_dtmf_key(k)] == list(DTMF_KEYS)
    assert not any(is_dtmf_key(k) for k in ("", "12", "*#", "A", "١", 1))


def test_twilios_number_and_sid_patterns_are_written_only_by_twilio_ids() -> None:
    patterns = [r"\\\+\[1-9\]", r"\b(AC|SK|CA)\[0-9a-f", r"\[A-Z\]\{2\}\[0-9a-f"]
    assert [hit for p in patterns for hit in found(p, owners=(TWILIO_IDS,))] == []


def test_twilio_ids() -> None:
    hex32 = "0123456789abcdef" * 2
    assert ACCOUNT_SID.match("AC" + hex32)
    assert not ACCOUNT_SID.match("SK" + hex32)
    assert API_KEY_SID.fullmatch("SK" + hex32.upper())
    assert not API_KEY_SID.match("SK" + hex32[1:])
    assert CALL_SID.match("CA" + hex32)
    assert not CALL_SID.match("CA" + hex32 + "0")
    assert E164.match("+966501234567")
    assert not E164.match("+0966501234")
    assert not E164.match("+1")
    assert E164_PREFIX.fullmatch("+9715")
    assert not E164_PREFIX.fullmatch("966")


def test_twiml_is_built_only_in_the_twiml_package() -> None:
    assert found(r"VoiceResponse\(|from twilio\.twiml\b", owners=("twiml/",)) == []


# --- announcement options ------------------------------------------------------------------------


CALL_OPTIONS = frozenset(FIELD_NAMES) - {"speaker", "dialect", "language"}
"""The options no other class has reason to declare (voices have their own overrides)."""


def test_the_announcement_options_are_declared_only_by_their_dataclass() -> None:
    """No class restates the options with their defaults, no parser adds their flags again."""
    flags = {option_flag(name) for name in FIELD_NAMES}
    declared = []
    for path, text in sources():
        if path == OPTIONS:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                defaults = [
                    item.target.id
                    for item in node.body
                    if isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and item.target.id in CALL_OPTIONS
                    and item.value is not None
                ]
                if len(defaults) > 1:
                    declared.append(f"{path}:{node.lineno}: {node.name} declares {defaults}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in flags
            ):
                declared.append(f"{path}:{node.lineno}: add_argument({node.args[0].value!r})")
    assert declared == [], "embed bridge.announcements.options.AnnouncementOptions"
