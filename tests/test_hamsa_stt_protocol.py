"""``HamsaProtocol``'s speech-to-text half: the contract table of docs/speech-input.md, one row
at a time, then a hypothesis state machine feeding random interleavings of frames to requests of
both kinds and checking every event against an oracle written from that table."""

from __future__ import annotations

import base64
import json
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bridge.cli import main
from bridge.errors import InvalidState
from bridge.protocols.hamsa_client import (
    MAX_STT_WAV_BYTES,
    MAX_TRANSCRIPT_CHARS,
    UNEXPECTED_AFTER_CLOSE,
    UNEXPECTED_BAD_ENVELOPE,
    UNEXPECTED_BINARY_DURING_STT,
    UNEXPECTED_DUPLICATE_ACK,
    UNEXPECTED_END_DURING_STT,
    UNEXPECTED_NO_REQUEST,
    UNEXPECTED_NO_TRANSCRIPT,
    UNEXPECTED_NOT_JSON,
    UNEXPECTED_TRAILING_END,
    UNEXPECTED_UNKNOWN_TYPE,
    Ack,
    Audio,
    Closed,
    End,
    Event,
    HamsaProtocol,
    HamsaState,
    Info,
    ReplyError,
    Thinking,
    Transcript,
    Unexpected,
)
from bridge.voice import Voice

WAV: Final = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 28
VOICE: Final = Voice("Majd", "ksa", "ar")
INFO: Final = '{"type":"info","payload":{"message":"Connected to realtime WebSocket server"}}'
ACK: Final = '{"type":"ack","payload":{"message":"Real time text to speach connection establesh"}}'
END: Final = '{"type":"end","payload":{"message":"End of TTS stream"}}'
ERROR: Final = '{"type":"error","payload":{"message":"Error generating transcription: x"}}'


def ready() -> HamsaProtocol:
    proto = HamsaProtocol()
    proto.receive_text(INFO)
    return proto


def stt(proto: HamsaProtocol | None = None) -> HamsaProtocol:
    proto = proto or ready()
    proto.request_stt(WAV, language="ar")
    return proto


# --- the request ---------------------------------------------------------------------------------


def test_the_request_frame_is_exact() -> None:
    proto = ready()
    frame = proto.request_stt(WAV, language="ar")
    b64 = base64.b64encode(WAV).decode()
    expected = f'{{"type":"stt","payload":{{"audioBase64":"{b64}","language":"ar",'
    assert frame == expected + '"isEosEnabled":false}}'
    assert (proto.in_flight, proto.in_flight_kind, proto.requests_sent) == (True, "stt", 1)
    assert proto.state is HamsaState.AWAITING_ACK


@pytest.mark.parametrize(
    "wav",
    [b"", b"RIFF", b"RIFF\0\0\0\0WAVX", b"OggS" + WAV[4:], WAV + b"\0" * MAX_STT_WAV_BYTES],
)
def test_audio_that_is_not_a_small_wav_is_our_bug(wav: bytes) -> None:
    proto = ready()
    with pytest.raises(InvalidState):
        proto.request_stt(wav, language="ar")
    assert not proto.in_flight


def test_one_request_in_flight_whatever_its_kind() -> None:
    proto = stt()
    with pytest.raises(InvalidState):
        proto.request("مرحبا", VOICE)
    with pytest.raises(InvalidState):
        proto.request_stt(WAV, language="ar")
    proto = ready()
    proto.request("مرحبا", VOICE)
    with pytest.raises(InvalidState):
        proto.request_stt(WAV, language="ar")
    with pytest.raises(InvalidState):
        ready().request_stt(WAV, language=" ")
    closed = ready()
    closed.receive_close(1000, "")
    with pytest.raises(InvalidState):
        closed.request_stt(WAV, language="ar")


# --- the answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        ("المواعيد", "المواعيد"),
        ("  one two three \n", "  one two three \n"),
        ("123", "123"),  # parses as JSON, still a transcript
        ("true", "true"),
        ('"quoted"', '"quoted"'),
        ("[1, 2]", "[1, 2]"),
        ("", ""),
        ("привет", "привет"),
    ],
)
def test_a_plain_text_frame_is_the_transcript(frame: str, text: str) -> None:
    proto = stt()
    assert proto.receive_text(frame) == [Transcript(text, "text")]
    assert (proto.in_flight, proto.state) == (False, HamsaState.IDLE)


@pytest.mark.parametrize("frame", ["[THINKING]", "  [THINKING]\n"])
def test_thinking_keeps_the_request(frame: str) -> None:
    proto = stt()
    assert proto.receive_text(frame) == [Thinking()]
    assert proto.in_flight_kind == "stt"
    assert proto.receive_text("نعم") == [Transcript("نعم", "text")]


