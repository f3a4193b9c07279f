"""The IVR as a bridge feature (the seam: ``bridge.calls.context``).

An IVR's calls are inbound calls: its streams are admitted by ``InboundStreams`` (the ``v1``
token our webhook issues, bound to the CallSid), which runs the flow's ``FlowRunner`` as the
call script. The runner is a ``CallScript`` that ``KnowsItsFirstWords`` (its Hamsa socket waits
when its first prompts are cached) and holds an HTTP client for its webhooks (``aclose``).
"""

from __future__ import annotations

from bridge.errors import ConfigError
from bridge.ivr.flow import Flow, Transfer
from bridge.ivr.load import load_named_flow
from bridge.ivr.runner import FlowRunner
from bridge.settings import Settings
from bridge.twilio_rest_client import TwilioApi

__all__ = ["flow_script", "load_ivr_script"]


def load_ivr_script(settings: Settings) -> FlowRunner:
    """The flow in ``BRIDGE_IVR_FLOW`` as a call script; ``ConfigError`` listing every problem."""
    flow = load_named_flow(settings.bridge_ivr_flow, source="BRIDGE_IVR_FLOW")
    return flow_script(settings, flow)


def flow_script(settings: Settings, flow: Flow) -> FlowRunner:
    """A loaded flow as a call script, its transfers through ``settings``' Twilio account."""
    transfers = any(isinstance(node, Transfer) for node in flow.nodes.values())
    if transfers and not settings.twilio_account_sid:
        raise ConfigError(
            "the IVR flow transfers calls: set TWILIO_ACCOUNT_SID (and TWILIO_API_URL)"
        )
    return FlowRunner.with_twilio(flow, lambda: TwilioApi(settings))
