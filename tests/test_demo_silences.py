"""The caller's report tells silences apart: an underrun is a gap inside speech; the IVR waiting
for a key, or the pause before the next prompt, is not (``StreamResult.silences``). Sans-I/O:
the Twilio leg is driven by hand, time is the ``now`` argument."""

from __future__ import annotations

import base64
import json

import pytest

from bridge.dev.media_leg import StreamResult
from bridge.dev.twilio_stream_client import TwilioMediaLeg

MZ = "MZ" + "0" * 32
T0 = 100.0


def media(seconds: float) -> str:
    payload = base64.b64encode(b"\x55" * round(seconds * 8000)).decode()
    return json.dumps({"event": "media", "streamSid": MZ, "media": {"payload": payload}})


def mark(name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": MZ, "mark": {"name": name}})


def result_of(leg: TwilioMediaLeg, keys: list[tuple[float, str]] | None = None) -> StreamResult:
    return StreamResult(leg=leg, started_at=T0, keys_sent=keys or [])


def started() -> TwilioMediaLeg:
    leg = TwilioMediaLeg(MZ, "CA" + "0" * 32, "AC" + "0" * 32, {})
    leg.connected()
    leg.start()
    return leg


def test_a_gap_inside_an_utterance_is_an_underrun() -> None:
    leg = started()
    leg.receive(media(0.5), T0)
    leg.receive(media(0.5), T0 + 0.8)  # 0.3 s late: the caller heard silence mid-sentence
    leg.receive(mark("utt:1"), T0 + 0.8)
    leg.advance(T0 + 2)
    result = result_of(leg)
    [silence] = result.silences()
    assert silence.kind == "underrun"
    assert silence.at == pytest.approx(T0 + 0.5)
    assert silence.duration == pytest.approx(0.3)
    assert result.gaps() == [(silence.at, silence.duration)]
    assert any(line.startswith("underrun:") for line in result.timeline())
    assert "underruns: 1" in result.timeline()[-3]


def test_waiting_for_a_key_after_a_menu_is_not_an_underrun() -> None:
    leg = started()
    leg.receive(media(1.0), T0)
    leg.receive(mark("menu:main_menu:1"), T0 + 0.2)  # played to its end at T0 + 1.0
    key_at = T0 + 5.0  # the caller thought for 4 s
    leg.receive(media(1.0), T0 + 5.6)  # the next prompt, 0.6 s after the key
    leg.receive(mark("say:hours:2"), T0 + 5.7)
    leg.advance(T0 + 7)
    result = result_of(leg, keys=[(key_at, "2")])
    waiting, between = result.silences()
    assert (waiting.kind, waiting.keyed) == ("waiting", True)
    assert (waiting.at, waiting.duration) == (T0 + 1.0, pytest.approx(4.0))
    assert between.kind == "between"
    assert (between.at, between.duration) == (key_at, pytest.approx(0.6))
    assert result.gaps() == []
    lines = result.timeline()
    assert "waiting for a key:    1000.0 ms for 4.0 s" in lines
    assert not any(line.startswith("underrun:") for line in lines)
    assert any("underruns: 0  waiting for keys: 4.0 s" in line for line in lines)


def test_a_wait_nobody_answered_lasts_until_the_next_prompt() -> None:
    leg = started()
    leg.receive(media(0.5), T0)
    leg.receive(mark("gather:file:1"), T0 + 0.1)
    leg.receive(media(0.5), T0 + 7.5)  # the gather timed out; the flow spoke again
    leg.advance(T0 + 9)
    [silence] = result_of(leg).silences()
    assert (silence.kind, silence.keyed) == ("waiting", False)
    assert silence.duration == pytest.approx(7.0)
    assert any("(no key came: the flow moved on)" in line for line in result_of(leg).timeline())


def test_the_pause_between_two_prompts_is_not_an_underrun() -> None:
    leg = started()
    leg.receive(media(0.5), T0)
    leg.receive(mark("say:welcome:1"), T0 + 0.1)
    leg.receive(media(0.5), T0 + 1.25)  # the next prompt's synthesis took 0.75 s
    leg.advance(T0 + 3)
    [silence] = result_of(leg).silences()
    assert silence.kind == "between"
    assert silence.duration == pytest.approx(0.75)


def test_a_mark_that_arrives_after_the_audio_ran_out_still_ends_the_utterance() -> None:
    leg = started()
    leg.receive(media(0.5), T0)
    leg.advance(T0 + 0.6)  # the audio ran out at T0 + 0.5 ...
    leg.receive(mark("menu:m:1"), T0 + 0.6)  # ... and its mark came after (echoed at once)
    leg.receive(media(0.5), T0 + 3.0)
    leg.advance(T0 + 4)
    [silence] = result_of(leg).silences()
    assert silence.kind == "waiting"
