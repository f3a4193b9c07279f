"""Announcements ready at answer, end to end on loopback: the Twilio emulator rings the callee
while the placing process (the bridge for the API, the ``announce`` command, a campaign runner)
synthesises the message through the Hamsa emulator; the stream then plays it from the prompt
cache with no Hamsa request of its own, and the audio leaves memory and disk afterwards.

Ringing is held by the Twilio emulator's ``before_answer`` until the presynthesis is done (or
has failed), so no test depends on how long synthesis takes; orderings are asserted on the
emulators' records, which share ``time.monotonic()`` with the callee's timeline.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from bridge.announcements.options import AnnouncementOptions
from bridge.announcements.presynth import command_presynthesizer
from bridge.calls.presynth import JobState, Presynthesizer
from bridge.calls.prompt_cache import PromptCache
from bridge.campaigns.config import CampaignConfig
from bridge.campaigns.contacts import load_contacts, prepare_contacts
from bridge.campaigns.runner import CampaignRunner
from bridge.campaigns.template import Template
from bridge.dev.hamsa_emulator import EmulatorConfig, EmulatorState, Fault, RequestRecord
from bridge.dev.loopback import LOOPBACK_NUMBER, Loopback, loopback
from bridge.dev.twilio_emulator import CallRecord, Outcome, StreamRecord, TwilioEmulatorConfig
from bridge.metrics import Metrics
from bridge.twilio_rest_client import TwilioApi
from tests.cli_support import outbound_rig, run_cli
from tests.timing import HANG

pytestmark = pytest.mark.anyio

API_TOKEN = "test-api-token-" + "p" * 16
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
TEXT = "تذكير: موعدك غدا الساعة العاشرة صباحا في العيادة."
SHORT = "موعدك غدا صباحا."
PROMPT_AR = "للتأكيد اضغط 1، ولإعادة الاستماع اضغط 2."
THANKS_AR = "شكرا لك، تم التأكيد."
PERSON = "+966501112233"
FAST = {
    "hamsa_truncation_ms_per_char": 3.0,
    "bridge_prompt_cache_min_ms_per_char": 10.0,
    "bridge_confirm_wait": 0.6,
}
DONE = (JobState.READY, JobState.FAILED, JobState.SKIPPED)


def padded(audio: bytes) -> bytes:
    return audio + b"\xff" * (-len(audio) % 160)


def announcement_of(call: CallRecord) -> str:
    assert call.status_callback is not None
    return parse_qs(urlsplit(call.status_callback).query)["announcement"][0]


def answer_once_presynthesised(
    presynth: Presynthesizer,
) -> Callable[[CallRecord], Awaitable[None]]:
    """``before_answer``: the callee answers once the call's presynthesis is done or failed."""

    async def before_answer(call: CallRecord) -> None:
        announcement = announcement_of(call)
        async with asyncio.timeout(HANG):
            await presynth.wait_until(lambda p: p.states.get(announcement) in DONE)

    return before_answer


def answer_once_synthesised_elsewhere(
    hamsa: EmulatorState, text: str
) -> Callable[[CallRecord], Awaitable[None]]:
    """``before_answer`` for a presynthesis in another process: the socket that synthesised
    ``text`` was closed by its client, which stores the audio before it closes the socket."""

    def done(h: EmulatorState) -> bool:
        closed = {c.id for c in h.connections if c.closed_by == "client"}
        return any(r.text == text and r.connection_id in closed for r in h.requests)

    async def before_answer(call: CallRecord) -> None:
        async with asyncio.timeout(HANG):
            await hamsa.wait_until(done)

    return before_answer


@asynccontextmanager
async def api_rig(
    tmp_path: Path,
    emulator: EmulatorConfig | None = None,
    outcomes: dict[str, Outcome | str] | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Loopback, httpx2.AsyncClient, Presynthesizer]]:
    async with (
        loopback(
            emulator or EmulatorConfig(ms_per_char=25),
            twilio=TwilioEmulatorConfig(outcomes=outcomes or {}),
            bridge_api_token=API_TOKEN,
            bridge_database_url=f"sqlite:///{tmp_path}/bridge.db",
            **{**FAST, **settings},
        ) as rig,
        httpx2.AsyncClient(base_url=rig.public_url, headers=AUTH) as http,
    ):
        service = rig.bridge.announcements
        assert service is not None
        assert service.presynth is not None
        yield rig, http, service.presynth


