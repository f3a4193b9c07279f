"""The probe's pure parts: the recorder (events with times in, trace lines out), the report and
the phrase list. No sockets, no clock: every time is given."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.dev.hamsa_emulator import (
    ACK_FRAME,
    END_FRAME,
    INFO_FRAME,
    canonical_pcm16_header,
    streaming_mulaw_header,
)
from bridge.errors import InvalidState
from bridge.hamsa_trace import HEAD_BYTES, detect_format
from bridge.probe.phrases import MAX_PHRASES, PHRASES, estimate, phrases
from bridge.probe.recorder import (
    ProbeHeader,
    ProbeRecorder,
    RequestTrace,
    public_url,
)
from bridge.probe.report import report_lines
from bridge.protocols.hamsa_client import (
    UNEXPECTED_TRAILING_END,
    Ack,
    Audio,
    Closed,
    End,
    HamsaProtocol,
    Info,
    ReplyError,
    Unexpected,
)
from bridge.voice import Voice

VOICE = Voice("Majd", "ksa", "ar")
STARTED = datetime(2026, 12, 7, 9, 0, 0, tzinfo=UTC)
ERROR_FRAME = '{"type": "error", "payload": {"message": "TTS stream error: aborted"}}'


def recorder(url: str = "wss://api.tryhamsa.com/v1/realtime/ws") -> ProbeRecorder:
    return ProbeRecorder(ProbeHeader(STARTED, url, VOICE))


def test_a_whole_reply_gives_the_exact_trace_lines() -> None:
    rec = recorder()
    rec.feed(Info("Connected to realtime WebSocket server"), 99.0)  # before any request: ignored
    rec.opened(1.2134)
    rec.sent("مرحبا", 100.0)
    header = streaming_mulaw_header()
    head_hex = (header + b"\xff" * 18).hex()
    rec.feed(Ack("Real time text to speach connection establesh"), 100.05)
    rec.feed(Audio(header + b"\xff" * 7352), 100.31)
    rec.feed(Audio(b"\x7f" * 32000), 100.52)
    assert not rec.reply_over
    rec.feed(End("End of TTS stream"), 102.9)
    assert rec.reply_over
    record = rec.finish()
    assert record.succeeded
    assert record.audio_bytes == 46 + 7352 + 32000
    assert rec.lines() == [
        '{"type": "probe", "version": 1, "started": "2026-12-07T09:00:00Z", '
        '"url": "wss://api.tryhamsa.com/v1/realtime/ws", '
        '"voice": {"speaker": "Majd", "dialect": "ksa", "language": "ar"}, "mulaw": true}',
        '{"type": "request", "n": 1, "text": "مرحبا", "chars": 5, "connect_s": 1.2134, '
        '"ack_s": 0.05, "frames": [[0.31, 7398], [0.52, 32000]], '
        f'"head_hex": "{head_hex}", "end_s": 2.9, '
        '"error": null, "close": null}',
    ]
    assert rec.lines()[1].count("52494646") == 1  # "RIFF" at the head


def test_connect_time_only_on_the_request_that_opened_the_socket() -> None:
    rec = recorder()
    rec.opened(0.5)
    for n, at in enumerate((10.0, 20.0), 1):
        rec.sent(f"نص {n}", at)
        rec.feed(Audio(b"\x01"), at + 0.1)
        rec.feed(End(""), at + 0.2)
        rec.finish()
    assert [r.connect_s for r in rec.records] == [0.5, None]
    assert [r.n for r in rec.records] == [1, 2]


def test_times_are_rounded_to_a_tenth_of_a_millisecond() -> None:
    rec = recorder()
    rec.sent("x", 1000.0)
    rec.feed(Ack(""), 1000.000_049)
    rec.feed(Audio(b"a"), 1000.123_456)
    rec.feed(End(""), 1001.999_951)
    record = rec.finish()
    assert record.ack_s == 0.0
    assert record.frames == ((0.1235, 1),)
    assert record.end_s == 2.0


def test_error_then_trailing_end_keeps_both() -> None:
    rec = recorder()
    rec.sent("x", 0.0)
    rec.feed(Ack(""), 0.01)
    rec.feed(ReplyError("TTS stream error: aborted"), 0.02)
    assert rec.reply_over
    assert rec.awaiting_trailing_end
    rec.feed(Unexpected(UNEXPECTED_TRAILING_END, "End of TTS stream"), 0.03)
    assert not rec.awaiting_trailing_end
    record = rec.finish()
    assert (record.error, record.end_s, record.close) == ("TTS stream error: aborted", 0.03, None)
    assert not record.succeeded


def test_error_without_end_and_a_timeout_without_end() -> None:
    rec = recorder()
    rec.sent("x", 0.0)
    rec.feed(ReplyError("boom"), 0.5)
    errored = rec.finish()
    assert (errored.error, errored.end_s) == ("boom", None)
    rec.sent("y", 1.0)
    rec.feed(Ack(""), 1.1)
    rec.feed(Audio(b"\0" * 10), 1.2)
    timed_out = rec.finish()  # the runner gave up waiting
    assert (timed_out.end_s, timed_out.error, timed_out.close) == (None, None, None)
    assert not timed_out.succeeded
    assert json.loads(rec.lines()[2])["end_s"] is None


def test_close_mid_reply_is_recorded_and_ends_the_record() -> None:
    rec = recorder()
    rec.sent("x", 0.0)
    rec.feed(Ack(""), 0.1)
    rec.feed(Audio(b"\x10" * 100), 0.2)
    rec.feed(Closed(1011, "Internal error", in_flight=True, audio_received=True), 0.3)
    assert rec.reply_over
    rec.feed(Audio(b"late"), 0.4)  # nothing counts after the close
    rec.feed(End(""), 0.5)
    record = rec.finish()
    assert record.close == (1011, "Internal error")
    assert record.frames == ((0.2, 100),)
    assert record.end_s is None
    assert json.loads(rec.lines()[1])["close"] == [1011, "Internal error"]


def test_close_between_requests_is_not_a_request_close() -> None:
    rec = recorder()
    rec.feed(Closed(1000, "", in_flight=False, audio_received=False), 5.0)
    rec.sent("x", 6.0)
    rec.feed(Closed(None, "", in_flight=True, audio_received=False), 6.5)
    record = rec.finish()
    assert record.close == (None, "")
    assert json.loads(rec.lines()[1])["close"] == [None, ""]


def test_the_head_keeps_the_first_64_bytes_across_frames() -> None:
    rec = recorder()
    rec.sent("x", 0.0)
    audio = bytes(range(200))
    for start in range(0, 200, 30):
        rec.feed(Audio(audio[start : start + 30]), 0.1)
    rec.feed(End(""), 0.2)
    record = rec.finish()
    assert record.head == audio[:HEAD_BYTES]
    assert sum(size for _, size in record.frames) == 200


def test_wire_frames_through_the_protocol_core() -> None:
    """The runner's path: wire text/bytes → HamsaProtocol → events → recorder."""
    protocol = HamsaProtocol()
    rec = recorder()
    for event in protocol.receive_text(INFO_FRAME):
        rec.feed(event, 0.0)
    rec.opened(0.25)
    protocol.request("مرحبا بك", VOICE)
    rec.sent("مرحبا بك", 1.0)
    timeline: list[tuple[str | bytes, float]] = [
        (ACK_FRAME, 1.04),
        (b"\xff" * 640, 1.3),
        (b"\xfe" * 1280, 1.45),
        (END_FRAME, 1.6),
        (ERROR_FRAME, 1.7),  # after end, with nothing in flight: not this request's
    ]
    for message, at in timeline:
        if isinstance(message, bytes):
            events = protocol.receive_bytes(message)
        else:
            events = protocol.receive_text(message)
        for event in events:
            rec.feed(event, at)
    record = rec.finish()
    assert record == RequestTrace(
        n=1,
        text="مرحبا بك",
        connect_s=0.25,
        ack_s=0.04,
        frames=((0.3, 640), (0.45, 1280)),
        head=b"\xff" * 64,
        end_s=0.6,
        error=None,
        close=None,
    )


