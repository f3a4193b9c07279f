"""``<Connect><Stream>``, shared by the inbound webhook's TwiML and an announcement's.

``stream_url`` must be an absolute ``wss://`` (or ``ws://`` for local development) URL without a
query string: Twilio drops query strings, so anything a stream needs travels in ``<Parameter>``s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from twilio.twiml.voice_response import Connect, VoiceResponse

__all__ = ["MAX_PARAMETER_CHARS", "connect_stream_response"]

MAX_PARAMETER_CHARS: Final = 500
"""Twilio's limit on a ``<Parameter>``'s name plus value (characters); we stay strictly below."""


def connect_stream_response(stream_url: str, parameters: Mapping[str, str]) -> VoiceResponse:
    """``<Response><Connect><Stream url=…>`` with one ``<Parameter>`` per item; ``ValueError``
    for a URL Twilio would not stream to unchanged or a parameter over Twilio's limit."""
    if "?" in stream_url:
        raise ValueError("stream URL must not carry a query string (Twilio drops it)")
    if not stream_url.startswith(("wss://", "ws://")):
        raise ValueError("stream URL must be a wss:// URL")
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        if len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise ValueError(
                f"<Parameter> {name!r} is over Twilio's {MAX_PARAMETER_CHARS}-character limit"
            )
        stream.parameter(name=name, value=value)
    response.append(connect)
    return response