async def announce(http: httpx2.AsyncClient, **body: Any) -> str:
    response = await http.post("/v1/announcements", json={"to": PERSON, "text": TEXT, **body})
    assert response.status_code == 202, response.text
    announcement_id: str = response.json()["id"]
    return announcement_id


async def settled(rig: Loopback, announcement_id: str) -> str:
    """The announcement's CallSid once the bridge has followed it to its outcome."""
    service = rig.bridge.announcements
    assert service is not None
    async with asyncio.timeout(HANG):
        record = await service.settled(announcement_id)
    assert record is not None
    assert record.final
    assert record.call_sid is not None
    return record.call_sid


def only_stream(rig: Loopback, call_sid: str) -> StreamRecord:
    assert rig.twilio is not None
    [stream] = rig.twilio.streams_for(call_sid)
    assert stream.result.leg is not None
    assert stream.result.started_at is not None
    return stream


def start_of(stream: StreamRecord) -> float:
    assert stream.result.started_at is not None
    return stream.result.started_at


def played(stream: StreamRecord) -> bytes:
    assert stream.result.leg is not None
    return bytes(stream.result.leg.played)


def counted(rig: Loopback, event: str) -> float:
    value = rig.bridge.metrics.registry.get_sample_value(
        "hamsa_bridge_announcement_presynth_total", {"event": event}
    )
    return value or 0.0


def cache_of(rig: Loopback) -> PromptCache:
    cache = rig.bridge.deps.prompt_cache
    assert cache is not None
    return cache


def for_text(requests: list[RequestRecord], text: str) -> list[RequestRecord]:
    return [r for r in requests if r.text == text]


# --- the HTTP API: presynthesis inside the bridge ---------------------------------------------


