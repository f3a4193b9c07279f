"""What one outbound announcement is: who, from where, what to say and how; and its outcome.

Pure data and validation, shared by ``announce``, the HTTP API and campaigns. Text is normalised
(whitespace runs become one space, control characters go) so it survives the trip through a TwiML
attribute unchanged, which the stream token's MAC depends on.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from bridge.announcements.options import AnnouncementOptions
from bridge.errors import AnnouncementInvalid, NumberNotAllowed
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS
from bridge.protocols.twilio_ids import E164
from bridge.settings import Settings

__all__ = [
    "AnnouncementSpec",
    "AttemptState",
    "CallOutcome",
    "Evidence",
    "OutcomeReason",
    "Verdict",
    "call_time_limit",
    "decide_outcome",
    "check_number",
    "normalise_text",
    "outcome_of_status",
]

_SPACES = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """One space between words, no control or format characters except ZWJ/ZWNJ (Arabic)."""
    kept = "".join(
        ch
        for ch in text
        if ch.isspace()
        or ch in "\u200c\u200d"
        or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )
    return _SPACES.sub(" ", kept).strip()


def check_number(number: str, field: str, allowed_prefixes: tuple[str, ...]) -> str:
    """``number`` if it is E.164 and inside the allow-list; else the matching error."""
    number = number.strip()
    if not E164.match(number):
        raise AnnouncementInvalid(
            f"{field} {number!r} is not an E.164 number such as +966501234567", field=field
        )
    if allowed_prefixes and not number.startswith(allowed_prefixes):
        raise NumberNotAllowed(
            f"{field} {number} is outside BRIDGE_ALLOWED_PREFIXES ({', '.join(allowed_prefixes)})",
            field=field,
        )
    return number


class CallOutcome(enum.StrEnum):
    """How an announcement call ended, as the callee experienced it (:func:`decide_outcome`)."""

    HEARD = "heard"
    """The message's final mark came back (played to its end, at least once)."""
    ANSWERED = "answered"
    """The stream started (a bridge served the call), but no play of the message was confirmed
    heard: the callee hung up before its end, or its final mark never came back."""
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    """Twilio failed the call, or it was answered but its stream never reached a bridge."""
    CANCELED = "canceled"
    NOT_PLACED = "not-placed"
    """Twilio refused to create the call (invalid number, permissions…), or it never reached it."""


