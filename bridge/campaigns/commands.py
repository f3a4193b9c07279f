"""``hamsa-bridge campaign run|resume|pause|cancel|status|export|list``.

``run`` checks the whole file before creating anything (every problem with its line), stores
the campaign and its options, prints its id and how many numbers it calls, then runs it to the
end with live progress on stderr. Ctrl-C (SIGINT, SIGTERM) stops dialling and releases the
campaign; ``resume`` settles the calls that were in flight and goes on. ``pause`` and
``cancel``, from any terminal or machine sharing the store, change the campaign's state there;
its runner reads it at each lease renewal (every 2 s), dials nothing more, and ends once the
calls in progress have ended.

The numbers: a campaign's "numbers to call" are its rows but the invalid ones and the
duplicates; a run's are those not done when it starts (all of them for ``run``; those left for
``resume``). The header, the progress bar's total and the summary count the same numbers.

Exit status (:class:`bridge.exit_codes.ExitCode`): 0 finished, whatever the outcomes (``pause``,
``cancel``: done); 1 a failure (no such campaign, one ``resume`` refuses, a runner error); 2 a
usage or configuration error (nothing was created or dialled); 130 the run stopped before its
end (Ctrl-C, or paused or cancelled from elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from bridge.announcements.commands import OPTION_NAMES, explain_missing, missing_settings
from bridge.announcements.options import options_from_arguments
from bridge.announcements.presynth import command_presynthesizer
from bridge.calls.presynth import Presynthesizer
from bridge.campaigns.config import CampaignConfig
from bridge.campaigns.contacts import load_contacts, prepare_contacts
from bridge.campaigns.export import write_export
from bridge.campaigns.progress import Counts, ProgressDisplay, progress_for
from bridge.campaigns.retry import reached_twilio
from bridge.campaigns.runner import CampaignRunner, ThreadLocalApi
from bridge.campaigns.template import Template
from bridge.errors import AnnouncementInvalid, CampaignError, CampaignInvalid
from bridge.exit_codes import ExitCode
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.store import AnnouncementRecord, CampaignRecord, CampaignState, Store

__all__ = [
    "cancel",
    "export",
    "list_campaigns",
    "main",
    "pause",
    "resume",
    "run",
    "status",
]

RESUMABLE = (CampaignState.RUNNING, CampaignState.PAUSED)
_STOPPED = -1
"""``_run``'s status for a run that ended paused or cancelled (``_drive`` maps it)."""


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _fail(
    err: TextIO, message: str, problems: tuple[str, ...] = (), code: ExitCode = ExitCode.FAILURE
) -> int:
    print(f"hamsa-bridge campaign: {message}", file=err)
    for problem in problems:
        print(f"  {problem}", file=err)
    return code


def _runner(campaign: CampaignRecord, now: float) -> str | None:
    """The live runner's owner (its lease not lapsed), if any."""
    if campaign.lease_owner and campaign.lease_until > now:
        return campaign.lease_owner
    return None


def _done(counts: Counts) -> str:
    """``3/3 number(s) done · heard 2 · answered 0 · …``."""
    return f"{counts.done}/{counts.to_call} number(s) done · {counts.describe()}"


def _export_hint(campaign_id: str) -> str:
    return f"results: hamsa-bridge campaign export {campaign_id} --out results.csv"


