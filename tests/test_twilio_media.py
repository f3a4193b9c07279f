"""Sans-I/O tests of ``bridge.protocols.twilio_stream_server``: strings in, events/strings out.

Message literals are the examples of ``docs/twilio-streams.md`` §2/§3 (SIDs as printed there).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.dev.twilio_stream_client import TwilioMediaLeg
from bridge.errors import InvalidState
from bridge.protocols.twilio_stream_server import (
    FRAME_BYTES,
    Connected,
    DtmfReceived,
    Event,
    MarkReceived,
    MediaReceived,
    Started,
    Stopped,
    StreamState,
    TwilioMediaStream,
    Violation,
)

MZ = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
CA = "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
AC = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
FRAME = bytes(range(FRAME_BYTES))
FRAME_B64 = base64.b64encode(FRAME).decode()

# §2, verbatim apart from a decodable payload.
REF_CONNECTED = '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
REF_START = """{"event": "start", "sequenceNumber": "1",
 "start": {"accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
           "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "tracks": ["inbound"],
           "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
           "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}},
 "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}"""  # noqa: E501
REF_MEDIA = (
    '{"event": "media", "sequenceNumber": "4",'
    ' "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "PAYLOAD"},'
    ' "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}'
).replace("PAYLOAD", FRAME_B64)
REF_DTMF = """{"event": "dtmf", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "sequenceNumber": "5",
 "dtmf": {"track": "inbound_track", "digit": "1"}}"""  # noqa: E501
REF_MARK = (
    '{"event": "mark", "sequenceNumber": "4", "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",'
    ' "mark": {"name": "my label"}}'
)
REF_STOP = """{"event": "stop", "sequenceNumber": "5",
 "stop": {"accountSid": "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "callSid": "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"},
 "streamSid": "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}"""  # noqa: E501


def started() -> TwilioMediaStream:
    stream = TwilioMediaStream()
    assert isinstance(stream.receive(REF_CONNECTED)[0], Connected)
    assert isinstance(stream.receive(REF_START)[0], Started)
    return stream


def stopped() -> TwilioMediaStream:
    stream = started()
    assert isinstance(stream.receive(REF_STOP)[0], Stopped)
    return stream


def msg(**fields: Any) -> str:
    return json.dumps(fields)


def start_msg(**changes: Any) -> str:
    obj = json.loads(REF_START)
    for key, value in changes.items():
        if value is ...:
            del obj["start"][key]
        else:
            obj["start"][key] = value
    return json.dumps(obj)


def media_msg(**media: Any) -> str:
    body = {"track": "inbound", "chunk": "1", "timestamp": "155", "payload": FRAME_B64}
    body.update(media)
    return msg(event="media", sequenceNumber="2", media=body, streamSid=MZ)


# --- the reference messages ------------------------------------------------------------------


class TestReferenceMessages:
    def test_connected(self) -> None:
        stream = TwilioMediaStream()
        assert stream.state.name == "NEW"
        assert stream.receive(REF_CONNECTED) == [Connected("Call", "1.0.0")]
        assert stream.state is StreamState.CONNECTED
        assert stream.stream_sid is None

    def test_start(self) -> None:
        stream = TwilioMediaStream()
        stream.receive(REF_CONNECTED)
        assert stream.receive(REF_START) == [
            Started(
                stream_sid=MZ,
                call_sid=CA,
                account_sid=AC,
                tracks=("inbound",),
                media_format={"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                custom_parameters={"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
            )
        ]
        assert stream.state is StreamState.STARTED
        assert (stream.stream_sid, stream.call_sid, stream.account_sid) == (MZ, CA, AC)
        assert stream.custom_parameters == {
            "FirstName": "Jane",
            "LastName": "Doe",
            "RemoteParty": "Bob",
        }

    def test_custom_parameters_property_is_a_copy(self) -> None:
        stream = started()
        stream.custom_parameters["FirstName"] = "Mallory"
        assert stream.custom_parameters["FirstName"] == "Jane"

    def test_media(self) -> None:
        stream = started()
        assert stream.receive(REF_MEDIA) == [MediaReceived(FRAME, chunk=2, timestamp=5)]
        assert stream.media_frames_in == 1
        assert not stream.violations

    def test_dtmf(self) -> None:
        assert started().receive(REF_DTMF) == [DtmfReceived("1")]

    def test_mark(self) -> None:
        assert started().receive(REF_MARK) == [MarkReceived("my label")]

    def test_stop(self) -> None:
        stream = started()
        assert stream.receive(REF_STOP) == [Stopped(call_sid=CA, account_sid=AC)]
        assert stream.state is StreamState.STOPPED
        assert stream.stream_sid == MZ  # identity kept for logging after stop


class TestTolerance:
    def test_start_without_connected(self) -> None:
        stream = TwilioMediaStream()
        assert isinstance(stream.receive(REF_START)[0], Started)
        assert stream.state is StreamState.STARTED

    def test_missing_custom_parameters_is_empty(self) -> None:
        stream = TwilioMediaStream()
        [event] = stream.receive(start_msg(customParameters=...))
        assert isinstance(event, Started)
        assert event.custom_parameters == {}
        assert stream.custom_parameters == {}

    def test_empty_custom_parameters(self) -> None:
        [event] = TwilioMediaStream().receive(start_msg(customParameters={}))
        assert isinstance(event, Started)
        assert event.custom_parameters == {}

    def test_media_without_chunk_and_timestamp(self) -> None:
        body = {"payload": FRAME_B64}
        events = started().receive(msg(event="media", media=body, streamSid=MZ))
        assert events == [MediaReceived(FRAME, None, None)]

    def test_extra_fields_from_twilio_are_ignored(self) -> None:
        obj = json.loads(REF_MEDIA)
        obj["newField"] = 1
        obj["media"]["other"] = "x"
        assert started().receive(json.dumps(obj)) == [MediaReceived(FRAME, 2, 5)]

    @pytest.mark.parametrize(
        ("chunk", "timestamp", "expected", "bad"),
        [
            ("x", "5", (None, 5), "media.chunk"),
            ("1", 5, (1, None), "media.timestamp"),
            ("٣", "-1", (None, None), "media.chunk and media.timestamp"),
            ("", " 5", (None, None), "media.chunk and media.timestamp"),
        ],
    )
    def test_bad_labels_still_deliver_audio(
        self, chunk: object, timestamp: object, expected: tuple[int | None, int | None], bad: str
    ) -> None:
        stream = started()
        events = stream.receive(media_msg(chunk=chunk, timestamp=timestamp))
        assert events[0] == MediaReceived(FRAME, *expected)
        assert events[1] == Violation("bad_field", f"{bad} not a decimal string")
        assert len(events) == 2
        assert stream.media_frames_in == 1
        assert stream.violations == {"bad_field": 1}

    def test_stop_without_body(self) -> None:
        stream = started()
        assert stream.receive(msg(event="stop", sequenceNumber="9", streamSid=MZ)) == [
            Stopped(None, None)
        ]
        assert stream.state is StreamState.STOPPED

    def test_stop_with_bad_body_still_stops(self) -> None:
        stream = started()
        events = stream.receive(
            msg(event="stop", stop={"callSid": 7, "accountSid": AC}, streamSid=MZ)
        )
        assert events[0] == Stopped(None, AC)
        assert isinstance(events[1], Violation)
        assert events[1].kind == "bad_field"
        assert stream.state is StreamState.STOPPED

    def test_stop_body_not_object(self) -> None:
        stream = started()
        events = stream.receive(msg(event="stop", stop=[], streamSid=MZ))
        assert events[0] == Stopped(None, None)
        assert [type(e) for e in events] == [Stopped, Violation]

    @pytest.mark.parametrize("state", ["new", "connected"])
    def test_stop_before_start_ends_the_stream(self, state: str) -> None:
        stream = TwilioMediaStream()
        if state == "connected":
            stream.receive(REF_CONNECTED)
        assert stream.receive(REF_STOP) == [Stopped(CA, AC)]
        assert stream.state is StreamState.STOPPED
        assert stream.stream_sid is None

    def test_arabic_mark_name_and_parameters(self) -> None:
        stream = TwilioMediaStream()
        [event] = stream.receive(start_msg(customParameters={"اسم": "مرحبا"}))
        assert isinstance(event, Started)
        assert event.custom_parameters == {"اسم": "مرحبا"}
        assert stream.receive(msg(event="mark", mark={"name": "جملة-1"}, streamSid=MZ)) == [
            MarkReceived("جملة-1")
        ]


# --- violations ------------------------------------------------------------------------------

OTHER_SID = "MZ" + "0" * 32

# (stream factory, message, kind, state afterwards)
VIOLATIONS: list[tuple[str, Any, str, str]] = [
    ("started", b'{"event":"media"}', "binary_frame", "STARTED"),
    ("new", b"\x00\x01", "binary_frame", "NEW"),
    ("started", "{not json", "invalid_json", "STARTED"),
    ("started", "", "invalid_json", "STARTED"),
    ("started", "[1, 2]", "not_object", "STARTED"),
    ("started", '"media"', "not_object", "STARTED"),
    ("started", "null", "not_object", "STARTED"),
    ("started", msg(streamSid=MZ), "missing_field", "STARTED"),
    ("started", msg(event=None, streamSid=MZ), "missing_field", "STARTED"),
    ("started", msg(event=5, streamSid=MZ), "bad_field", "STARTED"),
    ("started", msg(event="clear", streamSid=MZ), "unknown_event", "STARTED"),
    ("connected", msg(event="closed"), "unknown_event", "CONNECTED"),
    # media
    ("new", REF_MEDIA, "before_start", "NEW"),
    ("connected", REF_MEDIA, "before_start", "CONNECTED"),
    ("started", msg(event="media", media={"payload": FRAME_B64}), "missing_field", "STARTED"),
    (
        "started",
        msg(event="media", media={"payload": FRAME_B64}, streamSid=5),
        "bad_field",
        "STARTED",
    ),
    (
        "started",
        msg(event="media", media={"payload": FRAME_B64}, streamSid=OTHER_SID),
        "stream_sid_mismatch",
        "STARTED",
    ),
    ("started", msg(event="media", streamSid=MZ), "missing_field", "STARTED"),
    ("started", msg(event="media", media="x", streamSid=MZ), "bad_field", "STARTED"),
    ("started", msg(event="media", media={}, streamSid=MZ), "missing_field", "STARTED"),
    ("started", media_msg(payload=160), "bad_field", "STARTED"),
    ("started", media_msg(payload="not base64!"), "bad_base64", "STARTED"),
    ("started", media_msg(payload=FRAME_B64[:-1]), "bad_base64", "STARTED"),  # bad padding
    ("started", media_msg(payload=FRAME_B64 + "=="), "bad_base64", "STARTED"),  # excess data
    ("started", media_msg(payload="ab\ncd=="), "bad_base64", "STARTED"),
    ("started", media_msg(payload="مرحبا"), "bad_base64", "STARTED"),
    # dtmf
    ("connected", REF_DTMF, "before_start", "CONNECTED"),
    (
        "started",
        msg(event="dtmf", dtmf={"digit": "1"}, streamSid=OTHER_SID),
        "stream_sid_mismatch",
        "STARTED",
    ),  # noqa: E501
    ("started", msg(event="dtmf", streamSid=MZ), "missing_field", "STARTED"),
    ("started", msg(event="dtmf", dtmf=[], streamSid=MZ), "bad_field", "STARTED"),
    (
        "started",
        msg(event="dtmf", dtmf={"track": "inbound_track"}, streamSid=MZ),
        "missing_field",
        "STARTED",
    ),  # noqa: E501
    ("started", msg(event="dtmf", dtmf={"digit": 1}, streamSid=MZ), "bad_field", "STARTED"),
    ("started", msg(event="dtmf", dtmf={"digit": ""}, streamSid=MZ), "bad_field", "STARTED"),
    # mark
    ("new", REF_MARK, "before_start", "NEW"),
    (
        "started",
        msg(event="mark", mark={"name": "a"}, streamSid=OTHER_SID),
        "stream_sid_mismatch",
        "STARTED",
    ),  # noqa: E501
    ("started", msg(event="mark", mark={"name": "a"}), "missing_field", "STARTED"),
    ("started", msg(event="mark", streamSid=MZ), "missing_field", "STARTED"),
    ("started", msg(event="mark", mark=1, streamSid=MZ), "bad_field", "STARTED"),
    ("started", msg(event="mark", mark={}, streamSid=MZ), "missing_field", "STARTED"),
    ("started", msg(event="mark", mark={"name": ["a"]}, streamSid=MZ), "bad_field", "STARTED"),
    # stop with another streamSid does not stop the stream
    ("started", REF_STOP.replace(MZ, OTHER_SID), "stream_sid_mismatch", "STARTED"),
    ("started", msg(event="stop", stop={}), "missing_field", "STARTED"),
    # start
    ("started", REF_START, "duplicate_start", "STARTED"),
    ("connected", msg(event="start", streamSid=MZ), "missing_field", "CONNECTED"),
    ("connected", msg(event="start", start="x", streamSid=MZ), "bad_field", "CONNECTED"),
    ("new", start_msg(streamSid=...), "missing_field", "NEW"),
    ("new", start_msg(callSid=None), "missing_field", "NEW"),
    ("new", start_msg(accountSid=12), "bad_field", "NEW"),
    ("new", start_msg(tracks=...), "missing_field", "NEW"),
    ("new", start_msg(tracks="inbound"), "bad_field", "NEW"),
    ("new", start_msg(tracks=["inbound", 1]), "bad_field", "NEW"),
    ("new", start_msg(mediaFormat=...), "missing_field", "NEW"),
    ("new", start_msg(mediaFormat="audio/x-mulaw"), "bad_field", "NEW"),
    ("new", start_msg(customParameters=None), "missing_field", "NEW"),
    ("new", start_msg(customParameters=["a"]), "bad_field", "NEW"),
    ("new", start_msg(customParameters={"a": 1}), "bad_field", "NEW"),
    ("new", start_msg(streamSid=OTHER_SID), "stream_sid_mismatch", "NEW"),
    ("new", json.dumps({**json.loads(REF_START), "streamSid": None}), "missing_field", "NEW"),
    ("new", json.dumps({**json.loads(REF_START), "streamSid": 1}), "bad_field", "NEW"),
    (
        "new",
        json.dumps({k: v for k, v in json.loads(REF_START).items() if k != "streamSid"}),
        "missing_field",
        "NEW",
    ),  # noqa: E501
    # connected
    ("connected", REF_CONNECTED, "unexpected_connected", "CONNECTED"),
    ("started", REF_CONNECTED, "unexpected_connected", "STARTED"),
    ("new", msg(event="connected", version="1.0.0"), "missing_field", "NEW"),
    ("new", msg(event="connected", protocol="Call", version=1), "bad_field", "NEW"),
    # after stop: everything, even valid messages
    ("stopped", REF_MEDIA, "after_stop", "STOPPED"),
    ("stopped", REF_STOP, "after_stop", "STOPPED"),
    ("stopped", b"\x00", "after_stop", "STOPPED"),
    ("stopped", "garbage", "after_stop", "STOPPED"),
]


def connected() -> TwilioMediaStream:
    stream = TwilioMediaStream()
    stream.receive(REF_CONNECTED)
    return stream


FACTORIES = {
    "new": TwilioMediaStream,
    "connected": connected,
    "started": started,
    "stopped": stopped,
}


@pytest.mark.parametrize(("factory", "message", "kind", "after"), VIOLATIONS)
def test_violation(factory: str, message: str | bytes, kind: str, after: str) -> None:
    stream: TwilioMediaStream = FACTORIES[factory]()
    frames_before = stream.media_frames_in
    events = stream.receive(message)
    assert len(events) == 1
    [event] = events
    assert isinstance(event, Violation)
    assert event.kind == kind
    assert event.detail
    assert stream.violations == {kind: 1}
    assert stream.state is StreamState[after]
    assert stream.media_frames_in == frames_before


def test_every_kind_is_covered() -> None:
    kinds = {kind for _, _, kind, _ in VIOLATIONS} | {"too_large"}  # too_large: TestTooLarge
    assert kinds == {
        "after_stop",
        "bad_base64",
        "bad_field",
        "before_start",
        "binary_frame",
        "duplicate_start",
        "invalid_json",
        "missing_field",
        "not_object",
        "stream_sid_mismatch",
        "too_large",
        "unexpected_connected",
        "unknown_event",
    }


def test_stream_goes_on_after_violations() -> None:
    stream = started()
    for bad in (b"\x00", "{", "[]", REF_START, media_msg(payload="!"), REF_CONNECTED):
        assert isinstance(stream.receive(bad)[0], Violation)
    assert stream.receive(REF_MEDIA) == [MediaReceived(FRAME, 2, 5)]
    assert stream.violations == {
        "binary_frame": 1,
        "invalid_json": 1,
        "not_object": 1,
        "duplicate_start": 1,
        "bad_base64": 1,
        "unexpected_connected": 1,
    }
    assert stream.media_frames_in == 1
    assert stream.stream_sid == MZ


def test_violation_detail_never_contains_the_payload() -> None:
    stream = started()
    secret = base64.b64encode(b"\x01" * 160).decode() + "="
    [event] = stream.receive(media_msg(payload=secret))
    assert isinstance(event, Violation)
    assert secret not in event.detail


def test_unknown_event_detail_is_bounded() -> None:
    [event] = started().receive(msg(event="x" * 10_000, streamSid=MZ))
    assert isinstance(event, Violation)
    assert event.kind == "unknown_event"
    assert len(event.detail) < 100


class TestTooLarge:
    def test_default_limit_is_64_kib(self) -> None:
        stream = started()
        padding = " " * (64 * 1024 - len(REF_MEDIA))
        assert stream.receive(REF_MEDIA + padding) == [MediaReceived(FRAME, 2, 5)]
        [event] = stream.receive(REF_MEDIA + padding + " ")
        assert isinstance(event, Violation)
        assert event.kind == "too_large"
        assert "65537" in event.detail

    def test_checked_before_parsing(self) -> None:
        stream = TwilioMediaStream(max_message_bytes=100)
        [event] = stream.receive("{" * 101)  # would be invalid_json if parsed
        assert event == Violation("too_large", "101 bytes > max_message_bytes 100")

    def test_counts_utf8_bytes_not_characters(self) -> None:
        stream = TwilioMediaStream(max_message_bytes=100)
        fits = '{"event":"x' + "ب" * 40 + '"}'
        assert (len(fits), len(fits.encode())) == (53, 93)
        [event] = stream.receive(fits)
        assert isinstance(event, Violation)
        assert event.kind == "unknown_event"
        big = '{"event":"x' + "ب" * 45 + '"}'
        assert (len(big), len(big.encode())) == (58, 103)
        [event] = stream.receive(big)
        assert event == Violation("too_large", "103 bytes > max_message_bytes 100")

    def test_lone_surrogates_do_not_break_the_size_check(self) -> None:
        stream = TwilioMediaStream(max_message_bytes=40)
        [event] = stream.receive("\ud800" * 14)  # 14 characters, 42 bytes with surrogatepass
        assert isinstance(event, Violation)
        assert event.kind == "too_large"

    def test_bad_limit(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            TwilioMediaStream(max_message_bytes=0)


# --- outbound builders -----------------------------------------------------------------------


class TestBuilders:
    def test_media_exact_shape(self) -> None:
        stream = started()
        out = stream.media(FRAME)
        assert json.loads(out) == {
            "event": "media",
            "streamSid": MZ,
            "media": {"payload": FRAME_B64},
        }
        assert out == (
            '{"event":"media","streamSid":"' + MZ + '","media":{"payload":"' + FRAME_B64 + '"}}'
        )
        assert len(base64.b64decode(json.loads(out)["media"]["payload"])) == 160
        assert stream.media_frames_out == 1

    def test_media_escapes_an_odd_stream_sid(self) -> None:
        stream = TwilioMediaStream()
        obj = json.loads(REF_START)
        obj["streamSid"] = obj["start"]["streamSid"] = 'MZ"\\'
        assert isinstance(stream.receive(json.dumps(obj))[0], Started)
        assert json.loads(stream.media(FRAME))["streamSid"] == 'MZ"\\'

    @pytest.mark.parametrize("size", [0, 159, 161, 320])
    def test_media_must_be_one_frame(self, size: int) -> None:
        stream = started()
        with pytest.raises(InvalidState, match="160 bytes"):
            stream.media(bytes(size))
        assert stream.media_frames_out == 0

    def test_mark_exact_shape(self) -> None:
        out = started().mark('utt-17-end "جملة"')
        assert json.loads(out) == {
            "event": "mark",
            "streamSid": MZ,
            "mark": {"name": 'utt-17-end "جملة"'},
        }
        assert out.isascii()

    def test_clear_exact_shape(self) -> None:
        out = started().clear()
        assert json.loads(out) == {"event": "clear", "streamSid": MZ}
        assert out == '{"event":"clear","streamSid":"' + MZ + '"}'

    @pytest.mark.parametrize("factory", ["new", "connected", "stopped"])
    def test_builders_need_started(self, factory: str) -> None:
        stream: TwilioMediaStream = FACTORIES[factory]()
        with pytest.raises(InvalidState, match="STARTED"):
            stream.media(FRAME)
        with pytest.raises(InvalidState, match="STARTED"):
            stream.mark("m")
        with pytest.raises(InvalidState, match="STARTED"):
            stream.clear()

    def test_invalid_state_carries_ids_after_stop(self) -> None:
        with pytest.raises(InvalidState) as info:
            stopped().clear()
        assert info.value.stream_sid == MZ
        assert info.value.call_sid == CA


# --- round trips with the Twilio leg ---------------------------------------------------------


def test_round_trip_leg_to_stream() -> None:
    leg = TwilioMediaLeg(MZ, CA, AC, {"token": "t"})
    stream = TwilioMediaStream()
    events: list[Event] = []
    events += stream.receive(leg.connected())
    events += stream.receive(leg.start())
    for i in range(3):
        events += stream.receive(leg.media(bytes([i]) * 160, 20 + 20 * i))
    events += stream.receive(leg.dtmf("#"))
    events += stream.receive(leg.stop())
    assert events == [
        Connected("Call", "1.0.0"),
        Started(
            MZ,
            CA,
            AC,
            ("inbound",),
            {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            {"token": "t"},
        ),
        MediaReceived(b"\x00" * 160, 1, 20),
        MediaReceived(b"\x01" * 160, 2, 40),
        MediaReceived(b"\x02" * 160, 3, 60),
        DtmfReceived("#"),
        Stopped(CA, AC),
    ]
    assert not stream.violations
    assert stream.media_frames_in == 3


def test_round_trip_stream_to_leg_and_back() -> None:
    leg = TwilioMediaLeg(MZ, CA, AC)
    stream = TwilioMediaStream()
    stream.receive(leg.start())
    assert leg.receive(stream.media(FRAME), 10.0) == []
    assert leg.receive(stream.mark("end"), 10.0) == []  # behind 20 ms of audio
    assert leg.receive(stream.media(FRAME), 10.0) == []
    assert leg.next_due() == 10.0 + 160 / 8000
    [echo] = leg.advance(10.0 + 160 / 8000)
    assert stream.receive(echo) == [MarkReceived("end")]
    assert leg.receive(stream.mark("cut"), 10.03) == []  # 10 ms of the second frame left
    [cleared] = leg.receive(stream.clear(), 10.03)
    assert stream.receive(cleared) == [MarkReceived("cut")]
    assert leg.timeline.clears[0].dropped_bytes == 80
    assert bytes(leg.played) == FRAME + FRAME[:80]
    assert leg.warnings == []
    assert not stream.violations


# --- properties: never raise, state stays valid ----------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELD_NAMES = [
    "event", "streamSid", "sequenceNumber", "media", "mark", "dtmf", "start", "stop", "payload",
    "name", "chunk", "timestamp", "track", "digit", "protocol", "version", "callSid", "accountSid",
    "tracks", "mediaFormat", "customParameters",
]  # fmt: skip
field_names = st.sampled_from(FIELD_NAMES) | st.text(max_size=6)
event_names = st.sampled_from(
    ["connected", "start", "media", "dtmf", "mark", "stop", "clear"]
) | st.text(max_size=8)
random_objects = st.fixed_dictionaries(
    {"event": event_names},
    optional={
        "streamSid": st.sampled_from([MZ, OTHER_SID]) | _json_leaf,
        "media": st.fixed_dictionaries(
            {},
            optional={
                "payload": st.sampled_from([FRAME_B64, "", "!!"]) | st.text(max_size=10),
                "chunk": _json_leaf,
                "timestamp": _json_leaf,
            },
        )
        | json_values,
        "mark": st.fixed_dictionaries({}, optional={"name": _json_leaf}) | json_values,
        "dtmf": st.fixed_dictionaries({}, optional={"digit": _json_leaf}) | json_values,
        "stop": st.dictionaries(st.sampled_from(["callSid", "accountSid"]), _json_leaf)
        | json_values,
    },
).flatmap(
    lambda base: st.dictionaries(field_names, json_values, max_size=3).map(
        lambda extra: {**extra, **base}
    )
)


def _mutate(text: str, data: st.DataObject) -> str:
    """Delete or replace one (possibly nested) key of a valid message."""
    obj = json.loads(text)
    target = obj
    while True:
        key = data.draw(st.sampled_from(sorted(target)))
        if isinstance(target[key], dict) and target[key] and data.draw(st.booleans()):
            target = target[key]
            continue
        if data.draw(st.booleans()):
            del target[key]
        else:
            target[key] = data.draw(json_values)
        return json.dumps(obj)


VALID_INBOUND = [REF_CONNECTED, REF_START, REF_MEDIA, REF_DTMF, REF_MARK, REF_STOP]


@st.composite
def inbound_messages(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=40))
    if kind == 1:
        return draw(st.text(max_size=40))
    if kind == 2:
        return json.dumps(draw(json_values))
    if kind == 3:
        return json.dumps(draw(random_objects))
    valid = draw(st.sampled_from(VALID_INBOUND))
    if kind == 4:
        return valid
    return _mutate(valid, draw(st.data()))


_ORDER = [StreamState.NEW, StreamState.CONNECTED, StreamState.STARTED, StreamState.STOPPED]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(inbound_messages(), max_size=25))
def test_receive_never_raises_and_state_stays_valid(messages: list[str | bytes]) -> None:
    stream = TwilioMediaStream(max_message_bytes=2048)
    violations = media = 0
    for message in messages:
        before = stream.state
        events = stream.receive(message)
        assert events
        for event in events:
            assert isinstance(
                event,
                Connected
                | Started
                | MediaReceived
                | DtmfReceived
                | MarkReceived
                | Stopped
                | Violation,
            )
            violations += isinstance(event, Violation)
            media += isinstance(event, MediaReceived)
            if isinstance(event, Violation):
                assert event.kind
                assert event.detail
        assert _ORDER.index(stream.state) >= _ORDER.index(before)
        if stream.state is StreamState.STARTED:
            assert isinstance(stream.stream_sid, str)
            assert isinstance(stream.call_sid, str)
            assert all(isinstance(v, str) for v in stream.custom_parameters.values())
            assert len(stream.media(FRAME)) > 200
    assert sum(stream.violations.values()) == violations
    assert stream.media_frames_in == media


def test_receive_is_cheap() -> None:
    """A loose bound (real figure ~3 µs) that only catches an accidental O(n) or regex."""
    import timeit

    stream = started()
    n = 2000
    seconds = min(timeit.repeat(lambda: stream.receive(REF_MEDIA), number=n, repeat=3)) / n
    assert seconds < 100e-6


def test_deeply_nested_json_is_a_violation_not_a_crash() -> None:
    # Python 3.11/3.12 refuse this depth (RecursionError: invalid_json); 3.13 parses it (a list).
    stream = TwilioMediaStream()
    [event] = stream.receive("[" * 5000 + "]" * 5000)
    assert isinstance(event, Violation)
    assert event.kind in ("invalid_json", "not_object")


def test_inbound_audio_off_counts_media_without_decoding_or_events() -> None:
    leg = TwilioMediaLeg("MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32, {})
    stream = TwilioMediaStream(inbound_audio=False)
    stream.receive(leg.connected())
    stream.receive(leg.start())
    assert stream.receive(leg.media(b"\xff" * 160, 20)) == []
    assert stream.media_frames_in == 1
    # structure is still checked: a media with the wrong streamSid is still a violation
    bad = json.dumps({"event": "media", "streamSid": "MZ" + "9" * 32, "media": {"payload": "x"}})
    [event] = stream.receive(bad)
    assert isinstance(event, Violation)
