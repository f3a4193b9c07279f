"""TwiML for the inbound Voice webhook, built with twilio's ``VoiceResponse``.

The document ends right after ``</Connect>``: when the bridge closes the stream the call hangs
up instead of leaving the caller on a silent line (docs/twilio-media-streams.md §6).
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import Connect, VoiceResponse

MAX_PARAMETER_CHARS = 500
"""Twilio's limit on a ``<Parameter>``'s name plus value (characters)."""


def connect_stream(stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Response><Connect><Stream url=…>`` with one ``<Parameter>`` per item.

    ``stream_url`` must be an absolute ``wss://`` (or ``ws://`` for local development) URL without
    a query string: Twilio drops query strings.
    """
    if "?" in stream_url:
        raise ValueError("stream URL must not carry a query string (Twilio drops it)")
    if not stream_url.startswith(("wss://", "ws://")):
        raise ValueError("stream URL must be a wss:// URL")
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        if len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise ValueError(f"<Parameter> {name!r} is over Twilio's 500-character limit")
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())