def _config(settings: Settings, args: argparse.Namespace, text: str) -> CampaignConfig:
    """The campaign's options, defaults resolved now (so ``resume`` uses the same)."""
    source = args.from_number or settings.twilio_phone_number
    if not source:
        raise CampaignInvalid("pass --from +E164 or set TWILIO_PHONE_NUMBER (the caller ID)")
    retry_on = tuple(o.strip() for o in args.retry_on.split(",") if o.strip())
    return CampaignConfig(
        text=text,
        from_=source,
        options=options_from_arguments(args).with_defaults(settings),
        cps=args.cps if args.cps is not None else settings.bridge_calls_per_second,
        max_concurrent=(
            args.max_concurrent
            if args.max_concurrent is not None
            else settings.bridge_max_concurrent_calls
        ),
        retries=args.retries,
        retry_delay=args.retry_delay,
        retry_on=retry_on,
        window=args.window,
        timezone=args.timezone,
        source=str(args.file),
    )


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return str(args.text)
    try:
        return Path(args.text_file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignInvalid(f"--text-file {args.text_file}: {exc}") from None


async def run(settings: Settings, args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """``campaign run FILE (--text T | --text-file P) [options]``."""
    missing = missing_settings(settings)
    if missing:
        return _fail(err, explain_missing(missing), code=ExitCode.USAGE)
    now = time.time()
    try:
        text = _read_text(args)
        template = Template.parse(text)
        file = load_contacts(Path(args.file))
        config = _config(settings, args, text)
        prepared = prepare_contacts(
            file,
            template,
            lambda number, body: config.spec(settings, number, body),
            settings,
            now=now,
        )
    except CampaignInvalid as exc:
        return _fail(err, exc.message, exc.problems, code=ExitCode.USAGE)
    except AnnouncementInvalid as exc:
        field = OPTION_NAMES.get(exc.field, exc.field)
        return _fail(err, f"{field}: {exc.message}", code=ExitCode.USAGE)
    for duplicate in prepared.duplicates:
        print(f"  duplicate: {duplicate}", file=err)
    if prepared.problems:
        for problem in prepared.problems:
            print(f"  invalid: {problem}", file=err)
        if not args.skip_invalid:
            return _fail(
                err,
                f"{len(prepared.problems)} invalid row(s), nothing was dialled: fix them, or "
                "pass --skip-invalid to record them as invalid and call the others",
                code=ExitCode.USAGE,
            )
    to_call = sum(1 for c in prepared.contacts if c.error is None)
    if not to_call:
        return _fail(err, f"{file.path} has no number to call", code=ExitCode.USAGE)
    name = args.name or f"{file.path.stem} {datetime.fromtimestamp(now):%Y-%m-%d %H:%M}"
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await store.create_campaign(name, config.to_dict(), prepared.contacts, now=now)
        print(
            f"campaign {campaign.id} ({name}): {to_call} number(s) to call, "
            f"{len(prepared.problems)} invalid, {len(prepared.duplicates)} duplicate",
            file=out,
            flush=True,
        )
        return await _drive(store, settings, campaign, out=out, err=err)


async def resume(settings: Settings, ref: str | None, *, out: TextIO, err: TextIO) -> int:
    """``campaign resume [ID|NAME]`` (default: the newest campaign still to run)."""
    missing = missing_settings(settings)
    if missing:
        return _fail(err, explain_missing(missing), code=ExitCode.USAGE)
    async with await Store.open(settings.bridge_database_url) as store:
        if ref is None:
            resumable = [c for c in await store.list_campaigns() if c.state in RESUMABLE]
            if not resumable:
                print("no campaign to resume (every one is finished or cancelled)", file=out)
                return ExitCode.OK
            campaign = resumable[-1]
        else:
            found = await store.find_campaign(ref)
            if found is None:
                return _fail(err, f"no campaign {ref!r} (see `hamsa-bridge campaign list`)")
            campaign = found
        label = f"campaign {campaign.id} ({campaign.name})"
        if campaign.state is CampaignState.FINISHED:
            print(f"{label} is already finished", file=out)
            return ExitCode.OK
        if campaign.state is CampaignState.CANCELLED:
            when = f" at {_when(campaign.finished_at)}" if campaign.finished_at else ""
            return _fail(
                err,
                f"{label} was cancelled{when}: a cancelled campaign places no further call and "
                "cannot be resumed (`hamsa-bridge campaign run` starts a new one)",
            )
        holder = _runner(campaign, time.time())
        if campaign.state is CampaignState.PAUSED and holder:
            return _fail(
                err,
                f"{label} is pausing: its runner {holder} stops once the calls in progress have "
                "ended; resume it after that (`hamsa-bridge campaign status` shows the runner)",
            )
        counts = await _counts(store, campaign.id)
        print(
            f"{label}: resuming, {counts.left} number(s) to call "
            f"({counts.done} of {counts.to_call} done before)",
            file=out,
            flush=True,
        )
        return await _drive(store, settings, campaign, out=out, err=err)


async def _drive(
    store: Store,
    settings: Settings,
    campaign: CampaignRecord,
    *,
    out: TextIO,
    err: TextIO,
    stopped: ExitCode = ExitCode.INTERRUPTED,
) -> int:
    """Run the campaign with progress on ``err``; Ctrl-C/SIGTERM stop it cleanly (130).
    ``stopped``: the status when it ends paused or cancelled."""
    progress = progress_for(err)

    def lease_wait(holder: str, until: float) -> None:
        print(
            f"waiting for the runner {holder} to let go of the campaign (its lease runs "
            f"until {_when(until)})",
            file=err,
        )

    # a command exports no metrics: its presynthesizer counts into a registry of its own
    presynth = command_presynthesizer(settings, metrics=Metrics())
    try:
        code = await _run(store, settings, campaign, progress, lease_wait, presynth, out, err)
    finally:
        if presynth is not None:
            await presynth.aclose()  # no contact's audio outlives the run
    return stopped if code == _STOPPED else code


async def _run(
    store: Store,
    settings: Settings,
    campaign: CampaignRecord,
    progress: ProgressDisplay,
    lease_wait: Callable[[str, float], None],
    presynth: Presynthesizer | None,
    out: TextIO,
    err: TextIO,
) -> int:
    try:
        runner = CampaignRunner(
            store,
            settings,
            campaign,
            api=ThreadLocalApi(settings),
            on_progress=progress.update,
            on_lease_wait=lease_wait,
            presynth=presynth,
        )
    except CampaignInvalid as exc:
        return _fail(err, f"stored options are invalid: {exc.message}")
    task = asyncio.create_task(runner.run())
    stopped: list[int] = []

    def interrupt(signum: int) -> None:
        stopped.append(signum)
        task.cancel()

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        with contextlib.suppress(NotImplementedError):  # Windows: KeyboardInterrupt instead
            loop.add_signal_handler(signum, interrupt, signum)
    try:
        ended = await task
    except asyncio.CancelledError:
        if not stopped:
            raise
        progress.close()
        print(
            f"stopped: nothing more is dialled. Calls in flight are settled by "
            f"`hamsa-bridge campaign resume {campaign.id}`",
            file=err,
        )
        return ExitCode.INTERRUPTED
    except CampaignError as exc:
        progress.close()
        return _fail(err, exc.message)
    finally:
        for signum in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
    progress.close()
    this_run, whole = runner.run_counts(), runner.counts()
    print(f"campaign {ended.id} {ended.state}: {_done(this_run)}", file=out)
    if whole.to_call != this_run.to_call:  # resumed: the numbers done before too
        print(f"the whole campaign: {_done(whole)}", file=out)
    if ended.state is CampaignState.PAUSED:
        print(f"`hamsa-bridge campaign resume {ended.id}` goes on where it stopped", file=out)
    elif ended.state is CampaignState.CANCELLED and whole.left:
        print(f"{whole.left} number(s) will not be called", file=out)
    print(_export_hint(ended.id), file=out)
    return ExitCode.OK if ended.state is CampaignState.FINISHED else _STOPPED


async def _counts(store: Store, campaign_id: str) -> Counts:
    history: dict[int, list[AnnouncementRecord]] = {}
    for attempt in await store.attempts(campaign_id):
        if attempt.contact_idx is not None:
            history.setdefault(attempt.contact_idx, []).append(attempt)
    reached = {idx: reached_twilio(attempts) for idx, attempts in history.items()}
    return Counts.of(await store.contacts(campaign_id), reached)


async def _find(store: Store, ref: str | None, err: TextIO) -> CampaignRecord | None:
    campaign = await store.find_campaign(ref)
    if campaign is None:
        _fail(err, f"no campaign {ref!r}" if ref else "no campaign yet")
    return campaign


# --- pause and cancel ------------------------------------------------------------------------


async def pause(settings: Settings, ref: str, *, out: TextIO, err: TextIO) -> int:
    """``campaign pause ID|NAME``: its runner dials nothing more and stops once the calls in
    progress have ended; ``resume`` goes on where it stopped."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await _find(store, ref, err)
        if campaign is None:
            return ExitCode.FAILURE
        label = f"campaign {campaign.id} ({campaign.name})"
        if campaign.state is CampaignState.PAUSED:
            print(f"{label} is already paused", file=out)
            return ExitCode.OK
        paused = await store.set_campaign_state(
            campaign.id,
            CampaignState.PAUSED,
            allowed_from=(CampaignState.RUNNING,),
            now=time.time(),
        )
    assert paused is not None
    if paused.state is not CampaignState.PAUSED:
        return _fail(err, f"{label} is {paused.state}: there is nothing to pause")
    holder = _runner(paused, time.time())
    resume_hint = f"`hamsa-bridge campaign resume {campaign.id}` goes on where it stopped"
    if holder:
        calls = paused.counts.get("active", 0)
        print(
            f"{label} paused: its runner {holder} dials nothing more from its next lease "
            f"renewal (within a few seconds) and stops once the {calls} call(s) in progress "
            f"have ended; {resume_hint}",
            file=out,
        )
    else:
        print(f"{label} paused (no runner was running it); {resume_hint}", file=out)
    return ExitCode.OK


async def cancel(settings: Settings, ref: str, *, out: TextIO, err: TextIO) -> int:
    """``campaign cancel ID|NAME``: no further call is ever placed; ``resume`` refuses it. The
    calls in progress end normally; ones a stopped runner left are settled here."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await _find(store, ref, err)
        if campaign is None:
            return ExitCode.FAILURE
        label = f"campaign {campaign.id} ({campaign.name})"
        already = campaign.state is CampaignState.CANCELLED
        cancelled = await store.set_campaign_state(
            campaign.id,
            CampaignState.CANCELLED,
            allowed_from=RESUMABLE,
            now=time.time(),
        )
        assert cancelled is not None
        if cancelled.state is not CampaignState.CANCELLED:
            return _fail(err, f"{label} is {cancelled.state}: there is nothing to cancel")
        holder = _runner(cancelled, time.time())
        counts = await _counts(store, campaign.id)
        if holder:
            print(
                f"{label} cancelled: its runner {holder} dials nothing more from its next "
                f"lease renewal (within a few seconds) and stops once the {counts.active} "
                "call(s) in progress have ended",
                file=out,
            )
            return ExitCode.OK
        if counts.active:
            # A stopped runner (Ctrl-C, a crash) left calls in flight: settle them, dial nothing.
            missing = missing_settings(settings)
            if missing:
                return _fail(
                    err,
                    f"{label} cancelled, but the {counts.active} call(s) its last runner left "
                    f"in progress cannot be settled: {explain_missing(missing)}; then run "
                    "`campaign cancel` again",
                    code=ExitCode.USAGE,
                )
            print(
                f"{label} cancelled; settling the {counts.active} call(s) its last runner left "
                "in progress (nothing more is dialled)",
                file=out,
                flush=True,
            )
            return await _drive(store, settings, cancelled, out=out, err=err, stopped=ExitCode.OK)
    state = "was already cancelled" if already else "cancelled"
    print(f"{label} {state}: {counts.left} number(s) will not be called", file=out)
    print(_export_hint(campaign.id), file=out)
    return ExitCode.OK


# --- status, export, list --------------------------------------------------------------------


def _state_line(campaign: CampaignRecord, holder: str | None) -> str:
    state = str(campaign.state)
    if campaign.finished_at is not None:
        state += f" at {_when(campaign.finished_at)}"
    if campaign.state is CampaignState.PAUSED and holder:
        state += " (its runner stops once the calls in progress have ended)"
    elif campaign.state is CampaignState.RUNNING and not holder:
        state += f" (no runner: `hamsa-bridge campaign resume {campaign.id}` goes on)"
    return state


def _status_json(
    campaign: CampaignRecord, counts: Counts, config: CampaignConfig, holder: str | None
) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "name": campaign.name,
        "state": str(campaign.state),
        "created_at": campaign.created_at,
        "finished_at": campaign.finished_at,
        "source": config.source or None,
        "runner": {"owner": holder, "lease_until": campaign.lease_until} if holder else None,
        "numbers": {
            "to_call": counts.to_call,
            "done": counts.done,
            "left": counts.left,
            "invalid": counts.invalid,
            "duplicate": counts.duplicate,
        },
        "counts": dataclasses.asdict(counts),
        "config": {
            "cps": config.cps,
            "max_concurrent": config.max_concurrent,
            "window": config.window,
            "timezone": config.timezone,
            "retries": config.retries,
            "retry_delay": config.retry_delay,
            "retry_on": list(config.retry_on),
        },
    }


async def status(
    settings: Settings, ref: str | None, *, as_json: bool = False, out: TextIO, err: TextIO
) -> int:
    """``campaign status [ID|NAME] [--json]`` (default: the newest campaign)."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await _find(store, ref, err)
        if campaign is None:
            return ExitCode.FAILURE
        counts = await _counts(store, campaign.id)
        config = CampaignConfig.from_dict(campaign.config)
    holder = _runner(campaign, time.time())
    if as_json:
        print(
            json.dumps(_status_json(campaign, counts, config, holder), ensure_ascii=False), file=out
        )
        return ExitCode.OK
    runner = f"{holder} (lease until {_when(campaign.lease_until)})" if holder else "none"
    window = f"{config.window} {config.timezone}" if config.window else "any hour"
    lines = [
        f"campaign {campaign.id} ({campaign.name}), created {_when(campaign.created_at)}"
        + (f" from {config.source}" if config.source else ""),
        f"state: {_state_line(campaign, holder)}",
        f"runner: {runner}",
        f"numbers: {counts.to_call} to call, {counts.invalid} invalid, "
        f"{counts.duplicate} duplicate",
        f"progress: {_done(counts)}",
        f"calling: {config.cps:g} per second, at most {config.max_concurrent} at once, "
        f"window {window}",
        f"retries: {config.retries} after {config.retry_delay:g} s on "
        f"{', '.join(config.retry_on) or 'nothing'}",
    ]
    print("\n".join(lines), file=out)
    return ExitCode.OK


async def export(
    settings: Settings,
    ref: str | None,
    path: Path,
    *,
    bom: bool = True,
    out: TextIO,
    err: TextIO,
) -> int:
    """``campaign export [ID|NAME] --out OUT.csv`` (default: the newest campaign)."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await _find(store, ref, err)
        if campaign is None:
            return ExitCode.FAILURE
        contacts = await store.contacts(campaign.id)
        attempts = await store.attempts(campaign.id)
    try:
        cancelled = campaign.state is CampaignState.CANCELLED
        rows = write_export(path, contacts, attempts, bom=bom, cancelled=cancelled)
    except OSError as exc:
        return _fail(err, f"cannot write {path}: {exc.strerror or exc}")
    print(f"wrote {rows} row(s) of campaign {campaign.id} ({campaign.name}) to {path}", file=out)
    return ExitCode.OK


async def list_campaigns(
    settings: Settings, *, as_json: bool = False, out: TextIO, err: TextIO
) -> int:
    """``campaign list [--json]``: every campaign, oldest first."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaigns = await store.list_campaigns()
        counts = [await _counts(store, c.id) for c in campaigns]
    if as_json:
        listing = [
            {
                "id": campaign.id,
                "name": campaign.name,
                "state": str(campaign.state),
                "created_at": campaign.created_at,
                "finished_at": campaign.finished_at,
                "to_call": count.to_call,
                "done": count.done,
            }
            for campaign, count in zip(campaigns, counts, strict=True)
        ]
        print(json.dumps(listing, ensure_ascii=False), file=out)
        return ExitCode.OK
    if not campaigns:
        print("no campaigns yet: hamsa-bridge campaign run FILE.csv --text '…'", file=out)
        return ExitCode.OK
    for campaign, count in zip(campaigns, counts, strict=True):
        print(
            f"{campaign.id}  {_when(campaign.created_at)}  {campaign.state:9}  "
            f"{count.done}/{count.to_call}  {campaign.name}",
            file=out,
        )
    return ExitCode.OK


# --- the command line ------------------------------------------------------------------------

DEPRECATED_EXPORT = (
    "hamsa-bridge campaign: deprecated: `campaign export OUT.csv [--campaign ID|NAME]` still "
    "works in this release; write `campaign export [ID|NAME] --out OUT.csv`"
)


def _looks_like_a_file(ref: str) -> bool:
    """The positional of the deprecated form (``OUT.csv``), rather than a campaign: ends in
    ``.csv`` or has a directory (ids are ``cp_…``; a default name has no ``.csv``)."""
    return ref.lower().endswith(".csv") or "/" in ref or os.sep in ref


def _export_target(args: argparse.Namespace, err: TextIO) -> tuple[str | None, Path] | str:
    """(campaign, path) from the new form or the deprecated one; a usage problem otherwise."""
    ref: str | None = args.campaign
    path: Path | None = args.out
    legacy: str | None = args.legacy_campaign
    if path is None and ref is not None and _looks_like_a_file(ref):
        path, ref = Path(ref), legacy  # `export OUT.csv [--campaign ID]`
        print(DEPRECATED_EXPORT, file=err)
    elif legacy is not None:  # `export --campaign ID --out OUT.csv`
        if ref is not None:
            return f"two campaigns given ({ref!r} and --campaign {legacy!r}): keep the first"
        ref = legacy
        print(DEPRECATED_EXPORT, file=err)
    if path is None:
        return "where to? pass --out OUT.csv"
    return ref, path


def main(settings: Settings, args: argparse.Namespace, *, out: TextIO, err: TextIO) -> int:
    """Run the ``campaign`` subcommand ``args`` (parsed by ``add_campaign_command``)."""
    command = args.campaign_command
    streams = {"out": out, "err": err}
    if command == "run":
        return asyncio.run(run(settings, args, **streams))
    if command == "resume":
        return asyncio.run(resume(settings, args.campaign, **streams))
    if command == "pause":
        return asyncio.run(pause(settings, args.campaign, **streams))
    if command == "cancel":
        return asyncio.run(cancel(settings, args.campaign, **streams))
    if command == "status":
        return asyncio.run(status(settings, args.campaign, as_json=args.json, **streams))
    if command == "export":
        target = _export_target(args, err)
        if isinstance(target, str):
            return _fail(err, f"export: {target}", code=ExitCode.USAGE)
        ref, path = target
        return asyncio.run(export(settings, ref, path, bom=not args.no_bom, **streams))
    if command == "list":
        return asyncio.run(list_campaigns(settings, as_json=args.json, **streams))
    raise AssertionError(command)
