"""Outbound announcements end to end on loopback: ``POST /v1/announcements`` → the bridge places
the call at the Twilio emulator → the callee's media stream connects back to the bridge → Hamsa
(emulator) speaks the message → the bridge hangs up through the REST API → the outcome arrives
(status callbacks, or polling when they do not) and ``GET`` shows it.

Every peer is real and talks over real sockets. What the callee heard is compared byte for byte
with what Hamsa produced; key presses come from the callee's ``Outcome`` (``answers`` are pressed
after the confirmation prompt's mark comes back, so no test depends on timing guesses).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog.testing

from bridge.announcements.options import AnnouncementOptions
from bridge.announcements.placing import call_request
from bridge.announcements.spec import AnnouncementSpec
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import LOOPBACK_NUMBER, Loopback, loopback
from bridge.dev.media_leg import CallerBehaviour, run_media_stream
from bridge.dev.twilio_emulator import (
    Outcome,
    RestRecord,
    StreamRecord,
    TwilioEmulatorConfig,
)
from bridge.dev.twilio_emulator.webhooks import parse_twiml
from bridge.store import AnnouncementRecord
from tests.timing import ANSWER_WAIT, HANG, LATE

pytestmark = pytest.mark.anyio

API_TOKEN = "test-api-token-" + "x" * 16
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
TEXT = "تذكير: موعدك غدا الساعة العاشرة صباحا في العيادة."
SHORT = "موعدك غدا صباحا."
PERSON = "+966501112233"
# 25 ms of audio per character keeps calls short; the guards are scaled to match. Presynthesis
# (audio ready at answer) is off here: these tests are about the call as the bridge streams it
# (tests/test_e2e_presynth.py covers it with presynthesis).
FAST = {
    "hamsa_truncation_ms_per_char": 3.0,
    "bridge_prompt_cache_min_ms_per_char": 10.0,
    "bridge_confirm_wait": ANSWER_WAIT,
    "bridge_presynth_connections": 0,
}
PROMPT_AR = "للتأكيد اضغط 1، ولإعادة الاستماع اضغط 2."
THANKS_AR = "شكرا لك، تم التأكيد."


def padded(audio: bytes) -> bytes:
    """Hamsa's audio as the callee must hear it: padded with 0xFF to whole 20 ms frames."""
    return audio + b"\xff" * (-len(audio) % 160)


@asynccontextmanager
async def announcing(
    tmp_path: Path,
    outcomes: dict[str, Outcome | str] | None = None,
    *,
    twilio: TwilioEmulatorConfig | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Loopback, httpx2.AsyncClient]]:
    """Loopback with the Twilio emulator, the API enabled and a database in ``tmp_path``."""
    config = twilio or TwilioEmulatorConfig(outcomes=outcomes or {})
    async with (
        loopback(
            EmulatorConfig(ms_per_char=25),
            twilio=config,
            bridge_api_token=API_TOKEN,
            bridge_database_url=f"sqlite:///{tmp_path}/bridge.db",
            **{**FAST, **settings},
        ) as rig,
        httpx2.AsyncClient(base_url=rig.public_url, headers=AUTH) as http,
    ):
        yield rig, http


async def announce(http: httpx2.AsyncClient, **body: Any) -> str:
    response = await http.post("/v1/announcements", json={"to": PERSON, "text": TEXT, **body})
    assert response.status_code == 202, response.text
    announcement_id: str = response.json()["id"]
    return announcement_id


