"""``bridge.hamsa_trace``: reading and validating recorded Hamsa timing traces, and
``detect_format``. Pure functions on files under ``tmp_path``: no sockets, no clocks."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from bridge.dev import tone
from bridge.dev.hamsa_emulator import canonical_pcm16_header, streaming_mulaw_header
from bridge.errors import BridgeError, TraceError
from bridge.hamsa_trace import (
    TRACE_VERSION,
    Trace,
    TraceRequest,
    detect_format,
    parse_trace,
    read_trace,
)

TEXT = "مرحبا بك في خدمة همسة، كيف يمكنني مساعدتك اليوم؟"
AUDIO = tone.synthesize(TEXT, mulaw=True)


def header(**changes: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "type": "probe",
        "version": TRACE_VERSION,
        "started": "2026-12-07T09:00:00Z",
        "url": "wss://api.tryhamsa.com/v1/realtime/ws",
        "voice": {"speaker": "Majd", "dialect": "ksa", "language": "ar"},
        "mulaw": True,
    }
    line.update(changes)
    return line


def request(n: int = 1, head: bytes | None = None, **changes: Any) -> dict[str, Any]:
    frames = changes.pop("frames", [[0.31, 7398], [0.52, 12000], [0.9, 11000]])
    sizes = (
        [f[1] for f in frames if isinstance(f, list) and len(f) > 1]
        if isinstance(frames, list)
        else []
    )
    total = sum(s for s in sizes if isinstance(s, int))
    reply = head if head is not None else AUDIO
    line: dict[str, Any] = {
        "type": "request",
        "n": n,
        "text": TEXT,
        "chars": len(TEXT),
        "connect_s": 1.21 if n == 1 else None,
        "ack_s": 0.05,
        "frames": frames,
        "head_hex": reply[: min(64, total)].hex(),
        "end_s": 2.9,
        "error": None,
        "close": None,
    }
    line.update(changes)
    return line


def dump(*lines: dict[str, Any]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def write(tmp_path: Path, text: str | bytes, name: str = "trace.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- good traces ---------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    failed = request(2, frames=[[0.4, 640]], error=None, close=[1011, "Internal error"], end_s=None)
    lines = [header(extra="ignored"), request(1), failed, request(3, connect_s=1.5)]
    path = write(tmp_path, dump(*lines))
    trace = read_trace(path)
    assert isinstance(trace, Trace)
    assert trace.path == str(path)
    assert trace.header.version == 1
    assert trace.header.voice.speaker == "Majd"
    assert trace.header.url.endswith("/v1/realtime/ws")
    assert trace.header.mulaw is True
    assert [r.n for r in trace.requests] == [1, 2, 3]
    first = trace.requests[0]
    assert first == TraceRequest(
        n=1,
        text=TEXT,
        chars=len(TEXT),
        connect_s=1.21,
        ack_s=0.05,
        frames=((0.31, 7398), (0.52, 12000), (0.9, 11000)),
        head=AUDIO[:64],
        end_s=2.9,
        error=None,
        close=None,
        line=2,
    )
    assert first.total_bytes == 7398 + 12000 + 11000
    assert trace.requests[1].close == (1011, "Internal error")
    assert not trace.requests[1].successful
    assert [r.n for r in trace.successful] == [1, 3]
    assert trace.connect_delays == (1.21, 1.5)


def test_integers_for_seconds_a_last_line_without_newline_and_short_heads(tmp_path: Path) -> None:
    short = request(1, frames=[[0, 10]], head=AUDIO, ack_s=0, end_s=1)
    text = dump(header()) + json.dumps(short)  # no final newline, but complete
    trace = read_trace(write(tmp_path, text))
    assert trace.requests[0].frames == ((0.0, 10),)
    assert trace.requests[0].head == AUDIO[:10]


def test_a_riff_mulaw_head_is_accepted(tmp_path: Path) -> None:
    reply = streaming_mulaw_header() + AUDIO
    trace = read_trace(write(tmp_path, dump(header(), request(1, head=reply))))
    assert trace.requests[0].head == reply[:64]


# --- bad traces: the error names the file and the line ------------------------------------------

GOOD = dump(header(), request(1))


def _riff_pcm_head() -> bytes:
    return canonical_pcm16_header(len(AUDIO)) + AUDIO


BAD: list[tuple[str, str | bytes, int, str]] = [
    ("empty file", "", 1, "empty file"),
    ("only newlines", "\n\n", 1, "empty file"),
    ("invalid json", dump(header()) + "{not json}\n" + dump(request(2)), 2, "invalid JSON"),
    ("truncated last line", GOOD + dump(request(2))[:40], 3, "truncated last line"),
    ("blank line", dump(header()) + "\n" + dump(request(1)), 2, "blank line"),
    ("not an object", dump(header()) + "[1, 2]\n", 2, "expected a JSON object"),
    ("not utf-8", dump(header()).encode() + b'{"type": "\xff"}\n', 2, "not UTF-8"),
    ("missing header", dump(request(1)), 1, "missing or unknown header"),
    ("unknown header", dump(header(type="hello"), request(1)), 1, "missing or unknown header"),
    ("wrong version", dump(header(version=2), request(1)), 1, "unsupported trace version 2"),
    ("version as text", dump(header(version="1"), request(1)), 1, "'version' must be an integer"),
    ("header field missing", dump({**header(), "url": None}, request(1)), 1, "'url'"),
    ("voice not object", dump(header(voice="Majd"), request(1)), 1, "'voice' must be an object"),
    ("pcm header", dump(header(mulaw=False), request(1)), 1, "not μ-law"),
    (
        "riff pcm head",
        dump(header(), request(1, head=_riff_pcm_head())),
        2,
        "fmt tag is 1 (pcm16), not 7",
    ),
    ("no requests", dump(header()), 1, "no successful request"),
    (
        "no successful request",
        dump(header(), request(1, error="TTS stream error: aborted"), request(2, end_s=None)),
        3,
        "no successful request",
    ),
    ("wrong n", dump(header(), request(1), request(3)), 3, "'n' must be 2"),
    ("n as float", dump(header(), request(1.0)), 2, "'n' must be an integer"),  # type: ignore[arg-type]
    ("request type", dump(header(), {**request(1), "type": "probe"}), 2, "'request' line"),
    (
        "missing field",
        dump(header(), {k: v for k, v in request(1).items() if k != "end_s"}),
        2,
        "missing field 'end_s'",
    ),
    ("text not string", dump(header(), request(1, text=5)), 2, "'text' must be a string"),
    ("negative seconds", dump(header(), request(1, ack_s=-0.1)), 2, "'ack_s' must be seconds"),
    ("boolean seconds", dump(header(), request(1, connect_s=True)), 2, "'connect_s'"),
    ("nan seconds", GOOD.replace('"ack_s": 0.05', '"ack_s": NaN'), 2, "invalid JSON"),
    ("frames not list", dump(header(), request(1, frames={"a": 1})), 2, "'frames' must be a list"),
    ("frame shape", dump(header(), request(1, frames=[[0.1, 5, 6]])), 2, "frame 1 must be"),
    ("frame size zero", dump(header(), request(1, frames=[[0.1, 0]])), 2, "frame 1: size"),
    ("frame size float", dump(header(), request(1, frames=[[0.1, 5.0]])), 2, "frame 1: size"),
    ("frame time text", dump(header(), request(1, frames=[["0.1", 5]])), 2, "frame 1: time"),
    (
        "non-monotonic frames",
        dump(header(), request(1, frames=[[0.3, 5], [0.2, 5]])),
        2,
        "non-decreasing: frame 2 at 0.2 s",
    ),
    (
        "frame after end",
        dump(header(), request(1, frames=[[0.3, 5], [3.5, 5]])),
        2,
        "frame 2 at 3.5 s comes after end_s",
    ),
    ("head not hex", dump(header(), request(1, head_hex="zz")), 2, "'head_hex' is not hex"),
    ("head too short", dump(header(), request(1, head_hex="ffff")), 2, "first 64 bytes"),
    ("error not string", dump(header(), request(1, error=3)), 2, "'error' must be a string"),
    ("close shape", dump(header(), request(1, close=[1000])), 2, "'close' must be [code, reason]"),
]


@pytest.mark.parametrize(("case", "text", "line", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_traces_name_the_file_and_line(
    tmp_path: Path, case: str, text: str | bytes, line: int, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    error = caught.value
    assert isinstance(error, BridgeError)
    assert (error.path, error.line) == (str(path), line)
    assert str(error).startswith(f"{path}:{line}: ")
    assert problem in str(error)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_file_names_the_file(tmp_path: Path, make: str) -> None:
    path = tmp_path / "trace.jsonl"
    if make == "directory":
        path.mkdir()
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert str(caught.value).startswith(f"{path}: cannot read")
    assert caught.value.line is None


def test_parse_trace_names_its_source() -> None:
    with pytest.raises(TraceError, match=r"^<memory>:1: empty file"):
        parse_trace("", "<memory>")


# --- detect_format -------------------------------------------------------------------------------


def test_detects_a_streaming_mulaw_riff_header() -> None:
    header_bytes = streaming_mulaw_header()
    found = detect_format((header_bytes + AUDIO)[:64], 30000, None)
    assert found.riff
    assert (found.encoding, found.sample_rate, found.channels) == ("mulaw", 8000, 1)
    assert found.format_tag == 7
    assert found.header_bytes == len(header_bytes) == 46
    assert found.mulaw
    assert found.basis == "riff header"


def test_detects_a_pcm16_riff_header() -> None:
    pcm = tone.synthesize(TEXT, mulaw=False)
    found = detect_format((canonical_pcm16_header(len(pcm)) + pcm)[:64], len(pcm) + 44, None)
    assert (found.riff, found.encoding, found.sample_rate, found.header_bytes) == (
        True,
        "pcm16",
        16000,
        44,
    )


def test_detects_the_subformat_of_an_extensible_header() -> None:
    guid_tail = bytes.fromhex("000000001000800000aa00389b71")
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 8000, 8000, 1, 8, 22, 8, 4) + b"\x07\x00" + guid_tail
    head = b"RIFF" + b"\xff" * 4 + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    found = detect_format(head[:64], 20000, None)
    assert (found.encoding, found.format_tag, found.header_bytes) == ("mulaw", 7, None)


def test_a_riff_header_cut_before_fmt_is_unknown() -> None:
    found = detect_format(b"RIFF\xff\xff\xff\xffWAVELIST" + struct.pack("<I", 100), 1000, None)
    assert (found.riff, found.encoding, found.format_tag) == (True, "unknown", None)


@pytest.mark.parametrize("offset", [0, 800, 1600, 3200])
def test_headerless_tone_is_told_apart_by_its_bytes(offset: int) -> None:
    """The emulator's tone as μ-law (8 kHz) and as PCM16 (16 kHz): told apart from 64 bytes,
    the rate from bytes per second given the expected 80 ms per character."""
    mulaw, pcm = AUDIO, tone.synthesize(TEXT, mulaw=False)
    seconds = len(TEXT) * 0.080
    as_mulaw = detect_format(mulaw[offset : offset + 64], len(mulaw), seconds)
    as_pcm = detect_format(pcm[2 * offset : 2 * offset + 64], len(pcm), seconds)
    assert (as_mulaw.riff, as_mulaw.encoding, as_mulaw.sample_rate) == (False, "mulaw", 8000)
    assert (as_pcm.riff, as_pcm.encoding, as_pcm.sample_rate) == (False, "pcm16", 16000)
    assert "headerless" in as_pcm.basis
    assert as_pcm.bytes_per_second == pytest.approx(32000)


def test_headerless_rates_and_defaults() -> None:
    pcm = tone.synthesize(TEXT, mulaw=False)[:64]
    assert detect_format(pcm, 44100, 1.0).sample_rate == 22050
    assert detect_format(pcm, 32000, None).sample_rate == 16000  # the §5.4 default
    assert detect_format(b"\x00" * 64, 16000, 1.0).encoding == "pcm16"
    silence = detect_format(b"\xff" * 64, 16000, 1.0)  # μ-law silence at 16,000 B/s
    assert (silence.encoding, silence.sample_rate) == ("mulaw", 16000)
    undecided = detect_format(b"\x12\x34", 32000, 1.0)  # too few bytes: B/s decides
    assert (undecided.encoding, undecided.sample_rate) == ("pcm16", 16000)
    assert detect_format(b"", 0, None).encoding == "mulaw"  # nothing: what was requested
