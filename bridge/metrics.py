"""Prometheus series of one bridge process, on an explicit ``CollectorRegistry``.

One ``Metrics`` per app (built in ``create_app``; the default global registry would refuse a second
app in the same process). Everything is named ``hamsa_bridge_*``; labels are small closed sets
(outcome, reason, kind), never a CallSid or a number.

Hot paths only touch pre-bound children: a frame sent is one ``Counter.inc``.

Under ``serve --workers N`` (``bridge.workers``) each worker writes its values to files in a
directory the workers share (prometheus-client's multiprocess mode), and ``/metrics``, whichever
worker answers, reports the machine: counters and histograms summed over every worker that ran
(a restarted worker's counts are kept), gauges by their ``multiprocess_mode`` (``livesum``: calls,
streams, warm sockets and the call cap of the live workers added up; ``livemax``: draining if any
worker is). Gauges read from the app at scrape time are written every ``LOOP_LAG_INTERVAL``
instead (``refresh``). No process, platform or GC series there: they would describe only the
worker that answered.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

CALL_OUTCOMES = frozenset(
    {
        "completed",
        "skipped",
        "transferred",
        "confirmed",
        "not_confirmed",
        "failed",
        "hung_up",
        "rejected",
        "ended_by_drain",
        "unknown",
    }
)
"""Outcomes exported as themselves; any other value a script sets is counted as ``other``."""

REFUSAL_REASONS = ("capacity", "draining", "starting", "signature", "pending_limit")

HAMSA_ERROR_KINDS = ("connect", "auth", "timeout", "reply", "truncated", "audio_format")
START_HOLD_REASONS = ("immediate", "covered", "cap", "ended")
"""Why the start policy let a held sentence go (``bridge.calls.start_policy.HoldRecord``)."""

PRESYNTH_EVENTS = ("started", "completed", "failed", "skipped", "used", "streamed")
STT_OUTCOMES = ("text", "empty", "thinking", "error", "timeout", "stale")
"""What became of an utterance sent to speech-to-text (``stale``: its answer came after the
script had moved on, and was dropped)."""
UTTERANCE_ENDS = ("silence", "cut")
SPEECH_MATCH_RESULTS = ("matched", "no_match", "digits", "invalid")
"""What an IVR node made of a transcript (``CallContext.record_match``)."""

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
_FINE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
"""Sub-millisecond to 1 s: a p99 under 5 ms must be readable from the buckets."""
_SMALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_CALL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class Metrics:
    """Every series the bridge exports."""

    def __init__(self, *, process: bool = False, multiprocess_dir: Path | None = None) -> None:
        """``process``: also export process, platform and GC collectors (the server does).

        ``multiprocess_dir``: this process is one of ``serve``'s workers; its values go to that
        directory and :attr:`exposed` reports every worker's (``process`` is then ignored). Build
        it only in a process of its own: the directory becomes this process's
        ``PROMETHEUS_MULTIPROC_DIR``, which prometheus-client reads.
        """
        self._scraped: list[tuple[Gauge, Callable[[], float]]] = []
        r = self.registry = CollectorRegistry(auto_describe=True)
        """This process's series (tests read them here)."""
        self.exposed = r
        """What ``/metrics`` exports: this registry, or every worker's series."""
        self.multiprocess = multiprocess_dir is not None
        if multiprocess_dir is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiprocess_dir)
            if not getattr(values.ValueClass, "_multiprocess", False):
                # prometheus-client picks its value class when it is imported, from the
                # environment; the worker was forked from a process that imported it before.
                values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            # Not auto_describe: that would read every worker's files at registration.
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        elif process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        ns = "hamsa_bridge"
        # --- calls
        self.active_calls = Gauge(
            "active_calls",
            "Calls authenticated and in progress",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.open_streams = Gauge(
            "open_streams",
            "Accepted stream WebSockets (calls plus streams awaiting their start)",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.max_calls = Gauge(
            "max_calls",
            "Configured concurrent call limit (with workers: the live workers' limits added up)",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.calls = Counter(
            "calls", "Streams ended, by outcome", ["outcome"], namespace=ns, registry=r
        )
        self.call_duration = Histogram(
            "call_duration_seconds",
            "Duration of authenticated calls (start message to close)",
            namespace=ns,
            registry=r,
            buckets=_CALL_BUCKETS,
        )
        self.streams_refused = Counter(
            "streams_refused",
            "Streams refused, by reason: before accept (capacity also at start, when streams "
            "accepted together authenticate over the cap)",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.draining = Gauge(
            "draining",
            "1 once a shutdown signal started the drain",
            namespace=ns,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.calls_ended_by_drain = Counter(
            "calls_ended_by_drain",
            "Calls still running at the drain timeout, ended by the bridge",
            namespace=ns,
            registry=r,
        )
        self.first_audio = Histogram(
            "first_audio_seconds",
            "From the call's start message to its first audio frame sent",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        # --- Hamsa
        self.hamsa_connections = Counter(
            "hamsa_connections", "Hamsa WebSockets opened", namespace=ns, registry=r
        )
        self.hamsa_reconnects = Counter(
            "hamsa_reconnects",
            "Hamsa WebSockets opened to replace a call's earlier one",
            namespace=ns,
            registry=r,
        )
        self.hamsa_warm_sockets = Gauge(
            "hamsa_warm_sockets",
            "Open Hamsa WebSockets waiting in the warm pool (HAMSA_WARM_CONNECTIONS)",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.hamsa_warm_takes = Counter(
            "hamsa_warm_takes",
            "Calls' Hamsa connects through the warm pool (hit: a warm socket; miss: direct)",
            ["result"],
            namespace=ns,
            registry=r,
        )
        self.hamsa_requests = Counter(
            "hamsa_requests", "TTS requests sent to Hamsa", namespace=ns, registry=r
        )
        self.hamsa_truncated = Counter(
            "hamsa_truncated_replies",
            "Replies too short for their text (never played as final), retried",
            namespace=ns,
            registry=r,
        )
        self.hamsa_retries = Counter(
            "hamsa_retries", "TTS requests sent again after a failure", namespace=ns, registry=r
        )
        self.hamsa_errors = Counter(
            "hamsa_errors", "Hamsa failures, by kind", ["kind"], namespace=ns, registry=r
        )
        self.hamsa_first_byte = Histogram(
            "hamsa_first_byte_seconds",
            "From a TTS request sent to the first audio bytes received",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.bridge_latency = Histogram(
            "bridge_added_latency_seconds",
            "From an utterance's first Hamsa audio bytes received to its first frame sent "
            "(measured when nothing else was queued)",
            namespace=ns,
            registry=r,
            buckets=_FINE_BUCKETS,
        )
        # --- playback
        self.frames_sent = Counter(
            "frames_sent", "20 ms media frames sent to Twilio", namespace=ns, registry=r
        )
        self.underruns = Counter(
            "underruns",
            "Gaps inside an utterance: audio arrived later than it should have played",
            namespace=ns,
            registry=r,
        )
        self.gap = Histogram(
            "gap_seconds",
            "Gaps heard inside an utterance: how long Twilio's playout had run dry before the "
            "next frame went out",
            namespace=ns,
            registry=r,
            buckets=(0.02, 0.04, 0.1, 0.25, 0.5, 1, 2, 5),
        )
        self.start_hold = Histogram(
            "start_hold_seconds",
            "How long the start policy held a sentence's audio back before playing it, by why "
            "it let go (immediate, covered, cap, ended)",
            ["reason"],
            namespace=ns,
            registry=r,
            buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5),
        )
        self.pacing_lateness = Histogram(
            "pacing_lateness_seconds",
            "How late the playback writer sent a paced batch's first frame after the moment "
            "its pacing clock let it go (once per timed wake, not per frame)",
            namespace=ns,
            registry=r,
            buckets=_FINE_BUCKETS,
        )
        self.clears = Counter("clears", "clear messages sent (barge-in)", namespace=ns, registry=r)
        self.marks_lost = Counter(
            "marks_lost", "Utterance marks Twilio never echoed", namespace=ns, registry=r
        )
        self.mark_round_trip = Histogram(
            "mark_round_trip_seconds",
            "From a mark sent to its echo (the audio before it was played)",
            namespace=ns,
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
        )
        self.prompt_cache = Counter(
            "prompt_cache_lookups",
            "Cacheable prompts looked up, by result",
            ["result"],
            namespace=ns,
            registry=r,
        )
        self.presynth = Counter(
            "announcement_presynth",
            "Announcement audio synthesised while the phone rings, by event: started, "
            "completed (stored), failed (not stored), skipped (no slot in time), and at the "
            "stream's start used (played from it) or streamed (not ready: synthesised live)",
            ["event"],
            namespace=ns,
            registry=r,
        )
        # --- speech input (never a transcript in a label)
        self.stt_requests = Counter(
            "stt_requests",
            "Utterances sent to Hamsa's speech-to-text",
            namespace=ns,
            registry=r,
        )
        self.stt_seconds = Histogram(
            "stt_seconds",
            "Hamsa's time to answer one utterance (request sent to transcript, error or timeout)",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.stt_results = Counter(
            "stt_results",
            "Speech-to-text answers, by outcome: text, empty, thinking (only [THINKING] in "
            "time), error, timeout, and stale (dropped: the script had moved on)",
            ["outcome"],
            namespace=ns,
            registry=r,
        )
        self.speech_utterances = Counter(
            "speech_utterances",
            "Caller utterances the voice activity detector cut out, by how each ended: silence, "
            "or cut at BRIDGE_SPEECH_MAX_SECONDS (sent to speech-to-text or not)",
            ["end"],
            namespace=ns,
            registry=r,
        )
        self.speech_matches = Counter(
            "speech_matches",
            "Transcripts an IVR node used, by result: matched (an option), no_match, digits "
            "(a gather's), invalid (no valid digits)",
            ["result"],
            namespace=ns,
            registry=r,
        )
        self.stt_bridge_latency = Histogram(
            "stt_bridge_latency_seconds",
            "The bridge's own time per transcript: from the end of an utterance detected to "
            "its transcript handed to the script, minus Hamsa's answer time",
            namespace=ns,
            registry=r,
            buckets=_FINE_BUCKETS,
        )
        # --- process
        self.event_loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled)",
            namespace=ns,
            registry=r,
            buckets=_SMALL_BUCKETS,
        )
        for reason in REFUSAL_REASONS:
            self.streams_refused.labels(reason=reason)
        for kind in HAMSA_ERROR_KINDS:
            self.hamsa_errors.labels(kind=kind)
        for reason in START_HOLD_REASONS:
            self.start_hold.labels(reason=reason)
        for event in PRESYNTH_EVENTS:
            self.presynth.labels(event=event)
        for outcome in STT_OUTCOMES:
            self.stt_results.labels(outcome=outcome)
        for end in UTTERANCE_ENDS:
            self.speech_utterances.labels(end=end)
        for result in SPEECH_MATCH_RESULTS:
            self.speech_matches.labels(result=result)
        for result in ("hit", "miss"):
            self.prompt_cache.labels(result=result)
            self.hamsa_warm_takes.labels(result=result)

    def track_warm_pool(self, idle: Callable[[], int]) -> None:
        """Read the warm pool's idle sockets at scrape time."""
        self._at_scrape(self.hamsa_warm_sockets, lambda: float(idle()))

    def track(self, active_calls: Callable[[], int], open_streams: Callable[[], int]) -> None:
        """Read the live gauges from the app's registries at scrape time."""
        self._at_scrape(self.active_calls, lambda: float(active_calls()))
        self._at_scrape(self.open_streams, lambda: float(open_streams()))

    def _at_scrape(self, gauge: Gauge, read: Callable[[], float]) -> None:
        if self.multiprocess:
            # Another worker may answer the scrape: the value must be in the shared files.
            self._scraped.append((gauge, read))
        else:
            gauge.set_function(read)

    def refresh(self) -> None:
        """Write the gauges read at scrape time (workers only: the app calls this every
        ``LOOP_LAG_INTERVAL``, and before answering a scrape)."""
        for gauge, read in self._scraped:
            gauge.set(read())

    def call_ended(self, outcome: str) -> None:
        self.calls.labels(outcome=outcome if outcome in CALL_OUTCOMES else "other").inc()

    def hamsa_error(self, kind: str) -> None:
        self.hamsa_errors.labels(kind=kind).inc()

    def exposition(self) -> bytes:
        """What ``/metrics`` exports, in Prometheus text format."""
        self.refresh()
        for _ in range(2):
            try:
                return generate_latest(self.exposed)
            except struct.error:
                # A worker starting this instant: its file exists but is not sized yet.
                continue
        return generate_latest(self.exposed)