async def settled(rig: Loopback, http: httpx2.AsyncClient, announcement_id: str) -> dict[str, Any]:
    """The announcement once the bridge has followed it to its outcome, as ``GET`` shows it."""
    service = rig.bridge.announcements
    assert service is not None
    async with asyncio.timeout(HANG):
        record = await service.settled(announcement_id)
    assert record is not None
    assert record.final
    response = await http.get(f"/v1/announcements/{announcement_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def stored(rig: Loopback, announcement_id: str) -> AnnouncementRecord:
    store = await rig.bridge.store.get()
    record = await store.get_announcement(announcement_id)
    assert record is not None
    return record


def creates(rig: Loopback) -> list[RestRecord]:
    assert rig.twilio is not None
    return [
        r
        for r in rig.twilio.requests
        if r.method == "POST" and r.path.endswith("/Calls.json") and r.status == 201
    ]


def hang_ups(rig: Loopback, call_sid: str) -> list[RestRecord]:
    assert rig.twilio is not None
    return [
        r
        for r in rig.twilio.requests
        if r.method == "POST"
        and r.path.endswith(f"/Calls/{call_sid}.json")
        and r.form.get("Status") == "completed"
    ]


def only_stream(rig: Loopback, call_sid: str) -> StreamRecord:
    assert rig.twilio is not None
    [stream] = rig.twilio.streams_for(call_sid)
    assert stream.result.leg is not None
    return stream


def marks(stream: StreamRecord) -> list[str]:
    """Labels of the utterances played to their end (``message``, ``menu:confirm``…)."""
    assert stream.result.leg is not None
    return [m.name.rsplit(":", 1)[0] for m in stream.result.leg.timeline.marks if not m.cleared]


def said(rig: Loopback, text: str) -> list[bytes]:
    """The audio of each Hamsa request for exactly ``text``, in order."""
    return [r.audio for r in rig.hamsa.requests if r.text == text]


async def test_announcement_is_placed_heard_whole_hung_up_after_its_mark_and_reported(
    tmp_path: Path,
) -> None:
    async with announcing(tmp_path) as (rig, http):
        announcement_id = await announce(http)
        body = await settled(rig, http, announcement_id)
        record = await stored(rig, announcement_id)
        service = rig.bridge.announcements
        assert service is not None
        polls = (await service.watcher()).polls
        assert rig.twilio is not None
        call_sid = body["call_sid"]
        callbacks = rig.twilio.callbacks_for(call_sid)
        stream = only_stream(rig, call_sid)
        [create] = creates(rig)
        hang_up = hang_ups(rig, call_sid)
        audio = said(rig, TEXT)
    # one call, to the right number, from the loopback number, with the inline TwiML
    assert create.form["To"] == PERSON
    assert create.form["From"] == LOOPBACK_NUMBER
    assert create.form["StatusCallback"].endswith(f"/twilio/status?announcement={announcement_id}")
    # heard whole, byte for byte
    leg = stream.result.leg
    assert leg is not None
    assert len(audio) == 1
    assert bytes(leg.played) == padded(audio[0])
    assert marks(stream) == ["message"]
    # one REST hang-up, after the message's mark was echoed (the callee heard its end)
    assert len(hang_up) == 1
    [mark] = leg.timeline.marks
    assert mark.echoed_at is not None
    assert mark.echoed_at < hang_up[0].at < mark.echoed_at + LATE  # at once (how soon: machine)
    assert stream.ended_by in ("api", "bridge")
    # every status callback was answered 204 and recorded (no polling was needed)
    assert [c.event for c in callbacks] == ["initiated", "ringing", "answered", "completed"]
    assert {c.status for c in callbacks} == {204}
    assert record.status_seq == 3
    assert polls == 0
    # the outcome
    assert body["state"] == "ended"
    assert body["outcome"] == "heard"
    assert body["status"] == "completed"
    assert isinstance(body["duration"], int)
    assert body["plays"] == 1
    assert body["confirmation"] is None
    assert record.stream_started_at is not None
    assert record.stream_ended_at is not None


async def test_repeat_two_plays_the_message_twice_and_counts_both(tmp_path: Path) -> None:
    async with announcing(tmp_path) as (rig, http):
        announcement_id = await announce(http, repeat=2)
        body = await settled(rig, http, announcement_id)
        stream = only_stream(rig, body["call_sid"])
        audio = said(rig, TEXT)
        hang_up = hang_ups(rig, body["call_sid"])
        cache = rig.bridge.deps.prompt_cache
        assert cache is not None
        kept = cache.has(TEXT, rig.settings.voice)
    assert stream.result.leg is not None
    # synthesised once, held for the call: the repeat plays the same audio from the cache
    assert len(audio) == 1
    assert bytes(stream.result.leg.played) == padded(audio[0]) * 2
    assert not kept  # released when the call ended
    assert marks(stream) == ["message", "message"]
    assert body["plays"] == 2
    assert body["outcome"] == "heard"
    assert len(hang_up) == 1


async def test_confirm_key_after_the_prompt_confirms_and_thanks(tmp_path: Path) -> None:
    outcomes: dict[str, Outcome | str] = {PERSON: Outcome(answers=("1",))}
    async with announcing(tmp_path, outcomes) as (rig, http):
        announcement_id = await announce(http, text=SHORT, confirm_digit="1")
        body = await settled(rig, http, announcement_id)
        stream = only_stream(rig, body["call_sid"])
        message, prompt, thanks = said(rig, SHORT), said(rig, PROMPT_AR), said(rig, THANKS_AR)
        hang_up = hang_ups(rig, body["call_sid"])
    assert stream.result.leg is not None
    assert [k for _, k in stream.result.keys_sent] == ["1"]
    assert marks(stream) == ["message", "menu:confirm", "thanks"]
    assert bytes(stream.result.leg.played) == b"".join(
        padded(a) for a in (*message, *prompt, *thanks)
    )
    assert body["confirmation"] == "confirmed"
    assert body["plays"] == 1
    assert len(hang_up) == 1
    [*_, last] = stream.result.leg.timeline.marks
    assert last.echoed_at is not None
    assert hang_up[0].at > last.echoed_at  # the thanks was heard to its end


async def test_repeat_key_replays_the_message_then_silence_is_no_confirmation(
    tmp_path: Path,
) -> None:
    outcomes: dict[str, Outcome | str] = {PERSON: Outcome(answers=("2",))}
    async with announcing(tmp_path, outcomes) as (rig, http):
        announcement_id = await announce(http, text=SHORT, confirm_digit="1")
        body = await settled(rig, http, announcement_id)
        stream = only_stream(rig, body["call_sid"])
        message = said(rig, SHORT)
    assert stream.result.leg is not None
    assert marks(stream) == ["message", "menu:confirm", "message", "menu:confirm"]
    assert len(message) == 1  # the replay comes from the call's held copy
    played = bytes(stream.result.leg.played)
    assert played.startswith(padded(message[0]))
    assert padded(message[0]) in played[len(padded(message[0])) :]
    assert body["plays"] == 2
    assert body["confirmation"] == "no-confirmation"


async def test_no_key_after_the_prompt_is_no_confirmation(tmp_path: Path) -> None:
    async with announcing(tmp_path) as (rig, http):
        announcement_id = await announce(http, text=SHORT, confirm_digit="1", repeat_digit="9")
        body = await settled(rig, http, announcement_id)
        stream = only_stream(rig, body["call_sid"])
        prompts = [r.text for r in rig.hamsa.requests if r.text != SHORT]
        hang_up = hang_ups(rig, body["call_sid"])
    assert marks(stream) == ["message", "menu:confirm"]
    assert prompts == ["للتأكيد اضغط 1، ولإعادة الاستماع اضغط 9."]
    assert body["confirmation"] == "no-confirmation"
    assert body["plays"] == 1
    assert len(hang_up) == 1


async def test_confirm_key_during_the_message_interrupts_it_and_confirms(
    tmp_path: Path,
) -> None:
    outcomes: dict[str, Outcome | str] = {PERSON: Outcome(keys=((0.5, "1"),))}
    async with announcing(tmp_path, outcomes) as (rig, http):
        announcement_id = await announce(http, confirm_digit="1", language="en")
        body = await settled(rig, http, announcement_id)
        stream = only_stream(rig, body["call_sid"])
        texts = [r.text for r in rig.hamsa.requests]
    leg = stream.result.leg
    assert leg is not None
    assert len(leg.timeline.clears) == 1  # the message was cut at the key
    assert texts == [TEXT, "Thank you, your confirmation was recorded."]  # no prompt
    assert marks(stream) == ["thanks"]
    assert body["confirmation"] == "confirmed"
    assert body["plays"] == 0


async def test_callee_hanging_up_mid_message_is_recorded_without_a_rest_hang_up(
    tmp_path: Path,
) -> None:
    outcomes: dict[str, Outcome | str] = {PERSON: Outcome(hangup_after=0.5)}
    async with announcing(tmp_path, outcomes) as (rig, http):
        announcement_id = await announce(http, confirm_digit="1")
        body = await settled(rig, http, announcement_id)
        record = await stored(rig, announcement_id)
        stream = only_stream(rig, body["call_sid"])
        hang_up = hang_ups(rig, body["call_sid"])
    assert stream.ended_by == "caller"
    assert hang_up == []
    assert body["outcome"] == "answered"
    assert body["plays"] == 0
    assert body["confirmation"] == "no-confirmation"
    assert record.stream_ended_at is not None


async def test_busy_destination_is_busy_and_never_streams(tmp_path: Path) -> None:
    async with announcing(tmp_path, {PERSON: "busy"}) as (rig, http):
        announcement_id = await announce(http)
        body = await settled(rig, http, announcement_id)
        assert rig.twilio is not None
        streams = list(rig.twilio.streams)
        connections = len(rig.hamsa.connections)
        creates_made = len(creates(rig))
    assert body["outcome"] == "busy"
    assert body["status"] == "busy"
    assert body["plays"] == 0
    assert body["duration"] is None or body["duration"] == 0
    assert streams == []
    assert connections == 0
    assert creates_made == 1


async def test_a_stream_twilio_cannot_open_is_failed_stream_never_connected(
    tmp_path: Path,
) -> None:
    # Twilio answers, then refuses the bridge's ws:// stream URL: no bridge ever sees the stream
    config = TwilioEmulatorConfig(require_wss=True)
    async with announcing(tmp_path, twilio=config) as (rig, http):
        announcement_id = await announce(http)
        body = await settled(rig, http, announcement_id)
        assert rig.twilio is not None
        [stream] = rig.twilio.streams
        connections = len(rig.hamsa.connections)
    assert stream.ended_by == "error"
    assert body["status"] == "completed"  # answered, as far as Twilio's status goes
    assert (body["outcome"], body["reason"]) == ("failed", "stream-never-connected")
    assert body["error"].startswith("stream-never-connected: ")
    assert "BRIDGE_PUBLIC_URL" in body["error"]
    assert body["plays"] == 0
    assert connections == 0


async def test_a_final_mark_never_echoed_is_answered_played_not_confirmed_heard(
    tmp_path: Path,
) -> None:
    async with announcing(tmp_path, {PERSON: Outcome(echo_marks=False)}) as (rig, http):
        announcement_id = await announce(http)
        body = await settled(rig, http, announcement_id)
        record = await stored(rig, announcement_id)
    assert (body["outcome"], body["reason"], body["error"]) == (
        "answered",
        "played-unconfirmed",
        None,
    )
    assert (body["plays"], body["plays_unconfirmed"]) == (0, 1)
    assert record.stream_ended_at is not None


async def test_voicemail_gets_the_message_without_the_confirmation_prompt(
    tmp_path: Path,
) -> None:
    async with announcing(tmp_path, {PERSON: "machine_end_beep"}) as (rig, http):
        announcement_id = await announce(http, confirm_digit="1", machine_detection=True)
        body = await settled(rig, http, announcement_id)
        stream = only_stream(rig, body["call_sid"])
        texts = [r.text for r in rig.hamsa.requests]
        [create] = creates(rig)
    assert create.form["MachineDetection"] == "DetectMessageEnd"
    assert body["answered_by"] == "machine_end_beep"
    assert texts == [TEXT]
    assert marks(stream) == ["message"]
    assert body["plays"] == 1
    assert body["confirmation"] == "no-confirmation"


async def test_outcome_arrives_by_polling_when_callbacks_do_not_get_through(
    tmp_path: Path,
) -> None:
    # Unsigned callbacks: the bridge refuses every one (403), as if none reached it.
    twilio = TwilioEmulatorConfig(sign_requests=False)
    fast_poll = {"bridge_callback_grace": 0.2, "bridge_outcome_poll_interval": 0.2}
    async with announcing(tmp_path, twilio=twilio, **fast_poll) as (rig, http):
        announcement_id = await announce(http)
        body = await settled(rig, http, announcement_id)
        record = await stored(rig, announcement_id)
        service = rig.bridge.announcements
        assert service is not None
        polls = (await service.watcher()).polls
        assert rig.twilio is not None
        callbacks = rig.twilio.callbacks_for(body["call_sid"])
    assert callbacks
    assert {c.status for c in callbacks} == {403}
    assert polls >= 1
    assert record.status_seq == -1  # nothing came from a callback
    assert body["outcome"] == "heard"
    assert isinstance(body["duration"], int)
    assert body["plays"] == 1


async def stream_parameters(rig: Loopback, **fields: Any) -> dict[str, str]:
    """The ``<Parameter>``s of a freshly recorded and signed announcement, as Twilio would send
    them (the bridge serves only announcements its store knows)."""
    options = AnnouncementOptions(**fields)
    spec = AnnouncementSpec.create(rig.settings, to=PERSON, text=TEXT, options=options)
    store = await rig.bridge.store.get()
    planned, _ = await store.create_announcement(spec, now=time.time())
    request = call_request(rig.settings, planned.id, spec, now=time.time())
    stream = parse_twiml(request["twiml"]).find("./Connect/Stream")
    assert stream is not None
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


async def stream_to_bridge(
    rig: Loopback, params: dict[str, str], *, account_sid: str | None = None
) -> int | None:
    """Open the bridge's stream as Twilio would (signed handshake); the close code."""
    result = await run_media_stream(
        rig.settings.stream_url,
        params,
        auth_token=rig.auth_token,
        call_sid="CA" + secrets.token_hex(16),
        account_sid=account_sid or rig.settings.twilio_account_sid,
        stream_sid="MZ" + secrets.token_hex(16),
        behaviour=CallerBehaviour(max_duration=10),
    )
    return result.close_code


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("text.0", "رسالة أخرى لم يوقعها الجسر."),
        ("to", "+966509999999"),
        ("confirm", "1"),
        ("kind", "greeting"),
    ],
)
async def test_altered_announcement_parameters_are_refused_without_hamsa(
    tmp_path: Path, change: str, value: str
) -> None:
    async with announcing(tmp_path) as (rig, http):
        params = await stream_parameters(rig) | {change: value}
        code = await stream_to_bridge(rig, params)
        connections = len(rig.hamsa.connections)
    assert code == 1008
    assert connections == 0


