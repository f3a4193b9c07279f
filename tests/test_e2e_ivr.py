"""IVR flows end to end on loopback: simulated caller (or the Twilio emulator) ↔ bridge ↔ Hamsa
emulator, over real sockets. What the caller heard is checked against what Hamsa said, node by
node (marks are named after the node that spoke)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.dev.caller import CallResult
from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.loopback import Loopback, loopback
from bridge.dev.servers import serving
from tests.timing import LATE

pytestmark = pytest.mark.anyio

# 25 ms of audio per character keeps calls short; the truncation guard is scaled to match
FAST = {"hamsa_truncation_ms_per_char": 3.0, "bridge_prompt_cache_min_ms_per_char": 10.0}

# The flow's timeouts leave a busy machine LATE (tests/timing.py) past what the callee does: it
# answers a prompt 0.3 s after it ended and presses a key every 0.15 s (menu 1.0 s, inter-digit
# 0.9 s); the booking service answers at once, or after 3 s (/slow: the 1.5 s timeout's case).
FLOW = """
[flow]
name = "test"
start = "{start}"

{welcome}
[nodes.menu]
type = "menu"
prompt = "للمواعيد اضغط واحد، لساعات العمل اضغط اثنين، للاستقبال اضغط صفر، للتنبيه اضغط تسعة."
options = {{ "1" = "appointments", "2" = "hours", "0" = "reception", "9" = "notice" }}
timeout = 1.0
invalid = "خيار غير صحيح."
no_input = "لم نسمع اختيارك."
retries = 1
on_failure = "goodbye"

[nodes.hours]
type = "hangup"
text = "نعمل من التاسعة صباحا حتى الخامسة مساء."

[nodes.appointments]
type = "gather"
prompt = "أدخل رقم الملف من ثلاثة أرقام ثم اضغط المربع."
store = "file"
finish_on = "#"
timeout = 2.0
inter_digit_timeout = 0.9
pattern = "[0-9]{{3}}"
invalid = "رقم غير صحيح."
retries = 1
next = "lookup"
on_failure = "goodbye"

[nodes.lookup]
type = "webhook"
url = "{webhook}"
timeout = 1.5
branches = {{ found = "found", missing = "missing" }}
next = "goodbye"
fallback = "unavailable"

[nodes.found]
type = "hangup"
text = "ملف {{file}}: موعدك يوم {{appointment_date}}."

[nodes.missing]
type = "hangup"
text = "لم نجد ملفك."

[nodes.unavailable]
type = "hangup"
text = "عذرا، النظام غير متاح الآن."

[nodes.notice]
type = "say"
text = "تنبيه: هذه المكالمة مسجلة لأغراض الجودة والتدريب."
barge_in = false
next = "menu"

[nodes.reception]
type = "transfer"
to = "+966112345678"
message = "جار تحويلك إلى الاستقبال."

