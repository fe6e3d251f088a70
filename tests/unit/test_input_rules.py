"""The door's value rules, without a cluster: each reproduction of issue 17 refused with a
422 naming the field (or, for the body limit and the Allow header, answered as HTTP says),
and the OpenAPI patterns saying the same as the checks."""

from __future__ import annotations

import json
import logging
import re

import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.errors import ApiError, BodySizeLimit, install_error_handlers
from api.events import EventsIn
from api.input_rules import EXTRA_MAX_BYTES, TIMEZONES
from api.schemas import CampaignIn, DeviceIn, PreferencesIn, ProfileIn
from api.templates import parse_template
from pipelines import templates
from pipelines.segments import users_frame
from pipelines.text_rules import (
    IMAGE_URL_PATTERN,
    MULTI_LINE_PATTERN,
    SINGLE_LINE_PATTERN,
    deeplink_pattern,
    deeplink_problem,
    text_problem,
)

SCHEMES = ("https", "shop")


def refusal(model, data) -> dict[str, str]:
    """{dotted location: message} of the model's refusal of `data` (fails if accepted)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


def order(**extra) -> dict:
    event = {"event_id": "e1", "type": "order.updated", "user_id": "u1", "order_id": "o1"}
    return {"events": [{**event, "status": "shipped", **extra}]}


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_attributes_take_finite_numbers_only(number):
    errors = refusal(ProfileIn, {"attributes": {"ltv": number}})
    assert list(errors) == ["attributes.ltv"] and "finite" in errors["attributes.ltv"]
    # What the door lets in JSON can hold.
    row = ProfileIn.model_validate({"attributes": {"ltv": 1.5, "vip": True, "n": 2, "s": "x"}})
    assert json.loads(json.dumps(row.attributes, allow_nan=False)) == row.attributes


@pytest.mark.parametrize(
    "zone", ["x" * 300, "Factory", "localtime", "posixrules", "right/UTC", "posix/UTC", "Mars/Base"]
)
def test_only_iana_zones(zone):
    errors = refusal(ProfileIn, {"timezone": zone})
    assert "unknown IANA time zone" in errors["timezone"]
    device = {"platform": "ios", "token": "a" * 64, "user_id": "u1", "timezone": zone}
    assert "timezone" in refusal(DeviceIn, device)


def test_the_zone_list_is_canonical_and_has_the_common_zones():
    assert {"UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata"} <= set(TIMEZONES)
    assert not [z for z in TIMEZONES if z in ("Factory", "localtime") or z.startswith("right/")]
    assert ProfileIn.model_validate({"timezone": "Pacific/Auckland"}).timezone == "Pacific/Auckland"
    schema = ProfileIn.model_json_schema()["properties"]["timezone"]["anyOf"][0]
    assert schema["enum"] == list(TIMEZONES) and schema["maxLength"] == 64


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value} if _ % 2 else [value]
    return value


def test_extra_event_fields_are_bounded():
    assert EventsIn.model_validate(order(details=nested(8)))
    for deep in (9, 300, 990, 20_000):  # measured without recursion: no 503
        errors = refusal(EventsIn, order(details=nested(deep)))
        assert errors == {"events.0.order.updated.details": "nested more than 8 levels deep"}
    errors = refusal(EventsIn, order(details="x" * 900_000))
    assert "at most 8192 together" in errors["events.0.order.updated.details"]
    assert EventsIn.model_validate(order(details="x" * (EXTRA_MAX_BYTES - 100)))
    errors = refusal(EventsIn, order(details={"weight": float("nan")}))
    assert "finite" in errors["events.0.order.updated.details"]


def test_ints_and_bools_are_strict_and_times_bounded():
    assert "max_marketing_per_day" in refusal(PreferencesIn, {"max_marketing_per_day": False})
    assert "channels.push" in refusal(PreferencesIn, {"channels": {"push": 1}})
    assert PreferencesIn.model_validate({"max_marketing_per_day": 0}).max_marketing_per_day == 0
    base = {"campaign_id": "c1", "segment": {"country": ["DE"]}}
    base["variants"] = [{"variant_id": "a", "title": "T", "body": "B"}]
    for send_at in (float("inf"), float("nan"), 1e11):
        assert "send_at" in refusal(CampaignIn, {**base, "send_at": send_at})
    assert "respect_quiet_hours" in refusal(CampaignIn, {**base, "respect_quiet_hours": 0})
    assert "audience_limit" in refusal(CampaignIn, {**base, "audience_limit": True})
    assert "events.0.order.updated.sequence" in refusal(EventsIn, order(sequence=True))


@pytest.mark.parametrize(
    ("link", "allowed"),
    [
        ("javascript:alert(1)", False),
        ("JavaScript:alert(1)", False),
        ("file:///etc/passwd", False),
        ("intent://x#Intent;end", False),
        ("shop", False),
        ("https://shop.example/p/1", True),
        ("shop://orders/A1", True),
        ("shop://order/{order_id}", True),
        ("https://x y", False),
    ],
)
def test_deeplink_schemes(link, allowed):
    assert (deeplink_problem(link, SCHEMES) is None) is allowed
    # The OpenAPI pattern states the default rule.
    assert bool(re.fullmatch(deeplink_pattern(SCHEMES), link)) is allowed
    assert deeplink_problem("myapp://x", ["myapp"]) is None  # the setting decides


def test_template_deeplinks_are_checked_against_the_deployment():
    body = {"locales": {"en": {"title": "T", "body": "B", "deeplink": "javascript:alert(1)"}}}
    with pytest.raises(ApiError) as caught:
        parse_template("promo", body, SCHEMES)
    assert caught.value.status == 422
    assert [f["field"] for f in caught.value.fields] == ["locales.en.deeplink"]
    body["locales"]["en"]["deeplink"] = "myapp://x"
    assert parse_template("promo", body, ["myapp"]).locales["en"].deeplink == "myapp://x"


@pytest.mark.parametrize(
    "char", ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u202a", "\u202e", "\u2066", "\u2069"]
)
def test_control_and_bidi_characters_are_refused_in_content(char):
    assert text_problem(f"a{char}b") and text_problem(f"a{char}b", multiline=True)
    for pattern in (SINGLE_LINE_PATTERN, MULTI_LINE_PATTERN):  # the schema says the same
        assert not re.fullmatch(pattern, f"a{char}b")
    base = {"campaign_id": "c1", "segment": {"country": ["DE"]}}
    variant = {"variant_id": "a", "title": f"Sale{char}", "body": f"50{char}%"}
    errors = refusal(CampaignIn, {**base, "variants": [variant]})
    assert {"variants.0.title", "variants.0.body"} <= set(errors)
    content = {"title": f"Hi{char}", "body": "B", "subtitle": f"x{char}"}
    with pytest.raises(ValidationError) as caught:
        templates.parse({"template_id": "t", "locales": {"en": content}})
    assert {".".join(map(str, e["loc"])) for e in caught.value.errors()} == {
        "locales.en.title",
        "locales.en.subtitle",
    }
    inline = {"event_id": "e", "type": "notification.requested", "user_ids": ["u"]}
    inline |= {"category": "news", "content": {"title": "T", "body": f"B{char}"}}
    assert "events.0.notification.requested.content.body" in refusal(EventsIn, {"events": [inline]})


def test_line_breaks_and_tabs_only_in_bodies():
    assert text_problem("two\nlines\tand a tab", multiline=True) is None
    assert re.fullmatch(MULTI_LINE_PATTERN, "two\nlines\r\n\t")
    assert "U+000A" in (text_problem("two\nlines") or "")
    base = {"campaign_id": "c1", "segment": {"country": ["DE"]}}
    ok = CampaignIn.model_validate(
        {**base, "variants": [{"variant_id": "a", "title": "T", "body": "1\n2"}]}
    )
    assert ok.variants[0].body == "1\n2"
    assert "variants.0.title" in refusal(
        CampaignIn, {**base, "variants": [{"variant_id": "a", "title": "1\n2", "body": "B"}]}
    )


def tiny_app(max_bytes: int) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=BodySizeLimit.Limit(max_bytes=max_bytes))

    @app.post("/things")
    async def post(body: dict) -> dict:
        return {"keys": len(body)}

    @app.get("/things/special")
    async def special() -> dict:
        return {}

    @app.get("/things/{thing_id}")
    async def get(thing_id: str) -> dict:
        return {}

    @app.delete("/things/{thing_id}")
    async def delete(thing_id: str) -> dict:
        return {}

    return app


def test_a_chunked_body_over_the_limit_is_413():
    client = TestClient(tiny_app(1000))

    def chunks(total: int):
        for _ in range(total // 100):
            yield b" " * 100

    answer = client.post(
        "/things", content=chunks(5000), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["fields"] == [{"field": "body", "reason": "at most 1000 bytes"}]
    json_type = {"content-type": "application/json"}
    answer = client.post("/things", content=iter([b'{"a": ', b"1}"]), headers=json_type)
    assert answer.status_code == 200 and answer.json() == {"keys": 1}
    assert client.post("/things", content=b"x" * 2000).status_code == 413  # by Content-Length


def test_json_too_deep_to_parse_is_a_400_naming_the_body():
    client = TestClient(tiny_app(1 << 20))
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    answer = client.post("/things", content=deep, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["fields"] == [
        {"field": "body", "reason": "nested too deep to parse"}
    ]


def test_allow_lists_every_method_of_the_path():
    client = TestClient(tiny_app(1000))
    answer = client.options("/things/1")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "DELETE, GET"
    assert answer.json()["error"]["fields"][0]["field"] == "method"
    assert client.put("/things/1").headers["allow"] == "DELETE, GET"
    # A literal path before a pattern that also matches it: its own methods only.
    assert client.options("/things/special").headers["allow"] == "GET"


def test_a_profile_that_does_not_decode_is_skipped_not_fatal(caplog):
    profiles = pl.DataFrame(
        {
            "user_id": ["good", "nan", "nested"],
            "country": ["DE", "DE", "FR"],
            "locale": ["de", "de", "fr"],
            "attributes": ['{"ltv": 3}', '{"ltv": NaN}', '{"ltv": {"x": 1}}'],
        }
    )
    with caplog.at_level(logging.ERROR, logger="herald.segments"):
        frame = users_frame(profiles)
    assert frame["user_id"].to_list() == ["good", "nan", "nested"]
    assert frame["attributes"].struct.field("ltv").to_list() == [3, None, None]
    assert "2 profile row(s)" in caplog.text and "nan, nested" in caplog.text


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cdn.shop.example/p/1.png", True),
        ("http://cdn.shop.example/p/2.png", True),
        ("javascript:alert(1)", False),
        ("file:///etc/passwd", False),
        ("ftp://cdn/x.png", False),
        ("{image}", False),  # the scheme is written out; placeholders only after it
        ("https://cdn/a b.png", False),
    ],
)
def test_template_image_urls_are_http_or_https(url, allowed):
    body = {"locales": {"en": {"title": "T", "body": "B", "image_url": url}}}
    if allowed:
        assert parse_template("promo", body, SCHEMES).locales["en"].image_url == url
        assert re.fullmatch(IMAGE_URL_PATTERN, url)
        return
    with pytest.raises(ApiError) as caught:
        parse_template("promo", body, SCHEMES)
    assert caught.value.status == 422
    assert [f["field"] for f in caught.value.fields] == ["locales.en.image_url"]
    assert "http" in caught.value.fields[0]["reason"]
    assert not re.fullmatch(IMAGE_URL_PATTERN, url)  # the schema says the same


@pytest.mark.parametrize(("value", "stored"), [(5, 5), (58.0, 58), (0.0, 0)])
def test_integer_fields_take_what_json_schema_calls_an_integer(value, stored):
    """`{"type": "integer"}` holds 58.0 (a client in JavaScript sends no other kind)."""
    assert (
        PreferencesIn.model_validate({"max_marketing_per_day": value}).max_marketing_per_day
        == stored
    )


@pytest.mark.parametrize("value", [False, True, 58.5, "5", None])
def test_integer_fields_refuse_booleans_fractions_and_strings(value):
    with pytest.raises(ValidationError) as caught:
        PreferencesIn.model_validate({"max_marketing_per_day": value})
    assert caught.value.errors()[0]["loc"] == ("max_marketing_per_day",)
