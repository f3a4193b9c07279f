"""The seam between the core call and the features that give calls something to do.

A *feature* (the greeting, an IVR flow, outbound announcements, or one of your own) plugs into
the bridge with two things, both defined here:

* an **admission hook** (:class:`AdmissionHook`): ``admit(start)`` looks at a stream's ``start``
  (its CallSid, account and ``<Parameter>`` values) and says whether the stream is the feature's,
  and if so whether it may become a call;
* a **call script** (:class:`CallScript`): ``await script(ctx)`` is the call, once admitted; it
  speaks and reads keys through its :class:`CallContext`, and the call ends when it returns.

``create_app`` composes the hooks, in order (``bridge.app``); the ``Call`` asks them in turn.

**When admit is called.** Once per stream, when its ``start`` arrived, before anything is
allocated for it: no Hamsa socket, no playback, no place among the calls. A stream that never
sends ``start`` (in time) never reaches the hooks.

**What admit returns.**

* ``None``: not this feature's stream (e.g. not its kind of token); the next hook is asked. A
  stream no hook takes is refused.
* a :class:`Rejection`: the feature's stream, refused (a forged, altered or expired token, a
  stream from another account). The ``Call`` logs ``stream_rejected`` with its ``reason``,
  counts the call as ``rejected`` and closes the stream with 1008 (policy violation). Say why
  in ``reason``, never with a secret or a token in it.
* an :class:`Admission`: the stream is authentic. It names the script to run, the single-use
  ``token`` it proved and until when that token lives, the fields of the ``call_started`` line,
  and optionally a ``claim``.

**What admit must not do.** Block, or do I/O: it runs on the event loop for every stream,
authenticated or not, and may be asked about streams that are not its own (anything with I/O
goes in ``claim``, which runs only for a stream already authenticated). Allocate anything a
refused stream would leak, or start the call's work: the call may still be refused after it.
Admit on a parameter it has not verified: a stream's parameters come from whoever opened the
socket unless a token MACs them (``bridge.stream_token`` binds the CallSid only;
``bridge.announcements.parameters`` MACs every parameter). Refusing on one is always safe.

**What the caller does next**, for an ``Admission``, in this order (each refusal: 1008, logged
as ``stream_rejected``, counted as ``rejected``; no Hamsa socket):

1. refuses the ``token`` if it was already accepted here (a replay; remembered until
   ``expires_at``);
2. refuses the stream if ``BRIDGE_MAX_CALLS`` calls are in progress (also counted as
   ``streams_refused{reason="capacity"}``);
3. refuses a second stream for a CallSid already streaming here; otherwise the stream now holds
   its place among the calls (the checks and the registration are one step) and
   ``call_started`` is logged;
4. awaits ``claim()``, if any: the feature's last word, which may do I/O (e.g. the store's atomic
   claim, which makes a token single-use across replicas). It returns ``None`` to accept, or a
   ``Rejection``; it must fail closed (an unreachable store is a ``Rejection``);
5. opens the call's Hamsa socket (unless the script :class:`KnowsItsFirstWords` and says it can
   wait), its playback, and runs the script under the call's task group; the call ends when the
   script returns (the stream is then closed 1000 and Twilio moves on to the TwiML after
   ``</Connect>``), or when the caller hangs up (the script is cancelled).

Resources: a hook or a script that holds something (an HTTP client) has ``async aclose()``; the
app calls it once, at shutdown (:func:`aclose`). Whatever a feature needs beyond the stream (the
store, the REST client, a clock) it gets at construction, in ``create_app``: the ``Call`` knows
nothing of them.

**Speech input** (docs/speech-input.md). A script that :class:`Listens` and says so at the
stream's start has its caller's audio decoded and cut into utterances (``bridge.calls.listener``);
it then reads keys *and* speech with :meth:`CallContext.next_input`, and may let speech interrupt
a prompt (``say(..., speech_barge_in=True)``). Other calls never decode the caller's audio.

This module imports nothing heavy (no Starlette, no store, no feature): a feature and its tests
can import it alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from bridge.calls.prompt_cache import PromptCache
    from bridge.calls.speech import Speaker, SpeechOutcome
    from bridge.metrics import Metrics
    from bridge.protocols.twilio_stream_server import Started
    from bridge.settings import Settings
    from bridge.voice import Voice

__all__ = [
    "Admission",
    "AdmissionHook",
    "CallContext",
    "CallScript",
    "Heard",
    "Input",
    "KnowsItsFirstWords",
    "Listens",
    "NotUnderstood",
    "Rejection",
    "aclose",
]

SPEECH_MATCH_RESULTS: Final = frozenset({"matched", "no_match", "digits", "invalid"})
"""What :meth:`CallContext.record_match` accepts (``bridge.metrics.SPEECH_MATCH_RESULTS``)."""


@dataclass(frozen=True, slots=True, repr=False)
class Heard:
    """What the caller said: a transcript (normalised by the IVR, not here).

    The caller's personal data: its ``repr`` shows the length only, so an input logged by
    mistake does not leak it (docs/speech-input.md, "Privacy")."""

    text: str

    def __repr__(self) -> str:
        return f"Heard(<{len(self.text)} chars>)"


@dataclass(frozen=True, slots=True)
class NotUnderstood:
    """The caller spoke but no transcript came: ``reason`` is ``error``, ``timeout``,
    ``thinking`` or ``empty`` (Hamsa's answer), or ``timeout`` when the bridge gave up waiting."""

    reason: str


Input: TypeAlias = str | Heard | NotUnderstood
"""What :meth:`CallContext.next_input` returns: one key (a ``str``), or what was heard."""


class CallContext:
    """What a call's script sees: who called, how to speak, the keys pressed, the hang-up."""

    def __init__(
        self,
        settings: Settings,
        started: Started,
        speaker: Speaker,
        hangup: asyncio.Event,
        *,
        prompt_cache: PromptCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.prompt_cache = prompt_cache
        """The process' prompt cache (what ``say(..., cacheable=True)`` plays from)."""
        self.call_sid = started.call_sid
        self.stream_sid = started.stream_sid
        self.parameters = started.custom_parameters
        self._keys: deque[str] = deque()
        self._key_arrived = asyncio.Event()
        self.keys_pressed: list[str] = []
        self.barge_in = True
        """A key pressed while speaking interrupts the speech (and is still queued as input)."""
        self.interrupt_keys: str | None = None
        """With ``barge_in``, only these keys interrupt (``None``: any key)."""
        self.speaking = False
        self.outcome: str | None = None
        """Set by the script: completed, transferred, failed… (None: the caller ended it)."""
        self.reason = ""
        self.details: dict[str, object] = {}
        """Anything the script wants in the call's summary line (e.g. the IVR path)."""
        self._speaker = speaker
        self._hangup = hangup
        self._metrics = metrics
        # --- speech input (docs/speech-input.md)
        self.listens = False
        """The script takes speech: the caller's audio is decoded and cut into utterances (set
        by the call at the stream's start, from :class:`Listens`)."""
        self.speech_barge_in = False
        """During a ``say(..., speech_barge_in=True)``: the caller's speech interrupts it."""
        self._window = 0
        """The current listening window's number: a transcript for another one is stale."""
        self._accepting = False
        """An utterance starting now is taken as input (for window ``_window``)."""
        self._claimed = False
        """An utterance of window ``_window`` started; its transcript is awaited."""
        self._result: Heard | NotUnderstood | None = None
        """The transcript of window ``_window``, delivered and not yet taken."""
        self._changed = asyncio.Event()
        """Set on a key, an utterance's start and a transcript: ``next_input`` looks again."""
        self.on_window_closed: Callable[[], None] | None = None
        """Called when a listening window ends (the listener stops waiting for its answers)."""
        self.on_window_opened: Callable[[], None] | None = None
        """Called when a listening window opens (the listener may hand it the utterance the
        caller began just before: see ``Listener``)."""
        self.transcript_wait = settings.bridge_speech_max_seconds + settings.hamsa_stt_timeout + 1.0
        """Longest ``next_input`` waits for the transcript of an utterance that started:
        ``BRIDGE_SPEECH_MAX_SECONDS + HAMSA_STT_TIMEOUT + 1``."""

    async def say(
        self,
        text: str,
        voice: Voice | None = None,
        *,
        label: str = "utt",
        cacheable: bool = False,
        barge_in: bool = True,
        interrupt_keys: str | None = None,
        speech_barge_in: bool = False,
    ) -> SpeechOutcome:
        """Speak and wait until it was played, or interrupted by a key (when ``barge_in``;
        only by one of ``interrupt_keys`` when given: the others are just queued).

        ``speech_barge_in`` (a call that :attr:`listens`): the caller starting to speak
        interrupts it too, exactly as a key does, and that utterance is the answer the next
        :meth:`next_input` returns (once transcribed). Otherwise speech over a prompt is
        ignored: a noisy line, or the prompt's own echo, must not answer it. A prompt begins a
        new listening window: a transcript still awaited from before is dropped (stale)."""
        self._close_window()
        self.speaking = True
        self.barge_in = barge_in
        self.interrupt_keys = interrupt_keys
        self.speech_barge_in = self._accepting = speech_barge_in and self.listens
        try:
            return await self._speaker.say(text, voice, label=label, cacheable=cacheable)
        finally:
            self.speaking = False
            self.barge_in = True
            self.interrupt_keys = None
            self.speech_barge_in = self._accepting = False

    @property
    def marks_lost(self) -> int:
        """Utterances of this call played to their end whose mark Twilio never echoed (``say``
        reports them played): a script compares it around a ``say`` to tell "played, not
        confirmed heard" from heard."""
        return self._speaker.stats.marks_lost

    def has_key(self) -> bool:
        """A key was pressed and not yet taken."""
        return bool(self._keys)

    async def key(self, within: float) -> str | None:
        """The next key (one already pressed, or one within ``within`` seconds), or None."""
        if not self._keys:
            self._key_arrived.clear()
            try:
                async with asyncio.timeout(within):
                    await self._key_arrived.wait()
            except TimeoutError:
                return None
        return self._keys.popleft()

    def unread(self, digit: str) -> None:
        """Put a key back in front: the next ``key()`` returns it."""
        self._keys.appendleft(digit)

    async def hung_up(self, within: float) -> bool:
        """Wait (bounded) for Twilio to end the stream; True if it did."""
        try:
            async with asyncio.timeout(within):
                await self._hangup.wait()
        except TimeoutError:
            return False
        return True

    async def next_input(self, within: float, *, speech: bool) -> Input | None:
        """The caller's next answer: a key, what was heard, or ``None`` (nothing within
        ``within`` seconds: silence).

        A key already waiting is returned at once. Without ``speech`` (or in a call that does
        not :attr:`listen <listens>`) this is :meth:`key`. With it the call listens: the first
        of a key or the start of an utterance within ``within`` seconds; an utterance that
        started (here, or during a prompt with ``speech_barge_in``) is waited for to its
        transcript, bounded by :attr:`transcript_wait` (then ``NotUnderstood("timeout")``), and
        a key pressed meanwhile wins. When it returns the window is closed: a transcript still
        to come is dropped as stale.
        """
        try:
            if self._keys:
                return self._keys.popleft()
            if not (speech and self.listens):
                return await self.key(within)
            if not self._claimed and self._result is None:
                self._accepting = True  # nothing carried over from the prompt: listen now
                if self.on_window_opened is not None:
                    self.on_window_opened()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while not self._claimed and self._result is None:
                if self._keys:
                    return self._keys.popleft()
                if not await self._changed_within(deadline - loop.time()):
                    return None
            self._accepting = False
            deadline = loop.time() + self.transcript_wait
            while True:
                if self._keys:
                    return self._keys.popleft()  # a key pressed meanwhile wins
                if self._result is not None:
                    return self._result
                if not await self._changed_within(deadline - loop.time()):
                    return NotUnderstood("timeout")
        finally:
            self._close_window()

    async def _changed_within(self, seconds: float) -> bool:
        """Wait (at most ``seconds``) for a key, an utterance's start or a transcript."""
        if seconds <= 0:
            return False
        self._changed.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def _close_window(self) -> None:
        """The current window is over: what it awaited is stale from now on."""
        self._window += 1
        self._accepting = self._claimed = False
        self._result = None
        if self.on_window_closed is not None:
            self.on_window_closed()

    @property
    def window(self) -> int:
        """The current listening window's number (the listener tags utterances with it)."""
        return self._window

    def speech_started(self) -> int | None:
        """The caller started an utterance (``bridge.calls.listener``): the window it answers,
        or ``None`` if nothing listens for it now (it is then never transcribed). During a
        prompt with ``speech_barge_in`` the prompt is interrupted, as by a key."""
        if not self._accepting:
            return None
        self._accepting = False
        self._claimed = True
        if self.speaking and self.speech_barge_in:
            self._speaker.interrupt()
        self._changed.set()
        return self._window

    def speech_heard(self, window: int, result: Heard | NotUnderstood) -> bool:
        """The transcript of the utterance that started in ``window``; False if that window is
        over (the answer is stale: dropped)."""
        if window != self._window or not self._claimed:
            return False
        self._result = result
        self._changed.set()
        return True

    def record_match(self, result: str) -> None:
        """What the script made of a transcript: ``matched``, ``no_match``, ``digits`` or
        ``invalid`` (the ``speech_matches`` metric; never the text)."""
        if result not in SPEECH_MATCH_RESULTS:
            raise ValueError(f"unknown speech match result {result!r}")
        if self._metrics is not None:
            self._metrics.speech_matches.labels(result=result).inc()

    def key_pressed(self, digit: str) -> None:
        self.keys_pressed.append(digit)
        self._keys.append(digit)
        self._key_arrived.set()
        self._changed.set()
        wanted = self.interrupt_keys is None or digit in self.interrupt_keys
        if self.speaking and self.barge_in and wanted:
            self._speaker.interrupt()


class CallScript(Protocol):
    """What a call does once its stream is admitted; the call ends when it returns.

    Any ``async def script(ctx: CallContext) -> None`` is one. A script is cancelled when the
    caller hangs up (or the bridge drains): clean up in ``finally``. It sets ``ctx.outcome`` and
    ``ctx.reason`` (default: ``completed``) and may add to ``ctx.details`` (the summary line).
    One script may serve many calls at once (keep per-call state in the call, not in it); if it
    holds a resource, it has ``async aclose()`` (see :func:`aclose`).
    """

    def __call__(self, ctx: CallContext, /) -> Awaitable[None]: ...


@runtime_checkable
class KnowsItsFirstWords(Protocol):
    """A script that can tell, at the stream's start, whether its first words need Hamsa.

    The call's Hamsa socket is opened at once (hiding its ~1.2 s connect behind call setup)
    unless the script says nothing needs synthesis right away (its first prompts are all in the
    prompt cache): then the socket is opened, or taken from the warm pool, on the first request
    only, and a call that never needs one never opens one."""

    def needs_synthesis_at_start(self, ctx: CallContext) -> bool: ...


@runtime_checkable
class Listens(Protocol):
    """A script that may take speech: asked once, at the stream's start.

    True: the call decodes the caller's audio and cuts it into utterances (a ``Listener``:
    a few µs per 20 ms frame, ~0.02 % of a core per call, ``bench/listening.py``), and
    :attr:`CallContext.listens` is set,
    so ``next_input(speech=True)`` and ``say(..., speech_barge_in=True)`` take speech. A script
    that is not a ``Listens``, says False, or whose check fails, never decodes the caller's
    audio (today's cost) and its ``next_input`` reads keys only."""

    def takes_speech(self, ctx: CallContext) -> bool: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """A stream refused: closed with 1008; ``reason`` is logged (``stream_rejected``)."""

    reason: str

    @classmethod
    def token(cls, problem: str) -> Rejection:
        """A stream whose token (or what it MACs) does not verify."""
        return cls(f"stream token rejected: {problem}")


@dataclass(frozen=True, slots=True)
class Admission:
    """An authentic stream: what the call runs, and what the caller checks before it does."""

    script: CallScript
    token: str
    """The credential the stream proved: single-use (the caller refuses it a second time)."""
    expires_at: float
    """Unix seconds: the token's own expiry, until when the caller remembers it as used."""
    call_started: Mapping[str, object] = field(default_factory=dict)
    """The ``call_started`` line's fields (``direction``, the feature's own ids)."""
    claim: Callable[[], Awaitable[Rejection | None]] | None = None
    """The feature's last check, awaited after the caller's own and before anything is
    allocated; may do I/O; ``None`` to accept. Must fail closed."""


class AdmissionHook(Protocol):
    """A feature's door: which streams are its own, and whether each may become a call."""

    def admit(self, start: Started) -> Admission | Rejection | None:
        """``None``: not this feature's stream; a ``Rejection``: refused; an ``Admission``:
        authentic (the caller's checks and ``claim`` follow). Synchronous and without I/O."""
        ...


async def aclose(resource: object) -> None:
    """``await resource.aclose()`` if it has one (a hook or a script holding, e.g., an HTTP
    client): what the app does for each of its hooks at shutdown."""
    closer: Callable[[], Awaitable[object]] | None = getattr(resource, "aclose", None)
    if closer is not None:
        await closer()
