"""The templates API and `notification.requested` at the door, through Serve: a template's
versions and its source, every refusal with the exact field and reason, and events whose
template or variables would leave a hole refused before they are logged."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from pipelines.templates import field_errors, parse
from tests.cluster.test_api import error_of, fields_of, order


def welcome(body: str = "You have {points} points.") -> dict:
    return {
        "category": "marketing",
        "variables": {"name": {"type": "string", "max_length": 20}, "points": {"type": "integer"}},
        "locales": {
            "en": {"title": "Hi {name}", "body": body},
            "de": {"title": "Hallo {name}", "body": "Sie haben {points} Punkte."},
        },
    }


def requested(event_id: str, **fields) -> dict:
    return {
        "event_id": event_id,
        "type": "notification.requested",
        "user_ids": ["u1", "u2"],
        "category": "loyalty",
        **fields,
    }


def post(api: httpx.Client, *events: dict) -> httpx.Response:
    return api.post("/v1/events", json={"events": list(events)})


def refusals(answer: httpx.Response) -> list[tuple[str, str]]:
    """A 422's (field, reason) pairs, in order."""
    return [(f["field"], f["reason"]) for f in error_of(answer, 422)["fields"]]


@pytest.fixture
def shop_template(api: httpx.Client, uid: str):
    """A shop template `welcome.<uid>` (name: string ≤ 20, points: integer), removed after."""
    template_id = f"welcome.{uid}"
    assert api.put(f"/v1/templates/{template_id}", json=welcome()).status_code == 201
    yield template_id
    api.delete(f"/v1/templates/{template_id}")


def test_put_get_list_delete_with_versions(api, uid):
    path = f"/v1/templates/promo.{uid}"
    unknown = {"field": "template_id", "reason": "neither the shop's nor shipped"}
    assert error_of(api.get(path), 404)["fields"] == [unknown]
    created = api.put(path, json=welcome())
    assert created.status_code == 201, created.text
    assert created.json() == {
        "template_id": f"promo.{uid}",
        "version": 1,
        "source": "shop",
        **welcome(),
    }
    assert api.get(path).json() == created.json()
    replaced = api.put(path, json={**welcome("{points} points!"), "template_id": f"promo.{uid}"})
    assert (replaced.status_code, replaced.json()["version"]) == (200, 2)
    assert api.get(path).json()["locales"]["en"]["body"] == "{points} points!"

    listed = {t["template_id"]: t for t in api.get("/v1/templates").json()["templates"]}
    assert (listed[f"promo.{uid}"]["version"], listed[f"promo.{uid}"]["source"]) == (2, "shop")
    assert {listed["price_drop"]["source"], listed["order.placed"]["source"]} == {"default"}
    assert listed["price_drop"]["version"] == 0 and set(listed["price_drop"]["locales"]) >= {
        "en",
        "de",
        "fr",
        "es",
    }

    assert api.delete(path).status_code == 204
    assert error_of(api.get(path), 404)["code"] == "not_found"
    gone = {"field": "template_id", "reason": "the shop has no such template"}
    assert error_of(api.delete(path), 404)["fields"] == [gone]
    again = api.put(path, json=welcome())
    assert (again.status_code, again.json()["version"]) == (201, 3)  # versions are never reused
    api.delete(path)


def test_a_shop_template_replaces_a_shipped_one_until_deleted(api):
    shipped = api.get("/v1/templates/order.refunded").json()
    assert (shipped["version"], shipped["source"]) == (0, "default")
    body = {k: v for k, v in shipped.items() if k not in ("version", "source")}
    try:
        put = api.put("/v1/templates/order.refunded", json=body)
        assert (put.status_code, put.json()["source"]) == (201, "shop")
        assert api.get("/v1/templates/order.refunded").json()["version"] == put.json()["version"]
    finally:
        assert api.delete("/v1/templates/order.refunded").status_code == 204
    assert api.get("/v1/templates/order.refunded").json() == shipped
    assert error_of(api.delete("/v1/templates/order.refunded"), 404)["code"] == "not_found"


