"""The floor: the least work a pure-Python server can do for the bridge's media path.

A reference target for ``bench/capacity.py --target floor|both``: what one core costs per call
when a server does only what every Twilio media-stream server must do, with the same stack the
bridge is built on (CPython, uvloop, python-websockets' frame parser and framer), and nothing else.
The bridge's CPU and memory per call divided by this one's is the price of everything the bridge
adds (ASGI/starlette layers, the Hamsa socket, pacing, metrics, logs, security checks).

What it does
------------

* One ``asyncio.Protocol`` per TCP connection, on uvloop. Plain HTTP requests are answered by hand:
  ``POST /twiml/inbound`` (Twilio's webhook) with ``<Connect><Stream url="ws://HOST/twilio/stream">``,
  ``GET /readyz`` and ``GET /livez`` with 200, ``GET /metrics`` with three gauges under the
  bridge's names (``hamsa_bridge_active_calls``, ``hamsa_bridge_open_streams``,
  ``hamsa_bridge_frames_sent_total``) so the benchmark waits for it to be idle as for the bridge.
  No signature is checked.
* ``GET /twilio/stream`` is handed to python-websockets' sans-I/O ``ServerProtocol``:
  ``receive_data`` → ``events_received`` → ``data_to_send``, with no extension negotiated.
* Inbound text frames starting ``{"event":"media"`` (the caller's audio, 50 a second) are dropped
  unparsed; only ``start`` (the ``streamSid``), ``mark`` and ``stop`` go through ``json.loads``.
* Each call speaks continuously from its ``start``: five ``media`` messages (20 ms, 160 μ-law bytes
  of a 400 Hz tone in base64, the call's ``streamSid``) are built once per call; every 100 ms one
  timer wake (``loop.call_at`` on the call's own clock, no drift) sends the frames now due with
  ``ServerProtocol.send_text`` each and **one** ``transport.writelines``. The first wake sends
  ``LEAD_FRAMES`` (220 ms), so Twilio's buffer never holds less than 120 ms when a batch arrives:
  the same smallest margin as the bridge's pacing plan, so the benchmark's frame lateness means the
  same for both. A late wake sends every frame due (catch-up).
* After ``--frames`` frames it sends a ``mark`` and closes 1000 when Twilio echoes it (the audio has
  played), as the bridge ends a greeting; ``stop`` (the caller hung up) stops the sending.
* ``gc.collect(); gc.freeze()`` before serving, as ``hamsa-bridge serve`` does; SIGTERM/SIGINT stop.

It imports nothing of the bridge (its RSS is its own), and it is not a product: no Hamsa, no
security, no limits.

Run: ``python bench/floor_server.py --port 8765 --frames 1624`` (``bench/capacity.py`` starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import math
import signal
import sys
from typing import Final, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

FRAME_SECONDS: Final = 0.020
WAKE_SECONDS: Final = 0.100
BATCH_FRAMES: Final = 5
"""Frames per 100 ms wake (and the number of precomputed messages)."""
LEAD_FRAMES: Final = 11
"""Sent at the first wake: 220 ms, so a batch always finds 120 ms still to play."""
END_MARK: Final = "floor-end"
MEDIA_PREFIX: Final = b'{"event":"media"'
MAX_HEAD: Final = 16384


def ulaw_byte(sample: int) -> int:
    """One 16-bit linear sample in G.711 μ-law."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone_payloads() -> list[str]:
    """``BATCH_FRAMES`` frames (160 samples each) of a 400 Hz tone at 8 kHz, base64: 100 ms, a
    whole number of periods, so the frames loop without a click."""
    samples = [
        ulaw_byte(round(8000 * math.sin(2 * math.pi * 400 * n / 8000)))
        for n in range(160 * BATCH_FRAMES)
    ]
    return [
        base64.b64encode(bytes(samples[i * 160 : (i + 1) * 160])).decode()
        for i in range(BATCH_FRAMES)
    ]


PAYLOADS: Final = tone_payloads()


class Counters:
    """What ``/metrics`` shows."""

    def __init__(self) -> None:
        self.active_calls = 0
        self.open_streams = 0
        self.frames_sent = 0

    def render(self) -> bytes:
        return (
            "# TYPE hamsa_bridge_active_calls gauge\n"
            f"hamsa_bridge_active_calls {self.active_calls}\n"
            "# TYPE hamsa_bridge_open_streams gauge\n"
            f"hamsa_bridge_open_streams {self.open_streams}\n"
            "# TYPE hamsa_bridge_frames_sent counter\n"
            f"hamsa_bridge_frames_sent_total {self.frames_sent}\n"
        ).encode()


