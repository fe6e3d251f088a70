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
from pipelines.template_model import PUSH_FIELDS
from pipelines.template_render import decimal_separator
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


# --- equivalence with the per-(template, locale) implementation ------------------------------
# The renderer before the join-based one (one `concat_str` per field per pair, one expression
# tree per candidate locale), kept as the reference the columnar one must equal exactly.


def _reference_render(frame: pl.DataFrame, templates: dict, fields) -> pl.DataFrame:
    from pipelines.template_model import pieces
    from pipelines.template_render import OUTPUT_SCHEMA

    def text(value: str, prefix: str) -> pl.Expr:
        parts = [pl.col(prefix + p.text) if p.variable else pl.lit(p.text) for p in pieces(value)]
        return parts[0].cast(pl.String) if len(parts) == 1 else pl.concat_str(parts)

    columns = ["template_id", "locale", *(["variables"] if "variables" in frame.columns else [])]
    rows = frame.select(columns).with_row_index("_row")
    schema = {"_row": pl.UInt32(), **{f: OUTPUT_SCHEMA[f] for f in fields}}
    schema["template_version"] = pl.Int64()
    parts = [pl.DataFrame(schema=schema)]
    groups = rows.partition_by("template_id", "locale", as_dict=True)
    for (template_id, locale), group in groups.items():
        template = templates.get(template_id) if template_id is not None else None
        content = template.locales.get(locale) if template is not None else None
        if content is None:
            continue
        dtype, values = group.schema.get("variables"), {}
        for name, variable in template.variables.items():
            if dtype == pl.String:
                raw = pl.col("variables").str.json_path_match(f"$.{name}")
            elif isinstance(dtype, pl.Struct) and name in {f.name for f in dtype.fields}:
                raw = pl.col("variables").struct.field(name)
            else:
                raw = pl.lit(None, dtype=pl.String)
            values[name] = _reference_text(raw, variable.type, decimal_separator(locale))
        prepared = group.with_columns(
            **{f"_v_{n}": v for n, v in values.items()},
            **{f"_h_{n}": _reference_escaped(v) for n, v in values.items()},
        )
        exprs = [
            pl.lit(content.badge, dtype=pl.Int32).alias(f)
            if f == "badge"
            else pl.lit(None, dtype=pl.String).alias(f)
            if getattr(content, f) is None
            else text(getattr(content, f), "_h_" if f == "html" else "_v_").alias(f)
            for f in fields
        ]
        part = prepared.select("_row", *exprs, template_version=pl.lit(template.version))
        parts.append(part.select(schema.keys()).cast(schema))
    rendered = pl.concat(parts, how="vertical")
    return rows.select("_row").join(rendered, on="_row", how="left").sort("_row").drop("_row")


