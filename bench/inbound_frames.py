"""What one inbound Twilio frame costs the server before the call sees it: two ways of parsing.

Method
------

Twilio sends a call's audio as 50 text frames a second, each one masked WebSocket frame
(RFC 6455 §5.3) carrying a ``media`` message of ~330 bytes. Built here exactly so (the simulated
caller's ``TwilioMediaLeg`` message, masked by websockets' own ``Frame.serialize``), ``--frames``
(200,000) of them, one per read, as they usually arrive, are turned into the text the call
handles, in one process, two ways:

* ``websockets parser``: python-websockets' sans-I/O ``ServerProtocol`` past its opening
  handshake, ``receive_data`` then ``events_received`` and the payload decoded: what uvicorn's
  ``websockets-sansio`` protocol and the floor server (``bench/floor_server.py``) run per frame;
* ``frame reader``: ``bridge.protocols.client_frames.ClientFrameReader.split``, the mask removed
  with websockets' C ``apply_mask`` and the payload decoded: what ``StreamProtocol`` runs per
  frame since issue 16 (``bridge/stream_transport.py``).

Each is timed with ``time.process_time``, the best of ``--repeat`` (3) runs, and printed in µs
per frame and in share of one core per call at 50 frames a second. Neither includes the socket
read nor what the call then does with the text. Figures are printed, never judged.

Run: ``python bench/inbound_frames.py``; ``--smoke``: a short run (CI).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.server import ServerProtocol  # noqa: E402

from bridge.dev.twilio_stream_client import TwilioMediaLeg  # noqa: E402
from bridge.protocols.client_frames import ClientFrameReader, unmasked  # noqa: E402

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def twilio_frame() -> bytes:
    leg = TwilioMediaLeg("MZ" + "0" * 32, "CA" + "0" * 32, "AC" + "0" * 32)
    leg.start()
    message = leg.media(bytes(range(160)), 240)
    return Frame(Opcode.TEXT, message.encode()).serialize(mask=True)


def with_websockets(frame: bytes, count: int) -> int:
    server = ServerProtocol(max_size=2**20)
    server.receive_data(REQUEST)
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    server.data_to_send()
    chars = 0
    for _ in range(count):
        server.receive_data(frame)
        for event in server.events_received():
            chars += len(bytes(event.data).decode())
    return chars


def with_reader(frame: bytes, count: int) -> int:
    reader = ClientFrameReader(2**20)
    chars = 0
    for _ in range(count):
        for header, raw in reader.split(frame):
            chars += len(unmasked(raw, header).decode())
    return chars


def best(run: Callable[[bytes, int], int], frame: bytes, count: int, repeat: int) -> float:
    """The best of ``repeat`` runs, in µs of process CPU time per frame."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        run(frame, count)
        times.append(time.process_time() - started)
    return min(times) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a short run (CI)")
    args = parser.parse_args(argv)
    count, repeat = (2_000, 1) if args.smoke else (args.frames, args.repeat)
    frame = twilio_frame()
    assert with_websockets(frame, 3) == with_reader(frame, 3)  # the same text out
    print(
        f"one Twilio media frame: {len(frame)} bytes on the wire; {count} frames, best of {repeat}"
    )
    print("| parser | µs per frame | share of a core per call (50 frames/s) |")
    print("|---|---|---|")
    for name, run in (("websockets parser", with_websockets), ("frame reader", with_reader)):
        micros = best(run, frame, count, repeat)
        print(f"| {name} | {micros:.2f} | {micros * 50 / 1e4:.4f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
