"""Who may call a route, checked as FastAPI dependencies before the body is validated.

Two kinds of callers, two security schemes (both `Authorization: Bearer …`):

* **Service API keys** (`ApiKey`), for the shop's backends, each with scopes:
  `ingest` (events, devices, profiles, preferences, wishlists, feedback), `read`
  (statuses, any user's inbox and stream — support tools), `campaigns`, `admin` (models,
  stats, templates; `admin` also grants every other scope, so the keys of older
  deployments, `["ingest", "admin"]`, keep working everywhere). A route declares its
  scope once: `dependencies=[require("read", keys)]`; OpenAPI lists it as the route's
  security requirement (`{"ApiKey": ["read"]}`).
* **User tokens** (`UserToken`, a JWT, `api.user_tokens`), for a shop's app or page acting
  for its signed-in user, on `/v1/me/…` only — where a service key is refused, so none
  ever needs to ship in an app. `RequireUser` answers the token's user id.

`keys` is called on every request for the key → scopes map (and the token lookup for the
verifier). They are functions rather than values because the routes are fixed before any
replica has settings: Serve pickles the FastAPI app when the ingress class is defined, and
each replica builds its settings later, in `__init__`. The Serve entry point passes
functions reading the replica answering (see `serve_app._replica`), so this module knows
nothing of Serve.

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
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal

from fastapi import FastAPI, Request, Response, Security, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.params import Security as SecurityParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError, answer_error
from api.user_tokens import TokenRefused, UserTokens

Scope = Literal["ingest", "read", "campaigns", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "campaigns", "admin")
KeyLookup = Callable[[], Mapping[str, Sequence[str]]]
TokenLookup = Callable[[], UserTokens]

# The security schemes /docs shows (and its "Authorize" button fills in). They only parse
# the header; `auto_error=False` leaves the 401 to the checks below, in Herald's shape.
bearer = HTTPBearer(
    scheme_name="ApiKey",
    description="A service API key: `Authorization: Bearer <api key>`. Scopes: `ingest`, "
    "`read`, `campaigns`, `admin` (admin grants all); each route lists the one it needs.",
    auto_error=False,
)
user_bearer = HTTPBearer(
    scheme_name="UserToken",
    bearerFormat="JWT",
    description="An end user's signed token (`sub` = user id, `exp`, `aud`; HS256, ES256 "
    "or RS256 by `kid`), minted by the shop's backend: `Authorization: Bearer <jwt>`. "
    "Only `/v1/me/…` takes it.",
    auto_error=False,
)


def grants(scopes: Sequence[str], scope: Scope) -> bool:
    """Whether a key with `scopes` may act in `scope` (`admin` may act in any)."""
    return scope in scopes or "admin" in scopes


def check_key(api_keys: Mapping[str, Sequence[str]], presented: str | None, scope: Scope) -> str:
    """The key if it is known and grants `scope`; 401 when missing or unknown, 403 when the
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
            if not grants(scopes, scope):
                raise ApiError(403, "forbidden", f"this API key lacks the '{scope}' scope")
            return key
    raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})


def check_user_token(tokens: UserTokens, presented: str | None) -> str:
    """The user id of a valid user token; 401 otherwise (a service key is no user token)."""
    if not presented:
        raise ApiError(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <user token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return tokens.verify(presented)
    except TokenRefused as refused:
        raise ApiError(
            401,
            "unauthorized",
            f"user token refused: {refused}",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None


class Guard(ABC):
    """A credential check `check_keys_before_json` can run before FastAPI's own."""

    @abstractmethod
    async def check(self, request: Request) -> object:
        """The caller's identity (key or user id), or raise the 401/403."""


class RequireScope(Guard):
    """The dependency of one scope: answers the key, or raises the 401/403."""

    def __init__(self, scope: Scope, keys: KeyLookup) -> None:
        self.scope, self.keys = scope, keys

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
    ) -> str:
        return check_key(self.keys(), credentials.credentials if credentials else None, self.scope)

    async def check(self, request: Request) -> str:
        return await self(await bearer(request))


class RequireUser(Guard):
    """The dependency of `/v1/me/…`: answers the token's user id, or raises the 401."""

    def __init__(self, tokens: TokenLookup) -> None:
        self.tokens = tokens

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(user_bearer)]
    ) -> str:
        return check_user_token(self.tokens(), credentials.credentials if credentials else None)

    async def check(self, request: Request) -> str:
        return await self(await user_bearer(request))


def require(scope: Scope, keys: KeyLookup) -> SecurityParam:
    """`Security` on a key granting `scope`, for a route decorator's `dependencies`; the
    scope shows in the route's OpenAPI security requirement."""
    return Security(RequireScope(scope, keys), scopes=[scope])


def _guards(dependant) -> list[Guard]:
    found = [d.call for d in dependant.dependencies if isinstance(d.call, Guard)]
    return found + [g for d in dependant.dependencies for g in _guards(d)]


async def authorize_route(request: Request) -> None:
    """Run the credential checks the matched route declares (see `check_keys_before_json`)."""
    route = request.scope.get("route")
    for guard in _guards(route.dependant) if hasattr(route, "dependant") else ():
        await guard.check(request)


def check_keys_before_json(app: FastAPI) -> None:
    """Answer a body that is not JSON with the credential's 401/403 when it is bad: FastAPI
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
    """Accept a service WebSocket whose key (header only) grants `scope`, else close it with
    4401/4403 (HTTP's 401/403 in the application range of close codes). The key is never
    taken from the URL, which proxies log; browsers use `/v1/me/stream` with a user token."""
    credentials = await bearer(websocket) if websocket.headers.get("authorization") else None
    try:
        check_key(api_keys, credentials.credentials if credentials else None, scope)
    except ApiError as exc:
        await websocket.close(code=4401 if exc.status == 401 else 4403, reason=exc.message)
        return False
    await websocket.accept()
    return True
