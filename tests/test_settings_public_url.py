"""``BRIDGE_PUBLIC_URL``: scheme and host only, checked once in ``Settings``, so ``serve``,
``twilio configure`` and ``doctor`` refuse a bad one with the same message (exit 2)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from bridge.cli import main
from bridge.doctor import Verdict, check_settings
from bridge.settings import Settings, public_base_url

FIX = "give scheme and host only, e.g. https://x.com"

BAD = [
    (
        "https://bridge example.com",
        "'https://bridge example.com' contains a space: give scheme and host only, "
        "e.g. https://bridge.example.com",
    ),
    (
        "https://x.com ",
        "'https://x.com ' contains a space: give scheme and host only, "
        "e.g. https://bridge.example.com",
    ),
    ("https://x.com/prefix", f"""'https://x.com/prefix' has a path ("/prefix"): {FIX}"""),
    (
        "https://x.com/twiml/inbound",
        f"""'https://x.com/twiml/inbound' has a path ("/twiml/inbound"): {FIX}""",
    ),
    ("https://x.com?a=1", f"""'https://x.com?a=1' has a query ("?a=1"): {FIX}"""),
    ("https://x.com/?", f"""'https://x.com/?' has a query ("?"): {FIX}"""),
    ("https://x.com#top", f"""'https://x.com#top' has a fragment ("#top"): {FIX}"""),
    (
        "https://user:hunter2@x.com",
        "has a user name or password before the host (the value is not shown): "
        "give scheme and host only, e.g. https://x.com",
    ),
    (
        "https://x.com:8443",
        "'https://x.com:8443' has port 8443, but Twilio reaches https:// only on port 443: "
        "drop the port (a TLS proxy on 443 forwards to the bridge), e.g. https://x.com",
    ),
    (
        "https://localhost:8443",
        "'https://localhost:8443' has port 8443, but Twilio reaches https:// only on port 443",
    ),
    ("https://x.com:http", """'https://x.com:http' has an invalid port ("http")"""),
    (
        "http://x.com",
        "'http://x.com' uses http:// on a host that is not this machine (http:// is only for "
        "localhost, 127.0.0.0/8 and [::1]: the emulators): give https://, e.g. https://x.com",
    ),
    ("http://10.0.0.5:8080", "'http://10.0.0.5:8080' uses http:// on a host that is not this"),
    ("x.com", "'x.com' has no scheme: give scheme and host, e.g. https://x.com"),
    ("https:/x.com", "'https:/x.com' is not scheme://host"),
    (
        "ftp://x.com",
        "'ftp://x.com' is not an https:// URL: give scheme and host, e.g. https://x.com",
    ),
    ("wss://x.com", "'wss://x.com' is a WebSocket URL: give the https:// base URL"),
    ("https://", "'https://' has no host"),
    ("https://x_y.com", """'https://x_y.com' has an invalid host name ("x_y.com")"""),
]

GOOD = [
    ("https://x.com", "https://x.com"),
    ("https://x.com/", "https://x.com"),  # a lone trailing slash is dropped
    ("https://x.com:443", "https://x.com"),  # so is the default port: the form Twilio signs
    ("https://Bridge.Example.com:443/", "https://Bridge.Example.com"),  # the host as written
    ("https://203.0.113.5", "https://203.0.113.5"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("http://127.4.5.6", "http://127.4.5.6"),
    ("http://[::1]:8080", "http://[::1]:8080"),
]

COMMANDS = [
    ["serve", "--port", "0"],
    ["twilio", "configure", "--number", "+966501234567", "--dry-run"],
    ["doctor"],
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures the root logger for its command: give the next test the original."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def environ(url: str) -> dict[str, str]:
    """Everything ``serve``, ``configure`` and ``doctor`` need but the URL (so only it fails)."""
    return {
        "BRIDGE_PUBLIC_URL": url,
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "auth-token-never-shown",
        "HAMSA_API_KEY": "hamsa-key-never-shown",
        "TWILIO_API_URL": "http://127.0.0.1:9",  # nothing listens: no command may get this far
    }


@pytest.mark.parametrize(("url", "message"), BAD)
def test_every_command_refuses_a_bad_public_url_with_the_same_message(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    errors = set()
    for argv in COMMANDS:
        code = main(argv, environ(url))
        out, err = capsys.readouterr()
        assert code == 2, (argv, out, err)
        assert out == ""
        assert f"  BRIDGE_PUBLIC_URL: {message}" in err, (argv, err)
        assert "Value error" not in err
        assert "never-shown" not in err
        errors.add(err)
    assert len(errors) == 1  # word for word the same from each command
    if "@" in url:
        assert "hunter2" not in errors.pop()


@pytest.mark.parametrize(("url", "normalised"), GOOD)
def test_good_forms_are_accepted_in_their_one_normalised_form(
    url: str, normalised: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert public_base_url(url) == normalised
    settings = Settings.from_env(environ(url))
    assert settings.bridge_public_url == normalised
    assert Settings.from_env(environ(normalised)) == settings  # normalising is idempotent
    # the command that hands the URL to Twilio without calling it: accepted, normalised
    assert main(["twiml", "inbound"], environ(url)) == 0
    assert f">{normalised}/twiml/inbound</Redirect>" in capsys.readouterr().out
    [check] = [c for c in check_settings(settings, None) if c.name == "BRIDGE_PUBLIC_URL"]
    assert check.verdict is Verdict.OK


def test_doctor_fix_for_a_missing_public_url_is_itself_valid() -> None:
    [check] = [c for c in check_settings(Settings(), None) if c.name == "BRIDGE_PUBLIC_URL"]
    assert check.verdict is Verdict.FAILED
    assert check.detail == "not set"
    example = check.fix.rsplit(" ", 1)[1]
    assert example.startswith("https://")
    assert Settings(bridge_public_url=example).bridge_public_url == example


def test_a_loopback_url_is_refused_for_the_real_twilio_with_a_valid_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {**environ("http://127.0.0.1:8080"), "TWILIO_API_URL": "https://api.twilio.com"}
    assert main(["twiml", "inbound"], env) == 2
    err = capsys.readouterr().err
    assert "BRIDGE_PUBLIC_URL http://127.0.0.1:8080 is this machine, which Twilio at " in err
    settings = Settings.from_env(env)
    [check] = [c for c in check_settings(settings, None) if c.name == "BRIDGE_PUBLIC_URL"]
    assert check.verdict is Verdict.FAILED
    assert "http://" not in check.fix
