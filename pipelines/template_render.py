"""Rendering templates and resolving locales over whole frames of notifications.

Both cost a fixed, small number of polars operations per call, whatever the mix of
templates and locales — a router's batch of 500 is the hot path, a fan-out's 100,000 the
big one — never a loop of expressions per (template, locale) pair. What depends only on
the templates is built once per template set and cached: each (template, locale)'s texts
(`_catalog`), the expressions for a mix of templates (`_plan`), the tags each template
answers to (`_locale_index`).

How values become text, per variable type (the same in every field):
- `string`, `url`: as given (in an email's `html`, HTML-escaped);
- `integer`: decimal digits;
- `number`: a whole number without decimals, else polars' shortest float text, with the
  locale's decimal separator;
- `money`: exactly two decimals with the locale's decimal separator (`12.50`, `12,50`);
  no thousands grouping, no currency sign (templates write `{currency}` where they want it).
The decimal separator is a comma for the languages in `DECIMAL_COMMA_LANGUAGES`, except
the locales in `DECIMAL_POINT_LOCALES`; a period otherwise.

Rendering joins each row to its (template, locale)'s texts, each split into slots: literal
runs (`title#0`, `title#1`, …, braces already unescaped) and the variable between them
(`title@0`, …); a field is then one `concat_str` of its literals and, per slot, the value
of the variable the row's template puts there. So a value is never read as template text
(a `{name}` in a value stays as it is), and a missing one makes its field null, as
`concat_str` does with nulls. Resolution works on the distinct (template, device, profile)
of a frame — a few dozen in practice — in Python against each template's tags, and maps
the answers back to the rows.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import polars as pl

from pipelines.template_model import PUSH_FIELDS, TEXT_FIELDS, Template, pieces

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
_CACHED = 16  # template sets (and locale sets) kept built: a router sees one or two at a time


def decimal_separator(locale: str) -> str:
    """The decimal separator numbers and money render with in `locale` (module doc)."""
    if locale in DECIMAL_POINT_LOCALES:
        return "."
    return "," if locale.split("-")[0] in DECIMAL_COMMA_LANGUAGES else "."


class _Catalog(NamedTuple):
    """A template set prepared for rendering: one row per (template, locale) with its texts
    in slots (module doc), and per template and field the variable names of each slot (over
    all its locales: a slot may hold another variable in another language)."""

    frame: pl.DataFrame
    slots: dict[str, dict[str, list[set[str]]]]  # template_id → field → slot → names
    plans: dict[tuple, tuple]  # `_plan`s built for this set


_catalogs: OrderedDict[tuple, tuple[tuple, _Catalog]] = OrderedDict()


def _cached(cache: OrderedDict, key: tuple, build: Any, *args: Any) -> Any:
    """`build(*args)` memoised in `cache` (most recent `_CACHED`); the value keeps `args`
    alive so that the `id`s in a key are never reused while the key is cached."""
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = (args, build(*args))
        if len(cache) > _CACHED:
            cache.popitem(last=False)
    return cache[key][1]


def _catalog(templates: Mapping[str, Template]) -> _Catalog:
    """The cached `_Catalog` of `templates`, keyed by the identity and version of each
    template (templates are frozen: a put makes a new object, so a new key)."""
    key = tuple((tid, id(t), t.version) for tid, t in templates.items())
    return _cached(_catalogs, key, _build_catalog, dict(templates))


def _build_catalog(templates: Mapping[str, Template]) -> _Catalog:
    """Every field of every (template, locale) split into slots once: the per-row work is
    then a join and a `concat_str`, whatever the number of templates."""
    rows: dict[str, list] = {
        c: [] for c in ("template_id", "locale", "_sep", "badge", "template_version")
    }
    texts: dict[str, list[tuple[list[str | None], list[str]]]] = {f: [] for f in TEXT_FIELDS}
    slots: dict[str, dict[str, list[set[str]]]] = {}
    for tid, template in templates.items():
        slots[tid] = {f: [] for f in TEXT_FIELDS}
        for locale, content in template.locales.items():
            row = (tid, locale, decimal_separator(locale), content.badge, template.version)
            for column, value in zip(rows, row, strict=True):
                rows[column].append(value)
            for f in TEXT_FIELDS:
                literals, names = _split(getattr(content, f))
                texts[f].append((literals, names))
                used = slots[tid][f]
                used.extend(set() for _ in range(len(names) - len(used)))
                for slot, name in zip(used, names, strict=False):
                    slot.add(name)
    schema = {c: OUTPUT_SCHEMA.get(c, pl.String()) for c in rows}
    for f, entries in texts.items():
        width = max((len(names) for _, names in entries), default=0)
        for k in range(width + 1):  # past a text's last slot: "" (None when the field is unset)
            rows[f"{f}#{k}"] = [
                lits[k] if k < len(lits) else None if lits[0] is None else "" for lits, _ in entries
            ]
        for k in range(width):
            rows[f"{f}@{k}"] = [names[k] if k < len(names) else None for _, names in entries]
    schema |= {c: pl.String() for c in rows if c not in schema}
    return _Catalog(pl.DataFrame(rows, schema=schema), slots, {})


def _split(text: str | None) -> tuple[list[str | None], list[str]]:
    """`text` as literal runs around its placeholders (one more run than names); None as
    one null run, so that every slot of an unset field is null."""
    if text is None:
        return [None], []
    literals, names = [""], []
    for piece in pieces(text):
        if piece.variable:
            names.append(piece.text)
            literals.append("")
        else:
            literals[-1] += piece.text
    return literals, names


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
    catalog = _catalog(templates)
    dtype = frame.schema.get("variables")
    ids = frame.get_column("template_id").unique().to_list()
    key = (tuple(sorted(t for t in ids if t in catalog.slots)), tuple(fields), dtype)
    if key not in catalog.plans:
        if len(catalog.plans) >= _CACHED * 16:
            catalog.plans.clear()
        catalog.plans[key] = _plan(catalog, templates, *key)
    texts, values, content = catalog.plans[key]
    return (
        frame.lazy()
        .select(
            pl.col("template_id").cast(pl.String),
            pl.col("locale").cast(pl.String),
            *(["variables"] if dtype is not None else []),
        )
        .join(content.lazy(), on=["template_id", "locale"], how="left", maintain_order="left")
        .with_columns(values)
        .select(texts)
        .collect(engine="in-memory")
    )


def _plan(
    catalog: _Catalog,
    templates: Mapping[str, Template],
    ids: tuple[str, ...],
    fields: tuple[str, ...],
    dtype: pl.DataType | None,
) -> tuple[list[pl.Expr], list[pl.Expr], pl.DataFrame]:
    """What `render` runs for rows of the templates `ids` (cached per catalog: the same
    few mixes come back batch after batch): the output columns, the variable values they
    read, and the catalog's columns they need."""
    slots = {f: _union([catalog.slots[t][f] for t in ids]) for f in fields if f != "badge"}
    types = _types([templates[t] for t in ids])
    values = {
        f"{'_h_' if f == 'html' else '_v_'}{name}": _value(dtype, name, types[name], f == "html")
        for f, used in slots.items()
        for name in set().union(*used)
    }
    texts = {f: _filled(f, used) for f, used in slots.items()}
    columns = {f: OUTPUT_SCHEMA[f] for f in fields} | {"template_version": pl.Int64()}
    parts = [
        f"{f}{s}{k}"
        for f, used in slots.items()
        for s, n in (("#", 1), ("@", 0))
        for k in range(len(used) + n)
    ]
    passed = [c for c in ("badge", "template_version") if c in columns]
    content = catalog.frame.select("template_id", "locale", "_sep", *parts, *passed)
    out = [texts.get(c, pl.col(c)).cast(kind).alias(c) for c, kind in columns.items()]
    return out, [v.alias(k) for k, v in values.items()], content


