"""Inline TwiML for an outbound announcement: ``<Connect><Stream>`` with its ``<Parameter>``s,
then ``<Hangup/>``.

The bridge hangs up through the REST API after the final mark; the ``<Hangup/>`` is the safety
net if that request fails (the stream closes, Twilio runs the next verb). The document must stay
under Twilio's 4000-character limit for ``Twiml`` (``TwimlTooLong`` otherwise: it belongs to the
bridge's one error tree, ``bridge.errors``, the only thing of ``bridge`` this package imports).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from twiml.stream import connect_stream_response

__all__ = ["MAX_TWIML_CHARS", "TwimlTooLong", "announcement_twiml"]

from bridge.errors import TwimlTooLong

MAX_TWIML_CHARS: Final = 4000


def announcement_twiml(stream_url: str, parameters: Mapping[str, str]) -> str:
    """``<Connect><Stream>`` with ``parameters``, then ``<Hangup/>``, without an XML declaration;
    :class:`TwimlTooLong` if Twilio would refuse it."""
    response = connect_stream_response(stream_url, parameters)
    response.hangup()
    document = str(response.to_xml(xml_declaration=False))
    if len(document) >= MAX_TWIML_CHARS:
        raise TwimlTooLong(
            f"the call's TwiML would be {len(document)} characters; Twilio accepts under "
            f'{MAX_TWIML_CHARS} (shorten the text: markup characters such as & and " count '
            "several times)"
        )
    return document