@pytest.mark.parametrize(
    "payload",
    [
        {"text": "نعم"},
        {"transcript": "نعم"},
        {"message": "نعم"},
        "نعم",
        {"text": 5, "transcript": "نعم"},
    ],
)
def test_a_json_response_is_the_transcript(payload: Any) -> None:
    proto = stt()
    frame = json.dumps({"type": "response", "payload": payload}, ensure_ascii=False)
    assert proto.receive_text(frame) == [Transcript("نعم", "json")]
    assert not proto.in_flight


def test_a_response_without_a_transcript_is_unexpected_and_keeps_the_request() -> None:
    proto = stt()
    [event] = proto.receive_text('{"type":"response","payload":{"text":null}}')
    assert isinstance(event, Unexpected)
    assert event.kind == UNEXPECTED_NO_TRANSCRIPT
    assert proto.in_flight_kind == "stt"


def test_a_long_transcript_is_cut() -> None:
    for frame, via in (
        ("ب" * 100_000, "text"),
        ('{"type":"response","payload":"' + "ب" * 5000 + '"}', "json"),
    ):
        proto = stt()
        assert proto.receive_text(frame) == [Transcript("ب" * MAX_TRANSCRIPT_CHARS, via, True)]


def test_error_ack_binary_and_end_during_stt() -> None:
    proto = stt()
    assert proto.receive_text(ACK) == [Ack("Real time text to speach connection establesh")]
    [binary] = proto.receive_bytes(b"\x00" * 640)
    assert isinstance(binary, Unexpected)
    assert binary.kind == UNEXPECTED_BINARY_DURING_STT
    assert (proto.bytes_received, proto.frames_received) == (0, 0)
    [end] = proto.receive_text(END)
    assert isinstance(end, Unexpected)
    assert end.kind == UNEXPECTED_END_DURING_STT
    assert proto.in_flight_kind == "stt"
    assert proto.receive_text(ERROR) == [ReplyError("Error generating transcription: x")]
    assert not proto.in_flight


def test_a_trailing_end_never_ends_the_next_request() -> None:
    for then in ("tts", "stt"):
        proto = stt()
        proto.receive_text("نعم")
        if then == "tts":
            proto.request("مرحبا", VOICE)
        else:
            proto.request_stt(WAV, language="ar")
        [event] = proto.receive_text(END)
        assert isinstance(event, Unexpected)
        assert event.kind == UNEXPECTED_TRAILING_END
        assert proto.in_flight_kind == then


def test_a_tts_reply_still_treats_plain_text_as_unexpected() -> None:
    proto = stt()
    proto.receive_text("نعم")
    proto.request("مرحبا", VOICE)
    [event] = proto.receive_text("a late second transcript")
    assert isinstance(event, Unexpected)
    assert event.kind == UNEXPECTED_NOT_JSON
    assert proto.receive_text(ACK)[0] == Ack("Real time text to speach connection establesh")
    assert proto.receive_bytes(b"\x7f" * 10) == [Audio(b"\x7f" * 10)]
    assert proto.receive_text(END) == [End("End of TTS stream")]


def test_close_during_stt() -> None:
    proto = stt()
    assert proto.receive_close(4001, "bad key") == [Closed(4001, "bad key", True, False)]


# --- random interleavings ------------------------------------------------------------------------

UNEXPECTED_KINDS: Final = frozenset(
    {
        UNEXPECTED_NOT_JSON,
        UNEXPECTED_BAD_ENVELOPE,
        UNEXPECTED_UNKNOWN_TYPE,
        UNEXPECTED_NO_REQUEST,
        UNEXPECTED_DUPLICATE_ACK,
        UNEXPECTED_TRAILING_END,
        UNEXPECTED_AFTER_CLOSE,
        UNEXPECTED_BINARY_DURING_STT,
        UNEXPECTED_END_DURING_STT,
        UNEXPECTED_NO_TRANSCRIPT,
    }
)
TEXT_FRAMES = st.one_of(
    st.sampled_from(
        [
            INFO,
            ACK,
            END,
            ERROR,
            "[THINKING]",
            " [THINKING] ",
            '{"type":"response","payload":{"text":"نعم"}}',
            '{"type":"response","payload":"yes"}',
            '{"type":"response","payload":{"text":null}}',
            '{"type":"response"}',
            '{"type":"stt","payload":{}}',
            '{"payload":{}}',
            "[]",
            "123",
            "null",
            "{",
            "[" * 5000,
            "واحد اثنين",
        ]
    ),
    st.text(max_size=40),
)


