"""What an announcement call does once its stream is authenticated: a ``CallScript``.

Play the message ``repeat`` times; with a confirm digit, ask for it, replay the message on the
repeat digit, and thank a confirming callee; record what happened; hang up through the REST API.

Keys: without a confirm digit nothing interrupts the message (the callee hears it whole). With
one, only the confirm digit (confirms at once) and the repeat digit (restarts the message)
interrupt it; any key interrupts the prompt and answers it. Replays, restarts and wrong keys all
count against ``BRIDGE_CONFIRM_MAX_REPEATS`` so a callee cannot keep the line busy forever.

Ending: the store is written first (the outcome watcher waits for ``stream_ended``), then the
call is hung up once with ``Status=completed``, only after the last utterance's mark came back
(``CallContext.say`` returns then), so nothing is cut off. If that request fails, the stream
just closes and the TwiML's ``<Hangup/>`` ends the call. A callee who hangs up first cancels the
script (``Call`` cancels it on ``stop``): what was heard is still recorded, and no REST request
is made.

The store and the REST API are best-effort here: a failure is logged and never breaks a call.

Ready at answer: the message, the prompt and the thanks are said from the ``PromptCache``
when it has them (``bridge.announcements.presynth`` puts them there while the phone rings), so
the first frame leaves as soon as the stream starts; what is not there (still synthesising in
the placing process, failed, or never presynthesised) is streamed at once, exactly as before:
the bridge never waits for a presynthesis in flight, since waiting for a whole reply can be
slower than streaming its first bytes (a presynthesis in flight in this process is stopped,
freeing its Hamsa socket for calls still ringing). The message is held by the announcement's
id for the call (a streamed message is kept, held, for its repeats) and released when the
script ends: its audio (personal data) then leaves memory and disk. With everything cached,
the call opens no Hamsa socket unless it needs one (``needs_synthesis_at_start``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import structlog

from bridge.announcements.parameters import StreamAnnouncement
from bridge.announcements.retention import retention
from bridge.announcements.spec import Confirmation
from bridge.calls.presynth import Presynthesizer
from bridge.calls.speech import SpeechOutcome
from bridge.errors import StoreError, TwilioApiError
from bridge.metrics import Metrics
from bridge.store import Store
from bridge.twilio_rest_client import TwilioApi
from bridge.voice import Voice

if TYPE_CHECKING:
    from bridge.calls.context import CallContext

__all__ = ["PROMPTS", "AnnouncementScript", "is_machine", "prompts_for", "static_prompts"]

log = structlog.get_logger("bridge.announcement")

PROMPTS: Final[dict[str, tuple[str, str]]] = {
    "ar": ("للتأكيد اضغط {confirm}، ولإعادة الاستماع اضغط {again}.", "شكرا لك، تم التأكيد."),
    "en": (
        "Press {confirm} to confirm, or {again} to hear the message again.",
        "Thank you, your confirmation was recorded.",
    ),
}
"""Per language: the confirmation prompt and the thanks. Other languages get Arabic."""

_KEY_NAMES: Final[dict[str, dict[str, str]]] = {
    "ar": {"*": "النجمة", "#": "المربع"},
    "en": {"*": "star", "#": "pound"},
}
"""How ``*`` and ``#`` are said (a TTS may read the symbols oddly, or not at all)."""

MESSAGE_LABEL: Final = "message"
PROMPT_LABEL: Final = "menu:confirm"
"""Named like an IVR menu: the prompt waits for a key, as a menu does."""
THANKS_LABEL: Final = "thanks"
AMD_WAIT: Final = 3.0
"""Seconds the prompt waits, at most, for the AMD lookup (normally done during the message)."""


def prompts_for(language: str, confirm: str, again: str) -> tuple[str, str]:
    """The prompt and the thanks in ``language`` (a tag such as ``en`` or ``en-US``)."""
    base = language.split("-")[0].lower()
    lang = base if base in PROMPTS else "ar"
    names = _KEY_NAMES[lang]
    prompt, thanks = PROMPTS[lang]
    return (
        prompt.format(confirm=names.get(confirm, confirm), again=names.get(again, again)),
        thanks,
    )


def static_prompts(
    voice: Voice, confirm_digit: str | None, repeat_digit: str
) -> tuple[tuple[str, Voice], ...]:
    """The confirmation prompt and the thanks an announcement may say, with their voice (none
    without a confirm digit)."""
    if confirm_digit is None:
        return ()
    prompt, thanks = prompts_for(voice.language, confirm_digit, repeat_digit)
    return ((prompt, voice), (thanks, voice))


def is_machine(answered_by: str | None) -> bool:
    """Twilio AMD's ``AnsweredBy`` for a voicemail or a fax (``machine_start``,
    ``machine_end_beep``…); ``human`` and ``unknown`` are treated as a person."""
    return answered_by is not None and (answered_by.startswith("machine") or answered_by == "fax")