def test_misuse_raises_invalid_state() -> None:
    rec = recorder()
    with pytest.raises(InvalidState):
        rec.finish()
    rec.sent("x", 0.0)
    with pytest.raises(InvalidState):
        rec.sent("y", 0.1)
    with pytest.raises(InvalidState):
        rec.opened(0.2)


@pytest.mark.parametrize(
    ("url", "public"),
    [
        ("wss://api.tryhamsa.com/v1/realtime/ws", "wss://api.tryhamsa.com/v1/realtime/ws"),
        (
            "wss://api.tryhamsa.com/v1/realtime/ws?api_key=SECRET",
            "wss://api.tryhamsa.com/v1/realtime/ws",
        ),
        ("wss://user:SECRET@h.example:8443/ws#frag", "wss://h.example:8443/ws"),
        ("ws://[::1]:9000/v1/realtime/ws?x=1", "ws://[::1]:9000/v1/realtime/ws"),
    ],
)
def test_the_url_loses_credentials_and_query(url: str, public: str) -> None:
    assert public_url(url) == public
    header = ProbeHeader(STARTED, url, VOICE).to_json()
    assert header["url"] == public
    assert "SECRET" not in json.dumps(header)


def test_started_is_written_in_utc() -> None:
    riyadh = timezone(timedelta(hours=3))
    header = ProbeHeader(datetime(2026, 12, 7, 12, 0, 5, 700_000, tzinfo=riyadh), "ws://h/", VOICE)
    assert header.to_json()["started"] == "2026-12-07T09:00:05Z"


