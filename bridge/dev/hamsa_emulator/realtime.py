"""The realtime WebSocket and the preload REST call: the emulator's Starlette app."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import itertools
import json
import time
import wave
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from bridge.dev.hamsa_emulator.config import _CLOSING_FAULTS, EmulatorConfig, Fault, SttFault
from bridge.dev.hamsa_emulator.records import (
    ConnectionRecord,
    EmulatorState,
    PreloadRecord,
    RequestRecord,
    SttRecord,
)
from bridge.dev.hamsa_emulator.schedule import _audio_mulaw, _Plan, _plan_reply, _replay_plan
from bridge.dev.hamsa_emulator.wire import (
    _AUTH_FAILED,
    _NO_FUNDS,
    _UUID_RE,
    _WS_PATH,
    ABORTED_MESSAGE,
    ACK_FRAME,
    END_FRAME,
    INFO_FRAME,
    OVERSIZED_STT_BYTES,
    PRELOAD_OK_BODY,
    STT_FAILED_MESSAGE,
    UNSUPPORTED_AUDIO_MESSAGE,
    _error_frame,
    logger,
)
from bridge.dev.stt_tones import recognize
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS, THINKING_TEXT


def _ws_credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The API key and where it came from: header, then query, then Authorization."""
    key = websocket.headers.get("x-api-key")
    if key is not None:
        return key.strip(), "header"
    key = websocket.query_params.get("api_key")
    if key is not None:
        return key.strip(), "query"
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip(), "authorization"
    return None, None