async def test_replayed_or_foreign_announcement_token_is_refused(tmp_path: Path) -> None:
    async with announcing(tmp_path) as (rig, http):
        params = await stream_parameters(rig)
        first = await stream_to_bridge(rig, params)
        connections = len(rig.hamsa.connections)
        replay = await stream_to_bridge(rig, params)
        foreign = await stream_to_bridge(
            rig, await stream_parameters(rig), account_sid="AC" + "f" * 32
        )
        # Another replica (empty single-use memory) or a re-encoded token: refused by the
        # store's claim and the strict token form.
        rig.bridge.registry._used.clear()
        other_replica = await stream_to_bridge(rig, params)
        version, expiry, nonce, mac = params["token"].split(".")
        reencoded = await stream_to_bridge(
            rig, params | {"token": f"{version}.0{expiry}.{nonce}.{mac}"}
        )
        spec = AnnouncementSpec.create(rig.settings, to=PERSON, text=TEXT)
        never_stored = call_request(rig.settings, "an_" + "1" * 24, spec, now=time.time())
        element = parse_twiml(never_stored["twiml"]).find("./Connect/Stream")
        assert element is not None
        ended = {p.get("name", ""): p.get("value", "") for p in element.findall("Parameter")}
        missing = await stream_to_bridge(rig, ended)
        after = len(rig.hamsa.connections)
    assert first == 1000  # the genuine stream plays (the control)
    assert connections == 1
    assert replay == 1008
    assert foreign == 1008
    assert other_replica == 1008
    assert reencoded == 1008
    assert missing == 1008
    assert after == 1