def http_response(status: str, body: bytes, content_type: str = "text/plain") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class FloorConnection(asyncio.Protocol):
    """One TCP connection: plain HTTP requests until a WebSocket upgrade, then one call."""

    def __init__(self, counters: Counters, frames_per_call: int) -> None:
        self.counters = counters
        self.frames_per_call = frames_per_call
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ws: ServerProtocol | None = None
        self.media: list[bytes] = []
        self.mark = b""
        self.sent = 0
        self.t0 = 0.0
        self.wakes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.calling = False

    # --- the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.end_call()
        if self.ws is not None:
            self.counters.open_streams -= 1
            self.ws = None

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.receive_data(data)
            self.on_events()
            return
        self.buffer += data
        self.on_http()

    # --- plain HTTP (the webhook, readiness, metrics)

    def on_http(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
            if method == "GET" and path.startswith("/twilio/stream"):
                self.upgrade()
                return
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.write(self.answer(method, path, headers.get("host", "127.0.0.1")))

    def answer(self, method: str, path: str, host: str) -> bytes:
        route = path.split("?", 1)[0]
        if method == "POST" and route == "/twiml/inbound":
            twiml = (
                '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                f'<Stream url="ws://{host}/twilio/stream"/></Connect></Response>'
            )
            return http_response("200 OK", twiml.encode(), "text/xml")
        if method == "GET" and route in ("/readyz", "/livez"):
            return http_response("200 OK", b"ok")
        if method == "GET" and route == "/metrics":
            return http_response("200 OK", self.counters.render())
        return http_response("404 Not Found", b"not found")

    def upgrade(self) -> None:
        self.ws = ServerProtocol()
        self.counters.open_streams += 1
        pending, self.buffer = bytes(self.buffer), bytearray()
        self.ws.receive_data(pending)
        self.on_events()

    # --- the WebSocket

    def on_events(self) -> None:
        ws = self.ws
        if ws is None:
            return
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(ws.accept(event))
            elif isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    data = cast(bytes, event.data)  # the parser's frames hold bytes
                    if not data.startswith(MEDIA_PREFIX):  # caller audio: dropped unparsed
                        self.on_message(data)
                elif event.opcode is Opcode.CLOSE:
                    self.end_call()
        self.flush()

    def on_message(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            name = message["event"]
        except (ValueError, KeyError, TypeError):
            return
        if name == "start" and not self.calling:
            self.start_call(str(message["start"]["streamSid"]))
        elif name == "mark" and message.get("mark", {}).get("name") == END_MARK:
            self.end_call()
            if self.ws is not None and self.ws.state is State.OPEN:
                self.ws.send_close(1000)
        elif name == "stop":
            self.end_call()

    def flush(self) -> None:
        """Everything the protocol has to send, in one ``writelines``; its EOF closes."""
        if self.ws is None or self.transport is None:
            return
        chunks = self.ws.data_to_send()
        if not chunks:
            return
        eof = chunks[-1] == b""
        if eof:
            chunks.pop()
        if chunks and not self.transport.is_closing():
            self.transport.writelines(chunks)
        if eof:
            self.close()

    # --- the call

    def start_call(self, stream_sid: str) -> None:
        self.calling = True
        self.counters.active_calls += 1
        self.media = [
            (f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{p}"}}}}').encode()
            for p in PAYLOADS
        ]
        self.mark = json.dumps(
            {"event": "mark", "streamSid": stream_sid, "mark": {"name": END_MARK}},
            separators=(",", ":"),
        ).encode()
        self.t0 = self.loop.time()
        self.wake()

    def wake(self) -> None:
        ws = self.ws
        if ws is None or not self.calling or ws.state is not State.OPEN:
            return
        self.wakes = max(self.wakes + 1, int((self.loop.time() - self.t0) / WAKE_SECONDS) + 1)
        due = min(self.frames_per_call, LEAD_FRAMES + BATCH_FRAMES * (self.wakes - 1))
        media = self.media
        for i in range(self.sent, due):
            ws.send_text(media[i % BATCH_FRAMES])
        self.counters.frames_sent += due - self.sent
        self.sent = due
        if due >= self.frames_per_call:
            ws.send_text(self.mark)
            self.timer = None
        else:
            self.timer = self.loop.call_at(self.t0 + self.wakes * WAKE_SECONDS, self.wake)
        self.flush()

    def end_call(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.calling:
            self.calling = False
            self.counters.active_calls -= 1

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, frames_per_call: int) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters()
    server = await loop.create_server(
        lambda: FloorConnection(counters, frames_per_call), host, port, backlog=1024
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gc.collect()
    gc.freeze()
    print(f"floor: serving on http://{host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The floor server (see the module docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--frames", type=int, default=1500, help="20 ms frames per call (1500)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, args.frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
