"""The scope matrix of the real route table, without a cluster: every route × every kind of
caller — no credential, an unknown key, a key of each scope, the user token of the owner
and of someone else — gets in or is refused with 401/403, before its body is validated,
even when the body is invalid or not JSON at all.

The app runs in-process: Serve's replica context (where routes find their `self`, the keys
and the token verifier, see `serve_app._replica`) is replaced by a stand-in ingress that
has only settings and a verifier. Any other attribute a handler reaches for raises
`Reached`: a request that gets that far was let in (and a body route let in answers 422
for its invalid body first).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import serve_app
from api.stream_app import stream_app
from api.user_tokens import UserTokens, mint
from cluster.settings import HeraldSettings

KEYS = {
    "k-ingest": ["ingest"],
    "k-read": ["read"],
    "k-campaigns": ["campaigns"],
    "k-admin": ["admin"],
}
SECRETS = {"2026-11": "s" * 40, "2026-12": "t" * 40}  # two kids: a rotation in progress
SECRET_SETTING = json.dumps(SECRETS)
AUDIENCE = "herald"
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
SCOPE = {
    ("GET", "/v1/admin/stats"): "admin",
    ("POST", "/v1/admin/credentials/reload"): "admin",
    ("GET", "/v1/admin/erasures"): "admin",
    ("DELETE", "/v1/users/{user_id}"): "admin",
    ("GET", "/v1/users/{user_id}/export"): "admin",
    ("GET", "/v1/models"): "admin",
    ("POST", "/v1/models/{version}/shadow"): "admin",
    ("DELETE", "/v1/models/shadow"): "admin",
    ("POST", "/v1/models/{version}/deploy"): "admin",
    ("POST", "/v1/models/rollback"): "admin",
    ("GET", "/v1/templates"): "admin",
    ("GET", "/v1/templates/{template_id}"): "admin",
    ("PUT", "/v1/templates/{template_id}"): "admin",
    ("DELETE", "/v1/templates/{template_id}"): "admin",
    ("POST", "/v1/devices"): "ingest",
    ("DELETE", "/v1/devices/{device_id}"): "ingest",
    ("POST", "/v1/devices/{device_id}/heartbeat"): "ingest",
    ("PUT", "/v1/users/{user_id}"): "ingest",
    ("PUT", "/v1/users/{user_id}/preferences"): "ingest",
    ("PUT", "/v1/users/{user_id}/wishlist"): "ingest",
    ("POST", "/v1/events"): "ingest",
    ("POST", "/v1/feedback"): "ingest",
    ("GET", "/v1/notifications/{notification_id}"): "read",
    ("GET", "/v1/users/{user_id}/inbox"): "read",
    ("POST", "/v1/campaigns"): "campaigns",
    ("GET", "/v1/campaigns/{campaign_id}"): "campaigns",
    ("DELETE", "/v1/campaigns/{campaign_id}"): "campaigns",
    ("GET", "/v1/me/inbox"): "user",
    ("GET", "/v1/me/inbox/unread"): "user",
    ("POST", "/v1/me/inbox/{notification_id}/read"): "user",
    ("POST", "/v1/me/inbox/read-all"): "user",
    ("DELETE", "/v1/me/inbox/{notification_id}"): "user",
    ("GET", "/v1/me/preferences"): "user",
    ("PUT", "/v1/me/preferences"): "user",
    ("POST", "/v1/me/devices"): "user",
    ("DELETE", "/v1/me/devices/{device_id}"): "user",
    ("POST", "/v1/me/devices/{device_id}/heartbeat"): "user",
    ("POST", "/v1/me/feedback"): "user",
}
SPEC = serve_app.api.openapi()
OPERATIONS = sorted(
    (method.upper(), path, "requestBody" in operation)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
)
GUARDED = [(m, p, body) for m, p, body in OPERATIONS if (m, p) not in PUBLIC]
OWNER, OTHER = "u-owner", "u-other"
CALLERS = ["none", "unknown key", *KEYS, "owner token", "other token"]


class Reached(Exception):
    """A handler got past every check and asked the stand-in for a store."""


class StandIn:
    def __init__(self) -> None:
        api = type("Api", (), {"api_keys": KEYS, "allowed_origins": ["https://shop.example"]})
        self.settings = type("Settings", (), {"api": api})()
        self.user_tokens = UserTokens(SECRET_SETTING, None, AUDIENCE)

    def __getattr__(self, name: str):
        raise Reached(name)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    context = type("Context", (), {"servable_object": StandIn()})()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serve_app.serve, "get_replica_context", lambda: context)
        yield TestClient(serve_app.api)


@pytest.fixture(scope="module")
def streams() -> TestClient:
    """The stream gateway's app (`api.stream_app`) with the same keys and token secret; its
    `Live` is a stand-in too, so a socket let past every check reaches `Reached`."""
    settings = HeraldSettings(
        api_keys=KEYS, allowed_origins=["https://shop.example"], user_token_secret=SECRET_SETTING
    )
    app = stream_app(settings)
    app.state.live = StandIn()
    return TestClient(app)


def token(user: str = OWNER, **claims) -> str:
    return mint(SECRET_SETTING, user, AUDIENCE, kid=claims.pop("kid", "2026-12"))


def bearer(caller: str) -> str | None:
    return {
        "none": None,
        "unknown key": "k-unknown",
        "owner token": token(OWNER),
        "other token": token(OTHER),
    }.get(caller, caller)


def call(client: TestClient, method: str, path: str, credential: str | None = None, **body):
    """`path` with every parameter a valid id, `credential` as a bearer token."""
    url = re.sub(r"\{[^}]+\}", "x1", path)
    headers = {**body.pop("headers", {})}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    return client.request(method, url, headers=headers, **body)


def expected(scope: str, caller: str) -> int | str:
    """401, 403 or "in" for a caller on a route of `scope`."""
    if scope == "user":
        return "in" if caller.endswith("token") else 401
    if caller in KEYS:
        return "in" if scope in KEYS[caller] or "admin" in KEYS[caller] else 403
    return 401


INVALID = {"json": {"not": "the contract"}}
NOT_JSON = {"content": b'{"events": [', "headers": {"Content-Type": "application/json"}}


def test_the_matrix_covers_every_route():
    assert {(m, p) for m, p, _ in GUARDED} == set(SCOPE)
    with_body = {"/v1/events", "/v1/devices", "/v1/feedback", "/v1/me/feedback"}
    assert {p for _, p, body in GUARDED if body} >= with_body


@pytest.mark.parametrize(("method", "path", "has_body"), GUARDED)
def test_openapi_documents_each_routes_scheme_and_scope(method, path, has_body):
    operation = SPEC["paths"][path][method.lower()]
    scope = SCOPE[(method, path)]
    want = [{"UserToken": []}] if scope == "user" else [{"ApiKey": [scope]}]
    assert operation["security"] == want
    assert {"401", "403"} <= set(operation["responses"])
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["ApiKey"]["scheme"] == schemes["UserToken"]["scheme"] == "bearer"
    assert schemes["UserToken"]["bearerFormat"] == "JWT"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path", "has_body"), GUARDED)
def test_scope_matrix(client, method, path, has_body, caller):
    """Every route × every caller: in, or refused before the (invalid) body is looked at."""
    want = expected(SCOPE[(method, path)], caller)
    try:
        answer = call(client, method, path, bearer(caller), **(INVALID if has_body else {}))
    except Reached:
        assert want == "in", f"{caller} reached the handler of {method} {path}"
        return
    if want == "in":
        assert answer.status_code == 422, answer.text  # let in: its body is checked
        assert answer.json()["error"]["code"] == "validation_error"
    else:
        assert answer.status_code == want, answer.text
        assert answer.json()["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[want]


@pytest.mark.parametrize("caller", ["none", "unknown key", "k-read", "owner token"])
@pytest.mark.parametrize(("method", "path", "has_body"), [g for g in GUARDED if g[2]])
def test_a_body_that_is_not_json_gets_the_credentials_answer_first(
    client, method, path, has_body, caller
):
    want = expected(SCOPE[(method, path)], caller)
    answer = call(client, method, path, bearer(caller), **NOT_JSON)
    if want == "in":
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "malformed_json"
    else:
        assert answer.status_code == want, answer.text


def test_health_needs_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": OWNER, "aud": AUDIENCE, "iat": now, "exp": now + 600, **extra}


def _unsigned(header: dict, claims: dict) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _hs256(header: dict, claims: dict, secret: bytes) -> str:
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


def _tampered() -> str:
    head, body, signature = token().split(".")
    other = _b64(json.dumps(_claims(sub=OTHER)).encode())
    return f"{head}.{other}.{signature}"


BAD_TOKENS = {
    "expired": lambda: jwt.encode(
        _claims(exp=int(time.time()) - 120), SECRETS["2026-12"], headers={"kid": "2026-12"}
    ),
    "no exp": lambda: jwt.encode(
        {k: v for k, v in _claims().items() if k != "exp"},
        SECRETS["2026-12"],
        headers={"kid": "2026-12"},
    ),
    "wrong audience": lambda: jwt.encode(
        _claims(aud="another-service"), SECRETS["2026-12"], headers={"kid": "2026-12"}
    ),
    "wrong kid": lambda: jwt.encode(_claims(), SECRETS["2026-12"], headers={"kid": "2025-01"}),
    "no kid": lambda: jwt.encode(_claims(), SECRETS["2026-12"]),
    "alg none": lambda: _unsigned({"alg": "none", "typ": "JWT", "kid": "2026-12"}, _claims()),
    "signed by another secret": lambda: jwt.encode(_claims(), "x" * 40, headers={"kid": "2026-12"}),
    "tampered": _tampered,
    "a service key": lambda: "k-admin",
    "not a user id": lambda: jwt.encode(
        _claims(sub="a b"), SECRETS["2026-12"], headers={"kid": "2026-12"}
    ),
}


@pytest.mark.parametrize("name", BAD_TOKENS)
def test_bad_user_tokens_are_401(client, name):
    answer = call(client, "GET", "/v1/me/inbox", BAD_TOKENS[name]())
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["message"].startswith(("user token refused", "send"))


def test_both_kids_of_a_rotation_are_accepted(client):
    for kid in SECRETS:
        with pytest.raises(Reached):
            call(client, "GET", "/v1/me/inbox", token(kid=kid))


def _pems() -> dict[str, tuple[object, str]]:
    """Private keys and their public PEMs: P-256 and RSA-2048."""
    pems = {}
    for kid, key in (("ec", ec.generate_private_key(ec.SECP256R1())), ("rsa", _rsa())):
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pems[kid] = (key, public.decode())
    return pems


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_public_keys_verify_es256_and_rs256_and_refuse_algorithm_confusion():
    pems = _pems()
    tokens = UserTokens(None, json.dumps({k: pem for k, (_, pem) in pems.items()}), AUDIENCE)
    for kid, alg in (("ec", "ES256"), ("rsa", "RS256")):
        private, pem = pems[kid]
        good = jwt.encode(_claims(), private, algorithm=alg, headers={"kid": kid})
        assert tokens.verify(good) == OWNER
        # The public key used as an HS256 secret: the classic confusion attack.
        forged = _hs256({"alg": "HS256", "typ": "JWT", "kid": kid}, _claims(), pem.encode())
        with pytest.raises(Exception, match="verifies"):
            tokens.verify(forged)
    with pytest.raises(Exception, match="verifies"):
        tokens.verify(_unsigned({"alg": "none", "kid": "ec"}, _claims()))


def test_short_secrets_and_bad_keys_are_refused_at_start():
    with pytest.raises(ValueError, match="32 bytes"):
        UserTokens("short", None, AUDIENCE)
    with pytest.raises(ValueError, match="PEM"):
        UserTokens(None, "not a pem", AUDIENCE)
    with pytest.raises(ValueError, match="JSON"):
        UserTokens('{"k1": ', None, AUDIENCE)


def test_no_keys_configured_closes_v1_me(client):
    with pytest.raises(Exception, match="not configured"):
        UserTokens(None, None, AUDIENCE).verify(token())


def _ws_refusal(client: TestClient, url: str, **kwargs) -> int:
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect(url, **kwargs) as ws:
            ws.receive_text()
    return refused.value.code


@pytest.mark.parametrize(
    ("headers", "query", "close_code"),
    [
        ({}, "", 4401),
        ({"Authorization": "Basic k-read"}, "", 4401),
        ({"Authorization": "Bearer k-unknown"}, "", 4401),
        ({"Authorization": "Bearer k-ingest"}, "", 4403),
        ({}, "?api_key=k-read", 4401),  # never from the URL
        ({"Authorization": f"Bearer {token()}"}, "", 4401),  # a user token is no service key
    ],
)
def test_service_stream_refusals_close_with_4401_and_4403(streams, headers, query, close_code):
    assert _ws_refusal(streams, f"/v1/users/u1/stream{query}", headers=headers) == close_code


def test_service_stream_lets_a_read_key_in(streams):
    with pytest.raises(Reached):
        with streams.websocket_connect(
            "/v1/users/u1/stream", headers={"Authorization": "Bearer k-read"}
        ) as ws:
            ws.receive_text()


def test_user_stream_refusals_after_accept(streams):
    client = streams
    url = "/v1/me/stream"
    good = ["herald.v1", f"bearer.{token()}"]
    assert _ws_refusal(client, url, subprotocols=["herald.v1", "bearer.nope"]) == 4401
    bad_kid = jwt.encode(_claims(), SECRETS["2026-12"], headers={"kid": "old"})
    assert _ws_refusal(client, url, subprotocols=["herald.v1", f"bearer.{bad_kid}"]) == 4401
    evil = {"origin": "https://evil.example"}
    assert _ws_refusal(client, url, subprotocols=good, headers=evil) == 4403
    other_port = {"origin": "http://testserver:9"}  # the host, but not Herald's API port
    assert _ws_refusal(client, url, subprotocols=good, headers=other_port) == 4403
    # A first auth message instead of the subprotocol: a bad one is refused too.
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect(url) as ws:
            ws.send_json({"type": "auth", "token": BAD_TOKENS["expired"]()})
            ws.receive_text()
    assert refused.value.code == 4401


def test_user_stream_lets_a_good_token_and_origin_in(streams):
    """Past every check the stream asks the gateway's `Live` for the unread count (the
    stand-in has none). Allowed: a listed origin, the gateway's own, Herald's API on the
    gateway's host (the demo page), and no origin (an app, not a browser)."""
    client = streams
    port = HeraldSettings().api.http_port
    for origin in ("https://shop.example", "http://testserver", f"http://testserver:{port}", None):
        headers = {"origin": origin} if origin else {}
        with pytest.raises(Reached):
            with client.websocket_connect(
                "/v1/me/stream", subprotocols=["herald.v1", f"bearer.{token()}"], headers=headers
            ) as ws:
                ws.receive_text()