async def test_failed_rest_hang_up_just_ends_the_stream(tmp_path: Path) -> None:
    # No Twilio API reachable: the AMD lookup and the hang-up fail; the stream still closes
    # normally (Twilio then runs the TwiML's <Hangup/>) and what was heard is recorded.
    settings = {
        "bridge_database_url": f"sqlite:///{tmp_path}/bridge.db",
        "twilio_account_sid": "AC" + "a" * 32,
        "twilio_api_url": "http://127.0.0.1:9",
        **FAST,
    }
    async with loopback(EmulatorConfig(ms_per_char=25), **settings) as rig:
        spec = AnnouncementSpec.create(
            rig.settings,
            to=PERSON,
            from_=LOOPBACK_NUMBER,
            text=TEXT,
            options=AnnouncementOptions(machine_detection=True),
        )
        store = await rig.bridge.store.get()
        planned, _ = await store.create_announcement(spec, now=time.time())
        request = call_request(rig.settings, planned.id, spec, now=time.time())
        element = parse_twiml(request["twiml"]).find("./Connect/Stream")
        assert element is not None
        params = {p.get("name", ""): p.get("value", "") for p in element.findall("Parameter")}
        with structlog.testing.capture_logs() as logs:
            code = await stream_to_bridge(rig, params)
        record = await store.get_announcement(planned.id)
        texts = [r.text for r in rig.hamsa.requests]
    events = [e["event"] for e in logs]
    [summary] = [e for e in logs if e["event"] == "call_summary"]
    assert code == 1000
    assert texts == [TEXT]
    assert "announcement_amd_lookup_failed" in events
    assert "announcement_hang_up_failed" in events
    assert summary["outcome"] == "completed"
    assert summary["details"]["hangup"] == "failed"
    assert record is not None
    assert record.plays == 1
    assert record.stream_started_at is not None
    assert record.stream_ended_at is not None
