"""Issue 17's bad input, end to end on loopback: a flow whose menus take speech, a simulated
caller on a real media stream, the Hamsa emulator answering ``stt`` on the call's socket.

Each bad input has a defined path and the call goes on to a later node:

==================================  =========================================================
bad input                           path
==================================  =========================================================
a 100 KB transcript                 cut to ``MAX_TRANSCRIPT_CHARS``, matched; never logged
                                    above debug
a transcript in another script      no option matches: ``invalid`` and a retry (speech on)
binary where text was expected      ignored; the request times out: keys-only fallback
                                    (``keys_prompt``); the socket is swapped, not drained
a transcript after the node moved   a key wins while it is pending; it arrives during the
on                                  next node, is dropped (``stale``) and answers nothing
a minute of talk without a pause    cut at ``BRIDGE_SPEECH_MAX_SECONDS``, sent, matched
pure noise                          detected as speech, cut at max length; Hamsa hears no
                                    words (empty): the keys-only fallback
malformed media messages            violations, odd frames: the call goes on
==================================  =========================================================
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog.testing

from bridge.audio.codec import lin16_to_ulaw
from bridge.dev.caller import CallResult
from bridge.dev.hamsa_emulator import EmulatorConfig, SttFault
from bridge.dev.loopback import Loopback, loopback
from bridge.protocols.hamsa_client import MAX_TRANSCRIPT_CHARS
from tests.timing import HANG

pytestmark = pytest.mark.anyio

# 25 ms of prompt audio per character keeps calls short; the truncation guard is scaled to match
FAST = {"hamsa_truncation_ms_per_char": 3.0, "bridge_prompt_cache_min_ms_per_char": 10.0}

FLOW = """
[flow]
name = "bad-input"
start = "menu"

[nodes.menu]
type = "menu"
input = ["dtmf", "speech"]
prompt = "اختر"
keys_prompt = "اضغط واحد للحجز"
invalid = "لم نفهم"
no_input = "لم نسمع"
timeout = {timeout}
retries = {retries}
on_failure = "bye"
speech_barge_in = {barge_in}

[nodes.menu.options]
"1" = {{ next = "booked", say = ["موعدي"] }}
"2" = {{ next = "more", say = ["الساعات"] }}

[nodes.more]
type = "menu"
input = ["dtmf", "speech"]
prompt = "للتأكيد اضغط ثلاثة"
invalid = "غير صحيح"
no_input = "لم نسمع شيئا"
timeout = {more_timeout}
retries = {more_retries}
on_failure = "bye"

[nodes.more.options]
"3" = {{ next = "booked", say = ["تأكيد"] }}

[nodes.booked]
type = "hangup"
text = "تم الحجز"

[nodes.bye]
type = "hangup"
text = "مع السلامة"
"""

PHRASE = "موعدي"
"""Option 1's phrase at the first menu."""
HOURS = "الساعات"
"""Option 2's phrase at the first menu."""
CONFIRM = "تأكيد"
"""Option 3's phrase at the second menu (``more``)."""
OTHER_SCRIPT = "Здравствуйте, 我想预约"
"""A transcript in scripts the flow's phrases are not written in."""


@asynccontextmanager
async def ivr(
    tmp_path: Path,
    emulator: EmulatorConfig,
    *,
    timeout: float = 4.0,  # noqa: ASYNC109 - the menu's own timeout (TOML), not a wait
    retries: int = 1,
    barge_in: bool = False,
    more_timeout: float = 4.0,
    more_retries: int = 1,
    **settings: Any,
) -> AsyncIterator[Loopback]:
    path = tmp_path / "flow.toml"
    path.write_text(
        FLOW.format(
            timeout=timeout,
            retries=retries,
            barge_in=str(barge_in).lower(),
            more_timeout=more_timeout,
            more_retries=more_retries,
        ),
        encoding="utf-8",
    )
    async with loopback(emulator, bridge_ivr_flow=str(path), **{**FAST, **settings}) as rig:
        yield rig


def emulator(**kw: Any) -> EmulatorConfig:
    return EmulatorConfig(ms_per_char=25, **kw)


async def call(rig: Loopback, *, lasting: float = 0.0, **plan: Any) -> CallResult:
    """A call that lasts ``lasting`` seconds by design (the caller's talk), bounded by that and
    :data:`HANG` more."""
    async with asyncio.timeout(lasting + HANG):
        return await rig.call(max_duration=lasting + HANG, **plan)


def metric(rig: Loopback, name: str, **labels: str) -> float:
    value = rig.bridge.metrics.registry.get_sample_value(f"hamsa_bridge_{name}", labels)
    return float(value or 0.0)


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == name]


