"""Announcements ready at answer: what is synthesised while the phone rings, and for how long
its audio is kept.

Whoever places the call (the bridge for the HTTP API, the ``announce`` and ``campaign``
commands for theirs) starts a ``PresynthJob`` right after Twilio accepted ``calls.create``: the
message (held by the announcement's id: personal data) and, with a confirm digit, the
confirmation prompt and the thanks (static: cached for good). The bridge's
``AnnouncementScript`` plays whatever the ``PromptCache`` has when the stream starts and streams
the rest as before.

**How a command's audio reaches the bridge**: through ``BRIDGE_PROMPT_CACHE_DIR``, a directory
the command and every bridge replica share. Without one a command cannot hand audio over: it
warns ``presynth_needs_shared_cache_dir`` once and does not presynthesise (the bridge streams
the message as it always did); ``BRIDGE_PRESYNTH_CONNECTIONS=0`` silences it.

Retention of the message's audio: ``bridge.announcements.retention``.
"""

from __future__ import annotations

import structlog
from websockets.asyncio.client import connect

from bridge.announcements.retention import retention
from bridge.announcements.script import static_prompts
from bridge.announcements.spec import AnnouncementSpec
from bridge.calls.hamsa_session import Connector
from bridge.calls.presynth import Presynthesizer, PresynthJob
from bridge.calls.prompt_cache import PromptCache
from bridge.metrics import Metrics
from bridge.settings import Settings

__all__ = ["command_presynthesizer", "job_for"]

log = structlog.get_logger("bridge.presynth")


def job_for(
    announcement_id: str, spec: AnnouncementSpec, settings: Settings, *, now: float
) -> PresynthJob:
    """What to synthesise for an announcement whose call was just created."""
    options = spec.options
    keep = options.ring_seconds + retention(
        spec.text, options.repeat, options.confirm_digit, settings
    )
    return PresynthJob(
        holder=announcement_id,
        text=spec.text,
        voice=options.voice,
        until=now + keep,
        prompts=static_prompts(options.voice, options.confirm_digit, options.repeat_digit),
        slot_wait=float(options.ring_seconds),
    )


def command_presynthesizer(
    settings: Settings, *, connector: Connector = connect, metrics: Metrics
) -> Presynthesizer | None:
    """The presynthesizer of a command that places calls (``announce``, ``campaign``), or None
    (logged once) when its audio could not reach the bridge or it is disabled."""
    if settings.bridge_presynth_connections <= 0:
        return None
    if not settings.bridge_prompt_cache_dir:
        log.warning(
            "presynth_needs_shared_cache_dir",
            detail="set BRIDGE_PROMPT_CACHE_DIR to a directory this command and the bridge "
            "share to have announcements synthesised while they ring (the bridge streams them "
            "meanwhile), or BRIDGE_PRESYNTH_CONNECTIONS=0 to silence this",
        )
        return None
    if not settings.hamsa_api_key.get_secret_value():
        log.warning(
            "presynth_needs_hamsa_api_key",
            detail="set HAMSA_API_KEY for this command (or BRIDGE_PRESYNTH_CONNECTIONS=0)",
        )
        return None
    cache = PromptCache.from_settings(settings)
    return Presynthesizer(settings, cache, connector=connector, metrics=metrics)
