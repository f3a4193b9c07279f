"""Every TwiML document the bridge sends Twilio, built with twilio's ``VoiceResponse``.

* :func:`~twiml.inbound.connect_stream`: the inbound Voice webhook's answer, ``<Connect><Stream>``
  with the stream token in a ``<Parameter>``;
* :func:`~twiml.inbound.webhook_redirect`: the TwiML Bin that sends a number's calls to that
  webhook (``hamsa-bridge twilio twiml``);
* :func:`~twiml.announcement.announcement_twiml`: an outbound announcement's inline TwiML,
  ``<Connect><Stream>`` then the ``<Hangup/>`` fallback;
* :func:`~twiml.transfer.dial_twiml`: an IVR transfer, ``<Dial>`` a number or a SIP address.

Twilio's limits on them (:data:`~twiml.stream.MAX_PARAMETER_CHARS`,
:data:`~twiml.announcement.MAX_TWIML_CHARS`) are written here too. Nothing else builds TwiML
(``tests/test_facts_owned_once.py``).
"""
