"""``hamsa-bridge announce``: place one announcement call and wait for its outcome.

The command records the announcement, places the call through the Twilio REST API and waits;
the bridge at ``BRIDGE_PUBLIC_URL`` serves the call's stream and writes what happened on it
(plays, the confirm digit) into the database both share (``BRIDGE_DATABASE_URL``). Status
callbacks reach that bridge too; when they do not, the outcome is polled from Twilio.

While the phone rings, this command synthesises the message (and the confirmation prompts) into
the ``BRIDGE_PROMPT_CACHE_DIR`` it shares with the bridge, so the callee hears the first word at
once (``bridge.announcements.presynth``); without a shared directory the bridge streams it.

Exit status (:func:`exit_status`, codes of :mod:`bridge.exit_codes`), by what the callee
experienced: 0 heard (the message's final mark came back); 3 answered but not confirmed heard
(hung up before its end, or its mark never came back); 4 not reached (busy, no-answer, canceled,
or failed by Twilio); 1 an error: the call could not be placed, no outcome in time, or
``stream-never-connected`` (answered, but the stream never reached the bridge at
``BRIDGE_PUBLIC_URL``: a broken setup, which calling again will not fix). An invalid request
(``--to``, ``--text`` …) or a missing setting is refused before anything is sent: 2.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

from bridge.announcements.limiter import AccountRateLimiter
from bridge.announcements.options import FIELD_NAMES, AnnouncementOptions, option_flag
from bridge.announcements.outcomes import OutcomeWatcher
from bridge.announcements.placing import place_call
from bridge.announcements.presynth import command_presynthesizer, job_for
from bridge.announcements.spec import (
    AnnouncementSpec,
    CallOutcome,
    Confirmation,
    OutcomeReason,
    Verdict,
)
from bridge.calls.presynth import Presynthesizer
from bridge.errors import AnnouncementInvalid, TwilioApiError, TwimlTooLong
from bridge.exit_codes import ExitCode
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store import AnnouncementRecord, Store
from bridge.twilio_rest_client import TwilioApi

__all__ = [
    "EXIT_ERROR",
    "OPTION_NAMES",
    "announce",
    "describe_confirmation",
    "exit_status",
    "missing_settings",
]

OPTION_NAMES: Final = {name: option_flag(name) for name in ("to", "from", "text", *FIELD_NAMES)}
"""The command-line option behind each ``AnnouncementInvalid.field``."""
EXIT_HEARD: Final = ExitCode.OK
EXIT_ERROR: Final = ExitCode.FAILURE
EXIT_USAGE: Final = ExitCode.USAGE
EXIT_NOT_REACHED: Final = ExitCode.NOT_REACHED
EXIT_NOT_CONFIRMED: Final = ExitCode.NOT_CONFIRMED
_EXIT_CODES: Final = {
    CallOutcome.HEARD: EXIT_HEARD,
    CallOutcome.ANSWERED: EXIT_NOT_CONFIRMED,
    CallOutcome.BUSY: EXIT_NOT_REACHED,
    CallOutcome.NO_ANSWER: EXIT_NOT_REACHED,
    CallOutcome.CANCELED: EXIT_NOT_REACHED,
    CallOutcome.FAILED: EXIT_NOT_REACHED,
    CallOutcome.NOT_PLACED: EXIT_ERROR,
}
WAIT_MARGIN: Final = 120.0
"""Seconds allowed beyond ring timeout + time limit before giving up waiting."""


def missing_settings(settings: Settings) -> list[str]:
    """What placing announcement calls needs and is not set."""
    missing = []
    if not settings.twilio_account_sid:
        missing.append("TWILIO_ACCOUNT_SID")
    if not settings.twilio_auth_token.get_secret_value():
        missing.append("TWILIO_AUTH_TOKEN")
    if not settings.bridge_public_url:
        missing.append("BRIDGE_PUBLIC_URL")
    return missing


def explain_missing(missing: list[str]) -> str:
    return (
        f"set {', '.join(missing)}: calls are placed with the Twilio credentials, and "
        "BRIDGE_PUBLIC_URL is the bridge (`hamsa-bridge serve`) that plays them; it must "
        "share BRIDGE_DATABASE_URL with this command"
    )


def describe_confirmation(record: AnnouncementRecord) -> str:
    """``confirmed``, ``no confirmation`` or ``not asked`` (no confirm digit requested)."""
    if record.spec.options.confirm_digit is None:
        return "not asked"
    if record.confirmation == Confirmation.CONFIRMED.value:
        return "confirmed"
    return "no confirmation"


def render(record: AnnouncementRecord, settings: Settings) -> list[str]:
    """The human-readable result lines."""
    outcome = record.outcome
    reason = record.reason
    shown = outcome.value if outcome else record.status or "unknown"
    if reason is OutcomeReason.PLAYED_UNCONFIRMED:
        shown += f" ({reason.description})"
    lines = [f"outcome: {shown}"]
    if outcome in (CallOutcome.HEARD, CallOutcome.ANSWERED):
        lines.append(f"duration: {record.duration if record.duration is not None else '?'} s")
        if record.spec.options.machine_detection:
            lines.append(f"answered by: {record.answered_by or 'unknown'}")
        lines.append(f"plays: {record.plays}")
        if record.plays_unconfirmed:
            lines.append(f"played, not confirmed heard: {record.plays_unconfirmed}")
        lines.append(f"confirmation: {describe_confirmation(record)}")
    elif record.spec.options.machine_detection and record.answered_by:
        lines.append(f"answered by: {record.answered_by}")
    error = record.outcome_error
    if error:
        if reason is OutcomeReason.STREAM_NEVER_CONNECTED and not record.error:
            error += f" (BRIDGE_PUBLIC_URL={settings.bridge_public_url})"
        lines.append(f"error: {error}")
    lines.append(f"call: {record.call_sid or '-'}")
    lines.append(f"announcement: {record.id}")
    return lines


def exit_status(verdict: Verdict | None) -> ExitCode:
    """``announce``'s exit status for an outcome (``None``: none known)."""
    if verdict is None or verdict.reason is OutcomeReason.STREAM_NEVER_CONNECTED:
        return EXIT_ERROR
    return _EXIT_CODES[verdict.outcome]