[nodes.goodbye]
type = "hangup"
text = "مع السلامة."
"""


WELCOME = """
[nodes.welcome]
type = "say"
text = "مرحبا بكم في العيادة."
next = "menu"
"""


@asynccontextmanager
async def booking_service() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """The user's booking webhook: /ok answers found or missing, /error 500, /slow times out."""
    seen: list[dict[str, Any]] = []

    async def ok(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        if body["vars"].get("file") == "123":
            return JSONResponse({"branch": "found", "vars": {"appointment_date": "الأحد"}})
        return JSONResponse({"branch": "missing"})

    async def error(request: Request) -> Response:
        seen.append(await request.json())
        return JSONResponse({"error": "down"}, status_code=500)

    async def slow(request: Request) -> Response:
        seen.append(await request.json())
        await asyncio.sleep(3)  # the service being slow, not test synchronisation
        return JSONResponse({"branch": "found"})

    app = Starlette(
        routes=[
            Route("/ok", ok, methods=["POST"]),
            Route("/error", error, methods=["POST"]),
            Route("/slow", slow, methods=["POST"]),
        ]
    )
    async with serving(app) as url:
        yield url, seen


@asynccontextmanager
async def ivr(
    tmp_path: Path, *, start: str = "welcome", webhook: str = "http://127.0.0.1:9/none", **kw: Any
) -> AsyncIterator[Loopback]:
    path = tmp_path / "flow.toml"
    welcome = WELCOME if start == "welcome" else ""  # else unreachable: an invalid flow
    path.write_text(FLOW.format(start=start, webhook=webhook, welcome=welcome), encoding="utf-8")
    emulator = kw.pop("emulator", EmulatorConfig(ms_per_char=25))
    if not kw.get("twilio"):
        kw["twilio_account_sid"] = "AC" + "0" * 32  # the flow can transfer: the setting is required
    async with loopback(emulator, bridge_ivr_flow=str(path), **{**FAST, **kw}) as rig:
        yield rig


def heard_after(result: CallResult, at: float) -> bytes:
    assert result.leg is not None
    arrivals = result.leg.timeline.media_arrivals
    index = next((i for i, t in enumerate(arrivals) if t > at), len(arrivals))
    return bytes(result.leg.received[index * 160 :])


def padded(audio: bytes) -> bytes:
    return audio + b"\xff" * (-len(audio) % 160)


def said(rig: Loopback, text_part: str) -> bytes:
    """The audio Hamsa produced for the (one) request whose text contains ``text_part``."""
    [request] = [r for r in rig.hamsa.requests if r.text and text_part in r.text]
    return request.audio


async def test_each_menu_option_reaches_its_node_and_ends_as_the_flow_says(
    tmp_path: Path,
) -> None:
    async with ivr(tmp_path) as rig:
        hours = await rig.call(answers=["2"])
        assert hours.prompts() == ["welcome", "menu", "hours"]
        assert hours.close_code == 1000
        tail = padded(said(rig, "نعمل من التاسعة"))
        assert hours.leg is not None
        assert bytes(hours.leg.received).endswith(tail)


async def test_invalid_key_plays_the_invalid_prompt_then_the_menu_again(tmp_path: Path) -> None:
    async with ivr(tmp_path, start="menu") as rig:
        result = await rig.call(answers=["7", "2"])
    assert result.prompts() == ["menu", "hours"]
    marks = [m.name for m in result.leg.timeline.marks] if result.leg else []
    # the prompt, then the invalid prompt; the caller's next key came right after it, so the
    # menu took it without repeating its prompt (a key waiting answers at once)
    assert len([m for m in marks if m.startswith("menu:")]) == 2
    assert "خيار غير صحيح." in [r.text for r in rig.hamsa.requests]


async def test_silence_reprompts_and_ends_after_the_retry_limit(tmp_path: Path) -> None:
    async with ivr(tmp_path, start="menu") as rig:
        result = await rig.call()
        texts = [r.text for r in rig.hamsa.requests]
    assert result.prompts() == ["menu", "goodbye"]
    assert "لم نسمع اختيارك." in texts
    assert texts[-1] == "مع السلامة."
    assert result.close_code == 1000


async def test_key_during_a_prompt_clears_at_once_and_the_next_node_plays_clean(
    tmp_path: Path,
) -> None:
    emulator = EmulatorConfig(ms_per_char=60)  # the menu prompt lasts ~5 s
    async with ivr(tmp_path, start="menu", emulator=emulator) as rig:
        result = await rig.call(keys=[(1.0, "2")])
        hours = said(rig, "نعمل من التاسعة")
    assert result.leg is not None
    [clear] = result.leg.timeline.clears
    pressed = result.keys_sent[0][0]
    assert pressed < clear.at <= pressed + LATE  # at once, not at the prompt's end 4 s later
    # after the clear: only the next node's audio, none of the interrupted prompt
    assert heard_after(result, clear.at) == padded(hours)
    assert result.prompts() == ["hours"]  # the interrupted menu prompt never got its mark


async def test_barge_in_off_plays_the_notice_to_the_end_and_keeps_the_key(
    tmp_path: Path,
) -> None:
    async with ivr(tmp_path, start="notice") as rig:
        result = await rig.call(keys=[(0.3, "2")])
        notice = said(rig, "تنبيه")
    assert result.leg is not None
    assert result.leg.timeline.clears == []
    assert bytes(result.leg.received).startswith(padded(notice))
    # the key pressed during the notice answered the menu: its prompt was never needed
    assert result.prompts() == ["notice", "hours"]


async def test_gather_with_hash_then_webhook_branch_found(tmp_path: Path) -> None:
    async with booking_service() as (url, seen), ivr(tmp_path, webhook=url + "/ok") as rig:
        result = await rig.call(answers=["1", "123#"])
        texts = [r.text for r in rig.hamsa.requests]
    assert result.prompts() == ["welcome", "menu", "appointments", "found"]
    assert seen[0]["vars"]["file"] == "123"
    assert seen[0]["digits"] == "123"
    assert "ملف 123: موعدك يوم الأحد." in texts  # webhook vars in the prompt


async def test_gather_ends_on_inter_digit_timeout(tmp_path: Path) -> None:
    async with booking_service() as (url, seen), ivr(tmp_path, webhook=url + "/ok") as rig:
        result = await rig.call(answers=["1", "123"])  # no '#': the pause ends the input
    assert seen[0]["vars"]["file"] == "123"
    assert result.prompts()[-1] == "found"


async def test_gather_pattern_mismatch_reprompts(tmp_path: Path) -> None:
    async with booking_service() as (url, seen), ivr(tmp_path, webhook=url + "/ok") as rig:
        result = await rig.call(answers=["1", "12#", "999#"])
        texts = [r.text for r in rig.hamsa.requests]
    assert "رقم غير صحيح." in texts
    assert seen[0]["vars"]["file"] == "999"
    assert result.prompts()[-1] == "missing"


@pytest.mark.parametrize("endpoint", ["/error", "/slow"])
async def test_webhook_failure_takes_the_fallback_branch(tmp_path: Path, endpoint: str) -> None:
    async with booking_service() as (url, seen), ivr(tmp_path, webhook=url + endpoint) as rig:
        result = await rig.call(answers=["1", "123#"])
    assert len(seen) == 1
    assert result.prompts()[-1] == "unavailable"


async def test_transfer_updates_the_call_with_dial_after_the_message_played(
    tmp_path: Path,
) -> None:
    async with ivr(tmp_path, start="menu", twilio=True) as rig:
        sid = await rig.call_in(answers=["0"])
        assert rig.twilio is not None
        updates = [
            r for r in rig.twilio.requests if r.method == "POST" and r.path.endswith(f"{sid}.json")
        ]
        transfers = list(rig.twilio.transfers)
        [stream] = rig.twilio.streams_for(sid)
        message = said(rig, "جار تحويلك")
    assert len(updates) == 1
    assert "<Dial><Number>+966112345678</Number></Dial>" in str(updates[0].form["Twiml"])
    assert [t.targets for t in transfers] == [["+966112345678"]]
    leg = stream.result.leg
    assert leg is not None
    [mark] = [m for m in leg.timeline.marks if m.name.startswith("transfer:reception")]
    assert mark.echoed_at is not None
    assert not mark.cleared
    assert updates[0].at >= mark.echoed_at  # the message was heard before the transfer
    assert bytes(leg.received).endswith(padded(message))


async def test_second_call_plays_cached_prompts_without_hamsa_and_starts_at_once(
    tmp_path: Path,
) -> None:
    async with ivr(tmp_path) as rig:
        await rig.call(answers=["2"])
        before = len(rig.hamsa.requests)
        again = await rig.call(answers=["2"])
        after = len(rig.hamsa.requests)
        details = rig.bridge.recent_calls[-1].details
    assert after == before  # welcome, menu and hours all came from the cache
    # at once: whole in the cache, no prompt waited for the start policy (or for Hamsa); how
    # soon the first frame came is the machine's (a millisecond on a quiet one)
    assert "start_holds" not in details
    assert again.leg is not None
    assert again.started_at is not None
    assert again.leg.timeline.first_media_at is not None
    assert again.started_at < again.leg.timeline.first_media_at <= again.started_at + LATE
    assert again.prompts() == ["welcome", "menu", "hours"]


async def test_an_invalid_flow_stops_the_bridge_from_starting(tmp_path: Path) -> None:
    from bridge.errors import ConfigError

    path = tmp_path / "broken.toml"
    path.write_text('[flow]\nstart = "nowhere"\n[nodes.a]\ntype = "say"\ntext = ""\nnext = "b"\n')
    with pytest.raises(ConfigError, match="nowhere"):
        async with loopback(bridge_ivr_flow=str(path)):
            pass


# --- the shipped example flow ----------------------------------------------------------------

CLINIC = Path(__file__).parents[1] / "bridge" / "ivr" / "examples" / "clinic.toml"


@asynccontextmanager
async def clinic(
    tmp_path: Path, webhook: str | None = None, *, emulator: EmulatorConfig | None = None
) -> AsyncIterator[Loopback]:
    """The shipped clinic flow through the Twilio emulator, its booking lookup pointed at
    ``webhook`` (else unreachable)."""
    text = CLINIC.read_text(encoding="utf-8")
    if webhook is not None:  # point the booking lookup at our local service
        text = text.replace("https://clinic.example.com/ivr/appointments", webhook)
    path = tmp_path / "clinic.toml"
    path.write_text(text, encoding="utf-8")
    emulator = emulator or EmulatorConfig(ms_per_char=12)
    async with loopback(emulator, bridge_ivr_flow=str(path), twilio=True, **FAST) as rig:
        yield rig


def stream_of(rig: Loopback, sid: str) -> Any:
    assert rig.twilio is not None
    [stream] = rig.twilio.streams_for(sid)
    return stream.result


async def test_clinic_hours_then_back_to_the_menu_then_reception(tmp_path: Path) -> None:
    async with clinic(tmp_path) as rig:
        sid = await rig.call_in(answers=["2", "9", "0"])
        result = stream_of(rig, sid)
        assert rig.twilio is not None
        transfers = [t.targets for t in rig.twilio.transfers]
        status = rig.twilio.call(sid).info.status.value
    assert result.prompts() == [
        "welcome",
        "main_menu",
        "opening_hours",
        "hours_menu",
        "main_menu",
        "reception",
    ]
    assert transfers == [["+966112345678"]]
    assert status == "completed"  # the emulator ends the call after recording the <Dial>


async def test_clinic_english_branch_speaks_english_with_its_own_voice(tmp_path: Path) -> None:
    async with clinic(tmp_path) as rig:
        sid = await rig.call_in(answers=["3", "0"])
        result = stream_of(rig, sid)
        voices = {(r.payload["speaker"], r.payload["languageId"]) for r in rig.hamsa.requests}
        english = [r for r in rig.hamsa.requests if r.payload["speaker"] == "Emma"]
    assert result.prompts()[-2:] == ["english_menu", "english_reception"]
    assert ("Emma", "en") in voices
    assert ("Majd", "ar") in voices
    assert english
    assert all(r.payload["dialect"] == "en" for r in english)


async def test_clinic_appointment_lookup_reads_out_the_booking(tmp_path: Path) -> None:
    async def lookup(request: Request) -> Response:
        body = await request.json()
        if body["vars"].get("file_number") == "123456":
            booking = {
                "appointment_date": "الأحد",
                "appointment_time": "العاشرة",
                "doctor_name": "د. سارة",
            }
            return JSONResponse({"branch": "found", "vars": booking})
        return JSONResponse({"branch": "not_found"})

    app = Starlette(routes=[Route("/lookup", lookup, methods=["POST"])])
    async with serving(app) as url, clinic(tmp_path, webhook=url + "/lookup") as rig:
        sid = await rig.call_in(answers=["1", "123456"])  # six digits end the input
        result = stream_of(rig, sid)
        texts = [r.text or "" for r in rig.hamsa.requests]
    assert result.prompts() == [
        "welcome",
        "main_menu",
        "recording_notice",
        "ask_file_number",
        "appointment_found",
        "goodbye",
    ]
    assert "يوم الأحد الساعة العاشرة مع د. سارة" in " ".join(texts)  # may span two requests


# --- review findings ---------------------------------------------------------------------------


async def test_a_finish_key_after_a_full_gather_is_swallowed(tmp_path: Path) -> None:
    lookups: list[str] = []

    async def lookup(request: Request) -> Response:
        body = await request.json()
        lookups.append(body["vars"].get("file_number", ""))
        return JSONResponse({"branch": "not_found"})

    app = Starlette(routes=[Route("/lookup", lookup, methods=["POST"])])
    async with serving(app) as url, clinic(tmp_path, webhook=url + "/lookup") as rig:
        sid = await rig.call_in(answers=["1", "123456#"])
        result = stream_of(rig, sid)
    assert lookups == ["123456"]
    assert result.leg.timeline.clears == []  # the '#' did not cut off "file not found"
    assert result.prompts()[4:6] == ["file_not_found", "main_menu"]


async def test_a_short_reply_that_passed_the_guard_is_played_but_never_cached(
    tmp_path: Path,
) -> None:
    from bridge.dev.hamsa_emulator import Fault

    # request 1 (the welcome) gets three 640-byte chunks: above the hold, below a real prompt
    emulator = EmulatorConfig(ms_per_char=45, faults={1: Fault.TRUNCATE_3X640})
    from tests.test_faults_hamsa import log_tap

    overrides = {"bridge_prompt_cache_min_ms_per_char": 40.0, "hamsa_retry_delays": (0.05,)}
    with log_tap() as tap:
        async with ivr(tmp_path, emulator=emulator, **overrides) as rig:
            for _ in range(3):
                await rig.call(answers=["2"])
            welcome = [r for r in rig.hamsa.requests if r.text == "مرحبا بكم في العيادة."]
    # call 1 got the short reply (it passed the loose guard and was played) but it was too short
    # to cache; call 2 asked Hamsa again and cached the full reply; call 3 used the cache
    assert [r.fault for r in welcome] == [Fault.TRUNCATE_3X640, None]
    assert len(welcome[1].audio) > 3 * len(welcome[0].audio)
    [not_cached] = tap.named("prompt_not_cached_short")
    rule = "is shorter than BRIDGE_PROMPT_CACHE_MIN_MS_PER_CHAR=40 ms/char allows"
    assert rule in not_cached["reason"]


async def test_a_transfer_to_a_number_the_caller_typed_is_refused_at_run_time(
    tmp_path: Path,
) -> None:
    flow = tmp_path / "dial.toml"
    flow.write_text(
        """
[flow]
start = "ask"
[nodes.ask]
type = "gather"
prompt = "أدخل الرقم."
store = "n"
finish_on = "#"
next = "go"
[nodes.go]
type = "transfer"
to = "+{n}"
""",
        encoding="utf-8",
    )
    async with loopback(
        EmulatorConfig(ms_per_char=25), bridge_ivr_flow=str(flow), twilio=True, **FAST
    ) as rig:
        sid = await rig.call_in(answers=["900123*#"])
        assert rig.twilio is not None
        transfers = list(rig.twilio.transfers)
        updates = [r for r in rig.twilio.requests if r.method == "POST" and sid in r.path]
    assert transfers == []
    assert updates == []


def test_validate_reports_a_loop_that_never_waits_for_the_caller(tmp_path: Path) -> None:
    from bridge.errors import FlowInvalid
    from bridge.ivr.load import load_flow

    flow = tmp_path / "loop.toml"
    flow.write_text(
        """
[flow]
start = "hello"
[nodes.hello]
type = "say"
text = "مرحبا."
next = "check"
[nodes.check]
type = "webhook"
url = "https://example.com/x"
fallback = "hello"
next = "bye"
[nodes.bye]
type = "hangup"
""",
        encoding="utf-8",
    )
    with pytest.raises(FlowInvalid) as info:
        load_flow(flow)
    assert any("loop that never waits" in e.message for e in info.value.errors)
