"""Every error answer has one shape: {"error": {"code", "message", "fields": [...]}}.

Handlers here turn pydantic/FastAPI validation errors, HTTP errors and Herald's own
`ApiError` into that shape, so a client parses one format and learns which field was wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("herald.api")


class FieldError(BaseModel):
    field: str = Field(description="Where: `events[3].user_id`, `locales.fr.body`, `body`")
    reason: str


class ErrorBody(BaseModel):
    code: str = Field(description="validation_error, not_found, unauthorized, …")
    message: str
    fields: list[FieldError] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer: one shape, naming each bad field and why."""

    error: ErrorBody


class ApiError(Exception):
    """An error answer Herald chooses on purpose."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields = fields or []
        self.headers = headers


def not_found(what: str, value: str, field: str, reason: str) -> ApiError:
    """404 naming the unknown id: `not_found("device", "d1", "device_id", "unknown device")`
    says "no device 'd1'" and which field held it."""
    return ApiError(
        404, "not_found", f"no {what} {value!r}", fields=[{"field": field, "reason": reason}]
    )


def conflict(field: str, message: str) -> ApiError:
    """409: the id in `field` is taken by something else (another definition)."""
    return ApiError(
        409,
        "conflict",
        f"{message} with another definition",
        fields=[{"field": field, "reason": "already used"}],
    )


def invalid(fields: list[dict[str, str]]) -> ApiError:
    """The 422 of a request that does not match the contract, naming each bad field —
    FastAPI's validation and Herald's own checks after it (templates, variables) alike."""
    return ApiError(
        422, "validation_error", "the request does not match the contract", fields=fields
    )


def answer_error(exc: ApiError) -> JSONResponse:
    """The one error shape: {"error": {"code", "message", "fields"}} with the status."""
    body = {"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def field_path(loc: tuple | list) -> str:
    """('body', 'events', 3, 'user_id') → 'events[3].user_id'."""
    path = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif "." in str(part) or part.__class__ is not str:
            continue  # discriminator tags such as 'order.updated'
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "not valid JSON")
        return answer_error(
            ApiError(
                400,
                "malformed_json",
                "the body is not valid JSON",
                fields=[{"field": "body", "reason": reason}],
            )
        )
    fields = []
    for e in errors:
        reason = e.get("msg", "invalid")
        if reason.startswith("Value error, "):
            reason = reason.removeprefix("Value error, ")
        field = field_path(e.get("loc", ()))
        if e.get("type") == "union_tag_invalid":
            field += ".type"
        if ": " in reason and reason.split(": ", 1)[0].isidentifier():
            sub, reason = reason.split(": ", 1)  # model validators name their field first
            field = f"{field}.{sub}" if field != "body" else sub
        fields.append({"field": field, "reason": reason})
    return answer_error(invalid(fields))


def allowed_methods(request: Request) -> list[str]:
    """Every method of the path the request's URL falls under: the first route (in routing
    order) whose pattern matches names the path, and all of that path's routes give their
    methods. Starlette's 405 lists only the methods of the first route, and FastAPI makes
    one route per method: it said `Allow: GET` for a path that takes DELETE too."""
    routes = [r for r in iter_route_contexts(request.app.router.routes) if r.methods]
    for route in routes:  # included routers too
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            return sorted({m for r in routes if r.path == route.path for m in r.methods})
    return []


def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
    code = codes.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    fields = [{"field": "body", "reason": str(exc.detail)}] if exc.status_code == 400 else []
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        fields = [{"field": "body", "reason": "nested too deep to parse"}]  # json.loads gave up
    if exc.status_code == 405:
        allow = allowed_methods(request)
        headers["Allow"] = ", ".join(allow)
        fields = [
            {"field": "method", "reason": f"{request.method} not allowed; use {', '.join(allow)}"}
        ]
    refused = ApiError(exc.status_code, code, str(exc.detail), fields=fields, headers=headers)
    return answer_error(refused)


def _api(request: Request, exc: ApiError) -> JSONResponse:
    return answer_error(exc)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return answer_error(
        ApiError(503, "unavailable", "Herald could not complete the request; retry")
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ApiError, _api)
    app.add_exception_handler(Exception, _unexpected)


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413, by header or by counting.

    A chunked body has no Content-Length to trust, so the body is read here, up to the
    limit, before the route sees it, and replayed to it whole. Counting inside the route's
    own reads would not do: FastAPI turns any error raised while it reads the body into a
    400 "error parsing the body"."""

    @dataclass
    class Limit:
        max_bytes: int

    def __init__(self, app: ASGIApp, limit: BodySizeLimit.Limit) -> None:
        self.app, self.limit = app, limit

    @property
    def max_bytes(self) -> int:
        return self.limit.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks = []  # the client left: the route sees the disconnect
                pending: Message | None = message
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                pending = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break

        async def replay() -> Message:
            nonlocal pending
            if pending is not None:
                message, pending = pending, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = ApiError(
            413,
            "payload_too_large",
            f"the body is over {self.max_bytes} bytes",
            fields=[{"field": "body", "reason": f"at most {self.max_bytes} bytes"}],
        )
        await answer_error(refused)(scope, receive, send)
