"""The sans-I/O Hamsa TTS core: strings in, events out (no sockets)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import HamsaAuthError, HamsaConnectError, HamsaReplyError, InvalidState
from bridge.protocols.hamsa_client import (
    MAX_TEXT_CHARS,
    UNEXPECTED_AFTER_CLOSE,
    UNEXPECTED_BAD_ENVELOPE,
    UNEXPECTED_DUPLICATE_ACK,
    UNEXPECTED_NO_REQUEST,
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
    Unexpected,
    classify_close,
)
from bridge.voice import Voice

INFO = '{"type": "info", "payload": {"message": "Connected to realtime WebSocket server"}}'
ACK = '{"type": "ack", "payload": {"message": "Real time text to speach connection establesh"}}'
END = '{"type": "end", "payload": {"message": "End of TTS stream"}}'
ERROR = '{"type": "error", "payload": {"message": "TTS stream error: aborted"}}'
VOICE = Voice("Majd", "ksa", "ar")
TEXT = "مرحبا بك في خدمة همسة"


def state_of(proto: HamsaProtocol) -> HamsaState:
    """Read the state without mypy's narrowing from an earlier assert on the property."""
    return proto.state


def ready() -> HamsaProtocol:
    proto = HamsaProtocol()
    assert proto.receive_text(INFO) == [Info("Connected to realtime WebSocket server")]
    return proto


