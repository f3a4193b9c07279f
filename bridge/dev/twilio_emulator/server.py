"""The emulator as a Starlette app, served by uvicorn in-process or by ``emulate-twilio``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.dev.media_leg import mulaw_to_wav
from bridge.dev.servers import (
    AppServer,
    port_problem,
    quiet_uvicorn,
    reachable_url,
    serve_until_stopped,
)
from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.config import ApiKey, NumberConfig, TwilioEmulatorConfig
from bridge.dev.twilio_emulator.rest_api import RestApi
from bridge.dev.twilio_emulator.state import TwilioEmulatorState
from bridge.settings import Settings
from bridge.uvicorn_setup import exit_as_signalled

__all__ = [
    "DEFAULT_PORT",
    "TwilioEmulatorServer",
    "create_twilio_emulator_app",
    "run_twilio_emulator",
    "run_twilio_emulator_command",
    "serve_twilio_emulator",
]


DEFAULT_PORT: Final = 8766


def create_twilio_emulator_app(
    config: TwilioEmulatorConfig, *, wall_clock: Callable[[], datetime] | None = None
) -> Starlette:
    """The emulator as a Starlette app; its state is ``app.state.twilio_emulator``.

    Routes: the REST API, ``GET /_emulator/log`` (every record, as JSON) and ``POST
    /_emulator/inbound`` (someone calls one of the account's numbers).
    """
    state = (
        TwilioEmulatorState(config, wall_clock=wall_clock)
        if wall_clock is not None
        else TwilioEmulatorState(config)
    )
    api = RestApi(state)

    async def log(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def inbound(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("to"), str):
            return JSONResponse({"error": "'to' (E.164) is required"}, status_code=400)
        try:
            keys = [(float(at), str(digit)) for at, digit in body.get("keys") or []]
            answers = [str(a) for a in body.get("answers") or []]
            hangup = body.get("hangup_after")
            sid = state.start_inbound_call(
                body["to"],
                str(body.get("from") or "+15005550001"),
                keys=keys,
                answers=answers,
                hangup_after=float(hangup) if hangup is not None else None,
                sign_handshake=bool(body.get("sign_handshake", True)),
                forwarded_from=body.get("forwarded_from"),
                caller_name=body.get("caller_name"),
            )
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(
            {"call_sid": sid, "uri": rest.call_uri(state.account.sid, sid)}, status_code=201
        )

    async def heard(request: Request) -> Response:
        """What the caller of a call heard (all its streams), as WAV; ``?wait=S``: wait for the
        call to end first (at most S seconds)."""
        sid = request.path_params["call_sid"]
        if sid not in state.calls:
            return JSONResponse({"error": f"no call {sid}"}, status_code=404)
        try:
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            return JSONResponse({"error": "wait must be seconds"}, status_code=400)
        if wait > 0:
            try:
                async with asyncio.timeout(min(wait, 3600.0)):
                    await state.wait_for_call(sid)
            except TimeoutError:
                return JSONResponse({"error": "the call has not ended"}, status_code=409)
        audio = b"".join(s.result.heard for s in state.streams_for(sid))
        return Response(
            mulaw_to_wav(audio),
            media_type="audio/wav",
            headers={"X-Call-Status": state.calls[sid].info.status.value},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    app = Starlette(
        routes=[
            Route("/_emulator/log", log, methods=["GET"]),
            Route("/_emulator/inbound", inbound, methods=["POST"]),
            Route("/_emulator/calls/{call_sid}/heard.wav", heard, methods=["GET"]),
            Route("/{path:path}", api.handle, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.state.twilio_emulator = state
    return app


class TwilioEmulatorServer(AppServer):
    """The emulator under uvicorn in the running event loop, as an async context manager.

    ``port=0`` binds an ephemeral port. Point twilio-python at :attr:`http_url`
    (``client.api.base_url = server.http_url``) and the bridge's ``TWILIO_API_URL`` likewise.
    """

    def __init__(
        self,
        config: TwilioEmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        handle_signals: bool = False,
        log_config: dict[str, Any] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config or TwilioEmulatorConfig()
        app = create_twilio_emulator_app(self.config, wall_clock=wall_clock)
        self.state: TwilioEmulatorState = app.state.twilio_emulator
        super().__init__(
            app,
            host=host,
            port=port,
            sock=sock,
            handle_signals=handle_signals,
            log_config=log_config,
        )

    async def __aenter__(self) -> TwilioEmulatorServer:
        await self.start()
        return self


async def serve_twilio_emulator(
    config: TwilioEmulatorConfig,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    ready: asyncio.Event | None = None,
    handle_signals: bool = True,
    log_config: dict[str, Any] | None = None,
    banner: Callable[[AppServer], Iterable[str]] | None = None,
) -> signal.Signals | None:
    """Serve the emulator until a signal (or cancellation). ``ready`` is set once listening.

    Once listening, ``banner(server)``'s lines are printed on stdout (default: the one line
    ``Twilio emulator listening on http://…``).
    """
    server = TwilioEmulatorServer(
        config, host=host, port=port, handle_signals=handle_signals, log_config=log_config
    )
    lines = banner or (lambda s: [f"Twilio emulator listening on {reachable_url(s)}"])
    return await serve_until_stopped(server, banner=lines, ready=ready)


def run_twilio_emulator(
    config: TwilioEmulatorConfig,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    banner: Callable[[AppServer], Iterable[str]] | None = None,
) -> None:
    """Blocking entry point for ``hamsa-bridge emulate-twilio``. Ctrl-C stops it gracefully, then
    raises ``KeyboardInterrupt`` (the command line exits 130, as on any Ctrl-C).

    uvicorn's own lines are kept quiet (:func:`~bridge.dev.servers.quiet_uvicorn`): what the
    user reads is ``banner``'s."""
    quiet_uvicorn()
    exit_as_signalled(asyncio.run(serve_twilio_emulator(config, host, port, banner=banner)))


def _number_option(value: str) -> tuple[str, str | None]:
    number, _, url = value.partition("=")
    return number.strip(), url.strip() or None


def run_twilio_emulator_command(settings: Settings, args: argparse.Namespace) -> int:
    """``hamsa-bridge emulate-twilio``: the emulator with the CLI's options.

    Expected arguments: ``--host``, ``--port``, ``--number E164[=VOICE_URL]`` (repeatable),
    ``--status-callback URL``, ``--ring-seconds``, ``--outcome E164=OUTCOME`` (repeatable),
    ``--max-call-seconds``, ``--seed``. Credentials come from ``TWILIO_ACCOUNT_SID`` /
    ``TWILIO_AUTH_TOKEN`` or are generated and printed; ``TWILIO_API_KEY`` /
    ``TWILIO_API_SECRET``, when set, are a Standard API key of the account.
    """
    account_sid = settings.twilio_account_sid or "AC" + secrets.token_hex(16)
    auth_token = settings.twilio_auth_token.get_secret_value() or secrets.token_hex(16)
    public = settings.bridge_public_url
    default_voice = settings.inbound_webhook_url if public else None
    status_callback = getattr(args, "status_callback", None) or (
        settings.status_callback_url if public else None
    )
    numbers: dict[str, NumberConfig] = {}
    for item in getattr(args, "number", None) or []:
        number, url = _number_option(item)
        numbers[number] = NumberConfig(
            voice_url=url or default_voice, status_callback=status_callback
        )
    if not numbers:
        number = settings.twilio_phone_number or "+15005550006"
        numbers[number] = NumberConfig(voice_url=default_voice, status_callback=status_callback)
    api_keys: dict[str, ApiKey | str] = {}
    if settings.twilio_api_key:
        api_keys[settings.twilio_api_key] = settings.twilio_api_secret.get_secret_value()
    outcomes: dict[str, str] = {}
    for item in getattr(args, "outcome", None) or []:
        destination, _, outcome = item.partition("=")
        outcomes[destination.strip()] = outcome.strip()
    try:
        config = TwilioEmulatorConfig(
            account_sid=account_sid,
            auth_token=auth_token,
            api_keys=api_keys,
            numbers=numbers,
            ring_seconds=args.ring_seconds,
            outcomes=outcomes,
            max_call_seconds=args.max_call_seconds,
            seed=getattr(args, "seed", None),
        )
    except ValueError as exc:
        print(f"emulate-twilio: {exc}", file=sys.stderr)
        return 2
    host, port = args.host, args.port
    problem = port_problem(host, port)
    if problem:
        print(f"emulate-twilio: {problem}", file=sys.stderr)
        return 2
    generated = not settings.twilio_account_sid or not settings.twilio_auth_token.get_secret_value()

    def banner(server: AppServer) -> list[str]:
        url = reachable_url(server)
        lines = [
            f"Twilio emulator listening on {url}",
            "  set TWILIO_API_URL to that",
        ]
        if generated:
            lines.append("  credentials (generated; export them for the other commands):")
            lines.append(f"  TWILIO_ACCOUNT_SID={account_sid}")
            lines.append(f"  TWILIO_AUTH_TOKEN={auth_token}")
        else:
            lines.append("  credentials: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        for key in api_keys:
            lines.append(f"  API key {key} (Standard): REST requests may authenticate with it")
        for number, settings_ in numbers.items():
            lines.append(f"  number {number}: VoiceUrl={settings_.voice_url or '(unset)'}")
        lines.append(
            f"  inbound call: curl -X POST {url}/_emulator/inbound "
            f'-d \'{{"to": "{next(iter(numbers))}", "from": "+15005550001"}}\''
        )
        lines.append(f"  records: GET {url}/_emulator/log; Ctrl-C stops it")
        return lines

    run_twilio_emulator(config, host, port, banner=banner)
    return 0