class AnnouncementScript:
    """Plays one announcement (the one in the stream's verified parameters)."""

    def __init__(
        self,
        announcement: StreamAnnouncement,
        *,
        store: Callable[[], Awaitable[Store]],
        twilio_api: Callable[[], TwilioApi],
        wall_clock: Callable[[], float],
        metrics: Metrics,
        presynth: Presynthesizer | None = None,
    ) -> None:
        self.announcement = announcement
        self._presynth = presynth
        self._store = store
        self._api = twilio_api
        self._wall_clock = wall_clock
        self._metrics = metrics

    def texts(self) -> tuple[tuple[str, Voice], ...]:
        """Everything the call may say: the message first, then the static prompts."""
        a = self.announcement
        return ((a.text, a.voice), *static_prompts(a.voice, a.confirm_digit, a.repeat_digit))

    def needs_synthesis_at_start(self, ctx: CallContext) -> bool:
        """False when the message and the prompts are all in the prompt cache."""
        cache = ctx.prompt_cache
        return cache is None or not all(cache.has(t, v) for t, v in self.texts())

    async def __call__(self, ctx: CallContext) -> None:
        a = self.announcement
        cache = ctx.prompt_cache
        if cache is not None:
            keep = retention(a.text, a.repeat, a.confirm_digit, ctx.settings)
            cache.hold(a.text, a.voice, a.id, until=self._wall_clock() + keep)
            ready = cache.has(a.text, a.voice)
            self._metrics.presynth.labels(event="used" if ready else "streamed").inc()
            ctx.details["message"] = "cached" if ready else "streamed"
            if not ready and self._presynth is not None:
                self._presynth.abandon(a.id)  # in flight here: free its slot for calls ringing
        try:
            await _Run(self, ctx).execute()
        finally:
            if cache is not None:
                cache.release(a.text, a.voice, a.id)


