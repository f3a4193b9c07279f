"""What listening to the caller costs: CPU per call for the inbound audio of speech input.

Method
------

A call whose script listens (issue 17, docs/speech-input.md) has every inbound ``media``
message decoded (``TwilioMediaStream(inbound_audio=True)``: the fast regex, strict base64, one
``MediaReceived``) and every 20 ms frame pushed through the ``UtteranceDetector`` (μ-law to
PCM16, webrtcvad, the start/end rules). Every other call only counts the message
(``inbound_audio=False``: today's cost). This script times both, in one process, on one core:

* ``--calls`` streams (100), each sent ``--seconds`` (20) of caller audio as the exact messages
  Twilio sends (built by the simulated caller's ``TwilioMediaLeg``), interleaved frame by frame
  as a bridge carrying that many calls receives them;
* three kinds of caller audio: ``silence`` (0xFF, a quiet line), ``speech`` (tone phrases with
  pauses: 40 % of the time talking, the detector starting and ending utterances) and ``noise``
  (seeded white noise at σ=2000: voiced in every frame, cut at the maximum every 10 s);
* for each: process CPU time (``time.process_time``) per frame, the best of ``--repeat`` (3)
  runs, and the share of one core a call takes at 50 frames a second.

The ``stt_wav`` of a 10 s utterance (once per utterance sent to Hamsa) is timed too. Figures
are printed, never judged. Run: ``python bench/listening.py``; ``--smoke``: a short run (CI).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.audio.codec import lin16_to_ulaw  # noqa: E402
from bridge.audio.utterances import UtteranceDetector  # noqa: E402
from bridge.audio.wav import stt_wav  # noqa: E402
from bridge.dev.tone import synthesize  # noqa: E402
from bridge.dev.twilio_stream_client import TwilioMediaLeg  # noqa: E402
from bridge.protocols.twilio_stream_server import MediaReceived, TwilioMediaStream  # noqa: E402

FRAME = 160
FRAMES_PER_SECOND = 50


def audio(kind: str, seconds: float) -> bytes:
    """``seconds`` of one kind of caller audio, 8 kHz μ-law."""
    size = int(seconds * 8000)
    if kind == "silence":
        return b"\xff" * size
    if kind == "noise":
        rng = np.random.default_rng(3)
        pcm = (rng.standard_normal(size) * 2000).clip(-32768, 32767).astype("<i2")
        return lin16_to_ulaw(pcm.tobytes())
    phrase = synthesize("المواعيد من فضلك", mulaw=True)  # 1.28 s
    pause = b"\xff" * int(len(phrase) * 1.5)
    out = bytearray()
    while len(out) < size:
        out += phrase + pause
    return bytes(out[:size])


def messages(calls: int, caller_audio: bytes) -> tuple[list[TwilioMediaStream], list[list[str]]]:
    """Per call: a started stream (our side) and the ``media`` messages Twilio sends it."""
    streams, sent = [], []
    frames = [caller_audio[i : i + FRAME] for i in range(0, len(caller_audio), FRAME)]
    for n in range(calls):
        leg = TwilioMediaLeg(f"MZ{n:032x}", f"CA{n:032x}", "AC" + "0" * 32, {})
        stream = TwilioMediaStream(inbound_audio=True)
        stream.receive(leg.connected())
        stream.receive(leg.start())
        streams.append(stream)
        sent.append([leg.media(frame, 20 * (i + 1)) for i, frame in enumerate(frames)])
    return streams, sent


def run(calls: int, seconds: float, kind: str, mode: str) -> tuple[float, int]:
    """CPU seconds to take every call's frames (interleaved) and the utterances detected."""
    streams, sent = messages(calls, audio(kind, seconds))
    detectors = [
        UtteranceDetector(start_pad_ms=300, end_silence_ms=700, max_ms=10_000, mode=2)
        for _ in range(calls)
    ]
    for stream in streams:
        stream.inbound_audio = mode != "count"
    utterances = 0
    listen = mode == "listen"
    started = time.process_time()
    for i in range(len(sent[0])):
        for stream, detector, queue in zip(streams, detectors, sent, strict=True):
            for event in stream.receive(queue[i]):
                if listen and type(event) is MediaReceived:
                    utterances += len(detector.push(event.payload))
    return time.process_time() - started, utterances


def best(repeat: int, measure: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    return min(measure() for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a short run (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.seconds, args.repeat = 5, 2.0, 1
    frames = args.calls * round(args.seconds * FRAMES_PER_SECOND)
    print(
        f"listening cost: {args.calls} calls x {args.seconds:g} s of caller audio "
        f"({frames} frames per run, best of {args.repeat}), python {sys.version.split()[0]}"
    )
    print(f"{'audio':<8} {'path':<42} {'us/frame':>9} {'% core/call':>12} {'events':>7}")
    paths = {
        "count": "today: counted, not decoded (inbound off)",
        "decode": "decoded: MediaReceived, nothing listens",
        "listen": "listening: decoded + UtteranceDetector",
    }
    for kind in ("silence", "speech", "noise"):
        for mode, label in paths.items():
            measure = functools.partial(run, args.calls, args.seconds, kind, mode)
            cpu, events = best(args.repeat, measure)
            per_frame = cpu / frames * 1e6
            share = per_frame * FRAMES_PER_SECOND / 1e6 * 100
            print(f"{kind:<8} {label:<42} {per_frame:9.2f} {share:11.3f}% {events:7d}")
    pcm = np.zeros(80_000, dtype="<i2").tobytes()  # a 10 s utterance
    started = time.process_time()
    rounds = 3 if args.smoke else 30
    for _ in range(rounds):
        stt_wav(pcm)
    each = (time.process_time() - started) / rounds
    print(f"stt_wav of a 10 s utterance (once per utterance sent): {each * 1000:.2f} ms CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
