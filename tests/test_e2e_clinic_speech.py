"""Issue 17's acceptance: the shipped clinic flow answered by voice, end to end through the Twilio
emulator (someone dials the number; Twilio's media leg speaks the caller's answers as audio),
the bridge (detector, 16 kHz WAV, ``stt`` on the call's one Hamsa socket, phrase matching and
spoken digits) and the Hamsa emulator, which hears the caller's tones back as text.

In every case the call used exactly one Hamsa socket for its prompts and its transcripts, and
the order of the requests on it is checked: each ``stt`` comes after the prompt it answers and
before the prompt that follows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.dev.hamsa_emulator import EmulatorConfig
from bridge.dev.hamsa_emulator.config import SttFault
from bridge.dev.loopback import Loopback
from bridge.dev.servers import serving
from tests.test_e2e_ivr import clinic, stream_of

pytestmark = pytest.mark.anyio

HOURS = "say:المواعيد"
FILE_NUMBER_SAID = "say:واحد اثنين ثلاثة اربعة خمسة ستة"
MENU_ENDS = "وللاستقبال اضغط صفر"
"""The main menu prompt's last sentence (a prompt goes to Hamsa a sentence at a time)."""


def requests_in_order(rig: Loopback) -> list[tuple[int, str, str]]:
    """Every request the Hamsa emulator received: (connection, kind, what), in arrival order;
    ``what`` is a TTS request's text, or what the STT heard."""
    tts = [(r.number, r.connection_id, "tts", r.text or "") for r in rig.hamsa.requests]
    stt = [(r.number, r.connection_id, "stt", r.recognized or "") for r in rig.hamsa.stt_requests]
    return [(conn, kind, what) for _, conn, kind, what in sorted(tts + stt)]


def one_socket(rig: Loopback) -> list[tuple[str, str]]:
    """The call's requests, after checking they all went over one Hamsa socket."""
    ordered = requests_in_order(rig)
    assert len(rig.hamsa.connections) == 1
    assert {conn for conn, _, _ in ordered} == {rig.hamsa.connections[0].id}
    return [(kind, what) for _, kind, what in ordered]


def marks(result: Any) -> list[str]:
    """Every utterance's mark without its number (``say:welcome:1`` → ``say:welcome``), in
    order: ``prompts()`` folds a node's repeats into one."""
    return [mark.name.rsplit(":", 1)[0] for mark in result.leg.timeline.marks]


def kinds_between(requests: list[tuple[str, str]], before: str, after: str) -> list[str]:
    """The kinds of the requests after the TTS request whose text contains ``before`` and up to
    the TTS request whose text contains ``after``."""
    start = next(i for i, (k, t) in enumerate(requests) if k == "tts" and before in t)
    end = next(i for i, (k, t) in enumerate(requests) if k == "tts" and after in t and i > start)
    return [kind for kind, _ in requests[start + 1 : end]]


async def test_the_caller_says_almawaeed_and_reaches_the_hours_node(tmp_path: Path) -> None:
    async with clinic(tmp_path) as rig:
        sid = await rig.call_in(answers=[HOURS, "9", "0"])
        result = stream_of(rig, sid)
        requests = one_socket(rig)
        heard = [r.recognized for r in rig.hamsa.stt_requests]
    assert result.prompts() == [
        "welcome",
        "main_menu",
        "opening_hours",
        "hours_menu",
        "main_menu",
        "reception",
    ]
    assert heard == ["المواعيد"]
    # the transcript was asked for after the menu's prompt and before the hours were said
    assert kinds_between(requests, MENU_ENDS, "نستقبلكم") == ["stt"]


async def test_the_file_number_said_as_words_is_stored_as_digits(tmp_path: Path) -> None:
    posted: list[dict[str, Any]] = []

    async def lookup(request: Request) -> Response:
        body = await request.json()
        posted.append(body["vars"])
        if body["vars"].get("file_number") == "123456":
            booking = {"appointment_date": "الأحد", "appointment_time": "العاشرة"}
            return JSONResponse({"branch": "found", "vars": booking | {"doctor_name": "سارة"}})
        return JSONResponse({"branch": "not_found"})

    app = Starlette(routes=[Route("/lookup", lookup, methods=["POST"])])
    async with serving(app) as url, clinic(tmp_path, webhook=url + "/lookup") as rig:
        sid = await rig.call_in(answers=["1", FILE_NUMBER_SAID])
        result = stream_of(rig, sid)
        requests = one_socket(rig)
    assert result.prompts() == [
        "welcome",
        "main_menu",
        "recording_notice",
        "ask_file_number",
        "appointment_found",
        "goodbye",
    ]
    assert [v["file_number"] for v in posted] == ["123456"]
    assert kinds_between(requests, "رقم ملفك", "موعدك القادم") == ["stt"]


async def test_a_key_still_works_at_the_speech_menu(tmp_path: Path) -> None:
    async with clinic(tmp_path) as rig:
        sid = await rig.call_in(answers=["2", "9", "0"])
        result = stream_of(rig, sid)
        requests = one_socket(rig)
    assert result.prompts() == [
        "welcome",
        "main_menu",
        "opening_hours",
        "hours_menu",
        "main_menu",
        "reception",
    ]
    assert [kind for kind, _ in requests] == ["tts"] * len(requests)  # nothing to transcribe


async def test_silence_re_prompts_then_speech_answers(tmp_path: Path) -> None:
    # Marks that wait for input, in order: the prompt (silence), the no-input prompt (silence),
    # the prompt again (the caller speaks after it), then the hours menu and the main menu.
    async with clinic(tmp_path) as rig:
        sid = await rig.call_in(answers=["", "", HOURS, "9", "0"])
        result = stream_of(rig, sid)
        requests = one_socket(rig)
        heard = [r.recognized for r in rig.hamsa.stt_requests]
    assert marks(result)[:5] == [
        "say:welcome",
        "menu:main_menu",
        "menu:main_menu",  # "عفواً، لم نستلم أي اختيار."
        "menu:main_menu",  # the prompt again
        "say:opening_hours",
    ]
    assert heard == ["المواعيد"]
    assert any(kind == "tts" and "لم نستلم أي اختيار" in what for kind, what in requests)


async def test_an_stt_error_falls_back_to_keys_at_that_node(tmp_path: Path) -> None:
    emulator = EmulatorConfig(ms_per_char=12, stt_faults={1: SttFault.ERROR})
    async with clinic(tmp_path, emulator=emulator) as rig:
        # spoken (Hamsa answers with an error), then the keys-only prompt, then a key
        sid = await rig.call_in(answers=[HOURS, "2", "9", "0"])
        result = stream_of(rig, sid)
        requests = one_socket(rig)
        answered = [r.answered_via for r in rig.hamsa.stt_requests]
    assert marks(result)[:4] == [
        "say:welcome",
        "menu:main_menu",
        "menu:main_menu",  # the keys-only prompt
        "say:opening_hours",
    ]
    assert answered == ["error"]
    # after the error: the keys-only prompt, said once, and no other transcript asked for
    between = kinds_between(requests, MENU_ENDS, "تعذر علينا فهمك")
    assert between == ["stt"]
    assert [kind for kind, _ in requests].count("stt") == 1