class _Run:
    """One call of the announcement."""

    def __init__(self, script: AnnouncementScript, ctx: CallContext) -> None:
        self.script = script
        self.a = script.announcement
        self.ctx = ctx
        self.plays = 0
        """Complete plays of the message (its mark came back, nothing skipped)."""
        self.plays_unconfirmed = 0
        """Plays sent to their end whose final mark never came back."""
        self.restarts = 0
        self.replays_left = ctx.settings.bridge_confirm_max_repeats
        self.confirmation: Confirmation | None = None
        self.answered_by: str | None = None
        self._hang_up_task: asyncio.Task[None] | None = None
        self._started: asyncio.Task[None] | None = None

    async def execute(self) -> None:
        a = self.a
        ctx = self.ctx
        amd = asyncio.create_task(self.answered()) if a.machine_detection else None
        # Not awaited before speaking: the callee has answered and waits for the first word.
        self._started = asyncio.create_task(self.record(started=True))
        ending = "failed"
        try:
            if a.confirm_digit is None:
                for _ in range(a.repeat):
                    await self.message(barge_in=False)
            else:
                await self.confirming(a.confirm_digit, amd)
            ending = "completed"
        except asyncio.CancelledError:
            ending = "hung_up"  # Call cancels the script when the stream stops
            raise
        finally:
            if amd is not None and not amd.done():
                amd.cancel()
            await self.finish(ending)
        if ending == "completed":
            ctx.details["hangup"] = "rest"
            self._hang_up_task = asyncio.create_task(self.hang_up())
            # Shielded: Twilio stops the stream as soon as it hangs up, which cancels this
            # script; the request's outcome must still be logged.
            await asyncio.shield(self._hang_up_task)

    # --- speaking ---------------------------------------------------------------------------

    async def message(self, *, barge_in: bool, interrupt_keys: str | None = None) -> SpeechOutcome:
        lost = self.ctx.marks_lost
        outcome = await self.ctx.say(
            self.a.text,
            self.a.voice,
            label=MESSAGE_LABEL,
            cacheable=True,  # held (see the module docstring): played once ready, then dropped
            barge_in=barge_in,
            interrupt_keys=interrupt_keys,
        )
        if outcome is SpeechOutcome.PLAYED:
            if self.ctx.marks_lost > lost:
                self.plays_unconfirmed += 1  # played, not confirmed heard
            else:
                self.plays += 1
        return outcome

    async def confirming(self, confirm: str, amd: asyncio.Task[str | None] | None) -> None:
        """Play the message, then ask for ``confirm`` until answered, refused or out of tries."""
        ctx = self.ctx
        again = self.a.repeat_digit
        prompt, thanks = prompts_for(self.a.voice.language, confirm, again)
        owed = self.a.repeat
        while True:
            while owed:
                keys = confirm + (again if self.replays_left else "")
                outcome = await self.message(barge_in=True, interrupt_keys=keys)
                if outcome is not SpeechOutcome.INTERRUPTED:
                    owed -= 1
                    if confirm in await self.drain():  # pressed as the message began or ended
                        await self.confirmed(thanks)
                        return
                    continue
                key = next((k for k in await self.drain() if k in keys), None)
                if key == confirm:
                    await self.confirmed(thanks)
                    return
                if key == again:
                    self.replays_left -= 1
                    self.restarts += 1
                    log.info("announcement_restarted", replays_left=self.replays_left)
            if amd is not None and await self.machine(amd):
                self.confirmation = Confirmation.NOT_CONFIRMED
                ctx.details["prompt"] = "skipped: answered by a machine"
                return
            if not ctx.has_key():  # a key pressed right after the message answers at once
                await ctx.say(prompt, self.a.voice, label=PROMPT_LABEL, cacheable=True)
            key = await ctx.key(ctx.settings.bridge_confirm_wait)
            log.info("announcement_answer", key=key, replays_left=self.replays_left)
            if key == confirm:
                await self.confirmed(thanks)
                return
            if key is None or self.replays_left <= 0:
                self.confirmation = Confirmation.NOT_CONFIRMED
                return
            self.replays_left -= 1
            if key == again:
                owed = 1  # the message again, then the prompt again
            # any other key: the prompt again

    async def machine(self, amd: asyncio.Task[str | None]) -> bool:
        """Whether AMD says a machine answered; unknown after ``AMD_WAIT``: a person (better
        a prompt a machine ignores than a person never asked)."""
        try:
            async with asyncio.timeout(AMD_WAIT):
                return is_machine(await asyncio.shield(amd))
        except TimeoutError:
            log.warning("announcement_amd_unknown", waited=AMD_WAIT)
            return False

    async def confirmed(self, thanks: str) -> None:
        self.confirmation = Confirmation.CONFIRMED
        await self.drain()
        await self.ctx.say(thanks, self.a.voice, label=THANKS_LABEL, cacheable=True, barge_in=False)

    async def drain(self) -> list[str]:
        """Take every key pressed so far."""
        keys: list[str] = []
        while self.ctx.has_key():
            key = await self.ctx.key(0)
            if key is not None:
                keys.append(key)
        return keys

    # --- Twilio and the store ---------------------------------------------------------------

    async def answered(self) -> str | None:
        """``AnsweredBy`` of the call (Twilio's AMD): the Calls API, else a status callback
        already recorded; ``None`` if neither says."""
        answered: str | None = None
        try:
            call = await asyncio.to_thread(lambda: self.script._api().fetch_call(self.ctx.call_sid))
            answered = call.answered_by
        except TwilioApiError as exc:
            log.warning("announcement_amd_lookup_failed", error=exc.message)
        if answered is None:
            try:
                store = await self.script._store()
                record = await store.get_announcement(self.a.id)
                answered = record.answered_by if record is not None else None
            except (StoreError, OSError) as exc:
                log.warning("announcement_store_failed", error=str(exc))
        self.answered_by = answered
        return answered

    async def record(
        self,
        *,
        started: bool = False,
        ended: bool = False,
        plays: int | None = None,
        plays_unconfirmed: int | None = None,
        confirmation: str | None = None,
    ) -> None:
        try:
            store = await self.script._store()
            await store.record_stream(
                self.a.id,
                now=self.script._wall_clock(),
                started=started,
                ended=ended,
                plays=plays,
                plays_unconfirmed=plays_unconfirmed,
                confirmation=confirmation,
            )
        except (StoreError, OSError) as exc:
            log.error("announcement_store_failed", announcement=self.a.id, error=str(exc))

    async def finish(self, ending: str) -> None:
        """Record what was heard and say it in the call's summary (also when cancelled)."""
        ctx = self.ctx
        if self.a.confirm_digit is not None and self.confirmation is None:
            self.confirmation = Confirmation.NOT_CONFIRMED  # hung up (or failed) before answering
        confirmation = self.confirmation.value if self.confirmation is not None else None
        ctx.details.update(
            announcement=self.a.id,
            plays=self.plays,
            plays_unconfirmed=self.plays_unconfirmed,
            restarts=self.restarts,
            confirmation=confirmation,
            answered_by=self.answered_by,
        )
        played = f"message played {self.plays}x" + (
            f" (+{self.plays_unconfirmed}x not confirmed heard)" if self.plays_unconfirmed else ""
        )
        played += f", {confirmation}" if confirmation else ""
        ctx.outcome = ending
        if ending == "completed":
            ctx.reason = played
        else:
            ctx.reason = f"ended before the announcement's end: {played}"
            ctx.details["hangup"] = "callee" if ending == "hung_up" else "<Hangup/>"
        # Shielded: a second cancellation (server shutdown) must not lose this write.
        write = asyncio.ensure_future(self._final_record(confirmation))
        await asyncio.shield(write)

    async def _final_record(self, confirmation: str | None) -> None:
        if self._started is not None:
            await self._started  # the stream's start is written first
        await self.record(
            ended=True,
            plays=self.plays,
            plays_unconfirmed=self.plays_unconfirmed,
            confirmation=confirmation,
        )

    async def hang_up(self) -> None:
        """``Status=completed`` once; a failure leaves it to the TwiML's ``<Hangup/>``."""
        call_sid = self.ctx.call_sid
        try:
            live = await asyncio.to_thread(lambda: self.script._api().hang_up(call_sid))
        except TwilioApiError as exc:
            self.ctx.details["hangup"] = "failed"
            log.error("announcement_hang_up_failed", error=exc.message, fallback="<Hangup/>")
            return
        if not live:
            self.ctx.details["hangup"] = "already-ended"
        log.info("announcement_hung_up", live=live)
