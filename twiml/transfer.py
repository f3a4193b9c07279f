"""TwiML for an IVR transfer: ``<Dial>`` a number or a SIP address.

Twilio runs it in place of the call's ``<Connect><Stream>``, which it stops itself.
"""

from __future__ import annotations

from twilio.twiml.voice_response import Dial, VoiceResponse

__all__ = ["dial_twiml"]


def dial_twiml(to: str, caller_id: str | None) -> str:
    """``<Response><Dial>`` ``to``: ``<Sip>`` for a ``sip:`` address, else ``<Number>``."""
    response = VoiceResponse()
    dial = Dial(caller_id=caller_id) if caller_id else Dial()
    if to.startswith("sip:"):
        dial.sip(to)
    else:
        dial.number(to)
    response.append(dial)
    return str(response.to_xml())
