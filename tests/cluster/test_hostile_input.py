"""Issue 17's reproductions against the running stack: every bad input is a 4xx naming the
field and the reason — never a 503, never stored — and what one bad stored record used to
break (every later campaign) keeps working. The OpenAPI document says what the routes do."""

from __future__ import annotations

import json
import time

import httpx
import pyarrow as pa
import pytest
import ray

from cluster.names import shard_name
from cluster.sharding import shard_of
from tests.cluster.test_api import fields_of
from tests.cluster.test_dead_letters import wait_for

APNS = "ab" * 32


def raw(api: httpx.Client, method: str, url: str, text: str) -> httpx.Response:
    """A body as written (JSON with NaN or Infinity, which httpx will not encode)."""
    return api.request(method, url, content=text, headers={"content-type": "application/json"})


def variant(**fields) -> dict:
    return {"variant_id": "a", "title": "Sale", "body": "Today only", **fields}


def campaign(campaign_id: str, cohort: str, **fields) -> dict:
    return {
        "campaign_id": campaign_id,
        "segment": {"attr": {"name": "cohort", "op": "eq", "value": cohort}},
        "variants": [variant()],
        "channels": ["inbox"],
        **fields,
    }


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_at_the_door(api, uid, number):
    answer = raw(api, "PUT", f"/v1/users/u-{uid}", f'{{"attributes": {{"ltv": {number}}}}}')
    assert "finite" in fields_of(answer)["attributes.ltv"]
    body = json.dumps(campaign(f"c-{uid}", uid))[:-1] + f', "send_at": {number}}}'
    assert "send_at" in fields_of(raw(api, "POST", "/v1/campaigns", body))
    assert api.get(f"/v1/campaigns/c-{uid}").status_code == 404


def _plant_bad_profiles(stack, uid: str) -> list[str]:
    """A profile row whose attributes hold NaN in every shard, written to the shards as
    the door used to let it through."""
    shards, namespace = stack.settings.topology.shards, stack.settings.topology.namespace
    ids, candidate = {}, 0
    while len(ids) < shards:
        user = f"bad-{uid}-{candidate}"
        ids.setdefault(int(shard_of([user], shards)[0]), user)
        candidate += 1
    for shard, user in ids.items():
        row = {
            "user_id": user,
            "country": "DE",
            "locale": "de",
            "timezone": "UTC",
            "attributes": f'{{"ltv": NaN, "cohort": "{uid}"}}',
            "updated_at": time.time(),
        }
        actor = ray.get_actor(shard_name(shard), namespace=namespace)
        ray.get(actor.upsert_profiles.remote(pa.Table.from_pylist([row])))
    return list(ids.values())


def test_one_bad_stored_profile_does_not_fail_every_campaign(stack, api, uid):
    _plant_bad_profiles(stack, uid)
    good = f"good-{uid}"
    profile = {"timezone": "UTC", "attributes": {"cohort": uid, "ltv": 12.5}}
    assert api.put(f"/v1/users/{good}", json=profile).status_code == 200
    assert api.post("/v1/campaigns", json=campaign(f"c-{uid}", uid)).status_code == 202
    status = wait_for(
        lambda: (s := api.get(f"/v1/campaigns/c-{uid}").json())["state"] in ("done", "failed") and s
    )
    assert status["state"] == "done", status.get("error")
    assert status["targeted"] == 1 and status["failures"] == 0  # the bad rows: no attributes
    inbox = wait_for(lambda: api.get(f"/v1/users/{good}/inbox").json()["items"])
    assert inbox[0]["notification_id"] == f"c-{uid}~{good}"


@pytest.mark.parametrize("zone", ["x" * 300, "localtime", "Factory", "right/UTC", "../../etc"])
def test_only_iana_time_zones(api, uid, zone):
    answer = api.put(f"/v1/users/u-{uid}", json={"timezone": zone})
    assert "unknown IANA time zone" in fields_of(answer)["timezone"]
    device = {"user_id": f"u-{uid}", "platform": "ios", "token": APNS, "timezone": zone}
    assert "timezone" in fields_of(api.post("/v1/devices", json=device))
    assert api.put(f"/v1/users/u-{uid}", json={"timezone": "Europe/Berlin"}).status_code == 200


def _order(uid: str, **extra) -> dict:
    event = {"event_id": f"o-{uid}", "type": "order.updated", "user_id": f"u-{uid}"}
    return {"events": [{**event, "order_id": "A1", "status": "shipped", **extra}]}


@pytest.mark.parametrize("depth", [9, 256, 990])
def test_deep_extra_event_fields_are_422(api, uid, depth):
    body = json.dumps(_order(uid, details="DEEP")).replace(
        '"DEEP"', "[" * depth + "1" + "]" * depth
    )
    answer = raw(api, "POST", "/v1/events", body)  # written out: too deep for json.dumps
    if answer.status_code == 400:  # deeper than the replica's JSON parser goes: still 4xx
        assert fields_of(answer, 400) == {"body": "nested too deep to parse"}
    else:
        assert fields_of(answer) == {"events[0].details": "nested more than 8 levels deep"}
    assert api.get(f"/v1/notifications/o-{uid}").status_code == 404  # not in the log


def test_big_extra_event_fields_are_422(api, uid):
    answer = api.post("/v1/events", json=_order(uid, details="x" * 900_000))
    assert "at most 8192 together" in fields_of(answer)["events[0].details"]
    assert api.get(f"/v1/notifications/o-{uid}").status_code == 404
    assert api.post("/v1/events", json=_order(uid, details={"sku": "S1"})).status_code == 202


