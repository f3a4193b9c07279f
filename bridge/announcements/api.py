"""The HTTP API of announcements: ``POST /v1/announcements`` and ``GET /v1/announcements/{id}``.

Mounted only when ``BRIDGE_API_TOKEN`` is set (without it the routes do not exist, so nobody can
make the bridge dial); every request needs ``Authorization: Bearer <BRIDGE_API_TOKEN>``.

Answers (JSON): 202 accepted (``{"id", "status", "url"}``), 200 for a retried ``POST`` with the
same ``Idempotency-Key`` (the same id; no second call) and for ``GET`` (the record), 400 bad JSON
or header, 401 no or wrong token (``WWW-Authenticate: Bearer``), 403 a number outside
``BRIDGE_ALLOWED_PREFIXES``, 404 unknown id, 413 body over 64 KB, 422 invalid fields
(``{"error", "errors": [{"field", "message"}]}``), 503 database unavailable.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from typing import Any, Final, get_type_hints

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.announcements.options import FIELD_NAMES, AnnouncementOptions
from bridge.announcements.service import AnnouncementService
from bridge.announcements.spec import AnnouncementSpec
from bridge.errors import AnnouncementInvalid, NumberNotAllowed, StoreError, TwimlTooLong
from bridge.settings import Settings

__all__ = ["ANNOUNCEMENTS_PATH", "MAX_BODY_BYTES", "AnnouncementApi", "AnnouncementRequest"]

log = structlog.get_logger("bridge.api")

ANNOUNCEMENTS_PATH: Final = "/v1/announcements"
MAX_BODY_BYTES: Final = 64 * 1024
MAX_IDEMPOTENCY_KEY: Final = 200


class _Request(BaseModel):
    """The JSON body of ``POST /v1/announcements``: types only (values: ``AnnouncementSpec``).

    Strict: ``"repeat": "2"`` is refused rather than guessed, and unknown fields are errors, so a
    misspelt option (``confirm-digit``) can never be silently ignored. Beside ``to``, ``from`` and
    ``text``, the fields are :class:`AnnouncementOptions`', flat (:data:`AnnouncementRequest`).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    to: str
    from_: str | None = Field(default=None, alias="from")
    text: str

    def spec(self, settings: Settings) -> AnnouncementSpec:
        """Validated and normalised; raises ``AnnouncementInvalid`` / ``NumberNotAllowed``."""
        options = AnnouncementOptions(**{name: getattr(self, name) for name in FIELD_NAMES})
        return AnnouncementSpec.create(
            settings, to=self.to, from_=self.from_, text=self.text, options=options
        )


def _option_fields() -> dict[str, Any]:
    """Each option as a field of the request: its type and default, from the dataclass."""
    types = get_type_hints(AnnouncementOptions)
    return {f.name: (types[f.name], f.default) for f in dataclasses.fields(AnnouncementOptions)}


AnnouncementRequest: Final = create_model(
    "AnnouncementRequest", __base__=_Request, __module__=__name__, **_option_fields()
)
"""The request body's model: ``to``, ``from``, ``text`` and every announcement option."""


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _invalid(status: int, errors: list[dict[str, str]]) -> JSONResponse:
    return _error(status, "invalid announcement request", errors=errors)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    """The body, refusing (``_TooLarge``) more than ``MAX_BODY_BYTES`` without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _TooLarge
    return bytes(body)


class AnnouncementApi:
    """The routes, bound to one app's settings and service (no module-level state)."""

    def __init__(self, settings: Settings, service: AnnouncementService) -> None:
        token = settings.bridge_api_token.get_secret_value()
        if not token:
            raise ValueError("the announcements API needs BRIDGE_API_TOKEN")
        self._token = token.encode()
        self._settings = settings
        self._service = service

    def routes(self) -> list[Route]:
        return [
            Route(ANNOUNCEMENTS_PATH, self.create, methods=["POST"]),
            Route(ANNOUNCEMENTS_PATH + "/{announcement_id}", self.fetch, methods=["GET"]),
        ]

    def _authorized(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def _unauthorized(self, request: Request) -> Response:
        # The header's value is never logged: it may be a real token sent to the wrong place.
        present = "authorization" in request.headers
        log.warning("api_unauthorized", path=request.url.path, header_present=present)
        return JSONResponse(
            {"error": "missing or invalid bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def create(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
            return _error(
                400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters"
            )
        try:
            body = await _read_body(request)
        except _TooLarge:
            return _error(413, f"body over {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "the body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "the body must be a JSON object")
        try:
            spec = AnnouncementRequest.model_validate(payload).spec(self._settings)
        except ValidationError as exc:
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
            return _invalid(422, errors)
        except NumberNotAllowed as exc:
            log.warning("api_number_not_allowed", field=exc.field)
            return _invalid(403, [{"field": exc.field, "message": exc.message}])
        except AnnouncementInvalid as exc:
            return _invalid(422, [{"field": exc.field, "message": exc.message}])
        try:
            record, created = await self._service.submit(spec, idempotency_key=key)
        except TwimlTooLong as exc:
            return _invalid(422, [{"field": "text", "message": str(exc)}])
        except StoreError as exc:
            log.error("api_store_unavailable", error=str(exc))
            return _error(503, "the announcements database is unavailable")
        url = f"{ANNOUNCEMENTS_PATH}/{record.id}"
        if not created and record.spec != spec:
            return _invalid(
                422,
                [
                    {
                        "field": "Idempotency-Key",
                        "message": f"already used for another request ({record.id})",
                    }
                ],
            )
        body_out = {"id": record.id, "status": record.state.value, "url": url}
        if not created:
            log.info("api_idempotent_replay", announcement=record.id)
            return JSONResponse(body_out, status_code=200, headers={"Location": url})
        return JSONResponse(body_out, status_code=202, headers={"Location": url})

    async def fetch(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        announcement_id = request.path_params["announcement_id"]
        try:
            record = await self._service.get(announcement_id)
        except StoreError as exc:
            log.error("api_store_unavailable", error=str(exc))
            return _error(503, "the announcements database is unavailable")
        if record is None:
            return _error(404, f"no announcement {announcement_id}")
        return JSONResponse(record.to_json())
