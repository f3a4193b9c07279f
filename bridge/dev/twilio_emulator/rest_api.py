"""The REST API (``/2010-04-01/…``): authentication, routing, resources, and a record of each
exchange. Shapes and errors come from :mod:`bridge.dev.twilio_emulator.rest_model`."""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge.dev.twilio_emulator import rest_model as rest
from bridge.dev.twilio_emulator.records import RestRecord
from bridge.dev.twilio_emulator.rest_model import ApiError, Form

if TYPE_CHECKING:
    from bridge.dev.twilio_emulator.state import TwilioEmulatorState

__all__ = ["RestApi"]

Answer = tuple[int, Any]
"""An HTTP status and its JSON body."""

Handler = Callable[[re.Match[str], Form, Form], Answer]
"""Answers a request from the path's match, the query and the form body."""


def _error(error: ApiError) -> Answer:
    return error.status, error.body()


class RestApi:
    """Answers every ``/2010-04-01/…`` request from the emulator's state."""

    def __init__(self, state: TwilioEmulatorState) -> None:
        self._state = state
        account = re.escape(state.account.sid)
        prefix = rf"/{rest.API_VERSION}/Accounts/{account}"
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (
                re.compile(rf"{prefix}\.json"),
                {"GET": self._fetch_account, "POST": self._update_account},
            ),
            (
                re.compile(rf"{prefix}/Calls\.json"),
                {"GET": self._list_calls, "POST": self._create_call},
            ),
            (
                re.compile(rf"{prefix}/Calls/(?P<sid>[^/]+)\.json"),
                {"GET": self._fetch_call, "POST": self._update_call},
            ),
            (
                re.compile(rf"{prefix}/IncomingPhoneNumbers\.json"),
                {"GET": self._list_numbers},
            ),
            (
                re.compile(rf"{prefix}/IncomingPhoneNumbers/(?P<sid>[^/]+)\.json"),
                {"GET": self._fetch_number, "POST": self._update_number},
            ),
        ]

    async def handle(self, request: Request) -> Response:
        """Authenticate (before anything else), route, answer, record."""
        state = self._state
        method = request.method
        path = request.url.path
        body = await request.body() if method in ("POST", "PUT") else b""
        query = Form.parse(request.url.query)
        form = Form()
        ok, user = self._authorized(request.headers.get("authorization"), path)
        answer: Answer
        try:
            form = Form.parse(body)
        except ValueError:
            answer = _error(rest.invalid_parameter("body", "", "too many fields"))
        else:
            if ok and state.before_create is not None and self._is_create(method, path):
                await state.before_create(form)
            answer = self._route(method, path, query, form) if ok else _error(rest.authenticate())
        status, payload = answer
        state.requests.append(
            RestRecord(
                at=time.monotonic(),
                method=method,
                path=path,
                query=query.to_dict(),
                form=form.to_dict(),
                auth_user=user,
                status=status,
                response=payload,
            )
        )
        state.notify()
        headers = {"Twilio-Request-Id": "RQ" + secrets.token_hex(16)}  # not from the SID seed
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        if status == 204:
            return Response(status_code=204, headers=headers)
        return JSONResponse(payload, status_code=status, headers=headers)

    def _is_create(self, method: str, path: str) -> bool:
        return method == "POST" and self._routes[1][0].fullmatch(path) is not None

    def _authorized(self, header: str | None, path: str) -> tuple[bool, str | None]:
        """The account SID and auth token, or an API key SID and its secret (a Standard key
        not on the Account resource); ``(ok, the Basic user sent)``."""
        credentials = rest.parse_basic_auth(header)
        if credentials is None:
            return False, None
        user, password = credentials
        config = self._state.config
        if rest.is_sid(user, "SK"):
            key = config.api_key(user)
            if key is None or not hmac.compare_digest(password.encode(), key.secret.encode()):
                return False, user
            on_account = self._routes[0][0].fullmatch(path) is not None
            return key.main or not on_account, user
        ok = hmac.compare_digest(user.encode(), config.account_sid.encode()) and (
            hmac.compare_digest(password.encode(), config.auth_token.encode())
        )
        return ok, user

    def _route(self, method: str, path: str, query: Form, form: Form) -> Answer:
        for pattern, handlers in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                return _error(rest.method_not_allowed(method))
            return handler(match, query, form)
        return _error(rest.not_found(path))

    # --- the account --------------------------------------------------------------------------

    def _fetch_account(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        return 200, rest.account_resource(self._state.account)

    def _update_account(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        state = self._state
        name = form.get("FriendlyName")
        if name:
            state.account = replace(state.account, friendly_name=name, date_updated=state.now())
        return 200, rest.account_resource(state.account)

    # --- calls --------------------------------------------------------------------------------

    def _create_call(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        state = self._state
        caller_ids = None
        if state.config.check_caller_id:
            caller_ids = [n.phone_number for n in state.numbers.values()]
            caller_ids += list(state.config.verified_caller_ids)
        request = rest.parse_call_create(form, caller_ids)
        if isinstance(request, ApiError):
            return _error(request)
        if state.voice.closed:
            return _error(ApiError(503, 20503, "Service unavailable"))
        call = state.voice.start_outbound_call(request)
        return 201, rest.call_resource(call.info)

    def _list_calls(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        state = self._state
        paging = rest.parse_paging(query)
        if isinstance(paging, ApiError):
            return _error(paging)
        filters: list[tuple[str, str]] = []
        calls = list(reversed(state.calls.values()))
        for name, attr in (
            ("To", "to"),
            ("From", "from_"),
            ("Status", "status"),
            ("ParentCallSid", "parent_call_sid"),
        ):
            value = query.get(name)
            if value:
                filters.append((name, value))
                calls = [c for c in calls if str(getattr(c.info, attr)) == value]
        page, size = paging
        return 200, rest.list_page(
            "calls",
            [rest.call_resource(c.info) for c in calls],
            path=rest.calls_uri(state.account.sid),
            filters=filters,
            page=page,
            page_size=size,
        )

    def _fetch_call(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        call = self._state.calls.get(match["sid"])
        if call is None:
            return _error(rest.not_found(match.string))
        return 200, rest.call_resource(call.info)

    def _update_call(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        state = self._state
        call = state.calls.get(match["sid"])
        if call is None:
            return _error(rest.not_found(match.string))
        update = rest.parse_call_update(call.status, form)
        if isinstance(update, ApiError):
            return _error(update)
        state.voice.update_call(call, update)
        call.info = replace(call.info, date_updated=state.now())
        state.notify()
        return 200, rest.call_resource(call.info)

    # --- phone numbers ------------------------------------------------------------------------

    def _list_numbers(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        state = self._state
        paging = rest.parse_paging(query)
        if isinstance(paging, ApiError):
            return _error(paging)
        numbers = list(state.numbers.values())
        filters: list[tuple[str, str]] = []
        wanted = query.get("PhoneNumber")
        if wanted:
            filters.append(("PhoneNumber", wanted))
            pattern = re.compile(re.escape(wanted).replace(r"\*", "[0-9]"))
            numbers = [n for n in numbers if pattern.search(n.phone_number)]
        name = query.get("FriendlyName")
        if name:
            filters.append(("FriendlyName", name))
            numbers = [n for n in numbers if n.friendly_name == name]
        page, size = paging
        return 200, rest.list_page(
            "incoming_phone_numbers",
            [rest.incoming_phone_number_resource(n) for n in numbers],
            path=rest.numbers_uri(state.account.sid),
            filters=filters,
            page=page,
            page_size=size,
        )

    def _fetch_number(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        number = self._state.numbers.get(match["sid"])
        if number is None:
            return _error(rest.not_found(match.string))
        return 200, rest.incoming_phone_number_resource(number)

    def _update_number(self, match: re.Match[str], query: Form, form: Form) -> Answer:
        state = self._state
        sid = match["sid"]
        number = state.numbers.get(sid)
        if number is None:
            return _error(rest.not_found(match.string))
        updated = rest.update_number(number, form, state.now())
        if isinstance(updated, ApiError):
            return _error(updated)
        state.numbers[sid] = updated
        state.notify()
        return 200, rest.incoming_phone_number_resource(updated)