class _Connection:
    """One accepted socket: a reader, a FIFO worker and an optional idle watchdog."""

    def __init__(self, websocket: WebSocket, state: EmulatorState, record: ConnectionRecord):
        self.ws = websocket
        self.state = state
        self.record = record
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.closed = False
        self.working = False
        self.wedged = False
        self.activity = asyncio.Event()

    # --- sending: every send goes through here and becomes a no-op once the socket is gone

    async def send_text(self, text: str) -> bool:
        if self.closed:
            return False
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            self._gone(1006, "")
            return False
        return True

    async def send_bytes(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            await self.ws.send_bytes(data)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError):
            self._gone(1006, "")
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.record.closed_at = time.monotonic()
        self.record.close_code = code
        self.record.close_reason = reason
        self.record.closed_by = "server"
        self.state.notify()
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
            await self.ws.close(code, reason)

    def _gone(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.record.closed_at = time.monotonic()
        self.record.close_code = code
        self.record.close_reason = reason
        # uvicorn reports its own shutdown to the app as a 1012 disconnect.
        self.record.closed_by = "server" if code == 1012 else "client"
        self.state.notify()

    # --- tasks

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._worker())]
        if self.state.config.idle_close_after is not None:
            tasks.append(asyncio.create_task(self._watchdog(self.state.config.idle_close_after)))
        try:
            await self._reader()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._gone(1006, "")

    async def _reader(self) -> None:
        while not self.closed:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnected, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                self._gone(int(message.get("code", 1005)), message.get("reason") or "")
                return
            text = message.get("text")
            self.inbox.put_nowait(text if text is not None else bytes(message.get("bytes") or b""))
            self.activity.set()

    async def _worker(self) -> None:
        try:
            while not self.closed and not self.wedged:
                data = await self.inbox.get()
                self.working = True
                try:
                    await self._handle(data)
                finally:
                    self.working = False
                    self.activity.set()
        except Exception:
            logger.exception("Hamsa emulator: reply failed")
            await self.close(1011, "Internal error")

    def _busy(self) -> bool:
        return self.working or self.wedged or not self.inbox.empty()

    async def _watchdog(self, limit: float) -> None:
        while not self.closed:
            self.activity.clear()
            if self._busy():
                await self.activity.wait()
                continue
            try:
                async with asyncio.timeout(limit):
                    await self.activity.wait()
            except TimeoutError:
                if not self._busy():
                    await self.close(1000, "Connection closed due to inactivity")
                    return

    # --- one client message

    async def _handle(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.send_text(_error_frame("Invalid message format"))
            return
        try:
            message = json.loads(data)
        except (ValueError, RecursionError):
            await self.send_text(_error_frame("Invalid message format"))
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.send_text(_error_frame("Invalid message format"))
            return
        kind = message["type"]
        if kind == "tts":
            await self._tts(message.get("payload"))
        elif kind == "stt":
            await self._stt(message.get("payload"))
        else:
            await self.send_text(_error_frame(f"Unsupported message type: {kind}"))

    def _invalid(self, payload: Any) -> str | None:
        if not isinstance(payload, dict):
            return "Invalid payload: payload must be an object"
        text = payload.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT_CHARS:
            return f"Invalid payload: text must be between 1 and {MAX_TEXT_CHARS} characters"
        speaker = payload.get("speaker")
        if not isinstance(speaker, str) or not speaker.strip():
            return "Invalid payload: speaker is required"
        cfg = self.state.config
        if cfg.speakers is not None and speaker not in cfg.speakers and not self._custom(speaker):
            return ABORTED_MESSAGE
        return None

    def _custom(self, speaker: str) -> bool:
        return speaker.lower() in {v.lower() for v in self.state.config.custom_voices}

    async def _tts(self, payload: Any) -> None:
        state, cfg = self.state, self.state.config
        number = state.next_request()
        body = payload if isinstance(payload, dict) else {}
        text = body.get("text")
        rec = RequestRecord(
            number=number,
            connection_id=self.record.id,
            text=text if isinstance(text, str) else None,
            payload=dict(body),
            received_at=time.monotonic(),
            mulaw=body.get("mulaw") is True,
        )
        state.requests.append(rec)
        problem = self._invalid(payload)
        if problem is not None:
            rec.error = problem
            state.notify()
            await self.send_text(_error_frame(problem))
            return
        assert isinstance(text, str)
        speaker: str = body["speaker"]
        rec.fault = fault = state.fault_for(number)
        state.notify()

        if fault is not None and fault in _CLOSING_FAULTS:
            await self.close(*_CLOSING_FAULTS[fault])
            return

        replay = cfg.replay
        # Tones come at once; an espeak-ng rendering (the first time a text is asked for) delays
        # the ack by its time (milliseconds), or is absorbed by a replay's recorded ack time.
        audio_mulaw = rec.mulaw if replay is not None else _audio_mulaw(rec.mulaw, fault)
        audio = await state.audio_for(text, audio_mulaw)
        if replay is not None:
            recorded = replay.successful[(number - 1) % len(replay.successful)]
            plan = _replay_plan(text, rec.mulaw, fault, recorded, cfg.ms_per_char, audio)
            await _until(rec.received_at + (plan.ack_at or 0.0))
        else:
            rngs = state.reply_rngs(number, text)
            plan = _plan_reply(text, rec.mulaw, fault, cfg, *rngs, audio=audio)
        rec.acked_at = time.monotonic()
        base = rec.received_at if replay is not None else rec.acked_at
        if not await self.send_text(ACK_FRAME):
            return
        if fault in (Fault.ERROR, Fault.ERROR_THEN_END):
            rec.error = ABORTED_MESSAGE
            state.notify()
            await self.send_text(_error_frame(ABORTED_MESSAGE))
            if fault is Fault.ERROR_THEN_END:
                rec.end_at = time.monotonic()
                await self.send_text(END_FRAME)
            return

        rec.header = plan.header
        # Every frame at its absolute time from the base: sending time does not accumulate.
        shift = 0.0
        if replay is not None and fault is Fault.SLOW_FIRST_BYTE and plan.times:
            shift = max(0.0, cfg.slow_first_byte_delay - plan.times[0])
        if self._custom(speaker) and speaker.lower() not in state.preloaded:
            shift += cfg.unpreloaded_voice_delay
        for frame, part, at in zip(plan.frames, plan.audio_parts, plan.times, strict=True):
            await _until(base + at + shift)
            if part and rec.first_audio_at is None:
                rec.first_audio_at = time.monotonic()
            if not await self.send_bytes(frame):
                return
            rec.audio += part
            rec.frames.append(len(frame))
            state.notify()

        if fault is Fault.CLOSE_MID_REPLY:
            await self.close(1011, "Internal error")
            return
        if fault is Fault.ENDLESS:
            await self._stream_forever(plan, rec)
            return
        if fault is Fault.NEVER_END:
            self.wedged = True
            return
        if plan.end_at is not None:
            await _until(base + plan.end_at + shift)
        rec.end_at = time.monotonic()
        state.notify()
        if not await self.send_text(END_FRAME):
            return
        if fault is Fault.CLOSE_AFTER_END:
            await self.close(1000, "")

    async def _stt(self, payload: Any) -> None:
        """One ``stt`` request: decode the WAV, hear its tones, answer after the drawn delay (or
        as the request's :class:`SttFault` says). FIFO with ``tts``: the worker waits for it."""
        state, cfg = self.state, self.state.config
        number, stt_number = state.next_stt()
        body = payload if isinstance(payload, dict) else {}
        rec = SttRecord(
            number=number,
            stt_number=stt_number,
            connection_id=self.record.id,
            received_at=time.monotonic(),
            language=body.get("language"),
            eos=body.get("isEosEnabled"),
        )
        state.stt_requests.append(rec)
        fault, delay = state.stt_plan(stt_number)
        rec.fault = fault
        state.notify()
        audio = _wav_pcm16(body.get("audioBase64"))
        if audio is not None:
            pcm, rate = audio
            rec.audio_seconds = len(pcm) / 2 / rate
            if fault not in (SttFault.ERROR, SttFault.THINKING, SttFault.SILENT):
                # numpy in a thread: a busy event loop would delay every other socket's frames
                rec.recognized = await asyncio.to_thread(
                    recognize, pcm, rate, ms_per_char=cfg.stt_ms_per_char
                )
        await _until(rec.received_at + delay)
        if audio is None or fault is SttFault.ERROR:
            rec.error = UNSUPPORTED_AUDIO_MESSAGE if audio is None else STT_FAILED_MESSAGE
            await self._stt_answered(rec, "error", None)
            await self.send_text(_error_frame(rec.error))
            return
        if fault is SttFault.THINKING:
            await self._stt_answered(rec, "thinking", None)
            await self.send_text(THINKING_TEXT)
            return
        if fault is SttFault.SILENT:
            await self._stt_answered(rec, "none", None)
            return
        text = rec.recognized or cfg.stt_fixed_transcript
        if fault is SttFault.OVERSIZED:
            unit = (text or "كلام") + " "
            size = len(unit.encode())
            text = (unit * (OVERSIZED_STT_BYTES // size + 1)).strip()
        if fault is SttFault.BINARY:
            await self._stt_answered(rec, "binary", text)
            await self.send_bytes(text.encode())
            return
        if cfg.stt_answer == "json":
            frame = json.dumps({"type": "response", "payload": {"text": text}}, ensure_ascii=False)
        else:
            frame = text
        await self._stt_answered(rec, cfg.stt_answer, text)
        if not await self.send_text(frame):
            return
        if fault is SttFault.TRAILING_END:
            await self.send_text(END_FRAME)

    async def _stt_answered(self, rec: SttRecord, via: Any, answer: str | None) -> None:
        rec.answered_via = via
        rec.answer = answer
        rec.answered_at = time.monotonic()
        self.state.notify()

    async def _stream_forever(self, plan: _Plan, rec: RequestRecord) -> None:
        """:attr:`Fault.ENDLESS`: the reply's frames again and again until the socket is gone."""
        if not plan.frames:
            return
        for frame in itertools.cycle(plan.audio_parts):
            await asyncio.sleep(len(frame) / plan.bytes_per_second / (plan.speed or 1.0))
            if not await self.send_bytes(frame):
                return
            rec.audio += frame
            rec.frames.append(len(frame))
            self.state.notify()


def _wav_pcm16(audio_base64: Any) -> tuple[bytes, int] | None:
    """The PCM16 samples (first channel) and rate of a base64 PCM WAV; ``None`` for anything else
    (not a string, not base64, not a WAV, not 16-bit PCM): Hamsa's "Audio format not supported"."""
    if not isinstance(audio_base64, str) or not audio_base64:
        return None
    try:
        data = base64.b64decode(audio_base64, validate=True)
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (binascii.Error, wave.Error, EOFError, ValueError):
        return None
    if width != 2 or rate <= 0 or channels < 1:
        return None
    if channels > 1:
        step = 2 * channels
        frames = b"".join(frames[i : i + 2] for i in range(0, len(frames), step))
    return frames, rate


async def _until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (at once if it has)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _hamsa_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def create_emulator_app(config: EmulatorConfig) -> Starlette:
    """The emulator as a Starlette app; its :class:`EmulatorState` is ``app.state.emulator``."""
    state = EmulatorState(config)

    async def realtime(websocket: WebSocket) -> None:
        cfg = state.config
        delay = state.connect_delay()
        if delay > 0:
            await asyncio.sleep(delay)
        state.upgrades += 1
        record = ConnectionRecord(id=state.upgrades, opened_at=time.monotonic())
        state.connections.append(record)
        state.notify()

        def denied(status: int) -> None:
            record.refused_status = status
            record.closed_at = time.monotonic()
            state.notify()

        if state.upgrades <= cfg.refuse_connections:
            denied(503)
            await websocket.send_denial_response(_hamsa_error(503, "Service Unavailable"))
            return
        key, via = _ws_credentials(websocket)
        record.auth_via = via
        record.auth_ok = state.key_ok(key)
        if not record.auth_ok and cfg.auth_failure == "http":
            denied(cfg.auth_failure_status)
            await websocket.send_denial_response(
                _hamsa_error(cfg.auth_failure_status, "Unauthorized")
            )
            return
        await websocket.accept()
        connection = _Connection(websocket, state, record)
        if not record.auth_ok:
            await connection.close(4001, _AUTH_FAILED)
        elif not cfg.balance_ok:
            await connection.close(4003, _NO_FUNDS)
        elif await connection.send_text(INFO_FRAME):
            await connection.run()

    async def preload(request: Request) -> Response:
        cfg = state.config
        header = request.headers.get("authorization")
        scheme, _, key = (header or "").partition(" ")
        kind = scheme.lower() if scheme.lower() in ("token", "bearer") else "other"
        if header is None:
            kind = "missing"

        def answer(status: int, body: Mapping[str, Any], voice_id: Any = None) -> Response:
            state.preloads.append(PreloadRecord(voice_id, kind, status, time.monotonic()))
            state.notify()
            return JSONResponse(dict(body), status_code=status)

        if kind not in ("token", "bearer") or not state.key_ok(key.strip()):
            return answer(401, {"success": False, "message": "Unauthorized"})
        try:
            body = await request.json()
        except ValueError:
            return answer(400, {"success": False, "message": "Invalid request body"})
        voice_id = body.get("voiceId") if isinstance(body, dict) else None
        if not isinstance(voice_id, str) or not _UUID_RE.fullmatch(voice_id):
            return answer(400, {"success": False, "message": "Invalid voice ID format"}, voice_id)
        voice = voice_id.lower()
        if voice not in {v.lower() for v in cfg.custom_voices}:
            return answer(404, {"success": False, "message": "Voice not found"}, voice_id)
        if voice in {v.lower() for v in cfg.preload_failures}:
            return answer(500, {"success": False, "message": "Internal server error"}, voice_id)
        state.preloaded.add(voice)
        return answer(200, PRELOAD_OK_BODY, voice_id)

    async def log(request: Request) -> Response:
        include = request.query_params.get("audio") == "base64"
        return JSONResponse(state.snapshot(include_audio=include))

    app = Starlette(
        routes=[
            WebSocketRoute(_WS_PATH, realtime),
            Route("/v2/tts/voices/custom/preload", preload, methods=["POST"]),
            Route("/_emulator/log", log, methods=["GET"]),
        ]
    )
    app.state.emulator = state
    return app
