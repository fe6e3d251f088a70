"""API keys with scopes: `ingest` for producers, `admin` for model and campaign control."""

from __future__ import annotations

import hmac
from typing import Literal

from api.errors import ApiError

Scope = Literal["ingest", "admin"]


def check_key(api_keys: dict[str, list[str]], authorization: str | None, scope: Scope) -> str:
    """The key if it is known and has `scope`; 401 when missing or unknown, 403 when the
    key lacks the scope."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <api key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    presented = authorization[7:].strip()
    for key, scopes in api_keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            if scope not in scopes:
                raise ApiError(403, "forbidden", f"this API key lacks the '{scope}' scope")
            return key
    raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})