async def test_api_announcement_is_synthesised_while_ringing_and_played_from_it(
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "cache"
    async with api_rig(tmp_path, bridge_prompt_cache_dir=str(cache_dir)) as (rig, http, presynth):
        assert rig.twilio is not None
        rig.twilio.before_answer = answer_once_presynthesised(presynth)
        call_sid = await settled(rig, await announce(http))
        stream = only_stream(rig, call_sid)
        requests = list(rig.hamsa.requests)
        connections = list(rig.hamsa.connections)
        counts = {e: counted(rig, e) for e in ("started", "completed", "used", "streamed")}
        in_memory = cache_of(rig).has(TEXT, rig.settings.voice)
        on_disk = list((cache_dir / "held").iterdir())
    [request] = requests
    assert request.text == TEXT
    assert request.end_at is not None
    assert request.end_at < start_of(stream)  # synthesised while the phone rang
    assert len(connections) == 1  # the presynthesis' socket: the call opened none
    assert connections[0].closed_at is not None
    assert connections[0].closed_at < start_of(stream)
    assert played(stream) == padded(request.audio)  # byte for byte
    assert counts == {"started": 1, "completed": 1, "used": 1, "streamed": 0}
    assert not in_memory  # the personal audio is gone once the call ended
    assert on_disk == []


async def test_confirmation_prompts_are_presynthesised_too_and_the_call_opens_no_socket(
    tmp_path: Path,
) -> None:
    outcomes: dict[str, Outcome | str] = {PERSON: Outcome(answers=("1",))}
    async with api_rig(tmp_path, outcomes=outcomes) as (rig, http, presynth):
        assert rig.twilio is not None
        rig.twilio.before_answer = answer_once_presynthesised(presynth)
        call_sid = await settled(rig, await announce(http, text=SHORT, confirm_digit="1"))
        stream = only_stream(rig, call_sid)
        requests = list(rig.hamsa.requests)
        connections = len(rig.hamsa.connections)
        prompt_kept = cache_of(rig).has(PROMPT_AR, rig.settings.voice)
        message_kept = cache_of(rig).has(SHORT, rig.settings.voice)
    assert [r.text for r in requests] == [SHORT, PROMPT_AR, THANKS_AR]
    assert all(r.end_at is not None and r.end_at < start_of(stream) for r in requests)
    assert connections == 1
    assert played(stream) == b"".join(padded(r.audio) for r in requests)
    assert prompt_kept  # static: cached for the next announcements
    assert not message_kept


@pytest.mark.parametrize("fault", [Fault.TRUNCATE_640, Fault.CLOSE_4003])
async def test_a_failed_presynthesis_leaves_the_call_to_stream(
    tmp_path: Path, fault: Fault
) -> None:
    emulator = EmulatorConfig(ms_per_char=25, faults={1: fault})
    async with api_rig(tmp_path, emulator) as (rig, http, presynth):
        assert rig.twilio is not None
        rig.twilio.before_answer = answer_once_presynthesised(presynth)
        call_sid = await settled(rig, await announce(http))
        stream = only_stream(rig, call_sid)
        requests = list(rig.hamsa.requests)
        counts = {e: counted(rig, e) for e in ("failed", "used", "streamed")}
    first, second = for_text(requests, TEXT)
    assert first.fault is fault
    assert first.received_at < start_of(stream)  # the presynthesis, while ringing
    assert second.received_at > start_of(stream)  # the call streamed it
    assert played(stream) == padded(second.audio)
    assert counts == {"failed": 1, "used": 0, "streamed": 1}


async def test_a_presynthesis_still_in_flight_at_answer_is_not_waited_for(
    tmp_path: Path,
) -> None:
    # The presynthesis' first audio comes 3 s after its request; the callee answers at once.
    emulator = EmulatorConfig(
        ms_per_char=25, faults={1: Fault.SLOW_FIRST_BYTE}, slow_first_byte_delay=3.0
    )
    async with api_rig(tmp_path, emulator) as (rig, http, presynth):
        call_sid = await settled(rig, await announce(http))
        stream = only_stream(rig, call_sid)
        requests = list(rig.hamsa.requests)
        streamed, skipped = counted(rig, "streamed"), counted(rig, "skipped")
        states = dict(presynth.states)
        sockets = {c.id: c for c in rig.hamsa.connections}
    first, second = for_text(requests, TEXT)
    assert first.fault is Fault.SLOW_FIRST_BYTE
    assert second.received_at > start_of(stream)
    # the call asked Hamsa itself before the presynthesis had any audio: it did not wait
    assert first.first_audio_at is None or second.received_at < first.first_audio_at
    assert played(stream) == padded(second.audio)
    assert (streamed, skipped) == (1, 1)
    # the presynthesis was stopped as the stream started: its socket closed during the call
    presynth_socket = sockets[first.connection_id]
    assert presynth_socket.closed_by == "client"
    assert presynth_socket.closed_at is not None
    assert stream.ended_at is not None
    assert presynth_socket.closed_at < stream.ended_at
    assert states == {}  # released when the call's outcome came


async def test_a_call_twilio_refused_is_never_synthesised(tmp_path: Path) -> None:
    async with api_rig(tmp_path, bridge_allowed_prefixes=()) as (rig, http, presynth):
        response = await http.post(
            "/v1/announcements", json={"to": PERSON, "text": TEXT, "from": "+966500000999"}
        )
        assert response.status_code == 202, response.text
        await settled_not_placed(rig, response.json()["id"])
        requests = len(rig.hamsa.requests)
        started = counted(rig, "started")
    assert requests == 0
    assert started == 0


async def settled_not_placed(rig: Loopback, announcement_id: str) -> None:
    service = rig.bridge.announcements
    assert service is not None
    async with asyncio.timeout(HANG):
        record = await service.settled(announcement_id)
    assert record is not None
    assert record.call_sid is None  # Twilio refused it (21210: not our caller ID)


# --- the announce command: presynthesis in another process ------------------------------------


def cli_env(lb: Loopback, env: dict[str, str], cache_dir: Path | None) -> dict[str, str]:
    extra = {
        "HAMSA_API_KEY": lb.settings.hamsa_api_key.get_secret_value(),
        "HAMSA_WS_URL": lb.settings.hamsa_ws_url,
        "HAMSA_TRUNCATION_MS_PER_CHAR": "3",
        "BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR": "10",
        "BRIDGE_PROMPT_CACHE_DIR": str(cache_dir) if cache_dir is not None else "",
    }
    return env | extra


async def test_announce_command_presynthesises_into_the_shared_directory(tmp_path: Path) -> None:
    cache_dir = tmp_path / "shared-cache"
    async with outbound_rig(tmp_path, callback_grace=2, bridge_prompt_cache_dir=str(cache_dir)) as (
        lb,
        env,
    ):
        assert lb.twilio is not None
        lb.twilio.before_answer = answer_once_synthesised_elsewhere(lb.hamsa, TEXT)
        code, output = await run_cli(
            "announce", "--to", PERSON, "--text", TEXT, env=cli_env(lb, env, cache_dir)
        )
        [call] = lb.twilio.calls.values()
        stream = only_stream(lb, call.sid)
        requests = list(lb.hamsa.requests)
        used = lb.bridge.metrics.registry.get_sample_value(
            "hamsa_bridge_announcement_presynth_total", {"event": "used"}
        )
        left = list((cache_dir / "held").iterdir())
    assert code == 0, output
    [request] = requests
    assert request.text == TEXT
    assert request.end_at is not None
    assert request.end_at < start_of(stream)
    assert played(stream) == padded(request.audio)
    assert used == 1
    assert left == []
    assert TEXT not in output  # personal text is never logged


async def test_announce_command_without_a_shared_directory_says_so_once_and_the_bridge_streams(
    tmp_path: Path,
) -> None:
    async with outbound_rig(tmp_path, callback_grace=2) as (lb, env):
        code, output = await run_cli(
            "announce", "--to", PERSON, "--text", TEXT, env=cli_env(lb, env, None)
        )
        assert lb.twilio is not None
        [call] = lb.twilio.calls.values()
        stream = only_stream(lb, call.sid)
        [request] = list(lb.hamsa.requests)
    assert code == 0, output
    assert output.count("presynth_needs_shared_cache_dir") == 1
    assert request.received_at > start_of(stream)
    assert played(stream) == padded(request.audio)


# --- a campaign: per-contact text, presynthesised by the runner -------------------------------

TEMPLATE = "مرحبا {name}، موعدك غدا في العيادة."


async def test_a_campaign_presynthesises_each_contacts_text_and_removes_it_after(
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "shared-cache"
    database = f"sqlite:///{tmp_path}/bridge.db"
    numbers = [f"+96650000{i:04d}" for i in range(3)]
    async with loopback(
        EmulatorConfig(ms_per_char=25),
        twilio=TwilioEmulatorConfig(),
        bridge_database_url=database,
        bridge_prompt_cache_dir=str(cache_dir),
        bridge_callback_grace=0.5,
        bridge_outcome_poll_interval=0.25,
        **FAST,
    ) as lb:
        assert lb.twilio is not None
        settings = lb.settings  # the runner's process shares the directory, not the memory
        presynth = command_presynthesizer(settings, metrics=Metrics())
        assert presynth is not None
        lb.twilio.before_answer = answer_once_presynthesised(presynth)
        path = tmp_path / "contacts.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["number", "name"])
            writer.writerows([n, f"سارة{i}"] for i, n in enumerate(numbers))
        config = CampaignConfig(
            text=TEMPLATE,
            from_=LOOPBACK_NUMBER,
            options=AnnouncementOptions("Majd", "ksa", "ar"),
        )
        prepared = prepare_contacts(
            load_contacts(path),
            Template.parse(TEMPLATE),
            lambda n, text: config.spec(settings, n, text),
            settings,
            now=time.time(),
        )
        store = await lb.bridge.store.get()
        campaign = await store.create_campaign(
            "presynth", config.to_dict(), prepared.contacts, now=time.time()
        )
        runner = CampaignRunner(
            store, settings, campaign, api=lambda: TwilioApi(settings), presynth=presynth
        )
        try:
            async with asyncio.timeout(60):
                await runner.run()
        finally:
            await presynth.aclose()
        calls = {c.info.to: c for c in lb.twilio.calls.values()}
        streams = {to: only_stream(lb, c.sid) for to, c in calls.items()}
        requests = list(lb.hamsa.requests)
        left = list((cache_dir / "held").iterdir())
        states = dict(presynth.states)
    assert sorted(streams) == numbers
    for i, number in enumerate(numbers):
        text = f"مرحبا سارة{i}، موعدك غدا في العيادة."  # rendered per contact
        [request] = for_text(requests, text)
        stream = streams[number]
        assert request.end_at is not None
        assert request.end_at < start_of(stream)  # while it rang
        assert played(stream) == padded(request.audio)
    assert len(requests) == len(numbers)  # no call asked Hamsa for its message
    assert left == []  # no contact's audio outlives its call
    assert states == {}