class TestRequest:
    def test_exact_frame(self) -> None:
        frame = ready().request(TEXT, VOICE)
        assert frame == (
            '{"type":"tts","payload":{"text":"مرحبا بك في خدمة همسة","speaker":"Majd",'
            '"dialect":"ksa","languageId":"ar","mulaw":true}}'
        )

    def test_pcm_flag(self) -> None:
        frame = ready().request("hello", VOICE, mulaw=False)
        assert json.loads(frame)["payload"]["mulaw"] is False

    def test_moves_to_awaiting_ack(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        assert proto.state is HamsaState.AWAITING_ACK
        assert proto.in_flight
        assert proto.requests_sent == 1

    def test_allowed_before_info_and_late_info_keeps_state(self) -> None:
        proto = HamsaProtocol()
        assert proto.state is HamsaState.AWAITING_INFO
        proto.request(TEXT, VOICE)
        assert proto.receive_text(INFO) == [Info("Connected to realtime WebSocket server")]
        assert state_of(proto) is HamsaState.AWAITING_ACK
        assert proto.info_received

    def test_second_request_in_flight_raises(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        with pytest.raises(InvalidState, match="in flight"):
            proto.request(TEXT, VOICE)
        proto.receive_text(ACK)
        with pytest.raises(InvalidState, match="in flight"):
            proto.request(TEXT, VOICE)

    def test_after_close_raises(self) -> None:
        proto = ready()
        proto.receive_close(1000, "")
        with pytest.raises(InvalidState, match="closed"):
            proto.request(TEXT, VOICE)

    @pytest.mark.parametrize("text", ["", "   ", "\n\t"])
    def test_blank_text_raises(self, text: str) -> None:
        with pytest.raises(InvalidState, match="empty"):
            ready().request(text, VOICE)

    def test_limit_counts_characters_not_bytes(self) -> None:
        proto = ready()
        arabic = "ش" * MAX_TEXT_CHARS  # 4000 UTF-8 bytes, 2000 characters: allowed
        assert len(arabic.encode()) == 2 * MAX_TEXT_CHARS
        proto.request(arabic, VOICE)
        with pytest.raises(InvalidState, match="2001 characters"):
            ready().request("a" * (MAX_TEXT_CHARS + 1), VOICE)

    def test_speaker_required(self) -> None:
        with pytest.raises(InvalidState, match="speaker"):
            ready().request(TEXT, Voice("", "ksa", "ar"))

    def test_failed_request_changes_nothing(self) -> None:
        proto = ready()
        with pytest.raises(InvalidState):
            proto.request("", VOICE)
        assert proto.state is HamsaState.IDLE
        assert proto.requests_sent == 0


class TestReply:
    def test_normal_sequence_and_reuse(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        assert proto.receive_text(ACK) == [Ack("Real time text to speach connection establesh")]
        assert proto.state is HamsaState.STREAMING
        assert proto.acked
        assert proto.receive_bytes(b"\xff" * 3001) == [Audio(b"\xff" * 3001)]
        assert proto.receive_bytes(b"\x7f" * 5) == [Audio(b"\x7f" * 5)]
        assert proto.bytes_received == 3006
        assert proto.frames_received == 2
        assert proto.receive_text(END) == [End("End of TTS stream")]
        assert state_of(proto) is HamsaState.IDLE
        assert not proto.in_flight
        assert proto.bytes_received == 3006  # still readable after end (truncation check)
        proto.request("again", VOICE)
        assert proto.bytes_received == 0
        assert proto.frames_received == 0
        assert not proto.acked

    def test_reply_with_no_audio(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ACK)
        assert proto.receive_text(END) == [End("End of TTS stream")]
        assert proto.bytes_received == 0

    def test_audio_before_ack_is_tolerated(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        assert proto.receive_bytes(b"ab") == [Audio(b"ab")]
        assert proto.state is HamsaState.STREAMING
        assert not proto.acked
        assert proto.receive_text(ACK) == [Ack("Real time text to speach connection establesh")]
        assert proto.receive_text(END) == [End("End of TTS stream")]

    def test_end_without_ack(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        assert proto.receive_text(END) == [End("End of TTS stream")]

    def test_duplicate_ack(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ACK)
        [event] = proto.receive_text(ACK)
        assert isinstance(event, Unexpected)
        assert event.kind == UNEXPECTED_DUPLICATE_ACK
        assert proto.state is HamsaState.STREAMING

    def test_error_ends_request(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ACK)
        proto.receive_bytes(b"x")
        assert proto.receive_text(ERROR) == [ReplyError("TTS stream error: aborted")]
        assert proto.state is HamsaState.IDLE

    def test_error_before_ack(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        assert proto.receive_text(ERROR) == [ReplyError("TTS stream error: aborted")]
        assert proto.state is HamsaState.IDLE

    def test_trailing_end_after_error_when_idle(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ERROR)
        [event] = proto.receive_text(END)
        assert isinstance(event, Unexpected)
        assert event.kind == UNEXPECTED_TRAILING_END
        assert proto.state is HamsaState.IDLE

    def test_trailing_end_does_not_end_the_next_request(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ERROR)
        proto.request("next", VOICE)  # sent at once; the errored request's end is still coming
        [event] = proto.receive_text(END)
        assert isinstance(event, Unexpected)
        assert event.kind == UNEXPECTED_TRAILING_END
        assert proto.state is HamsaState.AWAITING_ACK
        assert proto.receive_text(ACK) == [Ack("Real time text to speach connection establesh")]
        proto.receive_bytes(b"abc")
        assert proto.receive_text(END) == [End("End of TTS stream")]

    def test_end_after_error_and_next_ack_is_the_next_end(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ERROR)
        proto.request("next", VOICE)
        proto.receive_text(ACK)
        assert proto.receive_text(END) == [End("End of TTS stream")]

    @pytest.mark.parametrize("frame", [ACK, END, ERROR])
    def test_frames_without_request(self, frame: str) -> None:
        proto = ready()
        [event] = proto.receive_text(frame)
        assert isinstance(event, Unexpected)
        assert event.kind == UNEXPECTED_NO_REQUEST
        assert proto.state is HamsaState.IDLE

    def test_audio_without_request_is_not_counted(self) -> None:
        proto = ready()
        [event] = proto.receive_bytes(b"\x00" * 640)
        assert event == Unexpected(UNEXPECTED_NO_REQUEST, "binary frame of 640 bytes")
        assert proto.bytes_received == 0

    def test_audio_before_info(self) -> None:
        proto = HamsaProtocol()
        [event] = proto.receive_bytes(b"x")
        assert isinstance(event, Unexpected)
        assert proto.state is HamsaState.AWAITING_INFO


class TestOddInput:
    @pytest.mark.parametrize(
        ("text", "kind"),
        [
            ("مرحبا كيف حالك", UNEXPECTED_NOT_JSON),  # an STT transcript
            ("[THINKING]", UNEXPECTED_NOT_JSON),
            ("", UNEXPECTED_NOT_JSON),
            ("[1, 2]", UNEXPECTED_BAD_ENVELOPE),
            ('"info"', UNEXPECTED_BAD_ENVELOPE),
            ('{"payload": {}}', UNEXPECTED_BAD_ENVELOPE),
            ('{"type": 3}', UNEXPECTED_BAD_ENVELOPE),
            ('{"type": "response", "payload": {"text": "x"}}', UNEXPECTED_UNKNOWN_TYPE),
            ('{"type": "tts", "payload": {}}', UNEXPECTED_UNKNOWN_TYPE),
            ("[" * 100_000, UNEXPECTED_BAD_ENVELOPE),
        ],
    )
    def test_unexpected_text(self, text: str, kind: str) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        [event] = proto.receive_text(text)
        assert isinstance(event, Unexpected)
        assert event.kind in (kind, UNEXPECTED_NOT_JSON)  # deep nesting: either is fine
        assert len(event.detail) < 300
        assert proto.state is HamsaState.AWAITING_ACK

    @pytest.mark.parametrize(
        ("frame", "message"),
        [
            ('{"type": "error"}', ""),
            ('{"type": "error", "payload": "quota"}', '"quota"'),
            ('{"type": "error", "payload": {"message": 42}}', "42"),
            ('{"type": "error", "payload": {"detail": "x"}}', '{"detail": "x"}'),
        ],
    )
    def test_error_payload_shapes(self, frame: str, message: str) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        assert proto.receive_text(frame) == [ReplyError(message)]

    def test_info_message_kept_verbatim(self) -> None:
        proto = HamsaProtocol()
        assert proto.receive_text('{"type": "info", "payload": {"message": "hi"}}') == [Info("hi")]
        assert proto.receive_text(INFO) == [Info("Connected to realtime WebSocket server")]
        assert proto.state is HamsaState.IDLE


class TestClose:
    def test_idle_close(self) -> None:
        proto = ready()
        assert proto.receive_close(1000, "bye") == [Closed(1000, "bye", False, False)]
        assert proto.state is HamsaState.CLOSED

    def test_close_mid_reply_with_audio(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ACK)
        proto.receive_bytes(b"abc")
        assert proto.receive_close(1011, "Internal error") == [
            Closed(1011, "Internal error", True, True)
        ]

    def test_close_awaiting_ack(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        assert proto.receive_close(None, "") == [Closed(None, "", True, False)]

    def test_close_after_end_is_not_in_flight(self) -> None:
        proto = ready()
        proto.request(TEXT, VOICE)
        proto.receive_text(ACK)
        proto.receive_bytes(b"abc")
        proto.receive_text(END)
        assert proto.receive_close(1000, "") == [Closed(1000, "", False, False)]

    def test_everything_after_close_is_unexpected(self) -> None:
        proto = ready()
        proto.receive_close(4001, "auth")
        for events in (
            proto.receive_text(ACK),
            proto.receive_bytes(b"x"),
            proto.receive_close(1000, ""),
        ):
            [event] = events
            assert isinstance(event, Unexpected)
            assert event.kind == UNEXPECTED_AFTER_CLOSE
        assert proto.state is HamsaState.CLOSED


class TestClassifyClose:
    def test_4001(self) -> None:
        err = classify_close(4001)
        assert isinstance(err, HamsaAuthError)
        assert not err.retryable
        assert err.code == 4001
        assert "invalid or missing API key" in str(err)

    def test_4003(self) -> None:
        err = classify_close(4003, "Insufficient funds", in_flight=True)
        assert isinstance(err, HamsaAuthError)
        assert not err.retryable
        assert err.code == 4003
        assert "insufficient balance" in str(err)
        assert "Insufficient funds" in str(err)

    def test_4500_at_connect(self) -> None:
        err = classify_close(4500)
        assert type(err) is HamsaConnectError
        assert err.retryable
        assert "4500" in str(err)
        assert "internal authentication error" in str(err)

    def test_mid_reply(self) -> None:
        err = classify_close(1011, "Internal error", in_flight=True, audio_received=True)
        assert isinstance(err, HamsaReplyError)
        assert err.retryable
        assert err.audio_received
        assert "1011" in str(err)
        assert "Internal error" in str(err)

    @pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1012, 3999, 4999])
    def test_everything_else_is_retryable(self, code: int | None) -> None:
        err = classify_close(code)
        assert err.retryable
        assert not isinstance(err, HamsaAuthError)
        assert (str(code) in str(err)) if code is not None else "without a close code" in str(err)


# --- property: no peer input ever raises, and the state stays consistent ----------------------

_frames = st.sampled_from(
    [
        INFO,
        ACK,
        END,
        ERROR,
        '{"type": "response", "payload": {}}',
        '{"type": "error"}',
        "plain transcript",
        "[]",
        "{",
        '{"type": null}',
    ]
)
_ops = st.one_of(
    st.tuples(st.just("text"), st.one_of(_frames, st.text(max_size=40))),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(
        st.just("close"),
        st.tuples(st.one_of(st.none(), st.integers(0, 5000)), st.text(max_size=10)),
    ),
    st.tuples(st.just("request"), st.sampled_from(["", " ", "hello", TEXT, "x" * 2001])),
)


@settings(max_examples=300, database=None, deadline=None)
@given(st.lists(_ops, max_size=40))
def test_any_input_sequence_is_safe(ops: list[tuple[str, object]]) -> None:
    proto = HamsaProtocol()
    audio_since_request = 0
    closed = False
    for op, arg in ops:
        before = proto.state
        events: list[Event]
        if op == "request":
            assert isinstance(arg, str)
            should_fail = closed or proto.in_flight or not arg.strip() or len(arg) > 2000
            try:
                proto.request(arg, VOICE)
            except InvalidState:
                assert should_fail
                assert proto.state is before
            else:
                assert not should_fail
                assert proto.state is HamsaState.AWAITING_ACK
                audio_since_request = 0
            continue
        if op == "text":
            assert isinstance(arg, str)
            events = proto.receive_text(arg)
        elif op == "bytes":
            assert isinstance(arg, bytes)
            events = proto.receive_bytes(arg)
            if before in (HamsaState.AWAITING_ACK, HamsaState.STREAMING):
                audio_since_request += len(arg)
        else:
            assert isinstance(arg, tuple)
            code, reason = arg
            events = proto.receive_close(code, reason)
            closed = True

        assert len(events) == 1
        [event] = events
        # State consistency.
        assert proto.in_flight == (proto.state in (HamsaState.AWAITING_ACK, HamsaState.STREAMING))
        assert proto.bytes_received == audio_since_request
        if closed:
            assert proto.state is HamsaState.CLOSED
        if before is HamsaState.CLOSED:
            assert isinstance(event, Unexpected)
            assert event.kind == UNEXPECTED_AFTER_CLOSE
        # Events that end a reply only happen to a reply in flight, and end it.
        if isinstance(event, End | ReplyError):
            assert before in (HamsaState.AWAITING_ACK, HamsaState.STREAMING)
            assert proto.state is HamsaState.IDLE
        if isinstance(event, Audio):
            assert proto.state is HamsaState.STREAMING
        if isinstance(event, Ack):
            assert proto.acked
            assert proto.state is HamsaState.STREAMING
        if isinstance(event, Closed):
            assert event.in_flight == (before in (HamsaState.AWAITING_ACK, HamsaState.STREAMING))
            assert event.audio_received == (event.in_flight and audio_since_request > 0)
        if isinstance(event, Info):
            assert proto.info_received
        if isinstance(event, Unexpected) and before is not HamsaState.CLOSED:
            assert proto.state is before  # informational only