# --- report ---------------------------------------------------------------------------------------


def trace(
    n: int,
    text: str,
    sizes: list[int],
    *,
    head: bytes = b"\xff" * 64,
    first: float = 0.3,
    step: float = 0.1,
    end: float | None = -1.0,
    error: str | None = None,
    close: tuple[int | None, str] | None = None,
) -> RequestTrace:
    """A record with frames every ``step`` s from ``first``; ``end`` -1 means just after the
    last frame, ``None`` no end."""
    frames = tuple((round(first + i * step, 4), size) for i, size in enumerate(sizes))
    last = frames[-1][0] if frames else 0.0
    return RequestTrace(
        n, text, None, 0.01, frames, head, last + 0.01 if end == -1.0 else end, error, close
    )


def format_lines(*heads: bytes, size: int = 28800) -> list[str]:
    """The report's lines before its table, for one reply of ``size`` bytes per ``head``."""
    lines = report_lines([trace(n, "ب" * 10, [size], head=h) for n, h in enumerate(heads, 1)])
    return lines[: lines.index("")]


REQUESTED_LINE = "requested: μ-law 8 kHz mono (mulaw: true)"


def test_a_riff_header_is_read_and_a_non_mulaw_one_is_flagged() -> None:
    assert format_lines(streaming_mulaw_header() + b"\xff" * 18) == [
        REQUESTED_LINE,
        "format: RIFF/WAVE header (46 bytes): μ-law 8 kHz mono",
    ]
    assert format_lines(canonical_pcm16_header(1000) + b"\0" * 20) == [
        REQUESTED_LINE,
        "format: RIFF/WAVE header (44 bytes): PCM16 16 kHz mono",
        "WARNING: not what was requested: μ-law 8 kHz mono was asked for, but its RIFF header "
        "says PCM16 16 kHz mono (request 1)",
    ]
    float32 = b"RIFF\xff\xff\xff\xffWAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 3, 1, 8000, 32000, 4, 32
    )
    odd = report_lines([trace(1, "ب" * 10, [28800], head=float32 + b"data\xff\xff\xff\xff")])
    assert odd[1:3] == [
        "format: RIFF/WAVE header (44 bytes): unsupported (fmt tag 3)",
        "WARNING: not what was requested: μ-law 8 kHz mono was asked for, but its RIFF header "
        "says fmt tag 3 (request 1)",
    ]
    assert any(line.startswith("audio per character: rate unknown") for line in odd)
    long_header = b"RIFF\xff\xff\xff\xffWAVELIST" + struct.pack("<I", 200) + b"\0" * 44
    assert format_lines(long_header) == [
        REQUESTED_LINE,
        "format: RIFF/WAVE header longer than the 64 bytes recorded: format unknown "
        "(no fmt chunk within)",
    ]


def test_without_a_header_the_report_shows_what_the_bytes_look_like_and_why() -> None:
    mulaw = b"\xff" * 64
    assert format_lines(mulaw) == [
        REQUESTED_LINE,
        "format: no RIFF header; the bytes look like μ-law 8 kHz mono",
        "evidence (no header: the encoding is a guess from the bytes):",
        f"  request 1: {detect_format(mulaw, 28800, None).basis}",
    ]
    pcm = b"\0" * 64
    assert format_lines(pcm) == [
        REQUESTED_LINE,
        "format: no RIFF header; the bytes look like PCM16 16 kHz mono",
        "evidence (no header: the encoding is a guess from the bytes):",
        f"  request 1: {detect_format(pcm, 28800, None).basis}",
        "WARNING: not what was requested: μ-law 8 kHz mono was asked for, but the bytes look "
        "like PCM16 16 kHz mono (request 1)",
    ]
    # the audio is counted at the rate of what the bytes look like, not of what was asked
    text = "\n".join(report_lines([trace(1, "ب" * 10, [28800], head=pcm)]))
    assert "audio per character: 90 ms at 32000 bytes/s — matches" in text


def test_replies_in_different_formats_are_listed_one_by_one() -> None:
    riff, pcm = streaming_mulaw_header() + b"\xff" * 18, b"\0" * 64
    assert format_lines(riff, pcm, riff) == [
        REQUESTED_LINE,
        "format: differs between replies:",
        "  request 1: RIFF/WAVE header (46 bytes): μ-law 8 kHz mono",
        "  request 2: no RIFF header; the bytes look like PCM16 16 kHz mono",
        "  request 3: RIFF/WAVE header (46 bytes): μ-law 8 kHz mono",
        "evidence (no header: the encoding is a guess from the bytes):",
        f"  request 2: {detect_format(pcm, 28800, None).basis}",
        "WARNING: not what was requested: μ-law 8 kHz mono was asked for, but the bytes look "
        "like PCM16 16 kHz mono (request 2)",
    ]