def _reference_text(raw: pl.Expr, kind: str, separator: str) -> pl.Expr:
    if kind == "integer":
        return raw.cast(pl.Int64, strict=False).cast(pl.String)
    if kind == "number":
        number = raw.cast(pl.Float64, strict=False)
        whole = (number == number.round(0)) & (number.abs() < 1e15)
        text = (
            pl.when(whole)
            .then(number.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(number.cast(pl.String))
        )
        return text.str.replace(".", separator, literal=True) if separator != "." else text
    if kind == "money":
        cents = (raw.cast(pl.Float64, strict=False) * 100).round(0).cast(pl.Int64, strict=False)
        units = cents.abs()
        return pl.concat_str(
            pl.when(cents < 0).then(pl.lit("-")).otherwise(pl.lit("")),
            (units // 100).cast(pl.String),
            pl.lit(separator),
            (units % 100).cast(pl.String).str.zfill(2),
        )
    return raw.cast(pl.String, strict=False)


def _reference_escaped(text: pl.Expr) -> pl.Expr:
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.str.replace_all(char, entity, literal=True)
    return text.str.replace_all("'", "&#x27;", literal=True)


def _reference_resolve(frame: pl.DataFrame, available: dict, default: str) -> pl.Series:
    ids = list(available)
    locales = [sorted(available[i]) for i in ids]
    canonical = {tag.lower(): tag for tags in locales for tag in tags}
    known = pl.DataFrame(
        {
            "template_id": ids,
            "_known": [[t.lower() for t in tags] for tags in locales],
            "_first": [tags[0] if tags else None for tags in locales],
        },
        schema={"template_id": pl.String, "_known": pl.List(pl.String), "_first": pl.String},
    )

    def forms(tag: pl.Expr) -> list[pl.Expr]:
        parts = tag.str.replace_all("_", "-", literal=True).str.strip_chars().str.to_lowercase()
        return [parts.str.split("-").list.head(n).list.join("-") for n in (3, 2, 1)]

    sources = {
        f"_{c}": pl.col(c).cast(pl.String) if c in frame.columns else pl.lit(None, pl.String)
        for c in ("device_locale", "profile_locale")
    }
    chain = [pl.col("_device_locale"), pl.col("_profile_locale"), pl.lit(default)]
    candidates = [form for source in chain for form in forms(source)]
    found = pl.coalesce(
        [pl.when(pl.col("_known").list.contains(c)).then(c) for c in candidates]
    ).replace_strict(canonical, default=None, return_dtype=pl.String)
    return (
        frame.select(pl.col("template_id").cast(pl.String), **sources)
        .join(known, on="template_id", how="left", maintain_order="left")
        .select(pl.coalesce(found, pl.col("_first")).alias("locale"))
        .to_series()
    )


_NAMES = ["a", "b_2", "price", "n"]
_LITERALS = ["x", " ", "{{", "}}", "\ue000", "\ue000!", "é<&>", "a}}b", "{{a}}", "-"]
_VALUES = {
    "string": ["A", "<b>&'\"", "{a}", "{{b_2}}", "\ue000a}", "\ue000?", "", None, "ü ñ"],
    "url": ["shop://x?a=1&b=<2>", "https://e.com/{n}", None],
    "integer": [0, -7, 12345678901, "12", "x", None, 2.0],
    "number": [1.5, -0.25, 3.0, 1e20, 123456789.125, "2.5", "x", None, 0],
    "money": [12.5, -0.05, 0, 1234.567, 999999.995, "7", "x", None],
}


def _random_templates(rng) -> dict:
    templates = {}
    for i in range(6):
        declared = {
            n: str(rng.choice(list(_VALUES))) for n in rng.sample(_NAMES, rng.randint(0, 4))
        }

        def text(declared=declared) -> str:
            tokens = list(_LITERALS) + [f"{{{n}}}" for n in declared] * 3
            return "".join(rng.choice(tokens) for _ in range(rng.randint(1, 6)))

        locales = {}
        for tag in rng.sample(["en", "de", "fr-CA", "es-MX", "pt-BR", "de-CH"], rng.randint(1, 4)):
            content = {"title": text(), "body": text(), "badge": rng.choice([None, 0, 5])}
            for field in ("subtitle", "deeplink", "html", "subject"):
                if rng.random() < 0.5:
                    content[field] = text()
            locales[tag] = content
        variables = {n: {"type": t} for n, t in declared.items()}
        templates[f"t{i}"] = parse(
            {"template_id": f"t{i}", "variables": variables, "locales": locales, "version": i}
        )
    return templates


def _random_frame(rng, templates: dict, n: int) -> list[tuple]:
    rows = []
    for _ in range(n):
        template_id = rng.choice([*templates, "unknown", None])
        locale = rng.choice(["en", "de", "fr-CA", "es-MX", "pt-BR", "de-CH", "it", None])
        if template_id in templates and rng.random() < 0.8:
            locale = rng.choice(list(templates[template_id].locales))
        kinds = templates[template_id].variables if template_id in templates else {}
        values = {
            name: rng.choice(_VALUES[kinds[name].type if name in kinds else "string"])
            for name in _NAMES
            if rng.random() < 0.9
        }
        rows.append((template_id, locale, values))
    return rows


@pytest.mark.parametrize("seed", range(8))
def test_render_equals_the_per_pair_reference_on_random_rows(seed: int) -> None:
    import random

    rng = random.Random(seed)
    templates = _random_templates(rng)
    fields = ["title", "body", "subtitle", "deeplink", "badge", "subject", "html"]
    frame = _frame(_random_frame(rng, templates, 400))
    assert render(frame, templates, fields=fields).equals(
        _reference_render(frame, templates, fields)
    )
    if seed % 2:  # a Struct column: each name one type across templates, so strings only
        strings = [
            (t, loc, {k: v for k, v in vs.items() if isinstance(v, str)})
            for t, loc, vs in _random_frame(rng, templates, 200)
        ]
        frame = _frame(strings, as_json=False)
        assert render(frame, templates).equals(_reference_render(frame, templates, PUSH_FIELDS))


@pytest.mark.parametrize("seed", range(4))
def test_resolve_locales_equals_the_reference_on_random_rows(seed: int) -> None:
    import random

    rng = random.Random(seed)
    tags = ["en", "en-GB", "de", "pt", "pt-BR", "zh-Hant", "zh-Hant-TW", "es-419", "fr"]
    available = {f"t{i}": rng.sample(tags, rng.randint(1, 4)) for i in range(5)}
    raw = [*tags, "EN_gb", " de-AT ", "zh_hant_tw_x", "PT-br", "", "-", "it", "\u00a0fr\u2003"]
    n = 600
    frame = pl.DataFrame(
        {
            "template_id": [rng.choice([*available, "x", None]) for _ in range(n)],
            "device_locale": [rng.choice([*raw, None]) for _ in range(n)],
            "profile_locale": [rng.choice([*raw, None, None]) for _ in range(n)],
        }
    )
    for default in ("en", "pt_br", "zh-Hant-TW", "xx"):
        expected = _reference_resolve(frame, available, default)
        assert resolve_locales(frame, available, default).equals(expected)
        no_profile = frame.drop("profile_locale")
        assert resolve_locales(no_profile, available, default).equals(
            _reference_resolve(no_profile, available, default)
        )


def test_render_follows_a_put_and_each_mix_of_templates() -> None:
    import random

    rng = random.Random(42)
    templates = _random_templates(rng)
    rows = _random_frame(rng, templates, 300)
    fields = ["title", "body", "html", "badge"]
    for mix in (["t0"], ["t1", "t2"], list(templates)):  # each mix its own cached plan
        frame = _frame([r for r in rows if r[0] in mix or r[0] is None])
        expected = _reference_render(frame, templates, fields)
        assert render(frame, templates, fields=fields).equals(expected)
    put = parse({**_template(), "template_id": "t0", "version": 9})  # a new t0 replaces it
    changed = {**templates, "t0": put}
    frame = _frame([("t0", "en", {"order_id": "Q{a}"}), *rows[:50]])
    out = render(frame, changed, fields=fields)
    assert out.equals(_reference_render(frame, changed, fields))
    assert out.row(0) == ("Shipped", "Order Q{a} is on its way.", None, None, 9)