class SttMachine(RuleBasedStateMachine):
    """Requests of both kinds and any frames; the oracle is the table of docs/speech-input.md and
    of the module docstring. Asserts: nothing raises, each frame gives exactly one event of the
    documented type, and the request in flight (and its kind) is what the oracle says."""

    def __init__(self) -> None:
        super().__init__()
        self.proto = HamsaProtocol()
        self.kind: str | None = None
        self.closed = False
        self.after = False  # an error or transcript ended the last request, nothing seen since
        self.acked = False
        self.audio = 0

    @precondition(lambda self: self.kind is None and not self.closed)
    @rule(kind=st.sampled_from(["tts", "stt"]))
    def send(self, kind: str) -> None:
        if kind == "tts":
            self.proto.request("مرحبا", VOICE)
        else:
            self.proto.request_stt(WAV, language="ar")
        self.kind, self.acked, self.audio = kind, False, 0

    @precondition(lambda self: self.kind is not None or self.closed)
    @rule(kind=st.sampled_from(["tts", "stt"]))
    def misuse(self, kind: str) -> None:
        def again() -> None:
            if kind == "tts":
                self.proto.request("مرحبا", VOICE)
            else:
                self.proto.request_stt(WAV, language="ar")

        with pytest.raises(InvalidState):
            again()

    @rule(frame=TEXT_FRAMES)
    def text(self, frame: str) -> None:
        expected = self._expected(frame)
        events = self.proto.receive_text(frame)
        self._check(events, expected)

    @rule(data=st.binary(max_size=64))
    def binary(self, data: bytes) -> None:
        if self.closed:
            expected: type | str = UNEXPECTED_AFTER_CLOSE
        elif self.kind is None:
            expected = UNEXPECTED_NO_REQUEST
        elif self.kind == "stt":
            expected = UNEXPECTED_BINARY_DURING_STT
        else:
            expected = Audio
            self.after = False
            self.audio += len(data)
        self._check(self.proto.receive_bytes(data), expected)

    @rule(code=st.one_of(st.none(), st.sampled_from([1000, 1006, 4001, 4003, 4500])))
    def close(self, code: int | None) -> None:
        events = self.proto.receive_close(code, "")
        if self.closed:
            self._check(events, UNEXPECTED_AFTER_CLOSE)
            return
        assert events == [Closed(code, "", self.kind is not None, self.audio > 0)]
        self.closed, self.kind = True, None

    @invariant()
    def in_flight_as_the_oracle_says(self) -> None:
        assert self.proto.in_flight_kind == (None if self.closed else self.kind)
        assert (self.proto.state is HamsaState.CLOSED) is self.closed
        if self.kind == "stt":
            assert self.proto.bytes_received == 0

    def _check(self, events: list[Event], expected: type | str) -> None:
        assert len(events) == 1
        [event] = events
        if isinstance(expected, str):
            assert isinstance(event, Unexpected), (event, expected)
            assert event.kind == expected
            assert event.kind in UNEXPECTED_KINDS
        else:
            assert isinstance(event, expected), (event, expected)
        if isinstance(event, Transcript):
            assert len(event.text) <= MAX_TRANSCRIPT_CHARS

    def _expected(self, frame: str) -> type | str:
        """The event a text frame must give now, and the oracle's state after it."""
        if self.closed:
            return UNEXPECTED_AFTER_CLOSE
        problem: str | None = None
        try:
            obj: Any = json.loads(frame)
        except ValueError:
            obj, problem = None, UNEXPECTED_NOT_JSON
        except RecursionError:
            obj, problem = None, UNEXPECTED_BAD_ENVELOPE
        if self.kind == "stt" and not isinstance(obj, dict):
            self.after = False
            if frame.strip() == "[THINKING]":
                return Thinking
            self.kind, self.after = None, True
            return Transcript
        if problem is not None:
            return problem
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            return UNEXPECTED_BAD_ENVELOPE
        kind = obj["type"]
        if kind == "response" and self.kind == "stt":
            self.after = False
            payload = obj.get("payload")
            has = isinstance(payload, str) or (
                isinstance(payload, dict)
                and any(isinstance(payload.get(k), str) for k in ("text", "transcript", "message"))
            )
            if not has:
                return UNEXPECTED_NO_TRANSCRIPT
            self.kind, self.after = None, True
            return Transcript
        if kind == "info":
            return Info
        if kind == "ack":
            if self.kind is None:
                return UNEXPECTED_NO_REQUEST
            if self.acked:
                return UNEXPECTED_DUPLICATE_ACK
            self.acked, self.after = True, False
            return Ack
        if kind == "end":
            streaming = self.proto.state is HamsaState.STREAMING
            if self.after and not streaming:
                self.after = False
                return UNEXPECTED_TRAILING_END
            if self.kind is None:
                return UNEXPECTED_NO_REQUEST
            if self.kind == "stt":
                return UNEXPECTED_END_DURING_STT
            self.kind = None
            return End
        if kind == "error":
            if self.kind is None:
                return UNEXPECTED_NO_REQUEST
            self.kind, self.after = None, True
            return ReplyError
        return UNEXPECTED_UNKNOWN_TYPE


SttMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_random_interleavings_of_both_kinds = SttMachine.TestCase


def test_emulate_hamsa_refuses_a_bad_stt_fault(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulate-hamsa", "--stt-fault", "1=NOPE"], {}) == 2
    assert "bad --stt-fault" in capsys.readouterr().err
    assert main(["emulate-hamsa", "--stt-delay", "soon"], {}) == 2
    assert "bad --stt-delay" in capsys.readouterr().err