def test_report_names_the_format_latency_pace_and_frames() -> None:
    # 20 and 40 characters at 80 ms each, as 8 kHz μ-law: 12800 and 25600 audio bytes
    records = [
        trace(1, "ب" * 20, [4800, 8000], first=0.2, end=0.5),
        trace(2, "ب" * 40, [5600, 12000, 8000], first=0.4, end=1.0),
        trace(3, "ب" * 10, [], error="TTS stream error: aborted", end=None),
    ]
    text = "\n".join(report_lines(records))
    assert "format: no RIFF header; the bytes look like μ-law 8 kHz mono" in text
    assert "WARNING" not in text
    assert "successful replies: 2 of 3" in text
    assert "first-byte latency: p50 0.300 s (min 0.200, max 0.400)" in text
    # 1.6 s of audio in 0.5 s, 3.2 s in 1.0 s; from the first byte 1.6/0.3, 3.2/0.6
    assert "pace: median 3.2× real time from the request, 5.3× from the first byte" in text
    assert "frames per reply (min / median / max): 2 / 2.5 / 3" in text
    assert "frame bytes (min / median / max): 4800 / 8000 / 12000" in text
    assert "first frame bytes: 4800, 5600" in text
    assert "audio per character: 80 ms at 8000 bytes/s — matches the expected 80–100 ms" in text
    assert "error 'TTS stream error: aborted', no end" in text


def test_report_flags_a_wrong_rate_and_names_what_fits() -> None:
    # headerless, but 2880 bytes per character: 90 ms of 16 kHz PCM16, not 8 kHz μ-law
    records = [trace(1, "ب" * 10, [28800])]
    text = "\n".join(report_lines(records))
    assert "audio per character: 360 ms at 8000 bytes/s — NOT the expected 80–100 ms" in text
    assert "PCM16 16 kHz" in text


def test_report_reads_the_rate_from_a_riff_header() -> None:
    header = canonical_pcm16_header(0xFFFF)
    records = [trace(1, "ب" * 10, [len(header) + 28800], head=(header + b"\0" * 64)[:64])]
    text = "\n".join(report_lines(records))
    assert "format: RIFF/WAVE header (44 bytes): PCM16 16 kHz mono" in text
    assert "audio per character: 90 ms at 32000 bytes/s — matches" in text


def test_report_with_nothing_successful() -> None:
    records = [trace(1, "x", [], close=(4500, "Internal authentication error"), end=None)]
    text = "\n".join(report_lines(records))
    assert report_lines(records)[:2] == [REQUESTED_LINE, "format: unknown (no reply carried audio)"]
    assert "closed 4500 Internal authentication error" in text
    assert "successful replies: 0 of 1" in text
    assert report_lines([]) == ["no request was sent"]


# --- phrases --------------------------------------------------------------------------------------


def test_phrases_have_distinct_lengths_and_cycle() -> None:
    assert [len(p) for p in PHRASES] == [22, 54, 101, 203]
    assert phrases(2) == list(PHRASES[:2])
    assert phrases(6) == [*PHRASES, *PHRASES[:2]]
    for bad in (0, MAX_PHRASES + 1):
        with pytest.raises(ValueError):
            phrases(bad)


def test_cost_estimate() -> None:
    cost = estimate(PHRASES)
    assert (cost.requests, cost.chars) == (4, 380)
    assert cost.audio_s == pytest.approx(30.4)
    # seconds billed per request: ceil(1.76, 4.32, 8.08, 16.24) = 2 + 5 + 9 + 17 = 33 → 1.65
    assert cost.credits == pytest.approx(1.65)


@pytest.mark.parametrize(
    ("ack_s", "frames", "end_s", "error", "close", "ok"),
    [
        (0.01, ((0.2, 800),), 0.5, None, None, True),
        (None, ((0.2, 800),), 0.5, None, None, False),  # no ack: replay could not reproduce it
        (0.01, (), 0.5, None, None, False),
        (0.01, ((0.2, 800),), None, None, None, False),
        (0.01, ((0.2, 800),), 0.5, "aborted", None, False),
        (0.01, ((0.2, 800),), 0.5, None, (1011, ""), False),
    ],
)
def test_a_request_succeeds_only_when_replay_could_replay_it(
    ack_s: float | None,
    frames: tuple[tuple[float, int], ...],
    end_s: float | None,
    error: str | None,
    close: tuple[int | None, str] | None,
    ok: bool,
) -> None:
    from bridge.probe.recorder import RequestTrace

    record = RequestTrace(1, "نص", 0.1, ack_s, frames, b"\xff", end_s, error, close)
    assert record.succeeded is ok
