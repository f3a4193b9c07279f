"""Sans-I/O tests of ``bridge.dev.twilio_stream_client``: Twilio's side of a Media Stream.

Shapes are compared with the examples of ``docs/twilio-streams.md`` §2; playout rules are §4;
warning codes §5. No sleeps: time is the ``now`` argument.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.dev.twilio_stream_client import (
    MAX_BUFFER_BYTES,
    ONCE_PER_STREAM,
    ClearRecord,
    MarkRecord,
    TwilioMediaLeg,
    UnderrunRecord,
)
from bridge.errors import InvalidState
from bridge.protocols.twilio_stream_server import StreamState, TwilioMediaStream

MZ = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
CA = "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
AC = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
PARAMS = {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
T0 = 1234.567  # an awkward float origin, as time.monotonic() gives


def leg_started(params: dict[str, str] | None = None) -> TwilioMediaLeg:
    leg = TwilioMediaLeg(MZ, CA, AC, PARAMS if params is None else params)
    leg.connected()
    leg.start()
    return leg


def app_media(payload: bytes, sid: str = MZ) -> str:
    """An app ``media`` message exactly as §3 shows it."""
    b64 = base64.b64encode(payload).decode()
    return json.dumps({"event": "media", "streamSid": sid, "media": {"payload": b64}})


def app_mark(name: str, sid: str = MZ) -> str:
    return json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}})


def app_clear(sid: str = MZ) -> str:
    return json.dumps({"event": "clear", "streamSid": sid})


def frames(n: int, fill: int = 0x55) -> bytes:
    return bytes([fill]) * (160 * n)


def echo_names(echoes: list[str]) -> list[str]:
    names = []
    for echo in echoes:
        obj = json.loads(echo)
        assert obj["event"] == "mark"
        names.append(obj["mark"]["name"])
    return names


# --- messages Twilio sends (§2) --------------------------------------------------------------


class TestOutgoingShapes:
    def test_connected(self) -> None:
        leg = TwilioMediaLeg(MZ, CA, AC, {})
        out = leg.connected()
        assert json.loads(out) == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        assert leg.state is StreamState.CONNECTED

    def test_start(self) -> None:
        leg = TwilioMediaLeg(MZ, CA, AC, PARAMS)
        leg.connected()
        obj = json.loads(leg.start())
        assert obj == {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": AC,
                "streamSid": MZ,
                "callSid": CA,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": PARAMS,
            },
            "streamSid": MZ,
        }
        assert list(obj) == ["event", "sequenceNumber", "start", "streamSid"]
        assert leg.state is StreamState.STARTED

    def test_start_without_parameters_sends_empty_object(self) -> None:
        leg = TwilioMediaLeg(MZ, CA, AC)
        assert json.loads(leg.start())["start"]["customParameters"] == {}

    def test_media(self) -> None:
        leg = leg_started()
        payload = bytes(range(160))
        obj = json.loads(leg.media(payload, 155))
        assert obj == {
            "event": "media",
            "sequenceNumber": "2",
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": "155",
                "payload": base64.b64encode(payload).decode(),
            },
            "streamSid": MZ,
        }
        assert len(obj["media"]["payload"]) == 216  # §2 [OBS]

    def test_dtmf(self) -> None:
        leg = leg_started()
        assert json.loads(leg.dtmf("1")) == {
            "event": "dtmf",
            "streamSid": MZ,
            "sequenceNumber": "2",
            "dtmf": {"track": "inbound_track", "digit": "1"},
        }

    def test_mark_echo(self) -> None:
        leg = leg_started()
        [echo] = leg.receive(app_mark("my label"), T0)
        assert json.loads(echo) == {
            "event": "mark",
            "sequenceNumber": "2",
            "streamSid": MZ,
            "mark": {"name": "my label"},
        }

    def test_stop(self) -> None:
        leg = leg_started()
        assert json.loads(leg.stop()) == {
            "event": "stop",
            "sequenceNumber": "2",
            "stop": {"accountSid": AC, "callSid": CA},
            "streamSid": MZ,
        }
        assert leg.state is StreamState.STOPPED

    def test_values_are_strings_except_media_format_numbers(self) -> None:
        leg = leg_started()
        messages = [leg.media(b"\xff" * 160, 20), leg.dtmf("#"), leg.stop()]
        for message in messages:
            obj = json.loads(message)
            stack: list[Any] = [obj]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    stack.extend(item.values())
                else:
                    assert isinstance(item, str)

    def test_sequence_numbers_and_chunks(self) -> None:
        leg = TwilioMediaLeg(MZ, CA, AC)
        connected = json.loads(leg.connected())
        assert "sequenceNumber" not in connected
        assert "streamSid" not in connected
        sent = [leg.start()]
        sent += [leg.media(b"\xff" * 160, 20 * i) for i in range(1, 4)]
        sent += leg.receive(app_mark("now"), T0)  # echoed at once: Twilio sends it, so it counts
        sent += [leg.dtmf("5"), leg.media(b"\xff" * 160, 80), leg.stop()]
        objs = [json.loads(m) for m in sent]
        assert [o["sequenceNumber"] for o in objs] == [str(i) for i in range(1, 9)]
        assert [o["event"] for o in objs] == [
            "start", "media", "media", "media", "mark", "dtmf", "media", "stop",
        ]  # fmt: skip
        assert [o["media"]["chunk"] for o in objs if o["event"] == "media"] == ["1", "2", "3", "4"]
        assert [o["media"]["timestamp"] for o in objs if o["event"] == "media"] == [
            "20", "40", "60", "80",
        ]  # fmt: skip


class TestBuilderMisuse:
    def test_connected_only_first(self) -> None:
        leg = TwilioMediaLeg(MZ, CA, AC)
        leg.connected()
        with pytest.raises(InvalidState, match="connected"):
            leg.connected()

    def test_start_without_connected_allowed_once(self) -> None:
        leg = TwilioMediaLeg(MZ, CA, AC)
        leg.start()
        with pytest.raises(InvalidState, match="start"):
            leg.start()

    @pytest.mark.parametrize("what", ["media", "dtmf", "stop"])
    def test_needs_started(self, what: str) -> None:
        leg = TwilioMediaLeg(MZ, CA, AC)
        calls = {
            "media": lambda: leg.media(b"", 0),
            "dtmf": lambda: leg.dtmf("1"),
            "stop": leg.stop,
        }
        with pytest.raises(InvalidState, match="NEW"):
            calls[what]()
        leg.start()
        leg.stop()
        with pytest.raises(InvalidState, match="STOPPED"):
            calls[what]()

    @pytest.mark.parametrize("digit", ["", "12", "A", "x", " "])
    def test_dtmf_digit(self, digit: str) -> None:
        with pytest.raises(InvalidState, match="DTMF"):
            leg_started().dtmf(digit)

    def test_negative_timestamp(self) -> None:
        with pytest.raises(InvalidState, match="timestamp"):
            leg_started().media(b"\xff" * 160, -1)

    def test_time_must_not_go_backwards(self) -> None:
        leg = leg_started()
        leg.advance(T0)
        leg.receive(app_clear(), T0)  # equal is fine
        with pytest.raises(InvalidState, match="backwards"):
            leg.receive(app_clear(), T0 - 0.001)
        with pytest.raises(InvalidState, match="backwards"):
            leg.advance(float("nan"))


# --- playout: marks, clear, underruns (§4) ---------------------------------------------------


class TestMarkTiming:
    def test_mark_behind_one_second_echoes_at_exactly_t0_plus_1(self) -> None:
        leg = leg_started()
        for _ in range(50):
            assert leg.receive(app_media(frames(1)), T0) == []
        assert leg.receive(app_mark("end"), T0) == []
        assert leg.next_due() == T0 + 1.0
        assert leg.advance(T0 + 0.999) == []
        assert leg.buffered_bytes == 8  # 1 ms left
        [echo] = leg.advance(T0 + 1.0)
        assert echo_names([echo]) == ["end"]
        assert leg.next_due() is None
        assert leg.timeline.marks == [MarkRecord("end", T0, T0 + 1.0, cleared=False)]
        assert len(leg.played) == 8000
        assert leg.buffered_bytes == 0

    def test_mark_behind_one_big_message(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(50)), T0)
        leg.receive(app_mark("end"), T0 + 0.3)
        assert leg.next_due() == T0 + 1.0
        assert echo_names(leg.advance(T0 + 2.0)) == ["end"]
        assert leg.timeline.marks[0].echoed_at == T0 + 1.0  # the due instant, not the late now

    def test_late_advance_returns_due_echoes_in_order(self) -> None:
        leg = leg_started()
        for name in "abc":
            leg.receive(app_media(frames(1)), T0)
            leg.receive(app_mark(name), T0)
        echoes = leg.advance(T0 + 5)
        assert echo_names(echoes) == ["a", "b", "c"]
        assert [m.echoed_at for m in leg.timeline.marks] == [
            T0 + 0.02,
            T0 + 0.04,
            T0 + 0.06,
        ]
        seqs = [int(json.loads(e)["sequenceNumber"]) for e in echoes]
        assert seqs == [2, 3, 4]

    def test_mark_with_empty_buffer_echoes_immediately(self) -> None:
        leg = leg_started()
        [echo] = leg.receive(app_mark("first"), T0)
        assert echo_names([echo]) == ["first"]
        assert leg.timeline.marks == [MarkRecord("first", T0, T0)]
        assert leg.next_due() is None

    def test_mark_after_audio_finished_echoes_immediately(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), T0)
        # arrives exactly when the frame finishes playing: nothing buffered, echoed at once
        assert echo_names(leg.receive(app_mark("a"), T0 + 160 / 8000)) == ["a"]
        assert echo_names(leg.receive(app_mark("b"), T0 + 1)) == ["b"]
        assert [m.echoed_at for m in leg.timeline.marks] == [T0 + 160 / 8000, T0 + 1]

    def test_consecutive_marks_share_a_due_time(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(2)), T0)
        leg.receive(app_mark("x"), T0)
        leg.receive(app_mark("y"), T0)
        assert echo_names(leg.advance(T0 + 0.04)) == ["x", "y"]

    def test_echoes_due_before_a_message_come_first(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), T0)
        leg.receive(app_mark("old"), T0)
        out = leg.receive(app_mark("new"), T0 + 0.5)
        assert echo_names(out) == ["old", "new"]

    def test_mark_due_time_ignores_audio_queued_after_it(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(5)), T0)
        leg.receive(app_mark("m"), T0 + 0.01)
        leg.receive(app_media(frames(100)), T0 + 0.05)
        assert leg.next_due() == T0 + 0.1


class TestClear:
    def test_clear_drops_audio_and_echoes_pending_marks_in_order(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(25, 0x11)), T0)
        leg.receive(app_mark("half"), T0)
        leg.receive(app_media(frames(25, 0x22)), T0)
        leg.receive(app_mark("end"), T0)
        assert leg.advance(T0 + 0.25) == []
        echoes = leg.receive(app_clear(), T0 + 0.25)
        assert echo_names(echoes) == ["half", "end"]
        assert leg.timeline.clears == [ClearRecord(T0 + 0.25, dropped_bytes=6000)]
        assert leg.timeline.marks == [
            MarkRecord("half", T0, T0 + 0.25, cleared=True),
            MarkRecord("end", T0, T0 + 0.25, cleared=True),
        ]
        assert bytes(leg.played) == b"\x11" * 2000
        assert leg.buffered_bytes == 0
        assert leg.next_due() is None
        assert leg.advance(T0 + 10) == []
        assert len(leg.played) == 2000

    def test_played_marks_are_not_cleared(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), T0)
        leg.receive(app_mark("played"), T0)
        leg.receive(app_media(frames(1)), T0)
        leg.receive(app_mark("cut"), T0)
        out = leg.receive(app_clear(), T0 + 0.03)
        assert echo_names(out) == ["played", "cut"]
        assert [(m.name, m.cleared, m.echoed_at) for m in leg.timeline.marks] == [
            ("played", False, T0 + 0.02),
            ("cut", True, T0 + 0.03),
        ]

    def test_clear_on_empty_buffer(self) -> None:
        leg = leg_started()
        assert leg.receive(app_clear(), T0) == []
        assert leg.timeline.clears == [ClearRecord(T0, 0)]

    def test_mark_after_clear_echoes_at_once(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(50)), T0)
        leg.receive(app_clear(), T0 + 0.1)
        assert echo_names(leg.receive(app_mark("m"), T0 + 0.1)) == ["m"]

    def test_silence_after_clear_is_not_an_underrun(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(50)), T0)
        leg.receive(app_clear(), T0 + 0.1)
        leg.advance(T0 + 3)
        leg.receive(app_media(frames(1)), T0 + 3)
        leg.advance(T0 + 3.02)
        assert leg.timeline.underruns == []


class TestUnderruns:
    def test_underrun_recorded_with_duration(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), 0.0)
        leg.receive(app_media(frames(1)), 0.05)  # the first frame ran out at 0.02
        [underrun] = leg.timeline.underruns
        assert underrun.at == 0.02
        assert underrun.duration == pytest.approx(0.03)

    def test_open_underrun_has_no_duration(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), 0.0)
        leg.advance(0.02)
        assert leg.timeline.underruns == []  # ran dry at this instant; no time has passed
        leg.advance(0.021)
        assert leg.timeline.underruns == [UnderrunRecord(at=0.02, duration=None)]
        leg.advance(5.0)
        assert len(leg.timeline.underruns) == 1

    def test_no_catch_up_after_underrun(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), 0.0)
        leg.receive(app_media(frames(1)), 1.0)
        leg.receive(app_mark("m"), 1.0)
        assert leg.next_due() == 1.02  # plays from the arrival, not from 0.02
        assert leg.advance(1.019) == []
        assert len(leg.played) == 160 + 152

    def test_audio_arriving_exactly_at_end_continues_the_run(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), 0.0)
        leg.receive(app_media(frames(1)), 0.02)
        leg.receive(app_mark("m"), 0.02)
        assert leg.next_due() == 0.04
        assert leg.timeline.underruns == []

    def test_no_underrun_before_first_audio(self) -> None:
        leg = leg_started()
        leg.advance(10.0)
        leg.receive(app_media(frames(1)), 10.0)
        assert leg.timeline.underruns == []

    def test_several_underruns(self) -> None:
        leg = leg_started()
        for t in (0.0, 0.1, 0.2):
            leg.receive(app_media(frames(1)), t)
        flat = [x for u in leg.timeline.underruns for x in (u.at, u.duration)]
        assert flat == pytest.approx([0.02, 0.08, 0.12, 0.08])


class TestRecording:
    def test_heard_fills_underrun_gaps_with_silence(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1, 0x01)), 0.0)
        leg.receive(app_media(frames(1, 0x02)), 0.05)
        leg.advance(1.0)
        assert leg.heard() == b"\x01" * 160 + b"\xff" * 240 + b"\x02" * 160

    def test_heard_after_clear_and_partial_playout(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(10, 0x01)), 2.0)
        leg.receive(app_clear(), 2.05)  # 400 bytes played, 1200 dropped
        leg.receive(app_media(frames(1, 0x02)), 2.1)
        leg.advance(2.11)  # half of it played so far
        assert leg.heard() == b"\x01" * 400 + b"\xff" * 400 + b"\x02" * 80
        assert bytes(leg.received) == frames(10, 0x01) + frames(1, 0x02)
        assert bytes(leg.played) == b"\x01" * 400 + b"\x02" * 80

    def test_heard_empty_before_audio(self) -> None:
        leg = leg_started()
        assert leg.heard() == b""
        leg.receive(app_mark("m"), 1.0)
        assert leg.heard() == b""

    def test_heard_with_continuous_audio_has_no_silence(self) -> None:
        leg = leg_started()
        for i in range(10):
            leg.receive(app_media(frames(1, i)), 0.01 * i)  # faster than real time
        leg.advance(10.0)
        assert leg.heard() == b"".join(frames(1, i) for i in range(10))
        assert leg.timeline.underruns == [UnderrunRecord(at=0.2, duration=None)]

    def test_max_lead_ms(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(10)), 0.0)
        assert leg.timeline.max_lead_ms == 200.0
        leg.receive(app_media(frames(1)), 0.1)  # 100 ms played: 100 + 20 buffered
        assert leg.timeline.max_lead_ms == 200.0
        leg.receive(app_media(frames(15)), 0.1)
        assert leg.timeline.max_lead_ms == 420.0

    def test_arrivals_and_frame_count(self) -> None:
        leg = leg_started()
        leg.receive(app_media(frames(1)), 1.0)
        leg.receive(app_media(b"\xff" * 10), 1.5)
        leg.receive(app_media(frames(1)), 2.0)
        timeline = leg.timeline
        assert timeline.first_media_at == 1.0
        assert timeline.media_arrivals == [1.0, 1.5, 2.0]
        assert timeline.frames_received == 3
        assert len(leg.received) == 330


# --- validation of the app's messages (§3, §5) -----------------------------------------------

OTHER = "MZ" + "0" * 32
GOOD_B64 = base64.b64encode(frames(1)).decode()

INVALID: list[tuple[str | bytes, int | str, str]] = [
    (b'{"event":"clear"}', 31950, "binary"),
    ("{", 31951, "invalid JSON"),
    ("", 31951, "invalid JSON"),
    ("[]", 31951, "not a JSON object"),
    (json.dumps({"streamSid": MZ}), 31951, "missing fields: event"),
    (json.dumps({"event": "stop", "streamSid": MZ}), 31951, "unknown event"),
    (json.dumps({"event": 1, "streamSid": MZ}), 31951, "unknown event"),
    (json.dumps({"event": "clear"}), 31951, "missing fields in clear: streamSid"),
    (json.dumps({"event": "media", "streamSid": MZ}), 31951, "missing fields in media: media"),
    (json.dumps({"event": "clear", "streamSid": MZ, "x": 1}), 31951, "unexpected fields"),
    (
        json.dumps({"event": "media", "streamSid": MZ, "sequenceNumber": "1", "media": {}}),
        31951,
        "unexpected fields in media",
    ),
    (app_clear(OTHER), 31951, "streamSid mismatch"),
    (app_media(frames(1), OTHER), 31951, "streamSid mismatch"),
    (app_mark("m", OTHER), 31951, "streamSid mismatch"),
    (json.dumps({"event": "clear", "streamSid": None}), 31951, "wrong structure"),
    (json.dumps({"event": "mark", "streamSid": MZ, "mark": "m"}), 31951, "wrong structure"),
    (json.dumps({"event": "mark", "streamSid": MZ, "mark": {}}), 31951, "missing fields in mark"),
    (
        json.dumps({"event": "mark", "streamSid": MZ, "mark": {"name": 1}}),
        31951,
        "wrong structure",
    ),
    (
        json.dumps(
            {"event": "media", "streamSid": MZ, "media": {"payload": GOOD_B64, "track": "outbound"}}
        ),  # noqa: E501
        31951,
        "unexpected fields in media",
    ),
    (
        json.dumps({"event": "media", "streamSid": MZ, "media": {"payload": None}}),
        31951,
        "wrong structure",
    ),
    (
        json.dumps({"event": "media", "streamSid": MZ, "media": {"payload": "!!"}}),
        "bad_base64",
        "strict base64",
    ),
    (
        json.dumps({"event": "media", "streamSid": MZ, "media": {"payload": GOOD_B64[:-2]}}),
        "bad_base64",
        "strict base64",
    ),
]


def test_deeply_nested_json_is_a_31951_warning_not_a_crash() -> None:
    # Python 3.11/3.12 refuse this depth (RecursionError); 3.13 parses it into a list.
    leg = leg_started()
    assert leg.receive("[" * 3000 + "]" * 3000, T0) == []
    assert [code for code, _ in leg.warnings] == [31951]


@pytest.mark.parametrize(("message", "code", "detail"), INVALID)
def test_invalid_app_message_is_recorded_and_dropped(
    message: str | bytes, code: int | str, detail: str
) -> None:
    leg = leg_started()
    assert leg.receive(message, T0) == []
    assert len(leg.warnings) == 1
    assert leg.warnings[0][0] == code
    assert detail in leg.warnings[0][1]
    assert leg.received == b""
    assert leg.timeline.frames_received == 0
    assert leg.timeline.marks == []
    assert leg.timeline.clears == []
    # the stream goes on
    assert echo_names(leg.receive(app_mark("ok"), T0)) == ["ok"]
    assert len(leg.warnings) == 1


def test_frame_size_warns_but_plays() -> None:
    leg = leg_started()
    leg.receive(app_media(b"\x01" * 100), 0.0)
    leg.receive(app_media(b""), 0.0)
    assert leg.warnings == [
        ("frame_size", "payload is 100 bytes, not 160"),
        ("frame_size", "payload is 0 bytes, not 160"),
    ]
    leg.advance(1.0)
    assert bytes(leg.played) == b"\x01" * 100
    assert leg.timeline.frames_received == 2


def test_multi_frame_messages_do_not_warn() -> None:
    # Twilio accepts any size (§3); only a payload not exactly one frame is flagged.
    leg = leg_started()
    leg.receive(app_media(frames(1)), 0.0)
    assert leg.warnings == []


def test_once_per_stream_reporting() -> None:
    leg = leg_started()
    for message in (b"x", "{", b"y", app_clear(OTHER), app_media(b"\x00" * 3)):
        leg.receive(message, T0)
    assert [code for code, _ in leg.warnings] == [31950, 31951, 31950, 31951, "frame_size"]
    assert leg.reported_warnings == [(31950, leg.warnings[0][1]), (31951, "invalid JSON")]
    assert {31931, 31950, 31951} == ONCE_PER_STREAM


def test_buffer_over_ten_minutes_is_discarded_with_31931() -> None:
    leg = leg_started()
    ten_seconds = app_media(b"\xff" * 80_000)
    for _ in range(60):
        leg.receive(ten_seconds, 0.0)
    assert leg.buffered_bytes == MAX_BUFFER_BYTES
    assert leg.warnings == [("frame_size", "payload is 80000 bytes, not 160")] * 60
    leg.receive(app_media(frames(1)), 0.0)
    leg.receive(app_media(frames(1)), 0.0)
    assert [w for w in leg.warnings if w[0] == 31931] == [
        (31931, "more than 10 minutes buffered; 160 bytes discarded")
    ] * 2
    assert leg.reported_warnings == [(31931, "more than 10 minutes buffered; 160 bytes discarded")]
    assert leg.timeline.discarded_bytes == 320
    assert leg.buffered_bytes == MAX_BUFFER_BYTES
    leg.receive(app_media(frames(1)), 0.02)  # 20 ms played: room for one frame again
    assert leg.buffered_bytes == MAX_BUFFER_BYTES


@pytest.mark.parametrize("when", ["before_start", "after_stop"])
def test_messages_outside_the_stream(when: str) -> None:
    leg = TwilioMediaLeg(MZ, CA, AC)
    if when == "after_stop":
        leg.start()
        leg.stop()
    assert leg.receive(app_mark("m"), 0.0) == []
    assert leg.receive(app_media(frames(1)), 0.0) == []
    assert leg.warnings == [(when, leg.warnings[0][1])] * 2
    assert leg.received == b""
    assert leg.advance(1.0) == []


def test_stop_leaves_pending_marks_unechoed() -> None:
    leg = leg_started()
    leg.receive(app_media(frames(50)), 0.0)
    leg.receive(app_mark("m"), 0.0)
    leg.advance(0.5)
    leg.stop()
    assert leg.advance(2.0) == []
    assert leg.timeline.marks[0].echoed_at is None
    assert len(leg.played) == 4000


# --- round trip: our bridge's stream core as the app ----------------------------------------


def test_round_trip_with_the_bridge_stream() -> None:
    leg = TwilioMediaLeg(MZ, CA, AC, {"token": "abc"})
    stream = TwilioMediaStream()
    stream.receive(leg.connected())
    stream.receive(leg.start())
    assert stream.custom_parameters == {"token": "abc"}
    t = T0
    for i in range(5):
        assert leg.receive(stream.media(bytes([i]) * 160), t) == []
    assert leg.receive(stream.mark("utt-1"), t) == []
    due = leg.next_due()
    assert due == T0 + 0.1
    [echo] = leg.advance(due)
    events = stream.receive(echo)
    assert [type(e).__name__ for e in events] == ["MarkReceived"]
    assert leg.warnings == []
    assert leg.heard() == b"".join(bytes([i]) * 160 for i in range(5))


# --- properties ------------------------------------------------------------------------------

_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["event", "streamSid", "media", "mark", "payload", "name", "track", "chunk"]
payloads = st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=8)
random_objects = st.fixed_dictionaries(
    {"event": st.sampled_from(["media", "mark", "clear", "stop", "start"]) | st.text(max_size=6)},
    optional={
        "streamSid": st.sampled_from([MZ, OTHER]) | _leaf,
        "media": st.fixed_dictionaries({"payload": payloads}) | json_values,
        "mark": st.fixed_dictionaries({"name": st.text(max_size=5)}) | json_values,
    },
).flatmap(
    lambda base: st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=2
    ).map(lambda extra: {**extra, **base})
)


@st.composite
def app_messages(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=30))
    if kind == 1:
        return draw(st.text(max_size=30))
    if kind == 2:
        return json.dumps(draw(json_values))
    if kind == 3:
        return json.dumps(draw(random_objects))
    if kind == 4:
        return app_media(draw(st.binary(max_size=480)))
    return draw(st.sampled_from([app_clear(), app_mark("a"), app_mark("b")]))


def check_invariants(leg: TwilioMediaLeg) -> None:
    timeline = leg.timeline
    dropped = sum(c.dropped_bytes for c in timeline.clears)
    assert len(leg.played) + leg.buffered_bytes + dropped + timeline.discarded_bytes == len(
        leg.received
    )
    assert timeline.frames_received == len(timeline.media_arrivals)
    assert timeline.media_arrivals == sorted(timeline.media_arrivals)
    for mark in timeline.marks:
        assert mark.echoed_at is None or mark.echoed_at >= mark.received_at
        assert not mark.cleared or mark.echoed_at is not None
    for underrun in timeline.underruns:
        assert underrun.duration is None or underrun.duration > 0
    assert all(u.duration is not None for u in timeline.underruns[:-1])
    due = leg.next_due()
    assert due is None or leg.buffered_bytes > 0
    assert timeline.max_lead_ms >= 0
    for code, detail in leg.warnings:
        assert isinstance(code, int | str)
        assert isinstance(detail, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(app_messages(), st.floats(0, 0.2), st.booleans()),
        max_size=25,
    )
)
def test_receive_never_raises_and_state_stays_valid(
    steps: list[tuple[str | bytes, float, bool]],
) -> None:
    leg = leg_started()
    now = 100.0
    last_seq = 1
    for message, dt, also_advance in steps:
        now += dt
        out = leg.advance(now) if also_advance else []
        out += leg.receive(message, now)
        for echo in out:
            obj = json.loads(echo)
            assert set(obj) == {"event", "sequenceNumber", "streamSid", "mark"}
            assert int(obj["sequenceNumber"]) == last_seq + 1
            last_seq += 1
        assert leg.state is StreamState.STARTED
        check_invariants(leg)
    leg.advance(now + 1e6)
    check_invariants(leg)
    assert leg.next_due() is None
    assert leg.buffered_bytes == 0
    assert all(m.echoed_at is not None for m in leg.timeline.marks)
    heard = leg.heard()
    assert len(heard) >= len(leg.played)


@settings(max_examples=150, deadline=None)
@given(
    script=st.lists(
        st.tuples(
            st.floats(0, 0.1),
            st.one_of(st.integers(0, 6).map(lambda n: ("media", n)), st.just(("mark", 0))),
        ),
        max_size=20,
    ),
    ticks=st.lists(st.floats(0, 0.05), max_size=60),
)
def test_results_do_not_depend_on_how_often_advance_is_called(
    script: list[tuple[float, tuple[str, int]]], ticks: list[float]
) -> None:
    """The lazy playout gives the same record whether advance runs every tick or never."""
    coarse, fine = leg_started(), leg_started()
    now = 0.0
    fine_now = 0.0
    tick_iter = iter(ticks)
    for dt, (what, n) in script:
        now += dt
        for tick in tick_iter:  # interleave extra advances on the fine leg, before `now`
            if fine_now + tick >= now:
                break
            fine_now += tick
            fine.advance(fine_now)
        fine_now = now
        message = app_media(frames(n)) if what == "media" else app_mark("m")
        coarse.receive(message, now)
        fine.receive(message, now)
    for leg in (coarse, fine):
        leg.advance(now + 10)
    assert coarse.played == fine.played
    assert coarse.heard() == fine.heard()
    assert coarse.timeline == fine.timeline
