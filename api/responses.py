"""What the routes answer, for the OpenAPI document: every status a route can give, with
its body's schema, so a generated client and the contract fuzz run (`tests/test_fuzz.py`)
see the truth — 200 and 202 both for a campaign posted again, 201 and 200 for a device
or template that already existed, 503 for `/readyz` when a check fails.

Every route also documents the error answers (`ERRORS`, one shape: `ErrorResponse`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

from api.errors import ErrorResponse
from api.schemas import CampaignAccepted, DeviceOut

_ERROR_REASONS = {
    400: "The body is not JSON (`malformed_json`)",
    401: "No credential, or one Herald does not know",
    403: "The API key lacks the route's scope",
    404: "An id in the path that Herald does not know",
    409: "The id is taken by something else",
    413: "The body is over HERALD_MAX_BODY_BYTES (default 1 MiB)",
    422: "A field does not match the contract: `fields` names each and why",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": reason}
    for status, reason in _ERROR_REASONS.items()
}


class Readiness(BaseModel):
    checks: dict[str, bool] = Field(
        description="redis, and each shard, router, fan-out worker, sender (and the Kafka "
        "ingestor when configured): whether it answered within 2 s"
    )


READYZ: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "Every check passed"},
    503: {"model": Readiness, "description": "Some check failed: not ready"},
}
DEVICE_POST: dict[int | str, dict[str, Any]] = {
    200: {"model": DeviceOut, "description": "A token known already: its row updated"},
}
CAMPAIGN_POST: dict[int | str, dict[str, Any]] = {
    200: {"model": CampaignAccepted, "description": "The same campaign posted again: a no-op"},
}


def document(app: Any, method: str, path: str, responses: dict[int | str, dict[str, Any]]) -> None:
    """Add `responses` to the OpenAPI of a route another module declares (a router included
    whole, e.g. `POST /v1/me/devices` answering 200 for a known token as `POST /v1/devices`
    does). Call it before the document is first built: FastAPI caches what it derives."""
    for route in _api_routes(app.router):
        if route.path == path and method in route.methods:
            route.responses = {**responses, **route.responses}
            return
    raise LookupError(f"no route {method} {path}")


def _api_routes(router: Any) -> Iterator[Any]:
    """Every route of `router` with a path and methods, inside included routers too (this
    FastAPI keeps an included router whole, as `original_router`)."""
    for route in router.routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included)
        elif getattr(route, "methods", None) and getattr(route, "path", None):
            yield route
