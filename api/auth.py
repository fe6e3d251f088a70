"""API keys with scopes — `ingest` for producers, `admin` for model and campaign control —
checked as FastAPI dependencies, one per scope, before the body is validated.

A route declares its scope once: `@api.post(..., dependencies=[require("ingest", keys)])`.
`keys` is called on every request for the key → scopes map. It is a function rather than
the map because the routes are fixed before any replica has settings: Serve pickles the
FastAPI app when the ingress class is defined, and each replica builds its settings later,
in `__init__`. The Serve entry point passes a function reading the settings of the replica
answering (see `serve_app._api_keys`), so this module knows nothing of Serve.

Why the check comes before the body: FastAPI runs a route's dependencies (those declared
in the decorator first) before it validates the path, query and body, and raises what a
dependency raises at once, so a request without a good key never learns what its body got
wrong. It does decode a JSON body before any dependency runs, though
(`fastapi.routing.get_request_handler`): `check_keys_before_json` makes a body that is not
JSON answer the key's 401/403 first too. Only the body size limit (413, a middleware in
front of every route) comes before the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request, Response, Security, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError, answer_error

Scope = Literal["ingest", "admin"]
KeyLookup = Callable[[], Mapping[str, Sequence[str]]]

# The security scheme /docs shows (and its "Authorize" button fills in). It only parses the
# header; `auto_error=False` leaves the 401 to `check_key`, in Herald's error shape.
bearer = HTTPBearer(
    scheme_name="ApiKey",
    description="`Authorization: Bearer <api key>`; keys have the scopes `ingest`, `admin`.",
    auto_error=False,
)


def check_key(api_keys: Mapping[str, Sequence[str]], presented: str | None, scope: Scope) -> str:
    """The key if it is known and has `scope`; 401 when missing or unknown, 403 when the
    key lacks the scope. Keys are compared in constant time."""
    if not presented:
        raise ApiError(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <api key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    for key, scopes in api_keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            if scope not in scopes:
                raise ApiError(403, "forbidden", f"this API key lacks the '{scope}' scope")
            return key
    raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})


class RequireScope:
    """The dependency of one scope: answers the key, or raises the 401/403."""

    def __init__(self, scope: Scope, keys: KeyLookup) -> None:
        self.scope, self.keys = scope, keys

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> str:
        return check_key(self.keys(), credentials.credentials if credentials else None, self.scope)


def require(scope: Scope, keys: KeyLookup) -> DependsParam:
    """`Depends` on a key with `scope`, for a route decorator's `dependencies`."""
    return Depends(RequireScope(scope, keys))


async def authorize_route(request: Request) -> None:
    """Run the key checks the matched route declares (see `check_keys_before_json`)."""
    for dependency in getattr(request.scope.get("route"), "dependencies", ()):
        if isinstance(dependency.dependency, RequireScope):
            await dependency.dependency(await bearer(request))


def check_keys_before_json(app: FastAPI) -> None:
    """Answer a body that is not JSON with the key's 401/403 when the key is bad: FastAPI
    decodes the body before it resolves dependencies, so its decoding error would otherwise
    reach anyone. Wraps the validation handler `install_error_handlers` put on `app`."""
    answer_invalid = app.exception_handlers[RequestValidationError]

    async def key_first(request: Request, exc: RequestValidationError) -> Response:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            try:
                await authorize_route(request)
            except ApiError as refused:
                return answer_error(refused)
        return answer_invalid(request, exc)

    app.add_exception_handler(RequestValidationError, key_first)


async def admit(websocket: WebSocket, api_keys: Mapping[str, Sequence[str]], scope: Scope) -> bool:
    """Accept a WebSocket whose key has `scope`, else close it with 4401/4403 (HTTP's
    401/403 in the application range of close codes). Browsers cannot set headers on a
    WebSocket, so the key may also come as `?api_key=`; a header, when sent, decides."""
    if websocket.headers.get("authorization"):
        credentials = await bearer(websocket)
        presented = credentials.credentials if credentials else None
    else:
        presented = websocket.query_params.get("api_key")
    try:
        check_key(api_keys, presented, scope)
    except ApiError as exc:
        await websocket.close(code=4401 if exc.status == 401 else 4403, reason=exc.message)
        return False
    await websocket.accept()
    return True
