"""A local Twilio: a stateful subset of the 2010-04-01 REST API and of the voice platform.

Behind ``hamsa-bridge emulate-twilio`` (for users without a Twilio account) and the Twilio peer
the test suite runs against. Shapes and errors come from the sans-I/O core
:mod:`bridge.dev.twilio_emulator.rest_model` (checked against the official OpenAPI spec by
``tests/test_twilio_openapi.py``); the media side of every call is
:func:`bridge.dev.media_leg.run_media_stream`, the one implementation of Twilio's side of a
Media Stream. References are to docs/twilio-streams.md.

Modules: :mod:`.config` (what the emulator can be told), :mod:`.records` (what it remembers),
:mod:`.state` (the live state, :class:`TwilioEmulatorState`), :mod:`.rest_api` (the REST
routes), :mod:`.voice` (each call's lifecycle and TwiML), :mod:`.webhooks` (signed TwiML
requests and status callbacks), :mod:`.media` (``<Connect><Stream>``), :mod:`.ledger` (the part
of the state those three see), :mod:`.server` (the app, the in-process server,
``emulate-twilio``).

REST (HTTP Basic ``AccountSid:AuthToken`` or ``ApiKeySid:Secret``; form bodies; JSON answers)
=============================================================================================

API keys (``TwilioEmulatorConfig.api_keys``, :class:`ApiKey`) authenticate as on Twilio: the
key's SID and secret as the Basic user and password, the account's SID in the path; a Standard
key gets 401/20003 on the Account resource itself, a Main key may use it.

* ``GET|POST /2010-04-01/Accounts/{AccountSid}.json`` — fetch; update ``FriendlyName``.
* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` — create (201, ``queued``): ``To``,
  ``From``, ``Url`` or ``Twiml`` (≤ 4000 characters, ignored if ``Url`` is given), ``Method``,
  ``FallbackUrl``, ``StatusCallback``, ``StatusCallbackEvent`` (repeated keys),
  ``StatusCallbackMethod``, ``Timeout``, ``TimeLimit``, ``MachineDetection``.
* ``GET …/Calls.json`` — newest first; filters ``To``, ``From``, ``Status``, ``ParentCallSid``;
  paging with ``PageSize``/``Page``.
* ``GET|POST …/Calls/{Sid}.json`` — fetch; update ``Status=completed|canceled``, ``Twiml``,
  ``Url``/``Method``, ``StatusCallback``, ``TimeLimit``…; an ended call gets 400/21220.
* ``GET …/IncomingPhoneNumbers.json`` (filters ``PhoneNumber`` — partial, ``*`` for any digit —
  and ``FriendlyName``; paging), ``GET|POST …/IncomingPhoneNumbers/{Sid}.json`` (update changes
  only the fields sent).

Bad or missing credentials: 401/20003 (checked before anything else); unknown resources:
404/20404; wrong method: 405/20004.

Voice platform (asyncio tasks; no request handler waits for a call)
===================================================================

* **Inbound call** (:meth:`TwilioEmulatorState.start_inbound_call` or ``POST
  /_emulator/inbound``): the number's VoiceUrl is requested (its VoiceMethod; signed; fields
  ``CallSid AccountSid From To Called Caller CallStatus=ringing Direction=inbound ApiVersion``),
  VoiceFallbackUrl on failure, and the TwiML runs. The call is answered (``in-progress``) when
  the first verb other than ``<Reject>`` runs.
* **Outbound call** (REST create): ``queued``, after a tick ``initiated`` then ``ringing``; then
  the destination's :class:`Outcome`: answered after ``ring_seconds`` (``AnsweredBy`` when
  ``MachineDetection`` was asked) — unless that exceeds ``Timeout`` (then ``no-answer``) —, or
  ``busy``/``no-answer``/``failed``. On answer ``Twiml`` runs, or ``Url`` is requested
  (``Direction=outbound-api``, signed).
* **TwiML**: ``<Connect><Stream>`` runs the media leg with a signed handshake and records its
  :class:`~bridge.dev.media_leg.StreamResult`; when the stream closes, ``<Connect action>`` is
  requested or the verbs after ``</Connect>`` run; nothing left → ``completed``. ``<Hangup/>``
  ends the call; ``<Redirect>`` is followed (signed); ``<Dial>`` records a transfer and ends the
  call; ``<Reject>`` as first verb ends it ``busy``; ``<Say>``, ``<Play>``, ``<Pause>``,
  ``<Gather>`` and the rest are recorded only (no audio, no waiting).
* **Live updates**: ``Status=completed`` (or TwiML that hangs up) stops the stream and ends the
  call; other ``Twiml``/``Url`` stops the stream and replaces the running TwiML (a ``<Dial>``
  there records the transfer). The stream is stopped through the leg's ``hangup`` event:
  ``stop`` with the next ``sequenceNumber``, then close 1000, as Twilio does. The call's
  ``TimeLimit`` (at most ``max_call_seconds``) ends a stream the same way.
* **Status callbacks**: per call, in order, signed: each event asked for in
  ``StatusCallbackEvent`` (default ``completed`` only, as Twilio does; inbound calls use the
  number's StatusCallback, ``completed`` only): ``CallSid AccountSid From To Called Caller
  CallStatus Direction ApiVersion Timestamp CallbackSource=call-progress-events
  SequenceNumber`` (from 0), ``CallDuration`` on ``completed``, ``AnsweredBy`` with AMD.
  ``<Stream statusCallback>`` gets ``stream-started``/``stream-stopped``/``stream-error``.

Records
=======

Everything lives in one :class:`TwilioEmulatorState` per app (``app.state.twilio_emulator``);
the modules hold no mutable state. ``requests`` (every REST exchange), ``webhooks`` (every TwiML
request), ``callbacks`` (status callbacks, with the HTTP status each got), ``streams`` (the
media result per stream), ``transfers``, ``verbs``, per-call ``errors``; ``GET /_emulator/log``
returns them as JSON. Wait for anything with :meth:`TwilioEmulatorState.wait_until` under
``asyncio.timeout()``; for a call's end (callbacks delivered) with
:meth:`TwilioEmulatorState.wait_for_call`.

Run it in-process on an ephemeral port (tests)::

    config = TwilioEmulatorConfig(numbers={"+15005550006": {"voice_url": url}})
    async with TwilioEmulatorServer(config) as twilio:
        client = Client(config.account_sid, config.auth_token)
        client.api.base_url = twilio.http_url
        sid = twilio.state.start_inbound_call("+15005550006", "+14155550100")
        async with asyncio.timeout(5):
            call = await twilio.state.wait_for_call(sid)
"""

