"""A Pipecat Twilio pipeline that speaks continuously: a reference target for
``bench/capacity.py --target pipecat`` (or ``--compare-pipecat``).

What it is
----------

Pipecat's own Twilio path, as its ``twilio-chatbot`` example builds it, minus the network
services: a FastAPI app under uvicorn; the stream's first messages read by
``pipecat.runner.utils.parse_telephony_websocket``; a ``TwilioFrameSerializer`` (auto hang-up off:
no Twilio credentials, no REST call); ``FastAPIWebsocketTransport`` with audio in and out; a
``PipelineWorker`` at 8 kHz in and out run by a ``WorkerRunner`` (Pipecat 1.3+'s names for
``PipelineTask`` and ``PipelineRunner``). The pipeline is
``transport.input() → FakeTTS → transport.output()``: no VAD, no STT, no LLM.

* **FakeTTS** is a ``TTSService`` with no network: for the one ``TTSSpeakFrame`` queued when the
  client connects it yields ``--frames`` × 20 ms of a 400 Hz tone as 16-bit PCM at 8 kHz, like the
  benchmark's Hamsa emulator: 0.3 s to the first chunk, 200 ms chunks at 3× real time. An
  ``EndFrame`` queued after the speech ends the call once its audio has gone out: Pipecat then
  closes the socket with 1000.
* **Twilio's framing.** ``audio_out_10ms_chunks=2``: Pipecat cuts its output into 20 ms chunks,
  one ``media`` message of 160 μ-law bytes each, what the benchmark's callers check (Pipecat's
  default, 4, sends 40 ms messages, half as many). Its output transport writes a chunk, then
  sleeps until the next is due on a monotonic clock: real time, one frame (20 ms) ahead of
  Twilio's playout, one ``send`` (one ``write``) per frame.
  ``audio_out_end_silence_secs=0``: by default Pipecat ends with 2 s of silence in **one**
  message, which the callers would count as a malformed frame.
* **Inbound audio** (the caller's 50 frames a second) goes through the serializer
  (``json.loads``, base64, μ-law to PCM) and flows through the pipeline as ``InputAudioRawFrame``
  (Pipecat's default ``audio_in_passthrough``), as in any Pipecat bot; nothing consumes it.
* uvicorn runs with the bridge's settings (uvloop, ``websockets-sansio``, no per-message deflate,
  no access log), so the server under the pipeline is the bridge's; loguru at WARNING (the bridge
  logs at warning in the benchmark).
* ``POST /twiml/inbound`` answers the webhook with ``<Connect><Stream>``; ``GET /readyz`` 200;
  ``GET /metrics`` has the gauges the benchmark waits on, under the bridge's names. No signature
  is checked.

Install (a virtual environment of its own: ``pipecat-ai`` pins ``soxr~=1.0`` while the bridge
needs ``soxr>=1.1``, so it cannot share the bridge's)::

    python3 -m venv .venv-pipecat
    .venv-pipecat/bin/pip install -r bench/pipecat-requirements.txt

``bench/capacity.py --target pipecat`` finds ``.venv-pipecat/bin/python`` (or ``--pipecat-python``)
and runs this file with it. Alone: ``.venv-pipecat/bin/python bench/pipecat_server.py --port 8766``.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at run time,
# and their types are imported inside build_app.
import argparse
import asyncio
import math
import sys
from collections.abc import AsyncGenerator
from typing import Any

INSTALL_HINT = (
    "Pipecat is not installed for this interpreter. Install it in a virtual environment of its "
    "own (pipecat-ai pins soxr~=1.0, the bridge needs soxr>=1.1):\n"
    "    python3 -m venv .venv-pipecat\n"
    "    .venv-pipecat/bin/pip install -r bench/pipecat-requirements.txt\n"
    "then run bench/capacity.py --target pipecat (it finds .venv-pipecat/bin/python) or pass "
    "--pipecat-python PATH."
)
EXIT_MISSING = 2

FIRST_CHUNK_DELAY = 0.3
SYNTHESIS_SPEED = 3.0
CHUNK_SECONDS = 0.2
SAMPLE_RATE = 8000


def tone_chunk() -> bytes:
    """200 ms of a 400 Hz tone, 16-bit little-endian PCM at 8 kHz (whole periods: it loops)."""
    n = int(SAMPLE_RATE * CHUNK_SECONDS)
    samples = (round(8000 * math.sin(2 * math.pi * 400 * i / SAMPLE_RATE)) for i in range(n))
    return b"".join(x.to_bytes(2, "little", signed=True) for x in samples)


def build_app(frames_per_call: int) -> Any:
    """The FastAPI app (imports Pipecat: call only once it is known to be installed)."""
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import PlainTextResponse, Response
    from pipecat.frames.frames import (
        EndFrame,
        Frame,
        OutputAudioRawFrame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import TTSService
    from pipecat.transports.websocket.fastapi import (
        FastAPIWebsocketParams,
        FastAPIWebsocketTransport,
    )
    from pipecat.workers.runner import WorkerRunner

    chunk = tone_chunk()
    counters = {"active_calls": 0, "open_streams": 0, "frames_sent": 0}

    class FakeTTS(TTSService):
        """``frames_per_call`` × 20 ms of tone per request, no network (see the docstring)."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(
                push_start_frame=True,
                push_stop_frames=True,
                settings=TTSSettings(model=None, voice=None, language=None),
                **kwargs,
            )

        def can_generate_metrics(self) -> bool:
            return False

        async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
            remaining = frames_per_call * SAMPLE_RATE * 2 // 50  # bytes of 16-bit PCM
            await asyncio.sleep(FIRST_CHUNK_DELAY)
            while remaining > 0:
                audio = chunk[:remaining]
                remaining -= len(audio)
                yield TTSAudioRawFrame(
                    audio=audio, sample_rate=self.sample_rate, num_channels=1, context_id=context_id
                )
                await asyncio.sleep(CHUNK_SECONDS / SYNTHESIS_SPEED)

    class CountingTwilioSerializer(TwilioFrameSerializer):
        """Pipecat's serializer, counting the ``media`` messages it makes (for ``/metrics``)."""

        async def serialize(self, frame: Frame) -> str | bytes | None:
            data = await super().serialize(frame)
            if data is not None and isinstance(frame, OutputAudioRawFrame):
                counters["frames_sent"] += 1
            return data

    app = FastAPI()

    @app.post("/twiml/inbound")
    async def inbound(request: Request) -> Response:
        host = request.headers.get("host", "127.0.0.1")
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="ws://{host}/twilio/stream"/></Connect></Response>'
        )
        return Response(content=twiml, media_type="text/xml")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            "# TYPE hamsa_bridge_active_calls gauge\n"
            f"hamsa_bridge_active_calls {counters['active_calls']}\n"
            "# TYPE hamsa_bridge_open_streams gauge\n"
            f"hamsa_bridge_open_streams {counters['open_streams']}\n"
            "# TYPE hamsa_bridge_frames_sent counter\n"
            f"hamsa_bridge_frames_sent_total {counters['frames_sent']}\n"
        )

    @app.websocket("/twilio/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        counters["open_streams"] += 1
        try:
            _, call_data = await parse_telephony_websocket(websocket)
            serializer = CountingTwilioSerializer(
                stream_sid=call_data["stream_id"],
                call_sid=call_data["call_id"],
                params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
            )
            transport = FastAPIWebsocketTransport(
                websocket=websocket,
                params=FastAPIWebsocketParams(
                    audio_in_enabled=True,
                    audio_out_enabled=True,
                    add_wav_header=False,
                    audio_out_10ms_chunks=2,
                    audio_out_end_silence_secs=0,
                    serializer=serializer,
                ),
            )
            worker = PipelineWorker(
                Pipeline([transport.input(), FakeTTS(), transport.output()]),
                params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
            )
            runner = WorkerRunner(handle_sigint=False)

            @transport.event_handler("on_client_connected")
            async def on_client_connected(transport: Any, client: Any) -> None:
                await worker.queue_frames([TTSSpeakFrame("greeting"), EndFrame()])

            @transport.event_handler("on_client_disconnected")
            async def on_client_disconnected(transport: Any, client: Any) -> None:
                await runner.cancel()

            counters["active_calls"] += 1
            try:
                await runner.add_workers(worker)
                await runner.run()
            finally:
                counters["active_calls"] -= 1
        finally:
            counters["open_streams"] -= 1

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pipecat Twilio pipeline (see the docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--frames", type=int, default=1500, help="20 ms frames per call (1500)")
    args = parser.parse_args(argv)
    try:
        import pipecat  # noqa: F401
        import uvicorn
        from loguru import logger
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return EXIT_MISSING
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    config = uvicorn.Config(
        build_app(args.frames),
        host=args.host,
        port=args.port,
        loop="uvloop",
        ws="websockets-sansio",
        ws_max_size=1024 * 1024,
        ws_ping_interval=20.0,
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )
    print(f"pipecat: serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
