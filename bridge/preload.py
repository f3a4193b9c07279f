"""Preload Hamsa custom (cloned) voices once at startup (docs/hamsa-ws.md §7).

``POST {HAMSA_API_URL}/v2/tts/voices/custom/preload`` with ``Authorization: Token KEY`` and
``{"voiceId": …}``. Each failure becomes a ``PreloadError`` naming the voice and saying what to
check; the bridge refuses to start (and ``/readyz`` stays 503) until every voice is preloaded.
"""

from __future__ import annotations

import re

import httpx2
import structlog

from bridge.errors import PreloadError
from bridge.settings import Settings

log = structlog.get_logger("bridge.preload")

PRELOAD_PATH = "/v2/tts/voices/custom/preload"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

_REASONS = {
    400: "Hamsa says the voice id is malformed (400); check HAMSA_PRELOAD_VOICES",
    401: "Hamsa rejected the API key (401); check HAMSA_API_KEY",
    403: "Hamsa rejected the API key (403); check HAMSA_API_KEY",
    404: "Hamsa does not know this voice (404); check the id and that it belongs to "
    "this key's project",
    500: "Hamsa failed to preload it (500); try again later",
}


def voices_to_preload(settings: Settings) -> list[str]:
    """``HAMSA_PRELOAD_VOICES``, plus ``HAMSA_SPEAKER`` when it is a cloned-voice id (a UUID)."""
    voices = list(dict.fromkeys(settings.hamsa_preload_voices))
    if _UUID.match(settings.hamsa_speaker) and settings.hamsa_speaker not in voices:
        voices.append(settings.hamsa_speaker)
    return voices


async def preload_voices(settings: Settings, *, client: httpx2.AsyncClient | None = None) -> None:
    """Preload every voice of ``voices_to_preload`` in order; raise on the first failure."""
    voices = voices_to_preload(settings)
    if not voices:
        return
    owns = client is None
    http = client or httpx2.AsyncClient(timeout=15.0)
    url = settings.hamsa_api_url.rstrip("/") + PRELOAD_PATH
    headers = {"Authorization": f"Token {settings.hamsa_api_key.get_secret_value()}"}
    try:
        for voice_id in voices:
            try:
                response = await http.post(url, json={"voiceId": voice_id}, headers=headers)
            except httpx2.HTTPError as exc:
                raise PreloadError(
                    f"cannot preload custom voice {voice_id!r}: {type(exc).__name__} reaching "
                    f"{settings.hamsa_api_url}",
                    voice_id=voice_id,
                ) from None
            if response.status_code != 200:
                reason = _REASONS.get(response.status_code, f"HTTP {response.status_code}")
                raise PreloadError(
                    f"cannot preload custom voice {voice_id!r}: {reason}",
                    voice_id=voice_id,
                    status=response.status_code,
                )
            log.info("voice_preloaded", voice_id=voice_id)
    finally:
        if owns:
            await http.aclose()
