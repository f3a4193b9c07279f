"""TwiML for inbound calls: the Voice webhook's answer, and the TwiML Bin that reaches it.

The webhook's document ends right after ``</Connect>``: when the bridge closes the stream the call
hangs up instead of leaving the caller on a silent line (docs/twilio-streams.md §6).
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.twiml.voice_response import VoiceResponse

from twiml.stream import MAX_PARAMETER_CHARS, connect_stream_response

__all__ = ["MAX_PARAMETER_CHARS", "connect_stream", "webhook_redirect"]


def connect_stream(stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Response><Connect><Stream url=…>`` with one ``<Parameter>`` per item.

    ``stream_url`` must be an absolute ``wss://`` (or ``ws://`` for local development) URL without
    a query string: Twilio drops query strings.
    """
    return str(connect_stream_response(stream_url, parameters).to_xml())


def webhook_redirect(webhook_url: str) -> str:
    """TwiML to paste into a TwiML Bin: redirect the call to the bridge's signed webhook.

    A Bin is static, so it cannot carry the per-call stream token; redirecting to the webhook
    keeps every guarantee (a signed request, a token bound to the CallSid) for one extra round
    trip at call setup.
    """
    response = VoiceResponse()
    response.redirect(webhook_url, method="POST")
    return str(response.to_xml())
