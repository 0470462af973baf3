"""What every request of the serving app passes through: the body limit, API-key checks and JSON errors.

Every error is ``{"error": {"status": 4xx, "message": "...", "field": "..."?}}`` with a 4xx status
unless the server itself failed; under ``/v2`` it is the Open Inference Protocol's ``{"error":
"message"}`` (:mod:`.contract` documents both). A 405 names the path's methods in ``Allow``.
Request-time code finds the limits and keys of the ingress replica that serves the request on
``app.state.ingress`` (a :class:`Guarded`; set by the ingress at start).

No ``from __future__ import annotations`` here: FastAPI resolves the dependency's parameter annotations
(``Request``) at import time.
"""

from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worldloop.serving.contract import OPEN_PATHS, is_oip_path
from worldloop.serving.protocol import NOT_BLANK
from worldloop.serving.sessions import ApiError, ApiKeys
from worldloop.settings import Settings


class Guarded(Protocol):
    """What the checks here read from the ingress replica: its settings and API keys."""

    settings: Settings
    keys: ApiKeys


def guard_of(app: Any) -> Guarded | None:
    """The ingress serving ``app`` (None before it started)."""
    return getattr(app.state, "ingress", None)


def error_response(
    status: int, message: str, field: str | None = None, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def route_path(scope: Scope) -> str:
    """The request's path as the app's routes see it (without the Serve route prefix)."""
    return str(scope["path"]).removeprefix(scope.get("root_path", ""))


def error_for(
    scope: Scope,
    status: int,
    message: str,
    field: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error in the shape of the protocol the path belongs to (KServe v2 under ``/v2``)."""
    if is_oip_path(route_path(scope)):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return error_response(status, message, field, headers=headers)


def allowed_methods(scope: Scope) -> str:
    """The methods some route of the app serves at this path, asked of the routes themselves (Starlette's
    own 405 names only the first matching route's, and FastAPI nests included routers)."""
    routes = scope["app"].router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "type": "http", "method": method})[0] is Match.FULL for route in routes
        )
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def validation_message(err: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """A one-line message for the first validation error, and the field it is about."""
    first = err.errors()[0]
    if first.get("type") in ("json_invalid", "json_type"):
        return f"body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})", None
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
    text = str(first["msg"])
    if first.get("type") == "string_pattern_mismatch" and first.get("ctx", {}).get("pattern") == NOT_BLANK:
        text = "must not be blank"
    return (f"{where}: {text}" if where else text), where


def presented_key(headers: Any, query: Any) -> str | None:
    """The API key a request or socket presents: ``Authorization: Bearer``, ``X-API-Key`` or ``?api_key=``."""
    auth = headers.get("authorization")
    if auth and auth.lower().startswith("bearer "):
        return str(auth[7:])
    key = headers.get("x-api-key") or query.get("api_key")
    return None if key is None else str(key)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for request bodies over the limit, by header or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = guard_of(scope["app"]) if "app" in scope else None
        limit = guard.settings.serve_max_body_bytes if guard is not None else self.limit
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_for(scope, 413, f"request body is over the {limit}-byte limit")(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await error_for(scope, 413, f"request body is over the {limit}-byte limit")(
                    scope, receive, send
                )


def oip_key(request: Request) -> None:
    """A route dependency: API keys on ``/v2`` too, except the health probes and server metadata
    (Kubernetes probes them)."""
    guard = guard_of(request.app)
    if guard is not None and route_path(request.scope) not in OPEN_PATHS:
        try:
            guard.keys.owner(presented_key(request.headers, request.query_params))
        except ApiError as err:
            raise StarletteHTTPException(err.status, err.message) from None


async def _api_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, ApiError)
    return error_for(request.scope, err.status, err.message, err.field)


async def _invalid(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    message, where = validation_message(err)
    return error_for(request.scope, 400, message, where)


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, StarletteHTTPException)
    headers = dict(err.headers or {})
    if err.status_code == 405:
        headers["Allow"] = allowed_methods(request.scope)
    return error_for(request.scope, err.status_code, str(err.detail), headers=headers or None)


def install_guards(api: FastAPI, *, max_body_bytes: int) -> None:
    """Install the body limit (``max_body_bytes`` until an ingress says otherwise) and the JSON error
    handlers on ``api``."""
    api.add_middleware(BodyLimit, limit=max_body_bytes)
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(StarletteHTTPException, _http_error)