async def announce(
    settings: Settings,
    *,
    to: str,
    from_: str | None,
    text: str,
    options: AnnouncementOptions | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    api: Callable[[], TwilioApi] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> int:
    """The ``announce`` command; its exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        spec = AnnouncementSpec.create(
            settings,
            to=to,
            from_=from_,
            text=text,
            options=options,
        )
    except AnnouncementInvalid as exc:
        print(f"hamsa-bridge announce: {OPTION_NAMES.get(exc.field, exc.field)}: {exc}", file=err)
        return EXIT_USAGE
    missing = missing_settings(settings)
    if missing:
        print(f"hamsa-bridge announce: {explain_missing(missing)}", file=err)
        return EXIT_USAGE
    factory = api or (lambda: TwilioApi(settings))
    # a command exports no metrics: its presynthesizer counts into a registry of its own
    presynth = command_presynthesizer(settings, metrics=Metrics())
    try:
        return await _place_and_wait(
            settings,
            spec,
            factory,
            presynth,
            as_json=as_json,
            out=out,
            err=err,
            wall_clock=wall_clock,
        )
    finally:
        if presynth is not None:
            await presynth.aclose()  # the message's audio leaves the shared directory


async def _place_and_wait(
    settings: Settings,
    spec: AnnouncementSpec,
    factory: Callable[[], TwilioApi],
    presynth: Presynthesizer | None,
    *,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    wall_clock: Callable[[], float],
) -> int:
    async with await Store.open(settings.bridge_database_url) as store:
        record, _ = await store.create_announcement(spec, now=wall_clock())
        watcher = OutcomeWatcher(store, factory, settings, wall_clock=wall_clock)

        async def the_store() -> Store:
            return store

        # the account's budget, shared with the bridges and campaigns placing calls meanwhile
        await AccountRateLimiter(settings, the_store, clock=wall_clock).acquire()
        try:
            call = await asyncio.to_thread(
                lambda: place_call(factory(), settings, record.id, spec, now=wall_clock())
            )
        except TwimlTooLong as exc:
            record = await store.mark_not_placed(record.id, str(exc), now=wall_clock())
        except TwilioApiError as exc:
            if exc.status is None or exc.status >= 500:
                # No answer, or Twilio failed: the call may exist. Its Calls list decides.
                print(f"hamsa-bridge announce: {exc.message}; checking Twilio", file=err)
                record = await watcher.reconcile(record)
            else:
                record = await store.mark_not_placed(
                    record.id, f"Twilio refused the call: {exc.message}", now=wall_clock()
                )
        else:
            if presynth is not None:  # Twilio accepted it: synthesise while it rings
                presynth.start(job_for(record.id, spec, settings, now=wall_clock()))
            record = await store.mark_placed(
                record.id, call.sid, now=wall_clock(), status=call.status
            )
        if not record.final:
            print(f"calling {spec.to} (call {record.call_sid}) …", file=err)
            limit = spec.options.ring_seconds + spec.time_limit(settings.bridge_confirm_max_repeats)
            try:
                async with asyncio.timeout(limit + WAIT_MARGIN):
                    record = await watcher.wait(record.id)
            except TimeoutError:
                print(
                    f"hamsa-bridge announce: no outcome for call {record.call_sid} after "
                    f"{limit + WAIT_MARGIN:.0f} s",
                    file=err,
                )
                return EXIT_ERROR
    if as_json:
        print(json.dumps(record.to_json(), ensure_ascii=False, indent=2), file=out)
    else:
        print("\n".join(render(record, settings)), file=out)
    return exit_status(record.verdict)
