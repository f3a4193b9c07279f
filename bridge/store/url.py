"""``BRIDGE_DATABASE_URL``: which database, checked before anything opens it; and its redaction.

``sqlite:///relative.db`` / ``sqlite:////abs/path.db`` is a SQLite file;
``postgresql://user:password@host:port/database`` (or ``postgres://``, libpq's URI with its query
parameters such as ``?sslmode=require``) is a PostgreSQL database, which needs the ``postgres``
extra (psycopg). A URL is never shown with its password: :func:`redact_url`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from bridge.errors import StoreError

__all__ = [
    "POSTGRES_SCHEMES",
    "check_database_url",
    "is_postgres_url",
    "redact_url",
    "sqlite_path",
]

POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
_EXPECTED: Final = (
    "expected sqlite:///path/to/file.db (a SQLite file) or "
    "postgresql://user:password@host:port/database"
)
_PASSWORD_IN_NETLOC: Final = re.compile(r"(://[^/?#@:]*:)[^/?#@]*@")
_PASSWORD_PARAMETER: Final = re.compile(r"(?i)(\bpassword=)[^&#\s]*")


def is_postgres_url(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """The URL as it may be shown: ``postgresql://user:***@host/db`` (also ``?password=***``)."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            url = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:  # unparsable (a bad port…): a blunter cut
        url = _PASSWORD_IN_NETLOC.sub(r"\1***@", url)
    return _PASSWORD_PARAMETER.sub(r"\1***", url)


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``.

    ``StoreError`` for anything else, PostgreSQL included (use :func:`check_database_url` to
    accept both)."""
    if is_postgres_url(url):
        raise StoreError(
            f"BRIDGE_DATABASE_URL {redact_url(url)!r} is a PostgreSQL database, not a SQLite file"
        )
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise StoreError(f"BRIDGE_DATABASE_URL {redact_url(url)!r}: {_EXPECTED}")
    return Path(url.removeprefix("sqlite:///"))


def check_database_url(url: str) -> None:
    """``StoreError`` saying what to do if ``url`` names no database this version can open (a
    PostgreSQL URL also needs psycopg installed). Nothing is opened."""
    if not is_postgres_url(url):
        sqlite_path(url)
        return
    if importlib.util.find_spec("psycopg") is None:
        raise StoreError(
            f"BRIDGE_DATABASE_URL {redact_url(url)!r} is a PostgreSQL database, which needs "
            "psycopg: pip install 'hamsa-bridge[postgres]'"
        )
    from bridge.store.postgres import parse_conninfo  # psycopg is optional: imported here

    parse_conninfo(url)