class OutcomeReason(enum.StrEnum):
    """Why an outcome is what it is, where the outcome alone does not say (``reason`` in the
    API; ``--retry-on`` may name it)."""

    STREAM_NEVER_CONNECTED = "stream-never-connected"
    """Twilio answered, but the call's media stream never reached a bridge."""
    PLAYED_UNCONFIRMED = "played-unconfirmed"
    """The message was played to its end, but its final mark never came back."""

    @property
    def is_error(self) -> bool:
        return self is OutcomeReason.STREAM_NEVER_CONNECTED

    @property
    def description(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT: Final = {
    OutcomeReason.STREAM_NEVER_CONNECTED: (
        "stream-never-connected: Twilio answered the call, but its media stream never reached "
        "a bridge: BRIDGE_PUBLIC_URL is unreachable from Twilio (or its bridge does not share "
        "BRIDGE_DATABASE_URL, or refused the stream: its log says why); the callee heard nothing"
    ),
    OutcomeReason.PLAYED_UNCONFIRMED: "played, not confirmed heard",
}


_FINAL_STATUSES: Final = {
    "completed": CallOutcome.ANSWERED,
    "busy": CallOutcome.BUSY,
    "no-answer": CallOutcome.NO_ANSWER,
    "failed": CallOutcome.FAILED,
    "canceled": CallOutcome.CANCELED,
}


def outcome_of_status(status: str) -> CallOutcome | None:
    """The outcome Twilio's final ``CallStatus`` alone suggests; ``None`` while the call is not
    over. ``completed`` is only "answered": :func:`decide_outcome` says what was heard."""
    return _FINAL_STATUSES.get(status)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What is known about one attempt when its outcome is decided."""

    not_placed: bool
    """The attempt never became a call at Twilio."""
    status: str | None
    """Twilio's latest ``CallStatus``."""
    stream_started: bool
    """A bridge recorded the call's media stream starting."""
    plays: int = 0
    """Plays of the message whose final mark came back."""
    plays_unconfirmed: int = 0
    """Plays sent to their end whose final mark never came back."""


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: CallOutcome
    reason: OutcomeReason | None = None


def decide_outcome(evidence: Evidence) -> Verdict | None:
    """The attempt's outcome; ``None`` while its call is not over.

    ``completed`` (Twilio answered) becomes ``heard`` when a play's final mark came back,
    ``answered`` when the stream started (``played-unconfirmed`` if a play went out whole but
    its mark never came back), and ``failed``/``stream-never-connected`` when no bridge ever
    saw the stream: the callee heard nothing.
    """
    if evidence.not_placed:
        return Verdict(CallOutcome.NOT_PLACED)
    outcome = outcome_of_status(evidence.status) if evidence.status else None
    if outcome is not CallOutcome.ANSWERED:
        return Verdict(outcome) if outcome is not None else None
    if not evidence.stream_started:
        return Verdict(CallOutcome.FAILED, OutcomeReason.STREAM_NEVER_CONNECTED)
    if evidence.plays > 0:
        return Verdict(CallOutcome.HEARD)
    if evidence.plays_unconfirmed > 0:
        return Verdict(CallOutcome.ANSWERED, OutcomeReason.PLAYED_UNCONFIRMED)
    return Verdict(CallOutcome.ANSWERED)


class AttemptState(enum.StrEnum):
    """One call attempt's life in the database (a call is recorded before it is placed)::

    PLANNED --create answered 201--> PLACED --final status--> ENDED
       \\--create refused / no call found at Twilio on resume--> NOT_PLACED
    """

    PLANNED = "planned"
    PLACED = "placed"
    ENDED = "ended"
    NOT_PLACED = "not_placed"


class Confirmation(enum.StrEnum):
    CONFIRMED = "confirmed"
    NOT_CONFIRMED = "no-confirmation"


@dataclass(frozen=True, slots=True)
class AnnouncementSpec:
    """One call to place. Build it with :meth:`create`, which validates and normalises."""

    to: str
    from_: str
    text: str
    """Normalised (:func:`normalise_text`), at most Hamsa's ``MAX_TEXT_CHARS``; the call's TwiML
    must also stay under Twilio's 4000 characters."""
    options: AnnouncementOptions
    """Resolved: the settings' defaults filled in (:meth:`AnnouncementOptions.resolve`)."""

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        to: str,
        from_: str | None = None,
        text: str,
        options: AnnouncementOptions | None = None,
    ) -> AnnouncementSpec:
        """Validated against ``settings`` (allow-list, default caller ID, voice and timeout)."""
        prefixes = settings.bridge_allowed_prefixes
        to = check_number(to, "to", prefixes)
        source = from_ if from_ is not None else settings.twilio_phone_number
        if not source:
            raise AnnouncementInvalid(
                "from is required (or set TWILIO_PHONE_NUMBER): the caller ID of the call",
                field="from",
            )
        if not E164.match(source.strip()):
            raise AnnouncementInvalid(f"from {source!r} is not an E.164 number", field="from")
        text = normalise_text(text)
        if not text:
            raise AnnouncementInvalid("text is empty", field="text")
        if len(text) > MAX_TEXT_CHARS:
            raise AnnouncementInvalid(
                f"text has {len(text)} characters; at most {MAX_TEXT_CHARS}", field="text"
            )
        resolved = (options or AnnouncementOptions()).resolve(settings)
        return cls(to=to, from_=source.strip(), text=text, options=resolved)

    def time_limit(self, max_repeats: int) -> int:
        """A generous cap on the answered call's length (Twilio ``TimeLimit``, seconds), so a
        stuck call cannot run for Twilio's default 4 hours: every play at a slow 8 characters
        per second, plus a minute for prompts and voicemail greetings."""
        options = self.options
        return call_time_limit(self.text, options.repeat, options.confirm_digit, max_repeats)


def call_time_limit(text: str, repeat: int, confirm_digit: str | None, max_repeats: int) -> int:
    """:meth:`AnnouncementSpec.time_limit` of an announcement with these fields."""
    plays = repeat + (max_repeats if confirm_digit else 0)
    return int(60 + plays * (5 + len(text) / 8))
