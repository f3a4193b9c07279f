"""``bridge.protocols.client_frames.ClientFrameReader``: whole frames out of a client's byte
stream, however it is cut, checked against python-websockets' own parser (the judge of every
frame the reader passes on)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from bridge.protocols.client_frames import TEXT_FIN, ClientFrameReader, unmasked

_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _open_server(max_size: int | None = 2**20) -> ServerProtocol:
    """A server-side protocol past its opening handshake, as uvicorn's connection is."""
    server = ServerProtocol(max_size=max_size)
    server.receive_data(_REQUEST)
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    server.data_to_send()
    assert server.state is State.OPEN
    return server


def _parsed(server: ServerProtocol, data: bytes) -> list[tuple[Opcode, bytes, bool]]:
    server.receive_data(data)
    return [(e.opcode, bytes(e.data), e.fin) for e in server.events_received()]


def _frame(opcode: Opcode, data: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=mask)


_texts = st.text(max_size=300).map(str.encode)
_frames = st.one_of(
    _texts.map(lambda d: _frame(Opcode.TEXT, d)),
    st.binary(max_size=70_000).map(lambda d: _frame(Opcode.TEXT, d)),  # any bytes, 16/64-bit
    st.binary(max_size=125).map(lambda d: _frame(Opcode.PING, d)),
    st.binary(max_size=125).map(lambda d: _frame(Opcode.PONG, d)),
    st.binary(max_size=300).map(lambda d: _frame(Opcode.BINARY, d)),
    st.tuples(_texts, _texts).map(
        lambda p: _frame(Opcode.TEXT, p[0], fin=False) + _frame(Opcode.CONT, p[1])
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, max_size=12), st.lists(st.integers(1, 400), max_size=40))
def test_any_cut_gives_back_the_whole_frames_in_order(frames: list[bytes], cuts: list[int]) -> None:
    """Cut anywhere, the stream comes back whole and in order; the candidates are exactly the
    unfragmented masked text frames, each whole; websockets parses the pieces as it parses the
    stream."""
    stream = b"".join(frames)
    reader = ClientFrameReader(2**20)
    pieces: list[tuple[int, bytes]] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        pieces += reader.split(stream[pos : pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    pieces += reader.split(stream[pos:])
    assert reader.pending == 0
    assert b"".join(raw for _, raw in pieces) == stream
    whole: list[bytes] = []
    for f in frames:  # a fragmented pair is two frames
        server = _open_server()
        parsed = _parsed(server, f)
        first = len(_frame(parsed[0][0], parsed[0][1], fin=parsed[0][2])) if parsed else len(f)
        whole += [f[:first], f[first:]] if first < len(f) else [f]
    # candidates: exactly the whole unfragmented text frames; the rest passes as it comes
    assert [raw for header, raw in pieces if header] == [f for f in whole if f[0] == TEXT_FIN]
    for header, raw in pieces:
        if header:
            assert unmasked(raw, header) == _parsed(_open_server(), raw)[0][1]
    split_server, whole_server = _open_server(), _open_server()
    assert [e for _, raw in pieces for e in _parsed(split_server, raw)] == _parsed(
        whole_server, stream
    )


def test_a_frame_over_the_limit_and_all_after_it_pass_through_from_its_header() -> None:
    """websockets refuses it (1009) from the header, before the payload: so does the reader, and
    from then on every byte goes to the parser as it comes."""
    small = _frame(Opcode.TEXT, b"ok")
    big_header = b"\x81\xfe" + struct.pack("!H", 1001) + b"\0\0\0\0"
    reader = ClientFrameReader(1000)
    assert reader.split(small + big_header[:3]) == [(6, small)]
    assert reader.split(big_header[3:] + b"x" * 10) == [(0, big_header + b"x" * 10)]
    assert reader.passthrough
    assert reader.split(small) == [(0, small)]
    server = _open_server(1000)
    server.receive_data(small + big_header + b"x" * 10)
    assert server.close_sent is not None
    assert server.close_sent.code == 1009


def test_a_bad_frame_goes_to_the_parser_from_its_header_not_held_for_its_payload() -> None:
    """An unmasked frame declaring 10 MB, then nothing: the parser refuses it (1002) at once, as
    it did before the reader, instead of waiting for 10 MB that never come."""
    header = b"\x81\x7f" + struct.pack("!Q", 10_000_000)
    reader = ClientFrameReader(2**24)
    assert reader.split(header) == [(0, header)]
    assert reader.pending == 0
    assert reader.split(b"abc") == [(0, b"abc")]  # still that frame's bytes
    server = _open_server(2**24)
    server.receive_data(header)
    assert server.close_sent is not None
    assert server.close_sent.code == 1002


def test_unmasked_or_reserved_bits_are_no_candidates_and_the_parser_fails_them() -> None:
    """A client frame without a mask (RFC 6455 §5.1) or with RSV1 set, no extension agreed."""
    unmasked = _frame(Opcode.TEXT, b"hi", mask=False)
    rsv1 = bytes([TEXT_FIN | 0x40]) + _frame(Opcode.TEXT, b"hi")[1:]
    for bad in (unmasked, rsv1):
        reader = ClientFrameReader(1000)
        assert reader.split(bad) == [(0, bad)]
        server = _open_server(1000)
        server.receive_data(bad)
        assert server.close_sent is not None
        assert server.close_sent.code == 1002


def test_a_frame_in_single_bytes_is_held_until_whole() -> None:
    frame = _frame(Opcode.TEXT, "مرحبا".encode() * 30)  # a 16-bit length
    reader = ClientFrameReader(None)
    got = [item for byte in frame for item in reader.split(bytes([byte]))]
    assert got == [(8, frame)]
    assert reader.pending == 0