def _union(per_template: Sequence[list[set[str]]]) -> list[set[str]]:
    """Slot by slot, the variable names any of the templates puts there."""
    width = max((len(slots) for slots in per_template), default=0)
    return [set().union(*(s[k] for s in per_template if k < len(s))) for k in range(width)]


def _types(templates: Iterable[Template]) -> dict[str, dict[str, list[str]]]:
    """variable name → type → the templates declaring it so: a name may mean a string in one
    template and money in another, and each row renders it as its own template says."""
    out: dict[str, dict[str, list[str]]] = {}
    for template in templates:
        for name, variable in template.variables.items():
            out.setdefault(name, {}).setdefault(variable.type, []).append(template.template_id)
    return out


def _value(
    dtype: pl.DataType | None, name: str, types: Mapping[str, list[str]], html: bool
) -> pl.Expr:
    """Variable `name` of each row as text, converted by its template's type (module doc),
    HTML-escaped for `html`; null where missing. `dtype`: the `variables` column's."""
    if dtype == pl.String:
        raw = pl.col("variables").str.json_path_match(f"$.{name}")
    elif isinstance(dtype, pl.Struct) and name in {f.name for f in dtype.fields}:
        raw = pl.col("variables").struct.field(name)
    else:
        raw = pl.lit(None, dtype=pl.String)
    texts = {kind: _as_text(raw, kind) for kind in types}
    if len(texts) == 1:
        (text,) = texts.values()
    else:
        chain: Any = pl
        for kind, text in texts.items():
            chain = chain.when(pl.col("template_id").is_in(types[kind])).then(text)
        text = chain.otherwise(pl.lit(None, dtype=pl.String))
    return _html_escaped(text) if html else text


