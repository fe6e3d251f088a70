"""The scope matrix of the real route table, without a cluster: every route but the health
checks answers a missing or unknown key with 401 and a key without its scope with 403 —
before its body is validated, even when the body is invalid or not JSON at all.

The app runs in-process: Serve's replica context (where routes find their `self` and the
keys, see `serve_app._api_keys`) is replaced by a stand-in ingress that has only settings.
No handler runs past its validation in these tests: each request is refused or fails
validation first (a template's PUT body is validated by its handler, before it touches
anything the stand-in lacks).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import serve_app

KEYS = {"k-ingest": ["ingest"], "k-admin": ["admin"]}
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
ADMIN = {
    ("GET", "/v1/admin/stats"),
    ("GET", "/v1/models"),
    ("POST", "/v1/models/{version}/shadow"),
    ("DELETE", "/v1/models/shadow"),
    ("POST", "/v1/models/{version}/deploy"),
    ("POST", "/v1/models/rollback"),
    ("GET", "/v1/templates"),
    ("GET", "/v1/templates/{template_id}"),
    ("PUT", "/v1/templates/{template_id}"),
    ("DELETE", "/v1/templates/{template_id}"),
}
SPEC = serve_app.api.openapi()
OPERATIONS = sorted(
    (method.upper(), path, "requestBody" in operation)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
)
GUARDED = [(m, p, body) for m, p, body in OPERATIONS if (m, p) not in PUBLIC]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    ingress = SimpleNamespace(settings=SimpleNamespace(api=SimpleNamespace(api_keys=KEYS)))
    context = SimpleNamespace(servable_object=ingress)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_app.serve, "get_replica_context", lambda: context)
        yield TestClient(serve_app.api)


def call(client: TestClient, method: str, path: str, key: str | None = None, headers=None, **body):
    """`path` with every parameter a valid id, `key` as a bearer token."""
    url = re.sub(r"\{[^}]+\}", "x1", path)
    headers = {**(headers or {}), **({"Authorization": f"Bearer {key}"} if key else {})}
    return client.request(method, url, headers=headers, **body)


def error_code(answer, status: int) -> str:
    assert answer.status_code == status, answer.text
    return answer.json()["error"]["code"]


INVALID_BODIES = {
    "invalid": {"json": {"not": "the contract"}},
    "not JSON": {"content": b'{"events": [', "headers": {"Content-Type": "application/json"}},
}


def test_the_matrix_covers_every_route():
    assert len(GUARDED) == len(OPERATIONS) - len(PUBLIC) >= 22
    assert ADMIN <= {(m, p) for m, p, _ in GUARDED}
    with_body = {"/v1/events", "/v1/devices", "/v1/feedback", "/v1/templates/{template_id}"}
    assert {p for _, p, body in GUARDED if body} >= with_body


@pytest.mark.parametrize(("method", "path", "has_body"), GUARDED)
def test_openapi_documents_the_bearer_scheme(method, path, has_body):
    operation = SPEC["paths"][path][method.lower()]
    assert operation["security"] == [{"ApiKey": []}]
    assert {"401", "403"} <= set(operation["responses"])
    assert SPEC["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


@pytest.mark.parametrize("body", INVALID_BODIES, ids=list(INVALID_BODIES))
@pytest.mark.parametrize(("method", "path", "has_body"), GUARDED)
def test_no_key_or_an_unknown_key_is_401_before_the_body(client, method, path, has_body, body):
    answer = call(client, method, path, **INVALID_BODIES[body])
    assert error_code(answer, 401) == "unauthorized"
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    answer = call(client, method, path, key="k-unknown", **INVALID_BODIES[body])
    assert answer.json()["error"]["message"] == "unknown API key"
    assert error_code(answer, 401) == "unauthorized"


@pytest.mark.parametrize("body", INVALID_BODIES, ids=list(INVALID_BODIES))
@pytest.mark.parametrize(("method", "path", "has_body"), GUARDED)
def test_a_key_without_the_scope_is_403_before_the_body(client, method, path, has_body, body):
    scope = "admin" if (method, path) in ADMIN else "ingest"
    other = "k-ingest" if scope == "admin" else "k-admin"
    answer = call(client, method, path, key=other, **INVALID_BODIES[body])
    assert error_code(answer, 403) == "forbidden"
    assert f"'{scope}' scope" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "has_body"), [g for g in GUARDED if g[2]])
def test_with_the_right_key_the_body_is_validated(client, method, path, has_body):
    key = "k-admin" if (method, path) in ADMIN else "k-ingest"
    answer = call(client, method, path, key=key, **INVALID_BODIES["invalid"])
    assert error_code(answer, 422) == "validation_error"
    answer = call(client, method, path, key=key, **INVALID_BODIES["not JSON"])
    assert error_code(answer, 400) == "malformed_json"


def test_health_needs_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("headers", "query", "close_code"),
    [
        ({}, "", 4401),
        ({"Authorization": "Basic k-ingest"}, "", 4401),
        ({"Authorization": "Bearer k-unknown"}, "", 4401),
        ({"Authorization": "Bearer k-admin"}, "", 4403),
        ({}, "?api_key=k-admin", 4403),
        ({"Authorization": "Bearer k-admin"}, "?api_key=k-ingest", 4403),  # the header decides
    ],
)
def test_websocket_refusals_close_with_4401_and_4403(client, headers, query, close_code):
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect(f"/v1/users/u1/stream{query}", headers=headers):
            pass
    assert refused.value.code == close_code