from bridge.dev.twilio_emulator.config import (
    ANSWERED_BY,
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    ApiKey,
    NumberConfig,
    Outcome,
    OutcomeStatus,
    TwilioEmulatorConfig,
)
from bridge.dev.twilio_emulator.records import (
    CallbackRecord,
    CallRecord,
    RestRecord,
    StreamRecord,
    TransferRecord,
    VerbRecord,
    WebhookRecord,
)
from bridge.dev.twilio_emulator.server import (
    DEFAULT_PORT,
    TwilioEmulatorServer,
    create_twilio_emulator_app,
    run_twilio_emulator,
    run_twilio_emulator_command,
    serve_twilio_emulator,
)
from bridge.dev.twilio_emulator.state import TwilioEmulatorState

__all__ = [
    "ANSWERED_BY",
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "DEFAULT_PORT",
    "ApiKey",
    "CallRecord",
    "CallbackRecord",
    "NumberConfig",
    "Outcome",
    "OutcomeStatus",
    "RestRecord",
    "StreamRecord",
    "TransferRecord",
    "TwilioEmulatorConfig",
    "TwilioEmulatorServer",
    "TwilioEmulatorState",
    "VerbRecord",
    "WebhookRecord",
    "create_twilio_emulator_app",
    "run_twilio_emulator",
    "run_twilio_emulator_command",
    "serve_twilio_emulator",
]
