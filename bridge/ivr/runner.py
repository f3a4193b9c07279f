"""Run an IVR ``Flow`` on a call: a ``CallScript``.

Node by node, from ``flow.start``: speak (static prompts from the prompt cache), wait for keys,
branch. Barge-in: a key pressed during a prompt interrupts it (``clear``, stale audio dropped,
Hamsa reply drained) and is taken as input; ``barge_in = false`` plays the prompt to its end and
keeps the key for after it. Keys typed ahead stay queued: a menu whose key is already waiting
does not play its prompt. A summary line per call logs the path, the keys and the outcome.

A menu or gather with ``input = ["dtmf", "speech"]`` waits with ``CallContext.next_input``
instead of ``key``: a key, or what the caller said (matched against the options' phrases, or
read as digits), or speech-to-text's failure (then keys only for the rest of the visit, after
``keys_prompt``). What each answer means is decided in ``bridge.ivr.answers`` (pure). The
summary line and ``ivr_retry`` say ``speech`` and the match result; the transcript itself is
logged at debug level only (``ivr_heard``): it is the caller's personal data.

The call's Hamsa socket is opened when the stream starts unless every prompt spoken before the
caller's first input (from ``flow.start`` through ``say`` nodes to the first menu, gather,
transfer or hang-up) is static and already in the prompt cache: then it is opened, or taken
from the warm pool, only when a prompt first needs synthesis (``needs_synthesis_at_start``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog

from bridge.calls.context import CallContext, Heard, Input, NotUnderstood
from bridge.calls.speech import SpeechOutcome
from bridge.errors import TwilioApiError
from bridge.ivr.answers import Answer, accepts_keys, gather_answer, gather_valid, menu_answer
from bridge.ivr.flow import Flow, Gather, Hangup, Menu, Node, Say, Transfer, Webhook, is_static
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS
from bridge.protocols.twilio_ids import E164_NUMBER
from bridge.twilio_rest_client import TwilioApi
from bridge.voice import Voice
from twiml.transfer import dial_twiml

log = structlog.get_logger("bridge.ivr")

FINISH_KEY_GRACE = 0.7
"""Seconds a full fixed-length gather waits for a trailing finish key (``#``) to swallow it."""
MAX_STEPS = 200
"""Nodes one call may visit: a loop in a flow ends the call instead of running forever."""
PATH_IN_LOGS = 30
MAX_ANSWER_BYTES = 64 * 1024
_DIALABLE = re.compile(rf"^({E164_NUMBER}|sip:[^\s@]+@[^\s@]+)$")
"""What a transfer may dial once its placeholders are filled: an E.164 number or a SIP address."""
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

Transferrer = Callable[[str, str], Any]
"""``(call_sid, twiml) -> None``: update the live call (sync; run in a thread)."""


def render(text: str, variables: Mapping[str, str]) -> str:
    """Fill ``{name}`` placeholders; unknown names become empty (validation catches them)."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1), ""), text)


@dataclass(slots=True)
class _Step:
    next: str | None
    """The node to go to; None ends the call."""


class FlowRunner:
    """Executes ``flow`` for each call it is given (one instance serves all calls)."""

    def __init__(self, flow: Flow, *, transfer: Transferrer | None = None) -> None:
        self.flow = flow
        self._transfer = transfer
        self._client: httpx2.AsyncClient | None = None

    def http(self) -> httpx2.AsyncClient:
        """One HTTP client for every webhook of every call (building one costs ~20 ms of CPU)."""
        if self._client is None:
            self._client = httpx2.AsyncClient(follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @classmethod
    def with_twilio(cls, flow: Flow, api: Callable[[], TwilioApi]) -> FlowRunner:
        def transfer(call_sid: str, twiml: str) -> None:
            api().update_call(call_sid, twiml=twiml)

        return cls(flow, transfer=transfer)

    def takes_speech(self, ctx: CallContext) -> bool:
        """``Listens``: a node of the flow takes speech, so its calls decode the caller's audio
        (a keys-only flow keeps the cost of a call that does not listen)."""
        return self.flow.takes_speech

    def needs_synthesis_at_start(self, ctx: CallContext) -> bool:
        """True unless the prompts up to the caller's first input are all cached."""
        cache = ctx.prompt_cache
        if cache is None:
            return True
        run = _Run(self, ctx)
        name: str | None = self.flow.start
        seen: set[str] = set()
        while name is not None and name not in seen:
            seen.add(name)
            node = self.flow.nodes[name]
            name = None
            match node:
                case Say(text=text, next=following):
                    texts, name = [text], following
                case Menu(prompt=text) | Gather(prompt=text) | Hangup(text=text):
                    texts = [text]
                case Transfer(message=text):
                    texts = [text]
                case Webhook():
                    return True  # what follows depends on its answer: keep the eager open
            for text in texts:
                if not text:
                    continue
                if not is_static(text):
                    return True
                if not cache.has(text[:MAX_TEXT_CHARS], run.voice(node)):
                    return True
        return False

    async def __call__(self, ctx: CallContext) -> None:
        run = _Run(self, ctx)
        try:
            await run.execute()
        finally:
            ctx.details["path"] = run.path[-PATH_IN_LOGS:]
            speech: dict[str, str] = {}
            if self.flow.takes_speech:
                speech["speech"] = " ".join(run.answers[-PATH_IN_LOGS:])
            log.info(
                "ivr_summary",
                flow=self.flow.name,
                path=" > ".join(run.path[-PATH_IN_LOGS:]),
                keys="".join(ctx.keys_pressed),
                **speech,
                outcome=ctx.outcome or "hung_up",
            )


class _Run:
    """One call's walk through the flow."""

    def __init__(self, runner: FlowRunner, ctx: CallContext) -> None:
        self.runner = runner
        self.flow = runner.flow
        self.ctx = ctx
        self.path: list[str] = []
        self.answers: list[str] = []
        """``node:result`` for each speech answer and fallback (never what was said)."""
        params = ctx.parameters
        self.variables: dict[str, str] = {
            "from": params.get("from", ""),
            "to": params.get("to", ""),
            "call_sid": ctx.call_sid,
            "digits": "",
        }

    async def execute(self) -> None:
        name: str | None = self.flow.start
        while name is not None:
            if len(self.path) >= MAX_STEPS:
                self.ctx.outcome = "failed"
                self.ctx.reason = f"flow visited {MAX_STEPS} nodes: a loop?"
                log.error("ivr_loop", path=self.path[-10:])
                return
            self.path.append(name)
            node = self.flow.nodes[name]
            log.info("ivr_node", node=name, kind=type(node).__name__.lower())
            step = await self.visit(name, node)
            name = step.next
        if self.ctx.outcome is None:
            self.ctx.outcome = "completed"

    def voice(self, node: Node) -> Voice:
        base = self.flow.voice.apply(self.ctx.settings.voice)
        return base if isinstance(node, Webhook) else node.voice.apply(base)

    async def say(
        self,
        name: str,
        node: Node,
        text: str,
        *,
        barge_in: bool,
        speech_barge_in: bool | None = None,
    ) -> SpeechOutcome:
        """Speak ``text`` as ``node``; ``speech_barge_in`` is passed on only when given (by the
        nodes that take speech): every other prompt is spoken exactly as before."""
        if not text:
            return SpeechOutcome.PLAYED
        kind = type(node).__name__.lower()
        rendered = render(text, self.variables)[:MAX_TEXT_CHARS]
        label = f"{kind}:{name}"
        if speech_barge_in is None:
            return await self.ctx.say(
                rendered,
                self.voice(node),
                label=label,
                cacheable=is_static(text),
                barge_in=barge_in,
            )
        return await self.ctx.say(
            rendered,
            self.voice(node),
            label=label,
            cacheable=is_static(text),
            barge_in=barge_in,
            speech_barge_in=speech_barge_in,
        )

    async def visit(self, name: str, node: Node) -> _Step:
        match node:
            case Say():
                await self.say(name, node, node.text, barge_in=node.barge_in)
                return _Step(node.next)
            case Menu():
                return await self.menu(name, node)
            case Gather():
                return await self.gather(name, node)
            case Webhook():
                return await self.webhook(name, node)
            case Transfer():
                return await self.transfer(name, node)
            case Hangup():
                await self.say(name, node, node.text, barge_in=False)
                self.ctx.outcome = "completed"
                self.ctx.reason = f"hung up at {name}"
                return _Step(None)

    async def menu(self, name: str, node: Menu) -> _Step:
        failures = 0
        listening = node.takes_speech
        prompt = node.prompt
        while True:
            keys = accepts_keys(node, listening=listening)
            if not (keys and self.ctx.has_key()):  # a key typed ahead answers at once
                await self.prompt(name, node, prompt, listening=listening)
            got = await self.wait(node, node.timeout, listening=listening)
            answer = menu_answer(node, got, listening=listening)
            if answer.action == "fallback":
                listening, prompt = False, self.fall_back(name, node, got)
                continue
            self.noted(name, answer)
            if answer.action == "next" and answer.next is not None and answer.value is not None:
                self.variables["digits"] = answer.value
                return _Step(answer.next)
            failures += 1
            self.retry_log(name, node, answer, failures)
            if failures > node.retries:
                return self.gave_up(name, node.on_failure)
            retry_text = node.no_input if answer.action == "no_input" else node.invalid
            await self.prompt(name, node, retry_text, listening=listening)

    async def gather(self, name: str, node: Gather) -> _Step:
        failures = 0
        listening = node.takes_speech
        prompt = node.prompt
        while True:
            keys = accepts_keys(node, listening=listening)
            if not (keys and self.ctx.has_key()):
                await self.prompt(name, node, prompt, listening=listening)
            got = await self.wait(node, node.timeout, listening=listening)
            answer = gather_answer(node, got, listening=listening)
            if answer.action == "fallback":
                listening, prompt = False, self.fall_back(name, node, got)
                continue
            self.noted(name, answer)
            entered = answer.value
            if answer.action == "collect" and entered is not None:
                entered = await self.collect(node, entered)
                if gather_valid(node, entered):
                    answer = Answer("next", next=node.next, value=entered)
                else:
                    answer = Answer("invalid", value=entered)
            if answer.action == "next" and entered is not None:
                self.variables[node.store] = entered
                self.variables["digits"] = entered
                return _Step(node.next)
            failures += 1
            self.retry_log(name, node, answer, failures)
            if failures > node.retries:
                return self.gave_up(name, node.on_failure)
            if answer.action == "invalid":
                await self.prompt(name, node, node.invalid, listening=listening)

    async def prompt(self, name: str, node: Menu | Gather, text: str, *, listening: bool) -> None:
        """A menu's or gather's text. A keys-only node speaks as it always did; a node that
        takes speech lets the caller's voice interrupt it (``speech_barge_in``) while it still
        listens, and keys only when they answer it."""
        if not node.takes_speech:
            await self.say(name, node, text, barge_in=node.barge_in)
            return
        keys = accepts_keys(node, listening=listening)
        await self.say(
            name,
            node,
            text,
            barge_in=node.barge_in and keys,
            speech_barge_in=listening and node.speech_barge_in,
        )

    async def wait(self, node: Menu | Gather, within: float, *, listening: bool) -> Input | None:
        """The caller's answer within ``within`` seconds (None: silence). A keys-only node (or
        one that fell back to keys) reads the keypad only, exactly as before speech existed; a
        listening node takes what was said too, and drops keys if it takes speech only."""
        if not listening:
            return await self.ctx.key(within)
        if node.takes_keys:
            got = await self.ctx.next_input(within, speech=True)
        else:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            got = None
            while (left := deadline - loop.time()) > 0:
                got = await self.ctx.next_input(left, speech=True)
                if not isinstance(got, str):
                    break
                log.debug("ivr_key_ignored", node=self.path[-1], why="the node takes speech only")
                got = None
        if isinstance(got, Heard):
            # The caller's words are personal data: debug level only, never in a summary.
            log.debug("ivr_heard", node=self.path[-1], text=got.text)
        return got

    def fall_back(self, name: str, node: Menu | Gather, got: Input | None) -> str:
        """Speech-to-text failed: keys only for the rest of the visit; the text to say now."""
        reason = got.reason if isinstance(got, NotUnderstood) else "unknown"
        log.info("ivr_speech_fallback", node=name, reason=reason)
        self.answers.append(f"{name}:fallback")
        return node.keys_prompt or node.prompt

    def noted(self, name: str, answer: Answer) -> None:
        """A speech answer's result, counted and remembered for the summary (the transcript
        itself only ever reaches the debug log)."""
        if answer.match is not None:
            self.ctx.record_match(answer.match)
            self.answers.append(f"{name}:{answer.match}")

    def retry_log(self, name: str, node: Menu | Gather, answer: Answer, failures: int) -> None:
        fields: dict[str, object] = {"node": name, "failures": failures}
        if answer.match is not None:
            fields |= {"via": "speech", "match": answer.match}
        elif isinstance(node, Menu):
            fields |= {"key": answer.value}
        else:
            fields |= {"entered": answer.value}
        if node.takes_speech and answer.action == "no_input":
            fields["via"] = "none"
        log.info("ivr_retry", **fields)

    def gave_up(self, name: str, on_failure: str) -> _Step:
        if on_failure:
            return _Step(on_failure)
        self.ctx.outcome, self.ctx.reason = "failed", f"no valid input at {name}"
        return _Step(None)

    async def collect(self, node: Gather, first: str) -> str:
        """Digits from ``first`` up to ``num_digits``, ``finish_on`` or the inter-digit timeout."""
        entered = ""
        key: str | None = first
        while key is not None and key != node.finish_on:
            entered += key
            if node.num_digits is not None and len(entered) >= node.num_digits:
                # Callers often end a fixed-length entry with the finish key anyway: take it
                # here (briefly waiting for it) so it can't cut off the next prompt.
                if node.finish_on:
                    after = await self.ctx.key(min(node.inter_digit_timeout, FINISH_KEY_GRACE))
                    if after is not None and after != node.finish_on:
                        self.ctx.unread(after)
                break
            key = await self.ctx.key(node.inter_digit_timeout)
        return entered

    async def webhook(self, name: str, node: Webhook) -> _Step:
        payload = {
            "call_sid": self.ctx.call_sid,
            "from": self.variables["from"],
            "to": self.variables["to"],
            "digits": self.variables["digits"],
            "node": name,
            "vars": dict(self.variables),
        }
        try:
            async with asyncio.timeout(node.timeout):
                response = await self.runner.http().post(node.url, json=payload)
            if not 200 <= response.status_code < 300:
                raise ValueError(f"HTTP {response.status_code}")
            if len(response.content) > MAX_ANSWER_BYTES:
                raise ValueError(f"answer over {MAX_ANSWER_BYTES} bytes")
            answer = response.json()
            if not isinstance(answer, dict):
                raise ValueError("the answer is not a JSON object")
        except (httpx2.HTTPError, TimeoutError, ValueError) as exc:
            log.warning("ivr_webhook_failed", node=name, error=f"{type(exc).__name__}: {exc}")
            return _Step(node.fallback)
        extra = answer.get("vars")
        if isinstance(extra, dict):
            self.variables.update(self.accepted_vars(extra))
        branch = answer.get("branch")
        target = node.branches.get(branch) if isinstance(branch, str) else None
        log.info("ivr_webhook", node=name, branch=branch)
        return _Step(target or node.next or node.fallback)

    def accepted_vars(self, extra: dict[Any, Any]) -> dict[str, str]:
        """A webhook's ``vars`` that may become prompt variables: strings and numbers only, and
        never one of the call's own (``from``, ``to``, ``call_sid``, ``digits``, gathered)."""
        protected = {"from", "to", "call_sid", "digits"} | {
            n.store for n in self.flow.nodes.values() if isinstance(n, Gather)
        }
        out: dict[str, str] = {}
        for key, value in extra.items():
            if not isinstance(key, str) or key in protected:
                continue
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                continue
            text = (
                str(value)
                if not isinstance(value, float) or not value.is_integer()
                else str(int(value))
            )
            out[key] = text[:200]
        return out

    async def transfer(self, name: str, node: Transfer) -> _Step:
        await self.say(name, node, node.message, barge_in=False)
        if self.runner._transfer is None:
            self.ctx.outcome, self.ctx.reason = "failed", "transfer: no Twilio API configured"
            return _Step(None)
        target = render(node.to, self.variables)
        if not _DIALABLE.match(target):
            self.ctx.outcome, self.ctx.reason = "failed", "transfer target is not dialable"
            log.error("ivr_transfer_refused", node=name, target_chars=len(target))
            return _Step(None)
        twiml = dial_twiml(target, node.caller_id)
        try:
            await asyncio.to_thread(self.runner._transfer, self.ctx.call_sid, twiml)
        except TwilioApiError as exc:
            if exc.code in (20404, 21220):
                self.ctx.outcome, self.ctx.reason = "hung_up", "caller left before the transfer"
                return _Step(None)
            self.ctx.outcome, self.ctx.reason = "failed", f"transfer failed: {exc.message}"
            log.error("ivr_transfer_failed", node=name, error=exc.message)
            return _Step(None)
        self.ctx.outcome, self.ctx.reason = "transferred", f"transferred to {node.to}"
        # Twilio now leaves <Connect><Stream> for the <Dial>: it stops the stream itself.
        await self.ctx.hung_up(10.0)
        return _Step(None)
