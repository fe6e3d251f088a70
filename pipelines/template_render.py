"""Rendering templates and resolving locales over whole frames of notifications.

Both work in columns: the only Python loops are over the distinct (template, locale)
pairs of a frame (rendering) and over a fixed handful of candidate locales (resolution),
never over notifications — a batch of 100,000 renders in one pass of polars string
expressions per pair.

How values become text, per variable type (the same in every field):
- `string`, `url`: as given (in an email's `html`, HTML-escaped);
- `integer`: decimal digits;
- `number`: a whole number without decimals, else polars' shortest float text, with the
  locale's decimal separator;
- `money`: exactly two decimals with the locale's decimal separator (`12.50`, `12,50`);
  no thousands grouping, no currency sign (templates write `{currency}` where they want it).
The decimal separator is a comma for the languages in `DECIMAL_COMMA_LANGUAGES`, except
the locales in `DECIMAL_POINT_LOCALES`; a period otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import polars as pl

from pipelines.template_model import PUSH_FIELDS, Content, Template, Variable, pieces

DECIMAL_COMMA_LANGUAGES = frozenset(
    "bg ca cs da de el es et fi fr hr hu id it lt lv nb nl pl pt ro ru sk sl sr sv tr uk".split()
)
DECIMAL_POINT_LOCALES = frozenset({"es-MX", "es-US", "de-CH", "it-CH"})
OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    **{f: pl.String() for f in PUSH_FIELDS},
    "badge": pl.Int32(),
    "subject": pl.String(),
    "html": pl.String(),
    "text": pl.String(),
    "template_version": pl.Int64(),
}
_HTML = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&#x27;"))
_DEPTHS = (3, 2, 1)  # a template's locale has at most 3 subtags (language-Script-REGION)


def decimal_separator(locale: str) -> str:
    """The decimal separator numbers and money render with in `locale` (module doc)."""
    if locale in DECIMAL_POINT_LOCALES:
        return "."
    return "," if locale.split("-")[0] in DECIMAL_COMMA_LANGUAGES else "."


def render(
    frame: pl.DataFrame,
    templates: Mapping[str, Template],
    *,
    fields: Sequence[str] = PUSH_FIELDS,
) -> pl.DataFrame:
    """The content of each notification in `frame`: one row per input row, same order,
    columns `fields` (any of `PUSH_FIELDS` and `EMAIL_FIELDS`) and `template_version`.

    `frame`: `template_id`, `locale` (resolved: `resolve_locales`) and, when a template has
    variables, `variables` — a Struct column (one field per variable name) or JSON object
    text. A row whose template or locale is unknown, or whose variable is missing (or does
    not convert to its type), gets null content: validate at the door
    (`validate_variables`), and a null here is a bug to surface, never a hole in a text.
    Fields the locale does not set are null (`badge` an Int32).
    """
    columns = ["template_id", "locale", *(["variables"] if "variables" in frame.columns else [])]
    rows = frame.select(columns).with_row_index("_row")
    schema = {"_row": pl.UInt32(), **{f: OUTPUT_SCHEMA[f] for f in fields}}
    schema["template_version"] = pl.Int64()
    parts = [pl.DataFrame(schema=schema)]
    for (template_id, locale), group in rows.partition_by(
        "template_id", "locale", as_dict=True
    ).items():
        template = templates.get(template_id) if template_id is not None else None
        content = template.locales.get(locale) if template is not None else None
        if content is not None:
            part = _render_group(group, template, locale, content, fields)
            parts.append(part.select(schema.keys()).cast(schema))
    rendered = pl.concat(parts, how="vertical")
    return (
        rows.select("_row")
        .join(rendered, on="_row", how="left", maintain_order="left")
        .drop("_row")
    )


def _render_group(
    group: pl.DataFrame, template: Template, locale: str, content: Content, fields: Sequence[str]
) -> pl.DataFrame:
    """One (template, locale) pair's rows: each variable's text as a column once, then
    every field a `concat_str` of its literal pieces and those columns."""
    values = _variable_texts(group, template.variables, locale)
    escaped = "html" in fields and content.html is not None
    prepared = group.with_columns(
        **{f"_v_{name}": text for name, text in values.items()},
        **{f"_h_{name}": _html_escaped(text) for name, text in values.items() if escaped},
    )
    exprs = []
    for field in fields:
        value = getattr(content, field)
        if field == "badge":
            exprs.append(pl.lit(value, dtype=pl.Int32).alias(field))
        elif value is None:
            exprs.append(pl.lit(None, dtype=pl.String).alias(field))
        else:
            exprs.append(_text(value, "_h_" if field == "html" else "_v_").alias(field))
    return prepared.select(
        "_row", *exprs, template_version=pl.lit(template.version, dtype=pl.Int64)
    )


def _text(value: str, prefix: str) -> pl.Expr:
    parts = [pl.col(prefix + p.text) if p.variable else pl.lit(p.text) for p in pieces(value)]
    if not parts:
        return pl.lit("")
    if len(parts) == 1:
        return parts[0].cast(pl.String)
    return pl.concat_str(parts, ignore_nulls=False)


def _variable_texts(
    group: pl.DataFrame, variables: Mapping[str, Variable], locale: str
) -> dict[str, pl.Expr]:
    """Each declared variable of the group's rows as text (see the module doc); null where
    it is absent."""
    dtype = group.schema.get("variables")
    texts = {}
    for name, variable in variables.items():
        if dtype == pl.String:
            raw = pl.col("variables").str.json_path_match(f"$.{name}")
        elif isinstance(dtype, pl.Struct) and name in {f.name for f in dtype.fields}:
            raw = pl.col("variables").struct.field(name)
        else:
            raw = pl.lit(None, dtype=pl.String)
        texts[name] = _as_text(raw, variable, decimal_separator(locale))
    return texts


def _as_text(raw: pl.Expr, variable: Variable, separator: str) -> pl.Expr:
    if variable.type == "integer":
        return raw.cast(pl.Int64, strict=False).cast(pl.String)
    if variable.type == "number":
        number = raw.cast(pl.Float64, strict=False)
        whole = (number == number.round(0)) & (number.abs() < 1e15)
        text = (
            pl.when(whole)
            .then(number.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(number.cast(pl.String))
        )
        return text.str.replace(".", separator, literal=True) if separator != "." else text
    if variable.type == "money":
        cents = (raw.cast(pl.Float64, strict=False) * 100).round(0).cast(pl.Int64, strict=False)
        units = cents.abs()
        return pl.concat_str(
            pl.when(cents < 0).then(pl.lit("-")).otherwise(pl.lit("")),
            (units // 100).cast(pl.String),
            pl.lit(separator),
            (units % 100).cast(pl.String).str.zfill(2),
        )
    return raw.cast(pl.String, strict=False)


def _html_escaped(text: pl.Expr) -> pl.Expr:
    for char, entity in _HTML:
        text = text.str.replace_all(char, entity, literal=True)
    return text


def available_locales(templates: Mapping[str, Template]) -> dict[str, list[str]]:
    """template_id → its locales, the `available_by_template` of `resolve_locales`."""
    return {template_id: list(t.locales) for template_id, t in templates.items()}


def resolve_locales(
    frame: pl.DataFrame,
    available_by_template: Mapping[str, Iterable[str]],
    default: str,
    *,
    device: str = "device_locale",
    profile: str = "profile_locale",
) -> pl.Series:
    """The locale each row's notification renders in (a `locale` Series, row for row).

    Candidates, in order, the first the row's template has winning: the `device` column's
    locale, then the `profile` column's, then `default`; each tried from specific to
    general (`zh-Hant-TW`, `zh-Hant`, `zh`), read case-insensitively with `_` as `-`.
    None of them: the template's first locale in sorted order. An unknown template (or a
    null `template_id`): null. A missing `device` / `profile` column counts as null.
    """
    ids = list(available_by_template)
    locales = [sorted(available_by_template[i]) for i in ids]
    canonical = {tag.lower(): tag for tags in locales for tag in tags}
    known = pl.DataFrame(
        {
            "template_id": pl.Series(ids, dtype=pl.String),
            "_known": pl.Series([[t.lower() for t in tags] for tags in locales]),
            "_first": pl.Series([tags[0] if tags else None for tags in locales], dtype=pl.String),
        },
        schema={"template_id": pl.String, "_known": pl.List(pl.String), "_first": pl.String},
    )
    sources = {
        f"_{role}": pl.col(name).cast(pl.String)
        if name in frame.columns
        else pl.lit(None, dtype=pl.String)
        for role, name in (("device", device), ("profile", profile))
    }
    chain = [pl.col("_device"), pl.col("_profile"), pl.lit(default, dtype=pl.String)]
    candidates = [form for source in chain for form in _general_forms(source)]
    found = pl.coalesce(
        [pl.when(pl.col("_known").list.contains(c)).then(c) for c in candidates]
    ).replace_strict(canonical, default=None, return_dtype=pl.String)
    return (
        frame.select(pl.col("template_id").cast(pl.String), **sources)
        .join(known, on="template_id", how="left", maintain_order="left")
        .select(pl.coalesce(found, pl.col("_first")).alias("locale"))
        .to_series()
    )


def _general_forms(tag: pl.Expr) -> list[pl.Expr]:
    """`tag` normalised (lower case, `_` → `-`) and cut to 3, 2 and 1 subtags."""
    parts = tag.str.replace_all("_", "-", literal=True).str.strip_chars().str.to_lowercase()
    parts = parts.str.split("-")
    return [parts.list.head(n).list.join("-") for n in _DEPTHS]
