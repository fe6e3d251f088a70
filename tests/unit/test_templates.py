"""Templates as data, without a cluster: every validation error names its place, braces
escape, rendering is exact and columnar, locales resolve along the documented chain,
variables are refused at the door, and the shipped defaults say what Herald said before."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import ValidationError

from pipelines import price_drops
from pipelines.order_updates import ORDER_STATUSES, TEMPLATES
from pipelines.templates import (
    PAYLOAD_LIMIT_BYTES,
    apns_payload,
    available_locales,
    defaults,
    field_errors,
    parse,
    payload_bytes,
    render,
    resolve_locales,
    validate_variables,
)


def _template(**overrides) -> dict:
    base = {
        "template_id": "order.shipped",
        "variables": {"order_id": {"type": "string"}},
        "locales": {"en": {"title": "Shipped", "body": "Order {order_id} is on its way."}},
    }
    return {**base, **overrides}


def _errors(data: dict) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        parse(data)
    return {e["field"]: e["reason"] for e in field_errors(caught.value)}


# --- validation -----------------------------------------------------------------------------


def test_a_valid_template_parses_with_its_defaults() -> None:
    template = parse(_template())
    assert template.version == 0 and template.category is None
    assert template.variables["order_id"].limit == 64  # the default max_length


@pytest.mark.parametrize(
    ("content", "field", "reason"),
    [
        ({"body": "Order {order} shipped"}, "locales.fr.body", "does not declare"),
        ({"title": "Order {order_id"}, "locales.fr.title", "unbalanced '{'"),
        ({"body": "Order } {order_id}"}, "locales.fr.body", "unbalanced '}'"),
        ({"subtitle": "{Order_Id}"}, "locales.fr.subtitle", "not a variable name"),
        ({"deeplink": "shop://{}"}, "locales.fr.deeplink", "not a variable name"),
        ({"html": "<b>{missing}</b>"}, "locales.fr.html", "does not declare"),
        ({"colour": "red"}, "locales.fr.colour", "Extra inputs are not permitted"),
        ({"badge": -1}, "locales.fr.badge", "greater than or equal to 0"),
    ],
)
def test_content_errors_name_the_locale_and_field(content: dict, field: str, reason: str) -> None:
    locales = {
        "en": {"title": "Shipped", "body": "{order_id}"},
        "fr": {"title": "Expédiée", "body": "{order_id}", **content},
    }
    errors = _errors(_template(locales=locales))
    assert list(errors) == [field]
    assert reason in errors[field]


@pytest.mark.parametrize("tag", ["fr_FR", "EN", "pt-br", "english", "zh-hant", "es-41", ""])
def test_a_locale_tag_of_the_wrong_shape_is_refused(tag: str) -> None:
    errors = _errors(_template(locales={tag: {"title": "t", "body": "b"}}))
    assert list(errors) == [f"locales.{tag}"]


@pytest.mark.parametrize("tag", ["en", "pt-BR", "zh-Hant", "es-419", "zh-Hant-TW", "gsw"])
def test_bcp47_like_tags_are_accepted(tag: str) -> None:
    assert tag in parse(_template(locales={tag: {"title": "t", "body": "b"}})).locales


def test_template_and_variable_declaration_errors() -> None:
    assert list(_errors(_template(template_id="Order.Shipped"))) == ["template_id"]
    assert list(_errors(_template(template_id="x" * 65))) == ["template_id"]
    assert list(_errors(_template(locales={}))) == ["locales"]
    integer_with_length = {"n": {"type": "integer", "max_length": 3}}
    assert list(_errors(_template(variables=integer_with_length))) == ["variables.n.max_length"]
    assert list(_errors(_template(variables={"n": {"type": "date"}}))) == ["variables.n.type"]
    bad_name = {"order_id": {}, "Order": {}}
    assert list(_errors(_template(variables=bad_name))) == ["variables.Order"]
    assert list(_errors(_template(category="promo"))) == ["category"]
    assert list(_errors({**_template(), "owner": "me"})) == ["owner"]


def test_content_over_the_payload_limit_at_max_lengths_is_refused() -> None:
    # 4 bytes per character at worst: 1,000 characters are 4,000 bytes of body alone.
    long = {"order_id": {"type": "string", "max_length": 1000}}
    errors = _errors(_template(variables=long))
    assert list(errors) == ["locales.en.body"]
    assert f"{PAYLOAD_LIMIT_BYTES}" in errors["locales.en.body"]
    # the field that weighs most takes the blame: here the subtitle
    heavy = {"title": "t", "body": "{order_id}", "subtitle": "{order_id} {order_id} {order_id}"}
    sized = {"order_id": {"type": "string", "max_length": 300}}
    errors = _errors(_template(variables=sized, locales={"de": heavy}))
    assert list(errors) == ["locales.de.subtitle"]
    # the same text with a shorter declared maximum fits
    assert parse(_template(variables={"order_id": {"max_length": 200}}, locales={"de": heavy}))


def test_payload_size_counts_utf8_bytes_and_herald_data() -> None:
    fields = {"title": "é", "body": "b", "image_url": "https://x/i.png", "badge": 2}
    payload = apns_payload(fields)
    assert payload["aps"]["alert"] == {"title": "é", "body": "b"}
    assert payload["aps"]["mutable-content"] == 1 and payload["aps"]["badge"] == 2
    sizes = payload_bytes(fields)
    assert sizes["apns"] == len(json.dumps(payload, ensure_ascii=False).encode()) + 400


# --- rendering ------------------------------------------------------------------------------

PROMO = {
    "template_id": "promo",
    "variables": {
        "name": {"type": "string", "max_length": 20},
        "count": {"type": "integer"},
        "price": {"type": "money"},
        "weight": {"type": "number"},
        "link": {"type": "url"},
    },
    "locales": {
        "en": {
            "title": "Hi {name}",
            "body": "{count} items for {price}, {weight} kg. Code {{SAVE}}, set {{{name}}}.",
            "deeplink": "{link}?ref=push",
            "badge": 3,
            "sound": "chime.caf",
            "thread_id": "promo-{name}",
            "category": "PROMO",
            "subject": "Hello {name}",
            "html": "<p>Hi {name} &amp; co</p>",
        },
        "de": {"title": "Hallo {name}", "body": "{count} Artikel für {price}, {weight} kg."},
    },
}


def _frame(rows: list[tuple], *, as_json: bool = True) -> pl.DataFrame:
    variables = [v for _, _, v in rows]
    return pl.DataFrame(
        {
            "template_id": [t for t, _, _ in rows],
            "locale": [loc for _, loc, _ in rows],
            "variables": [json.dumps(v) for v in variables] if as_json else variables,
        }
    )


def _templates() -> dict:
    promo = parse({**PROMO, "version": 7})
    return {**defaults(), "promo": promo}


PROMO_VARS = {"name": "Ann <3", "count": 2, "price": 1234.5, "weight": 1.5, "link": "shop://p/1"}


def test_render_gives_exact_strings_per_template_and_locale() -> None:
    frame = _frame(
        [
            ("order.shipped", "de", {"order_id": "A-1"}),
            ("promo", "en", PROMO_VARS),
            ("order.shipped", "en", {"order_id": "B-2"}),
            ("promo", "de", {**PROMO_VARS, "weight": 3.0}),
            ("order.delivered", "fr", {"order_id": "C-3"}),
        ]
    )
    out = render(frame, _templates(), fields=["title", "body", "deeplink", "badge", "html"])
    assert out.columns == ["title", "body", "deeplink", "badge", "html", "template_version"]
    assert out.rows() == [
        ("Bestellung versandt", "Ihre Bestellung A-1 ist unterwegs.", None, None, None, 0),
        (
            "Hi Ann <3",
            "2 items for 1234.50, 1.5 kg. Code {SAVE}, set {Ann <3}.",
            "shop://p/1?ref=push",
            3,
            "<p>Hi Ann &lt;3 &amp; co</p>",  # values are escaped in html, the markup is not
            7,
        ),
        ("Order shipped", "Your order B-2 is on its way.", None, None, None, 0),
        ("Hallo Ann <3", "2 Artikel für 1234,50, 3 kg.", None, None, None, 7),
        ("Commande livrée", "Votre commande C-3 a été livrée.", None, None, None, 0),
    ]


def test_render_takes_a_struct_column_and_leaves_no_holes() -> None:
    frame = _frame(
        [
            ("promo", "en", {**PROMO_VARS, "price": 0.05}),
            ("promo", "en", {**PROMO_VARS, "count": None}),  # missing → no content
            ("promo", "it", PROMO_VARS),  # a locale the template lacks
            ("nope", "en", PROMO_VARS),  # an unknown template
        ],
        as_json=False,
    )
    out = render(frame, _templates())
    assert out.height == 4 and out["badge"].dtype == pl.Int32
    assert out.row(0, named=True) | {"body": None} == {
        "title": "Hi Ann <3",
        "body": None,
        "subtitle": None,
        "image_url": None,
        "deeplink": "shop://p/1?ref=push",
        "sound": "chime.caf",
        "badge": 3,
        "thread_id": "promo-Ann <3",
        "category": "PROMO",
        "template_version": 7,
    }
    assert out["body"][0] == "2 items for 0.05, 1.5 kg. Code {SAVE}, set {Ann <3}."
    assert out["body"].to_list()[1:] == [None, None, None]
    assert out["template_version"].to_list() == [7, 7, None, None]


def test_render_is_columnar_over_100k_rows() -> None:
    n = 100_000
    statuses = ["shipped", "delivered", "refunded"]
    locales = ["en", "de", "fr", "es"]
    frame = pl.DataFrame(
        {
            "template_id": [f"order.{statuses[i % 3]}" for i in range(n)],
            "locale": [locales[i % 4] for i in range(n)],
            "variables": [{"order_id": f"o{i}"} for i in range(n)],
        }
    )
    out = render(frame, defaults(), fields=["title", "body"])
    copy = {
        t: {loc: (c.title, c.body) for loc, c in v.locales.items()} for t, v in defaults().items()
    }
    expected = [
        (title, body.replace("{order_id}", f"o{i}"))
        for i in range(n)
        for title, body in [copy[f"order.{statuses[i % 3]}"][locales[i % 4]]]
    ]
    assert out.select("title", "body").rows() == expected


# --- locale resolution ----------------------------------------------------------------------


def test_locale_chain_device_then_profile_then_default() -> None:
    available = {"t": ["en", "de", "pt", "pt-BR", "zh-Hant"], "only_fr": ["fr", "es"]}
    frame = pl.DataFrame(
        {
            "template_id": ["t", "t", "t", "t", "t", "t", "t", "only_fr", "only_fr", "x", None],
            "device_locale": [
                "de",
                "pt-PT",
                "it",
                None,
                "zh_hant_TW",
                "PT-br",
                "",
                "de",
                None,
                "en",
                "en",
            ],  # fmt: skip
            "profile_locale": [
                "pt-BR",
                None,
                "pt-BR",
                "de-AT",
                None,
                None,
                None,
                None,
                "es-MX",
                None,
                None,
            ],  # fmt: skip
        }
    )
    assert resolve_locales(frame, available, "en").to_list() == [
        "de",  # the device's locale wins over the profile's
        "pt",  # pt-PT → pt
        "pt-BR",  # an unknown device locale gives way to the profile's
        "de",  # de-AT → de
        "zh-Hant",  # zh_hant_TW read as zh-Hant-TW → zh-Hant
        "pt-BR",  # case-insensitive, canonical case out
        "en",  # nothing usable → the default
        "es",  # neither de nor en: the template's first locale, sorted
        "es",  # es-MX → es
        None,  # an unknown template
        None,  # no template
    ]


def test_locale_chain_tries_the_default_from_specific_to_general() -> None:
    frame = pl.DataFrame({"template_id": ["a", "b"]})  # no device or profile columns
    available = {"a": ["en", "en-GB"], "b": ["en"]}
    assert resolve_locales(frame, available, "en-GB").to_list() == ["en-GB", "en"]


def test_resolved_locales_feed_render() -> None:
    frame = pl.DataFrame(
        {
            "template_id": ["order.shipped", "order.shipped"],
            "device_locale": ["fr-CA", None],
            "profile_locale": [None, "ja"],
            "variables": ['{"order_id": "Z9"}', '{"order_id": "Z8"}'],
        }
    )
    templates = defaults()
    frame = frame.with_columns(locale=resolve_locales(frame, available_locales(templates), "de"))
    assert render(frame, templates)["body"].to_list() == [
        "Votre commande Z9 est en route.",
        "Ihre Bestellung Z8 ist unterwegs.",
    ]


# --- variables at the door ------------------------------------------------------------------


def test_variables_are_checked_against_the_declaration() -> None:
    promo = parse(PROMO)
    assert validate_variables(promo, PROMO_VARS) == []
    assert validate_variables(promo, {**PROMO_VARS, "price": 3}) == []  # an int is a number
    problems = validate_variables(
        promo,
        {"name": "x" * 21, "count": "2", "price": True, "weight": float("nan"), "zip": 1},
    )
    assert problems == [
        ("name", "longer than 20 characters"),
        ("count", "must be an integer"),
        ("price", "must be a number"),
        ("weight", "must be finite and below 1e+15 in size"),
        ("link", "missing"),
        ("zip", "not a variable of template promo"),
    ]
    assert validate_variables(promo, {**PROMO_VARS, "count": 2.0})[0] == (
        "count",
        "must be an integer",
    )
    assert validate_variables(promo, {**PROMO_VARS, "name": None}) == [("name", "missing")]
    assert validate_variables(promo, {**PROMO_VARS, "name": "a\nb"}) == [
        ("name", "must not contain control characters")
    ]
    assert validate_variables(promo, {**PROMO_VARS, "link": "not a url"})[0][0] == "link"
    assert validate_variables(promo, {**PROMO_VARS, "name": 5}) == [("name", "must be a string")]


# --- the shipped defaults -------------------------------------------------------------------


def test_defaults_cover_every_order_status_in_four_languages() -> None:
    shipped = defaults()
    assert set(shipped) == {f"order.{s}" for s in ORDER_STATUSES} | {"price_drop"}
    for template_id, template in shipped.items():
        assert set(template.locales) == {"en", "de", "fr", "es"}, template_id
        assert template.version == 0
    for status in ORDER_STATUSES:
        template = shipped[f"order.{status}"]
        assert list(template.variables) == ["order_id"] and template.category == "order"
        english = template.locales["en"]
        assert (english.title, english.body) == TEMPLATES[status]
        for tag in ("de", "fr", "es"):
            assert "{order_id}" in template.locales[tag].body, (status, tag)
            assert template.locales[tag].title != english.title, (status, tag)


def test_the_english_price_drop_says_what_it_said_before() -> None:
    events = pl.DataFrame(
        {
            "event_id": ["e1", "e2"],
            "title": ["Trail shoes", "Lamp"],
            "new_price": [59.9, 1234.0],
            "old_price": [89.0, 1500.25],
            "currency": ["EUR", "USD"],
        }
    )
    before = price_drops.messages(events)
    frame = events.select(
        template_id=pl.lit("price_drop"),
        locale=pl.lit("en"),
        variables=pl.struct("title", "new_price", "old_price", "currency"),
    )
    now = render(frame, defaults())
    assert now["title"].to_list() == before["title"].to_list()
    assert now["body"].to_list() == before["body"].to_list()
    german = render(frame.with_columns(locale=pl.lit("de")), defaults())["body"][0]
    assert german == "Trail shoes kostet jetzt 59,90 EUR (vorher 89,00 EUR)."
