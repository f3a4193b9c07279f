"""``hamsa-bridge campaign run|resume|status|export|list``.

``run`` checks the whole file before creating anything (every problem with its line), stores
the campaign and its options, prints its id, then runs it to the end with live progress on
stderr. Ctrl-C (SIGINT, SIGTERM) stops dialling and releases the campaign; ``resume`` settles
the calls that were in flight and goes on. Exit status: 0 finished (whatever the outcomes),
1 an error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from bridge.announcements.commands import OPTION_NAMES, explain_missing, missing_settings
from bridge.announcements.presynth import command_presynthesizer
from bridge.calls.presynth import Presynthesizer
from bridge.campaigns.config import CampaignConfig
from bridge.campaigns.contacts import load_contacts, prepare_contacts
from bridge.campaigns.export import write_export
from bridge.campaigns.progress import Counts, Progress
from bridge.campaigns.retry import reached_twilio
from bridge.campaigns.runner import CampaignRunner, ThreadLocalApi
from bridge.campaigns.template import Template
from bridge.errors import AnnouncementInvalid, CampaignError, CampaignInvalid
from bridge.settings import Settings
from bridge.store import AnnouncementRecord, CampaignRecord, Store

__all__ = ["export", "list_campaigns", "resume", "run", "status"]

FINISHED = "finished"


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _fail(err: TextIO, message: str, problems: tuple[str, ...] = ()) -> int:
    print(f"hamsa-bridge campaign: {message}", file=err)
    for problem in problems:
        print(f"  {problem}", file=err)
    return 1


def _config(settings: Settings, args: argparse.Namespace, text: str) -> CampaignConfig:
    """The campaign's options, defaults resolved now (so ``resume`` uses the same)."""
    source = args.from_number or settings.twilio_phone_number
    if not source:
        raise CampaignInvalid("pass --from +E164 or set TWILIO_PHONE_NUMBER (the caller ID)")
    retry_on = tuple(o.strip() for o in args.retry_on.split(",") if o.strip())
    return CampaignConfig(
        text=text,
        from_=source,
        speaker=args.speaker or settings.hamsa_speaker,
        dialect=args.dialect or settings.hamsa_dialect,
        language=args.language or settings.hamsa_language,
        repeat=args.repeat,
        confirm_digit=args.confirm_digit,
        repeat_digit=args.repeat_digit,
        machine_detection=args.machine_detection,
        ring_timeout=(
            args.ring_timeout if args.ring_timeout is not None else settings.bridge_ring_timeout
        ),
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
        return _fail(err, explain_missing(missing))
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
        return _fail(err, exc.message, exc.problems)
    except AnnouncementInvalid as exc:
        return _fail(err, f"{OPTION_NAMES.get(exc.field, exc.field)}: {exc.message}")
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
            )
    callable_rows = sum(1 for c in prepared.contacts if c.error is None)
    if not callable_rows:
        return _fail(err, f"{file.path} has no number to call")
    name = args.name or f"{file.path.stem} {datetime.fromtimestamp(now):%Y-%m-%d %H:%M}"
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await store.create_campaign(name, config.to_dict(), prepared.contacts, now=now)
        print(
            f"campaign {campaign.id} ({name}): {callable_rows} number(s) to call, "
            f"{len(prepared.problems)} invalid, {len(prepared.duplicates)} duplicate",
            file=out,
            flush=True,
        )
        return await _drive(store, settings, campaign, out=out, err=err)


async def resume(settings: Settings, ref: str | None, *, out: TextIO, err: TextIO) -> int:
    """``campaign resume [ID|NAME]`` (default: the newest unfinished campaign)."""
    missing = missing_settings(settings)
    if missing:
        return _fail(err, explain_missing(missing))
    async with await Store.open(settings.bridge_database_url) as store:
        if ref is None:
            unfinished = [c for c in await store.list_campaigns() if c.state != FINISHED]
            if not unfinished:
                print("no unfinished campaign to resume", file=out)
                return 0
            campaign = unfinished[-1]
        else:
            found = await store.find_campaign(ref)
            if found is None:
                return _fail(err, f"no campaign {ref!r} (see `hamsa-bridge campaign list`)")
            campaign = found
        if campaign.state == FINISHED:
            print(f"campaign {campaign.id} ({campaign.name}) is already finished", file=out)
            return 0
        print(f"campaign {campaign.id} ({campaign.name}): resuming", file=out, flush=True)
        return await _drive(store, settings, campaign, out=out, err=err)