def test_ints_and_bools_are_strict(api, uid):
    answer = api.put(f"/v1/users/u-{uid}/preferences", json={"max_marketing_per_day": False})
    assert "max_marketing_per_day" in fields_of(answer)
    body = campaign(f"c-{uid}", uid, send_at=1e11)
    assert "send_at" in fields_of(api.post("/v1/campaigns", json=body))


def test_deeplinks_use_the_deployments_schemes(api, uid):
    bad = "javascript:alert(document.cookie)"
    body = campaign(f"c-{uid}", uid, variants=[variant(deeplink=bad)])
    reason = fields_of(api.post("/v1/campaigns", json=body))["variants[0].deeplink"]
    assert "'javascript' is not allowed" in reason
    template = {"locales": {"en": {"title": "T", "body": "B", "deeplink": bad}}}
    answer = api.put(f"/v1/templates/t-{uid}", json=template)
    assert "locales.en.deeplink" in fields_of(answer)
    assert api.get(f"/v1/templates/t-{uid}").status_code == 404
    event = {"event_id": f"r-{uid}", "type": "notification.requested", "user_ids": ["u1"]}
    event |= {"category": "news", "content": {"title": "T", "body": "B", "deeplink": bad}}
    assert "events[0].content.deeplink" in fields_of(
        api.post("/v1/events", json={"events": [event]})
    )
    template["locales"]["en"]["deeplink"] = "shop://orders/{order_id}"
    template["variables"] = {"order_id": {"type": "string"}}
    assert api.put(f"/v1/templates/t-{uid}", json=template).status_code == 201
    assert api.delete(f"/v1/templates/t-{uid}").status_code == 204


@pytest.mark.parametrize("char", ["\x00", "\x07", "\u202e", "\u2066"])
def test_control_and_bidi_characters_never_reach_a_device(api, uid, char):
    body = campaign(f"c-{uid}", uid, variants=[variant(title=f"Sale{char}", body=f"50{char}%")])
    fields = fields_of(api.post("/v1/campaigns", json=body))
    assert {"variants[0].title", "variants[0].body"} <= set(fields)
    template = {"locales": {"en": {"title": f"Hi{char}", "body": "B"}}}
    assert "locales.en.title" in fields_of(api.put(f"/v1/templates/t-{uid}", json=template))
    event = {"event_id": f"r-{uid}", "type": "notification.requested", "user_ids": ["u1"]}
    event |= {"category": "news", "content": {"title": "Hi {name}", "body": "B"}}
    event["variables"] = {"name": f"Ann{char}"}
    answer = api.post("/v1/events", json={"events": [event]})
    assert "control" in fields_of(answer)["events[0].variables.name"]


def test_line_breaks_are_allowed_in_bodies_only(api, uid):
    event = {"event_id": f"r-{uid}", "type": "notification.requested", "user_ids": [f"u-{uid}"]}
    event |= {"category": "news", "content": {"title": "Two", "body": "lines\nhere\tok"}}
    assert api.post("/v1/events", json={"events": [event]}).status_code == 202
    event |= {"event_id": f"r2-{uid}", "content": {"title": "Two\nlines", "body": "B"}}
    answer = api.post("/v1/events", json={"events": [event]})
    assert "U+000A" in fields_of(answer)["events[0].content.title"]


def test_a_chunked_body_over_the_limit_is_413(api, stack):
    limit = stack.settings.api.max_body_bytes

    def chunks():
        yield b'{"events": ["'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"]}'

    answer = api.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
    error = answer.json()["error"]
    assert answer.status_code == 413 and error["code"] == "payload_too_large"
    assert error["fields"] == [{"field": "body", "reason": f"at most {limit} bytes"}]


def test_the_document_says_every_status_a_route_answers(api, uid):
    paths = api.get("/openapi.json").json()["paths"]
    assert {"200", "202"} <= set(paths["/v1/campaigns"]["post"]["responses"])
    assert {"200", "201"} <= set(paths["/v1/devices"]["post"]["responses"])
    assert {"200", "201"} <= set(paths["/v1/templates/{template_id}"]["put"]["responses"])
    assert "503" in paths["/readyz"]["get"]["responses"]
    body = campaign(f"c-{uid}", f"nobody-{uid}")
    assert api.post("/v1/campaigns", json=body).status_code == 202
    assert api.post("/v1/campaigns", json=body).status_code == 200  # documented above
    for status in ("401", "403", "404", "409", "413", "422"):
        schema = paths["/v1/campaigns"]["post"]["responses"][status]["content"]
        assert schema["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_allow_lists_every_method_of_the_path(api, uid):
    answer = api.options(f"/v1/templates/t-{uid}")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "DELETE, GET, PUT"
    answer = api.patch(f"/v1/campaigns/c-{uid}")
    assert answer.status_code == 405 and answer.headers["allow"] == "DELETE, GET"


def test_every_operation_states_its_security(api):
    document = api.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["UserToken"]["bearerFormat"] == "JWT"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path in ("/healthz", "/readyz"):
                assert "security" not in operation
            elif path.startswith("/v1/me"):
                assert operation["security"] == [{"UserToken": []}], (method, path)
            else:
                assert list(operation["security"][0]) == ["ApiKey"], (method, path)
    device = document["components"]["schemas"]["DeviceIn"]
    assert device["allOf"][0]["then"]["properties"]["token"]["pattern"] == "^[0-9a-fA-F]{64}$"