def _size_refusal(body: dict) -> list[dict]:
    """What the template library says of a too-big locale (its byte count is derived)."""
    with pytest.raises(ValidationError) as refused:
        parse({**body, "template_id": "t"})
    return field_errors(refused.value)


BIG = {"locales": {"en": {"title": "Hi", "body": "x" * 4000}}}
HI = {"title": "Hi", "body": "x"}
# name → (body, [(field, reason), ...]) the PUT is refused with.
REFUSALS = {
    "undeclared variable": (
        {"locales": {"en": {"title": "Hi", "body": "Use {coupon}"}}},
        [("locales.en.body", "uses {coupon}, which the template does not declare")],
    ),
    "unbalanced brace": (
        {"variables": {"name": {}}, "locales": {"fr": {"title": "Salut {name", "body": "x"}}},
        [("locales.fr.title", "unbalanced '{' at character 6; write '{{' for a literal brace")],
    ),
    "over the payload limit": (
        BIG,
        [(f["field"], f["reason"]) for f in _size_refusal(BIG)],
    ),
    "bad locale tag": (
        {"locales": {"en_US": HI}},
        [("locales.en_US", "locale tag must look like en, pt-BR, zh-Hant or es-419")],
    ),
    "max_length on a number": (
        {"variables": {"n": {"type": "integer", "max_length": 3}}, "locales": {"en": HI}},
        [("variables.n.max_length", "only string and url variables have one")],
    ),
    "version and another id": (
        {"version": 7, "template_id": "other", "locales": {"en": HI}},
        [
            ("version", "set by Herald on every put; leave it out"),
            ("template_id", "must be the path's, 'refused'"),
        ],
    ),
    "no locales": (
        {"locales": {}},
        [("locales", "Dictionary should have at least 1 item after validation, not 0")],
    ),
}


@pytest.mark.parametrize(("body", "fields"), REFUSALS.values(), ids=list(REFUSALS))
def test_every_refused_template_names_its_field(api, body, fields):
    answer = api.put("/v1/templates/refused", json=body)
    assert refusals(answer) == fields
    assert error_of(api.get("/v1/templates/refused"), 404)  # nothing was stored
    if body is BIG:
        assert fields[0][0] == "locales.en.body" and "over the providers' 4096" in fields[0][1]


def test_a_template_body_is_a_json_object_with_a_valid_id(api):
    assert fields_of(api.put("/v1/templates/refused", json=["en"])) == {
        "body": "Input should be a valid dictionary"
    }
    assert "template_id" in fields_of(api.put("/v1/templates/Not%20an%20id", json=welcome()))


def test_openapi_documents_the_template_rules(stack):
    spec = httpx.get(f"{stack.api_url}/openapi.json").json()
    put = spec["paths"]["/v1/templates/{template_id}"]["put"]
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body["title"] == "TemplateIn" and body["additionalProperties"] is False
    variables, locales = body["properties"]["variables"], body["properties"]["locales"]
    assert all(word in variables["description"] for word in ("string", "url", "money", "32"))
    assert all(word in locales["description"] for word in ("pt-BR", "es-419", "4,096", "APNs"))
    assert "title" in locales["additionalProperties"]["properties"]  # the content, inlined
    assert {"200", "201", "422"} <= set(put["responses"])
    assert "placeholders" in put["description"]
    event = spec["components"]["schemas"]["NotificationRequested"]
    assert {"user_ids", "template_id", "content", "variables", "ttl_s", "collapse_key"} <= set(
        event["properties"]
    )


