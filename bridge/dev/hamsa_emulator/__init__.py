"""A faithful local Hamsa: the realtime TTS WebSocket and the custom-voice preload endpoint.

Behind ``hamsa-bridge emulate-hamsa`` (for users without a Hamsa account) and the peer the test
suite runs against. It reproduces the wire format of ``docs/hamsa-ws.md`` §11 byte for byte
(misspellings included), Hamsa's observed timing (§3.5), and, on request, every failure the
bridge must survive (§2, §3.4, §4, §5.3): all deterministic, so a test can say "the third request
gets the 640-byte reply" and a rerun does the same.

Routes
------

* ``WS /v1/realtime/ws`` — auth by ``X-Api-Key`` header, ``api_key`` query or
  ``Authorization: Token KEY`` (``Bearer`` too). Sends ``info`` at once; for each ``tts`` frame,
  strictly FIFO: ``ack``, the text's audio in irregular binary frames, ``end``. The audio is
  :func:`bridge.dev.tone.synthesize`'s one tone per character (the default: deterministic), or
  with :attr:`EmulatorConfig.speech` ``"espeak"`` the text spoken by espeak-ng's Arabic voice
  (:mod:`bridge.dev.espeak`).
* The same socket answers ``stt`` frames (docs/hamsa-ws.md §10), FIFO with ``tts``: the WAV in
  ``audioBase64`` is decoded and its tones heard back as text by
  :func:`bridge.dev.stt_tones.recognize` (audio without tones gets
  :attr:`EmulatorConfig.stt_fixed_transcript`), answered after :attr:`EmulatorConfig.stt_delay`
  as a plain text frame or a ``response`` envelope (:attr:`EmulatorConfig.stt_answer`); on
  request an error, ``[THINKING]``, silence, a 100 KB transcript, a binary frame, a trailing
  ``end`` (:class:`SttFault`). Audio that is not base64 of a PCM WAV gets Hamsa's documented
  "Error generating transcription: Audio format not supported".
* ``POST /v2/tts/voices/custom/preload`` — ``{"voiceId": UUID}`` with Token/Bearer auth.
* ``GET /_emulator/log`` — everything recorded, as JSON (``?audio=base64`` adds the audio).

Timing: a named delivery model (:meth:`EmulatorConfig.model`, :data:`DELIVERY_MODELS`:
``instant``, ``realistic``, ``observed``, ``slow``, ``bursty``, ``fast``) or any mix of the
fields; each reply's schedule is the pure :func:`reply_schedule` of seeded draws, and its frames
go at absolute times from the ``ack`` (sending time never accumulates). Or the timing of a trace
recorded from the real API (:attr:`EmulatorConfig.replay`, :mod:`bridge.hamsa_trace`).

Everything lives in one :class:`EmulatorState` per app (``app.state.emulator``); the module
holds no mutable state. Request numbers are global and 1-based: every ``tts`` or ``stt`` frame,
on every connection, valid or not, takes the next number when the emulator starts working on it;
:attr:`EmulatorConfig.faults` are keyed by that number, :attr:`EmulatorConfig.stt_faults` by the
number among ``stt`` requests only.

Run it in-process on an ephemeral port (tests)::

    async with EmulatorServer(EmulatorConfig(api_keys=frozenset({"k"}))) as emu:
        url = emu.ws_url            # ws://127.0.0.1:<port>/v1/realtime/ws
        ...
        async with asyncio.timeout(2):
            await emu.state.wait_until(lambda s: len(s.requests) == 1)
"""

from __future__ import annotations

from bridge.dev.hamsa_emulator.config import (
    DELIVERY_MODELS,
    EmulatorConfig,
    Fault,
    Range,
    SttFault,
)
from bridge.dev.hamsa_emulator.realtime import create_emulator_app
from bridge.dev.hamsa_emulator.records import (
    ConnectionRecord,
    EmulatorState,
    PreloadRecord,
    RequestRecord,
    SttRecord,
)
from bridge.dev.hamsa_emulator.schedule import replay_schedule, reply_schedule
from bridge.dev.hamsa_emulator.server import (
    MODEL_SUMMARIES,
    EmulatorServer,
    run_emulator,
    run_emulator_command,
    serve_emulator,
    startup_lines,
)
from bridge.dev.hamsa_emulator.wire import (
    ABORTED_MESSAGE,
    ACK_FRAME,
    DEFAULT_API_KEY,
    END_FRAME,
    INFO_FRAME,
    OVERSIZED_STT_BYTES,
    PRELOAD_OK_BODY,
    STT_FAILED_MESSAGE,
    TRUNCATED_BYTES,
    UNSUPPORTED_AUDIO_MESSAGE,
    canonical_pcm16_header,
    streaming_mulaw_header,
)
from bridge.protocols.hamsa_client import MAX_TEXT_CHARS

__all__ = [
    "ABORTED_MESSAGE",
    "ACK_FRAME",
    "ConnectionRecord",
    "DEFAULT_API_KEY",
    "DELIVERY_MODELS",
    "END_FRAME",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "INFO_FRAME",
    "MAX_TEXT_CHARS",
    "MODEL_SUMMARIES",
    "OVERSIZED_STT_BYTES",
    "PRELOAD_OK_BODY",
    "PreloadRecord",
    "Range",
    "RequestRecord",
    "STT_FAILED_MESSAGE",
    "SttFault",
    "SttRecord",
    "TRUNCATED_BYTES",
    "UNSUPPORTED_AUDIO_MESSAGE",
    "canonical_pcm16_header",
    "create_emulator_app",
    "replay_schedule",
    "reply_schedule",
    "run_emulator",
    "run_emulator_command",
    "serve_emulator",
    "startup_lines",
    "streaming_mulaw_header",
]