def _filled(field: str, slots: Sequence[set[str]]) -> pl.Expr:
    """`field` of each row: its literal runs and, slot by slot, the value of the variable
    its template puts there ("" past the template's last slot; null when missing)."""
    prefix = "_h_" if field == "html" else "_v_"
    parts = [pl.col(f"{field}#0")]
    for k, names in enumerate(slots):
        chain: Any = pl
        for name in sorted(names):
            chain = chain.when(pl.col(f"{field}@{k}") == name).then(pl.col(prefix + name))
        parts += [chain.otherwise(pl.lit("")), pl.col(f"{field}#{k + 1}")]
    return (pl.concat_str(parts, ignore_nulls=False) if slots else parts[0]).alias(field)


def _as_text(raw: pl.Expr, kind: str) -> pl.Expr:
    """`raw` as text by its variable's type `kind` (module doc), with the decimal separator
    of the row's locale: the catalog's `_sep`, joined on."""
    separator = pl.col("_sep")
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
        comma = text.str.replace(".", ",", literal=True)
        return pl.when(separator == ",").then(comma).otherwise(text)
    if kind == "money":
        cents = (raw.cast(pl.Float64, strict=False) * 100).round(0).cast(pl.Int64, strict=False)
        units = cents.abs()
        return pl.concat_str(
            pl.when(cents < 0).then(pl.lit("-")).otherwise(pl.lit("")),
            (units // 100).cast(pl.String),
            separator,
            (units % 100).cast(pl.String).str.zfill(2),
        )
    return raw.cast(pl.String, strict=False)


def _html_escaped(text: pl.Expr) -> pl.Expr:
    """`text` safe inside HTML markup and attribute values (`&` first, so once)."""
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
    available = tuple((tid, tuple(tags)) for tid, tags in available_by_template.items())
    index = _cached(_indexes, (available, default), _locale_index, available, default)
    names = {"template_id": "template_id", "_device": device, "_profile": profile}
    keys = frame.select(
        (pl.col(name) if name in frame.columns else pl.lit(None)).cast(pl.String).alias(column)
        for column, name in names.items()
    )
    # Resolved once per distinct (template, device, profile) — a handful per batch, as the
    # same few locales come back — and joined back: never a Python step per notification.
    combos = keys.unique().rows()
    resolved = pl.DataFrame(
        [(*combo, index.resolve(*combo)) for combo in combos],
        schema=dict.fromkeys((*names, "locale"), pl.String),
        orient="row",
    )
    joined = keys.join(
        resolved, on=list(names), how="left", nulls_equal=True, maintain_order="left"
    )
    return joined.get_column("locale")


class _LocaleIndex(NamedTuple):
    """A locale set prepared for `resolve_locales`: per template its tags by lower case (in
    the canonical case any template spells them), and the locale when no row's tag matches
    (the default's most specific form the template has, else its first sorted)."""

    known: dict[str, dict[str, str]]
    fallbacks: dict[str, str | None]

    def resolve(self, template_id: str | None, device: str | None, profile: str | None):
        """One distinct (template, device, profile)'s locale (`resolve_locales`)."""
        known = self.known.get(template_id) if template_id is not None else None
        if known is None:
            return None
        for tag in (device, profile):
            for form in _general_forms(tag) if tag is not None else ():
                if form in known:
                    return known[form]
        return self.fallbacks[template_id]


_indexes: OrderedDict[tuple, tuple[tuple, _LocaleIndex]] = OrderedDict()
# What polars' `strip_chars()` strips (Unicode White_Space; `str.strip()` would also strip
# U+001C..U+001F).
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
_WHITESPACE += "\u2028\u2029\u202f\u205f\u3000"


def _locale_index(available: Sequence[tuple[str, Sequence[str]]], default: str) -> _LocaleIndex:
    """The `_LocaleIndex` of a locale set; the canonical case of a tag two templates spell
    differently is the last one's, in sorted order (as resolution has always had it)."""
    canonical = {tag.lower(): tag for _, tags in available for tag in sorted(tags)}
    known = {tid: {tag.lower(): canonical[tag.lower()] for tag in tags} for tid, tags in available}
    fallbacks = {}
    for tid, tags in available:
        found = next((known[tid][f] for f in _general_forms(default) if f in known[tid]), None)
        fallbacks[tid] = found if found is not None else min(tags, default=None)
    return _LocaleIndex(known, fallbacks)


@functools.lru_cache(maxsize=4096)
def _general_forms(tag: str) -> tuple[str, ...]:
    """`tag` normalised (lower case, `_` → `-`, whitespace stripped) and cut to 3, 2 and 1
    subtags; cached, as the same few device locales come back batch after batch."""
    parts = tag.replace("_", "-").strip(_WHITESPACE).lower().split("-")
    return tuple("-".join(parts[:n]) for n in _DEPTHS)