# --- notification.requested at the door ----------------------------------------------------
def test_good_variables_are_accepted(api, uid, shop_template):
    events = [
        requested(
            f"nr-{uid}-shop", template_id=shop_template, variables={"name": "Ann", "points": 3}
        ),
        requested(
            f"nr-{uid}-shipped",
            template_id="order.shipped",
            variables={"order_id": "o1"},
            priority="high",
            ttl_s=3600,
            collapse_key="orders",
            occurred_at=1.7e9,
        ),
        requested(
            f"nr-{uid}-inline",
            content={"title": "Hi {name}", "body": "{{literally}}"},
            variables={"name": "Bo"},
            channels=["inbox"],
            data={"ref": "r1"},
        ),
        order(f"ou-{uid}", template_id=shop_template, name="Cy", points=4, ttl_s=60),
    ]
    answer = post(api, *events)
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == [e["event_id"] for e in events]
    assert api.get(f"/v1/notifications/nr-{uid}-inline").status_code == 200


def test_missing_and_wrong_typed_variables_refuse_the_batch(api, uid, shop_template):
    good = requested(
        f"nr-{uid}-ok", template_id=shop_template, variables={"name": "A", "points": 1}
    )
    answer = post(
        api,
        good,
        requested(f"nr-{uid}-1", template_id=shop_template, variables={"name": "A"}),
        requested(
            f"nr-{uid}-2",
            template_id=shop_template,
            variables={"name": "x" * 21, "points": "3", "extra": 1},
        ),
        requested(
            f"nr-{uid}-3",
            content={"title": "Hi {name}", "body": "{pct} off"},
            variables={"name": ["A"]},
        ),
        order(f"ou-{uid}", template_id=shop_template),
    )
    absent = f"missing (a variable of template {shop_template})"
    assert refusals(answer) == [
        ("events[1].variables.points", "missing"),
        ("events[2].variables.name", "longer than 20 characters"),
        ("events[2].variables.points", "must be an integer"),
        ("events[2].variables.extra", f"not a variable of template {shop_template}"),
        ("events[3].variables.name", "must be a string or a number"),
        ("events[3].variables.pct", "missing"),
        ("events[4].name", absent),
        ("events[4].points", absent),
    ]
    assert error_of(api.get(f"/v1/notifications/nr-{uid}-ok"), 404)  # nothing was logged


def test_unknown_templates_and_malformed_requests(api, uid):
    answer = post(
        api, requested(f"nr-{uid}", template_id="no.such"), order(f"o-{uid}", template_id="nope")
    )
    unknown = "no template {!r}: neither the shop's nor a shipped one"
    assert refusals(answer) == [
        ("events[0].template_id", unknown.format("no.such")),
        ("events[1].template_id", unknown.format("nope")),
    ]
    both = requested(f"nr-{uid}", template_id="order.shipped", content={"title": "a", "body": "b"})
    one = {"events[0].template_id": "give exactly one of template_id and content"}
    assert fields_of(post(api, both)) == one
    assert fields_of(post(api, requested(f"nr-{uid}"))) == one
    many = requested(
        f"nr-{uid}", template_id="order.shipped", user_ids=[f"u{i}" for i in range(1001)]
    )
    assert fields_of(post(api, many)) == {
        "events[0].user_ids": "List should have at most 1000 items after validation, not 1001"
    }
    twice = requested(f"nr-{uid}", template_id="order.shipped", user_ids=["u1", "u1"])
    assert fields_of(post(api, twice)) == {"events[0].user_ids": "each user at most once"}
    options = requested(
        f"nr-{uid}",
        template_id="order.shipped",
        ttl_s=2_419_201,
        collapse_key="k" * 65,
        priority="urgent",
        category="Promo",
        data={"aps": "x"},
    )
    assert set(fields_of(post(api, options))) == {
        f"events[0].{f}" for f in ("ttl_s", "collapse_key", "priority", "category", "data")
    }
    assert set(fields_of(post(api, order(f"o-{uid}", ttl_s=-1, priority="low")))) == {
        "events[0].ttl_s",
        "events[0].priority",
    }


def test_a_push_that_would_not_fit_is_refused(api, uid):
    inline = requested(
        f"nr-{uid}",
        content={"title": "Hi", "body": "{a}{b}"},
        variables={"a": "é" * 2000, "b": "x" * 500},
        data={"ref": "r" * 900},
    )
    ((field, reason),) = fields_of(post(api, inline)).items()
    assert field == "events[0].content" and "over the providers' 4096" in reason