async def _drive(
    store: Store, settings: Settings, campaign: CampaignRecord, *, out: TextIO, err: TextIO
) -> int:
    """Run the campaign with progress on ``err``; Ctrl-C/SIGTERM stop it cleanly (130)."""
    progress = Progress(err)

    def lease_wait(holder: str, until: float) -> None:
        print(
            f"waiting for the runner {holder} to let go of the campaign (its lease runs "
            f"until {_when(until)})",
            file=err,
        )

    presynth = command_presynthesizer(settings)
    try:
        return await _run(store, settings, campaign, progress, lease_wait, presynth, out, err)
    finally:
        if presynth is not None:
            await presynth.aclose()  # no contact's audio outlives the run


async def _run(
    store: Store,
    settings: Settings,
    campaign: CampaignRecord,
    progress: Progress,
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
        finished = await task
    except asyncio.CancelledError:
        if not stopped:
            raise
        progress.close()
        print(
            f"stopped: nothing more is dialled. Calls in flight are settled by "
            f"`hamsa-bridge campaign resume {campaign.id}`",
            file=err,
        )
        return 130
    except CampaignError as exc:
        progress.close()
        return _fail(err, exc.message)
    finally:
        for signum in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)
    progress.close()
    counts = runner.counts()
    print(f"campaign {finished.id} finished: {counts.describe()}", file=out)
    print(f"results: hamsa-bridge campaign export results.csv --campaign {finished.id}", file=out)
    return 0


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


async def status(settings: Settings, ref: str | None, *, out: TextIO, err: TextIO) -> int:
    """``campaign status [ID|NAME]`` (default: the newest campaign)."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await _find(store, ref, err)
        if campaign is None:
            return 1
        counts = await _counts(store, campaign.id)
        config = CampaignConfig.from_dict(campaign.config)
    now = time.time()
    state = campaign.state
    if campaign.finished_at is not None:
        state += f" at {_when(campaign.finished_at)}"
    runner = (
        f"{campaign.lease_owner} (lease until {_when(campaign.lease_until)})"
        if campaign.lease_owner and campaign.lease_until > now
        else "none"
    )
    window = f"{config.window} {config.timezone}" if config.window else "any hour"
    lines = [
        f"campaign {campaign.id} ({campaign.name}), created {_when(campaign.created_at)}"
        + (f" from {config.source}" if config.source else ""),
        f"state: {state}",
        f"runner: {runner}",
        f"progress: {Progress(sys.stderr, tty=False).line(counts)}",
        f"calling: {config.cps:g} per second, at most {config.max_concurrent} at once, "
        f"window {window}",
        f"retries: {config.retries} after {config.retry_delay:g} s on "
        f"{', '.join(config.retry_on) or 'nothing'}",
    ]
    print("\n".join(lines), file=out)
    return 0


async def export(
    settings: Settings, path: Path, ref: str | None, *, out: TextIO, err: TextIO
) -> int:
    """``campaign export OUT.csv [--campaign ID|NAME]`` (default: the newest campaign)."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaign = await _find(store, ref, err)
        if campaign is None:
            return 1
        contacts = await store.contacts(campaign.id)
        attempts = await store.attempts(campaign.id)
    try:
        rows = write_export(path, contacts, attempts)
    except OSError as exc:
        return _fail(err, f"cannot write {path}: {exc.strerror or exc}")
    print(f"wrote {rows} row(s) of campaign {campaign.id} ({campaign.name}) to {path}", file=out)
    return 0


async def list_campaigns(settings: Settings, *, out: TextIO, err: TextIO) -> int:
    """``campaign list``: every campaign, oldest first."""
    async with await Store.open(settings.bridge_database_url) as store:
        campaigns = await store.list_campaigns()
        counts = [await _counts(store, c.id) for c in campaigns]
    if not campaigns:
        print("no campaigns yet: hamsa-bridge campaign run FILE.csv --text '…'", file=out)
        return 0
    for campaign, count in zip(campaigns, counts, strict=True):
        print(
            f"{campaign.id}  {_when(campaign.created_at)}  {campaign.state:8}  "
            f"{count.finished}/{count.total}  {campaign.name}",
            file=out,
        )
    return 0