def summary(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    [line] = events(logs, "ivr_summary")
    return line


def above_debug(logs: list[MutableMapping[str, Any]]) -> str:
    """Every log line above debug level, as one string (to look for a transcript in it)."""
    return "\n".join(repr(line) for line in logs if line["log_level"] != "debug")


def tts_texts(rig: Loopback) -> list[str | None]:
    return [r.text for r in rig.hamsa.requests]


def noise(seconds: float, *, seed: int = 17, level: float = 16000.0) -> bytes:
    """Seeded, loud white noise as 8 kHz μ-law (clipped Gaussian samples)."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(0.0, level, round(8000 * seconds))
    return lin16_to_ulaw(np.clip(samples, -32768, 32767).astype("<i2").tobytes())


async def test_a_100_kb_transcript_is_cut_matched_and_never_logged(tmp_path: Path) -> None:
    config = emulator(stt_faults={1: SttFault.OVERSIZED})
    async with ivr(tmp_path, config) as rig:
        with structlog.testing.capture_logs() as logs:
            result = await call(rig, answers=[f"say:{PHRASE}"])
        [stt] = rig.hamsa.stt_requests
        connections = len(rig.hamsa.connections)
        matched = metric(rig, "speech_matches_total", result="matched")
        heard = metric(rig, "stt_results_total", outcome="text")
    assert stt.recognized == PHRASE
    assert stt.answer is not None
    assert len(stt.answer.encode()) >= 100_000
    assert result.prompts() == ["menu", "booked"]  # the cut transcript still names option 1
    assert (matched, heard) == (1, 1)
    [answer] = events(logs, "stt_answer")
    assert answer["truncated"] is True
    assert answer["chars"] <= MAX_TRANSCRIPT_CHARS
    # the transcript (any of it) only at debug level, and never more than the cut
    assert PHRASE not in above_debug(logs)
    assert all(len(line["text"]) <= MAX_TRANSCRIPT_CHARS for line in events(logs, "stt_transcript"))
    assert summary(logs)["speech"] == "menu:matched"
    assert connections == 1


async def test_a_transcript_in_another_script_is_invalid_and_the_caller_retries(
    tmp_path: Path,
) -> None:
    # A short burst the emulator's recogniser hears no tones in: it answers its fixed
    # transcript (``stt_fixed_transcript``), Cyrillic and Chinese. Then the caller, asked again,
    # says option 1's phrase: speech is still on.
    config = emulator(stt_fixed_transcript=OTHER_SCRIPT)
    async with ivr(tmp_path, config, barge_in=True) as rig:
        with structlog.testing.capture_logs() as logs:
            result = await call(rig, speech=[(1.5, noise(0.8))], answers=["", f"say:{PHRASE}"])
        stt = list(rig.hamsa.stt_requests)
        connections = len(rig.hamsa.connections)
        no_match = metric(rig, "speech_matches_total", result="no_match")
        matched = metric(rig, "speech_matches_total", result="matched")
    assert [(r.recognized, r.answer) for r in stt] == [("", OTHER_SCRIPT), (PHRASE, PHRASE)]
    assert "لم نفهم" in tts_texts(rig)  # the invalid prompt, then speech still on: matched
    assert result.prompts() == ["menu", "booked"]
    assert (no_match, matched) == (1, 1)
    [retry] = events(logs, "ivr_retry")
    assert (retry["via"], retry["match"], retry["failures"]) == ("speech", "no_match", 1)
    assert summary(logs)["speech"] == "menu:no_match menu:matched"
    assert "Здравствуйте" not in above_debug(logs)
    assert "预约" not in above_debug(logs)
    assert connections == 1


async def test_binary_where_text_was_expected_falls_back_to_keys_on_a_fresh_socket(
    tmp_path: Path,
) -> None:
    config = emulator(stt_faults={1: SttFault.BINARY})
    async with ivr(tmp_path, config, hamsa_stt_timeout=1.0) as rig:
        with structlog.testing.capture_logs() as logs:
            result = await call(rig, answers=[f"say:{PHRASE}", "1"])
        [stt] = rig.hamsa.stt_requests
        requests = list(rig.hamsa.requests)
        connections = len(rig.hamsa.connections)
        timeouts = metric(rig, "stt_results_total", outcome="timeout")
    assert stt.answered_via == "binary"
    assert result.prompts() == ["menu", "booked"]
    assert result.keys_sent
    assert result.keys_sent[0][1] == "1"
    [fallback] = events(logs, "ivr_speech_fallback")
    assert fallback["reason"] == "timeout"
    assert timeouts == 1
    [unexpected] = events(logs, "hamsa_unexpected")
    assert unexpected["kind"] == "binary_during_stt"
    assert PHRASE not in above_debug(logs)  # the binary frame's text is never logged
    # The STT request never ends (a binary frame is not its answer): the socket cannot be
    # drained, so the keys prompt waits HAMSA_DRAIN_TIMEOUT and goes out on a new socket.
    assert [r.text for r in requests] == ["اختر", "اضغط واحد للحجز", "تم الحجز"]
    assert [r.connection_id for r in requests] == [1, 2, 2]
    assert stt.connection_id == 1
    assert connections == 2
    assert len(events(logs, "hamsa_drain_timeout")) == 1
    assert summary(logs)["speech"] == "menu:fallback"


async def test_a_transcript_arriving_after_the_node_moved_on_answers_nothing(
    tmp_path: Path,
) -> None:
    # The caller says the *next* node's phrase, then presses 2 while its transcript is pending
    # (a key wins). The transcription is abandoned when the key closes the window: the next
    # node's prompt does not wait for Hamsa's answer (5 s) but only HAMSA_DRAIN_TIMEOUT for it,
    # then goes out on a fresh socket; the answer would match option 3 of the next node if it
    # were taken: it never is, and the next node hears nothing (no_input).
    late = 5.0
    config = emulator(stt_delay=late)
    speech_at, key_at = 1.5, 4.0  # the utterance ends ≈ 1.0 s after it began; sent at once
    async with ivr(tmp_path, config, barge_in=True, more_timeout=8.0, more_retries=0) as rig:
        with structlog.testing.capture_logs() as logs:
            result = await call(
                rig,
                speech=[(speech_at, _say(CONFIRM))],
                keys=[(key_at, "2")],
            )
        [stt] = rig.hamsa.stt_requests
        requests = list(rig.hamsa.requests)
        connections = len(rig.hamsa.connections)
        stale = metric(rig, "stt_results_total", outcome="stale")
        matches = sum(
            metric(rig, "speech_matches_total", result=r)
            for r in ("matched", "no_match", "digits", "invalid")
        )
    assert stt.recognized == CONFIRM
    [more] = [r for r in requests if r.text == "للتأكيد اضغط ثلاثة"]
    # the next prompt left before Hamsa's answer to the abandoned utterance (if it ever came)
    assert stt.answered_at is None or more.received_at < stt.answered_at
    assert more.connection_id == stt.connection_id + 1  # drained no longer: a fresh socket
    assert len(events(logs, "hamsa_drain_timeout")) == 1
    assert stale == 1
    assert matches == 0  # neither menu took the transcript
    assert result.prompts() == ["menu", "more", "bye"]  # not "booked": CONFIRM never answered
    [abandoned] = events(logs, "stt_abandoned")
    assert abandoned["reason"] == "the script moved on"
    [retry] = events(logs, "ivr_retry")
    assert (retry["node"], retry["via"]) == ("more", "none")
    assert connections == 2


@pytest.mark.timeout(150)
async def test_a_minute_of_talk_without_a_pause_is_cut_sent_and_the_call_goes_on(
    tmp_path: Path,
) -> None:
    # "الساعات " said again and again for a minute (the word gaps are 80 ms: no pause the
    # detector ends an utterance on). The first cut (at BRIDGE_SPEECH_MAX_SECONDS, the default
    # 10 s) is sent and names option 2; "more" listens while the caller goes on talking (each of its
    # windows: no start, or a cut piece that matches nothing); a key after the minute confirms.
    talk = _say(f"{HOURS} " * 94)
    assert 60.0 <= len(talk) / 8000 <= 60.2
    speech_at = 1.0
    end = speech_at + len(talk) / 8000
    started = time.monotonic()
    async with ivr(tmp_path, emulator(), barge_in=True, more_timeout=4.0, more_retries=40) as rig:
        max_seconds = rig.settings.bridge_speech_max_seconds
        pad = rig.settings.bridge_speech_start_pad_ms / 1000
        with structlog.testing.capture_logs() as logs:
            result = await call(
                rig, lasting=end, speech=[(speech_at, talk)], keys=[(end + 1.5, "3")]
            )
        stt = list(rig.hamsa.stt_requests)
        connections = len(rig.hamsa.connections)
        cuts = metric(rig, "speech_utterances_total", end="cut")
        matched = metric(rig, "speech_matches_total", result="matched")
    assert max_seconds == 10.0
    assert cuts >= 5  # onsets 10 s apart within the minute
    first = stt[0]
    assert first.audio_seconds is not None
    assert max_seconds - 0.05 <= first.audio_seconds <= max_seconds + pad + 0.05
    assert HOURS in (first.recognized or "").split()
    # every utterance sent was a piece at most max_seconds (+ padding) long
    assert all((r.audio_seconds or 0) <= max_seconds + pad + 0.75 for r in stt)
    cut_lines = [line for line in events(logs, "speech_ended") if line["end"] == "cut"]
    assert cut_lines
    assert cut_lines[0]["ms"] == max_seconds * 1000
    nodes = result.prompts()
    assert nodes[:2] == ["menu", "more"]
    assert nodes[-1] == "booked"
    assert result.keys_sent
    assert result.keys_sent[-1][1] == "3"
    assert matched == 1  # the first cut named option 2; the pieces at "more" name nothing
    assert connections == 1
    assert time.monotonic() - started < 75


async def test_pure_noise_is_cut_at_max_length_heard_as_nothing_and_falls_back_to_keys(
    tmp_path: Path,
) -> None:
    # webrtcvad takes loud white noise for voice, so it is an utterance that never pauses:
    # cut at BRIDGE_SPEECH_MAX_SECONDS. Hamsa (the emulator) hears no words in it: an empty
    # transcript, which the IVR treats as speech-to-text failing (NotUnderstood("empty")):
    # keys only for the rest of the visit, keys_prompt, and a key then works.
    max_seconds = 3.0
    async with ivr(
        tmp_path, emulator(), barge_in=True, bridge_speech_max_seconds=max_seconds
    ) as rig:
        pad = rig.settings.bridge_speech_start_pad_ms / 1000
        with structlog.testing.capture_logs() as logs:
            result = await call(rig, speech=[(1.5, noise(max_seconds + 0.5))], answers=["", "1"])
        stt = list(rig.hamsa.stt_requests)
        connections = len(rig.hamsa.connections)
        cuts = metric(rig, "speech_utterances_total", end="cut")
        empty = metric(rig, "stt_results_total", outcome="empty")
    [sent] = stt  # one window listened; the rest of the noise went to nobody
    assert sent.recognized == ""
    assert sent.answer == ""
    assert sent.audio_seconds is not None
    assert max_seconds - 0.05 <= sent.audio_seconds <= max_seconds + pad + 0.05
    assert cuts >= 1
    assert empty == 1
    [fallback] = events(logs, "ivr_speech_fallback")
    assert fallback["reason"] == "empty"
    assert "اضغط واحد للحجز" in tts_texts(rig)
    assert result.prompts() == ["menu", "booked"]
    assert summary(logs)["speech"] == "menu:fallback"
    assert connections == 1


async def test_malformed_media_while_listening_never_stops_the_call(tmp_path: Path) -> None:
    async with ivr(tmp_path, emulator(), barge_in=True) as rig:
        plan = rig.plan()

        def media(payload: str, **extra: Any) -> str:
            body = {"event": "media", "streamSid": plan.stream_sid, **extra}
            body["media"] = {
                "track": "inbound",
                "chunk": "x",
                "timestamp": "-1",
                "payload": payload,
            }
            return json.dumps(body)

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        malformed: list[str | bytes] = [
            media(""),  # no audio at all
            media(b64(b"\x00")),  # one byte
            media(b64(bytes(range(256)) * 4)),  # 1,024 bytes of every μ-law value
            media(b64(noise(2.0))),  # two seconds of noise in one message
            media("not base64!"),
            media("ÿÿÿÿ"),  # not ASCII
            media(b64(b"\x7f" * 161)),
            json.dumps({"event": "media", "streamSid": plan.stream_sid, "media": "x"}),
            json.dumps({"event": "media", "streamSid": plan.stream_sid, "media": {"payload": 7}}),
            b"\x00\x01binary",
            "{not json",
        ]
        raw = [(0.5 + 0.02 * i, message) for i, message in enumerate(malformed * 5)]
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(HANG):
                result = await rig.call(
                    max_duration=HANG, stream_sid=plan.stream_sid, raw=raw, keys=[(3.0, "1")]
                )
        connections = len(rig.hamsa.connections)
    assert result.close_code == 1000
    nodes = result.prompts()
    assert nodes[0] == "menu"
    assert nodes[-1] == "booked"
    assert "call_failed" not in {line["event"] for line in logs}
    assert events(logs, "twilio_violation")  # reported, not fatal
    assert connections == 1


def _say(text: str) -> bytes:
    from bridge.dev.tone import synthesize

    return synthesize(text, mulaw=True)
