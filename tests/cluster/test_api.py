"""Bad input at the door: the right 4xx, the error shape, the field and the reason."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ops.demo import apns_token, fcm_token


def error_of(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and {"code", "message", "fields"} <= set(body["error"])
    return body["error"]


def fields_of(answer: httpx.Response, status: int = 422) -> dict[str, str]:
    return {f["field"]: f["reason"] for f in error_of(answer, status)["fields"]}


def order(event_id: str, **overrides) -> dict:
    return {
        "event_id": event_id,
        "type": "order.updated",
        "user_id": "u1",
        "order_id": "o1",
        "status": "shipped",
        **overrides,
    }


def test_health_needs_no_key(stack):
    assert httpx.get(f"{stack.api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.api_url}/readyz").status_code == 200


def test_missing_and_unknown_keys_are_401(stack):
    answer = httpx.post(f"{stack.api_url}/v1/events", json={"events": [order("x")]})
    assert error_of(answer, 401)["code"] == "unauthorized"
    answer = httpx.post(
        f"{stack.api_url}/v1/events",
        json={"events": [order("x")]},
        headers={"Authorization": "Bearer nope"},
    )
    assert error_of(answer, 401)["message"] == "unknown API key"


def test_key_without_scope_is_403(stack):
    answer = httpx.get(
        f"{stack.api_url}/v1/admin/stats", headers={"Authorization": "Bearer test-ingest"}
    )
    assert "admin" in error_of(answer, 403)["message"]


def test_admin_stats(api):
    stats = api.get("/v1/admin/stats").json()
    assert len(stats["shards"]) == 2 and "transactional" in stats["log_backlog"]


def test_malformed_json_is_400(api):
    answer = api.post(
        "/v1/events", content=b'{"events": [', headers={"Content-Type": "application/json"}
    )
    assert error_of(answer, 400)["code"] == "malformed_json"


def test_missing_and_wrong_typed_fields(api):
    event = order("e-missing")
    del event["user_id"]
    assert "events[0].user_id" in fields_of(api.post("/v1/events", json={"events": [event]}))
    answer = api.post("/v1/events", json={"events": [order("e-type", order_id=["x"])]})
    assert "events[0].order_id" in fields_of(answer)
    answer = api.post("/v1/events", json={"events": [order("e-status", status="teleported")]})
    assert "events[0].status" in fields_of(answer)


def test_unknown_event_type(api):
    answer = api.post("/v1/events", json={"events": [order("e-u", type="order.exploded")]})
    reasons = fields_of(answer)
    assert "events[0].type" in reasons and "order.updated" in reasons["events[0].type"]


def test_batch_limits(api):
    too_many = [order(f"e-{i}") for i in range(1001)]
    assert "events" in fields_of(api.post("/v1/events", json={"events": too_many}))
    assert "events" in fields_of(api.post("/v1/events", json={"events": []}))


def test_body_over_one_mib_is_413(api):
    big = json.dumps({"events": [order("big", note="x" * (1 << 20))]})
    answer = api.post("/v1/events", content=big, headers={"Content-Type": "application/json"})
    assert error_of(answer, 413)["fields"][0]["field"] == "body"


@pytest.mark.parametrize(
    ("platform", "token"),
    [("ios", "abc"), ("ios", "g" * 64), ("android", "not-a-token"), ("web", apns_token())],
)
def test_bad_token_shapes(api, platform, token):
    answer = api.post("/v1/devices", json={"user_id": "u1", "platform": platform, "token": token})
    assert "token" in fields_of(answer)


def test_bad_device_fields(api):
    body = {"user_id": "u1", "platform": "ios", "token": apns_token(), "timezone": "Mars/Base"}
    assert "Mars/Base" in fields_of(api.post("/v1/devices", json=body))["timezone"]
    body = {"user_id": "u1", "platform": "symbian", "token": fcm_token()}
    assert "platform" in fields_of(api.post("/v1/devices", json=body))
    body = {"user_id": "u 1", "platform": "android", "token": fcm_token(), "colour": "red"}
    assert {"user_id", "colour"} <= set(fields_of(api.post("/v1/devices", json=body)))


def test_bad_preferences(api):
    answer = api.put("/v1/users/u1/preferences", json={"quiet_hours": {"start": "25:00"}})
    assert {"quiet_hours.start", "quiet_hours.end"} <= set(fields_of(answer))
    answer = api.put("/v1/users/u1/preferences", json={"max_marketing_per_day": -1})
    assert "max_marketing_per_day" in fields_of(answer)


def test_unknown_ids_are_404(api):
    assert error_of(api.get("/v1/notifications/never-sent"), 404)["code"] == "not_found"
    assert error_of(api.delete("/v1/devices/dev_unknown"), 404)["code"] == "not_found"


def test_openapi_documents_the_contract(stack):
    spec = httpx.get(f"{stack.api_url}/openapi.json").json()
    assert {"/v1/events", "/v1/devices", "/v1/notifications/{notification_id}"} <= set(
        spec["paths"]
    )
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/events"]["post"]["security"] == [{"ApiKey": ["ingest"]}]
    assert spec["paths"]["/v1/me/inbox"]["get"]["security"] == [{"UserToken": []}]


def test_each_replica_checks_keys_before_the_body(stack):
    """The scope matrix (tests/unit/test_auth.py) through Serve: the keys a route checks are
    the replica's own settings, and a bad key wins over a bad body on every route."""
    spec = httpx.get(f"{stack.api_url}/openapi.json").json()
    answers = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if "security" not in operation:
                continue
            url = stack.api_url + re.sub(r"\{[^}]+\}", "x1", path)
            ((scheme, scopes),) = operation["security"][0].items()
            # The ingest key on an ingest route with a body reaches validation: 422.
            if scheme == "UserToken":
                with_ingest = 401  # a service key is no user token
            elif scopes != ["ingest"]:
                with_ingest = 403
            else:
                with_ingest = 422 if "requestBody" in operation else None
            for key, status in [(None, 401), ("nope", 401), ("test-ingest", with_ingest)]:
                if status is None:
                    continue
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                answer = httpx.request(method, url, json={"not": "the contract"}, headers=headers)
                answers.append((method, path, key, answer.status_code, status))
    assert len({(m, p) for m, p, *_ in answers}) >= 30
    assert [a for a in answers if a[3] != a[4]] == []


def test_service_stream_takes_the_key_in_the_header_only(stack):
    """The URL is logged by proxies: a key in `?api_key=` is not looked at (and a key lacking
    the read scope is refused), only the header is."""
    url = stack.stream_url + "/v1/users/u-ws/stream"
    with connect(url, additional_headers={"Authorization": "Bearer test-admin"}) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"type": "subscribed", "user_id": "u-ws"}
    for query, headers in (
        ("?api_key=test-admin", {}),
        ("", {"Authorization": "Bearer test-ingest"}),
    ):
        with (
            pytest.raises(InvalidStatus) as refused,
            connect(url + query, additional_headers=headers),
        ):
            pass
        assert refused.value.response.status_code == 403  # closed before the handshake ends
