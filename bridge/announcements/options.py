"""How an announcement is said and called: its voice, repeats, key presses, answering-machine
detection and ring timeout. Written once, here: its fields, defaults and rules.

:class:`AnnouncementOptions` is embedded by everything that takes them: the
:class:`~bridge.announcements.spec.AnnouncementSpec` of one call, ``announce`` and
``campaign run`` (:func:`add_option_arguments`, :func:`options_from_arguments`), the HTTP API's
body (``bridge.announcements.api``, its fields made from this class) and a campaign's stored
configuration (``bridge.campaigns.config``).

``None`` stands for a setting: ``HAMSA_SPEAKER``, ``HAMSA_DIALECT``, ``HAMSA_LANGUAGE`` and
``BRIDGE_RING_TIMEOUT``. :meth:`AnnouncementOptions.resolve` fills those in and checks every
value; :meth:`~AnnouncementOptions.with_defaults` only fills them in.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from typing import Final

from bridge.errors import AnnouncementInvalid
from bridge.protocols.twilio_stream_server import DTMF_KEYS, is_dtmf_key
from bridge.settings import Settings
from bridge.voice import Voice

__all__ = [
    "FIELD_NAMES",
    "MAX_REPEAT",
    "RING_TIMEOUT_SECONDS",
    "AnnouncementOptions",
    "add_option_arguments",
    "option_flag",
    "options_from_arguments",
]

MAX_REPEAT: Final = 5
"""Most plays of the message (``repeat``)."""
RING_TIMEOUT_SECONDS: Final = (5, 600)
"""The shortest and longest ``ring_timeout``, inclusive."""
MAX_VOICE_CHARS: Final = 64
"""Longest speaker, dialect or language name."""


@dataclass(frozen=True, slots=True)
class AnnouncementOptions:
    """The voice and call options of an announcement; ``None``: the setting (see the module)."""

    speaker: str | None = None
    dialect: str | None = None
    language: str | None = None
    repeat: int = 1
    """Plays of the message, 1 to :data:`MAX_REPEAT`."""
    confirm_digit: str | None = None
    """Ask "press <digit> to confirm, <repeat_digit> to repeat" after the message."""
    repeat_digit: str = "2"
    machine_detection: bool = False
    """Twilio AMD (``DetectMessageEnd``): a voicemail gets the message after its beep."""
    ring_timeout: int | None = None
    """Seconds to let it ring (:data:`RING_TIMEOUT_SECONDS`)."""

    def with_defaults(self, settings: Settings) -> AnnouncementOptions:
        """Every ``None`` (or empty voice field) replaced by its setting; nothing checked. A
        campaign stores these, so ``resume`` calls as ``run`` did whatever the settings say then."""
        return replace(
            self,
            speaker=self.speaker or settings.hamsa_speaker,
            dialect=self.dialect or settings.hamsa_dialect,
            language=self.language or settings.hamsa_language,
            ring_timeout=(
                self.ring_timeout if self.ring_timeout is not None else settings.bridge_ring_timeout
            ),
        )

    def resolve(self, settings: Settings) -> AnnouncementOptions:
        """:meth:`with_defaults`, the voice stripped, every value checked: raises
        :class:`~bridge.errors.AnnouncementInvalid` naming the field."""
        if not 1 <= self.repeat <= MAX_REPEAT:
            raise AnnouncementInvalid(f"repeat must be 1 to {MAX_REPEAT}", field="repeat")
        for name, digit in (
            ("confirm_digit", self.confirm_digit),
            ("repeat_digit", self.repeat_digit),
        ):
            if digit is not None and not is_dtmf_key(digit):
                raise AnnouncementInvalid(f"{name} must be one of {DTMF_KEYS}", field=name)
        if self.confirm_digit is not None and self.confirm_digit == self.repeat_digit:
            raise AnnouncementInvalid(
                "confirm_digit and repeat_digit must differ", field="confirm_digit"
            )
        filled = self.with_defaults(settings)
        shortest, longest = RING_TIMEOUT_SECONDS
        if not shortest <= filled.ring_seconds <= longest:
            raise AnnouncementInvalid(
                f"ring_timeout must be {shortest} to {longest} seconds", field="ring_timeout"
            )
        voice = filled.voice
        voice = Voice(voice.speaker.strip(), voice.dialect.strip(), voice.language.strip())
        for name, value in (
            ("speaker", voice.speaker),
            ("dialect", voice.dialect),
            ("language", voice.language),
        ):
            if not value or len(value) > MAX_VOICE_CHARS or not value.isprintable():
                raise AnnouncementInvalid(
                    f"{name} must be 1-{MAX_VOICE_CHARS} printable characters", field=name
                )
        return replace(
            filled, speaker=voice.speaker, dialect=voice.dialect, language=voice.language
        )

    @property
    def voice(self) -> Voice:
        """The voice of options with their defaults (:meth:`resolve`, :meth:`with_defaults`)."""
        if self.speaker is None or self.dialect is None or self.language is None:
            raise ValueError("the voice is the settings' until resolve() fills it in")
        return Voice(self.speaker, self.dialect, self.language)

    @property
    def ring_seconds(self) -> int:
        """``ring_timeout`` of options with their defaults (:meth:`resolve`)."""
        if self.ring_timeout is None:
            raise ValueError("the ring timeout is BRIDGE_RING_TIMEOUT until resolve() fills it in")
        return self.ring_timeout


FIELD_NAMES: Final = tuple(f.name for f in fields(AnnouncementOptions))
"""The options' names: the HTTP API's fields, a campaign's stored keys, and
``AnnouncementInvalid.field`` of their errors."""


def option_flag(name: str) -> str:
    """The command-line option of a field: ``confirm_digit`` → ``--confirm-digit``."""
    return "--" + name.replace("_", "-")


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """The options as ``announce`` and ``campaign run`` take them (``--speaker`` …
    ``--ring-timeout``). Their help names the default itself (``%(default)s``), so it shows
    whichever formatter the parser has; :func:`options_from_arguments` reads them back."""
    default = AnnouncementOptions()
    parser.add_argument(option_flag("speaker"), help="Hamsa speaker (default: HAMSA_SPEAKER)")
    parser.add_argument(option_flag("dialect"), help="Hamsa dialect (default: HAMSA_DIALECT)")
    parser.add_argument(option_flag("language"), help="Hamsa language (default: HAMSA_LANGUAGE)")
    parser.add_argument(
        option_flag("repeat"),
        type=int,
        default=default.repeat,
        metavar="N",
        help="play the message N times (default: %(default)s)",
    )
    parser.add_argument(
        option_flag("confirm_digit"),
        metavar="DIGIT",
        help="ask the callee to press DIGIT to confirm (and --repeat-digit to hear it again)",
    )
    parser.add_argument(
        option_flag("repeat_digit"),
        default=default.repeat_digit,
        metavar="DIGIT",
        help="with --confirm-digit: the digit that plays the message again (default: %(default)s)",
    )
    parser.add_argument(
        option_flag("machine_detection"),
        action="store_true",
        help="answering-machine detection: voicemail gets the message after the beep",
    )
    parser.add_argument(
        option_flag("ring_timeout"),
        type=int,
        metavar="SECONDS",
        help="seconds to let it ring (default: BRIDGE_RING_TIMEOUT)",
    )


def options_from_arguments(args: argparse.Namespace) -> AnnouncementOptions:
    """The options :func:`add_option_arguments` parsed (argparse names them as the fields)."""
    return AnnouncementOptions(**{name: getattr(args, name) for name in FIELD_NAMES})
