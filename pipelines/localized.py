"""Content for delivery rows from templates, in each device's language.

What order updates and requested notifications share once they know who gets which
delivery: each row's locale (`template_render.resolve_locales`: the device's, else the
user's profile's, else the deployment default), its content (`template_render.render`,
one pass per (template, locale) pair of the whole batch, never per notification), and its
`rich` extras — the rendered push fields beyond title and body, then the event's delivery
options. Rows a template cannot fill come back apart, so no half-rendered push goes out.

This module imports the renderer, not `pipelines.templates`: the shipped defaults are built
from `pipelines.order_updates`, which uses this module (the caller hands the templates in).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from pipelines.template_model import PUSH_FIELDS, Template
from pipelines.template_render import available_locales, render, resolve_locales

# Rendered push fields that travel in `rich`, not in their own DELIVERIES column.
RICH_CONTENT = tuple(f for f in PUSH_FIELDS if f not in ("title", "body"))
# An event's delivery options, in `rich` under the same names.
OPTIONS = ("priority", "ttl_s", "collapse_key")
LOCALE_COLUMNS = {"device_locale": pl.String, "profile_locale": pl.String}


def with_locale_columns(audience: pl.DataFrame) -> pl.DataFrame:
    """`audience` with `device_locale` and `profile_locale` (null where the lookup had none):
    rows from an older shard, or a test's, may lack them."""
    return audience.with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in LOCALE_COLUMNS.items()
        if name not in audience.columns
    )


def localized(
    rows: pl.DataFrame, templates: Mapping[str, Template], default_locale: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows with `title`, `body`, `rich`, `locale`, `template_version`; the rows that did
    not render).

    `rows`: one per delivery — `template_id`, `variables` (JSON text or Struct),
    `device_locale` (null for the inbox and webhook), `profile_locale`, and any of `OPTIONS`
    (null: unset). A row renders unless its template is gone or a variable is missing."""
    rows = rows.with_columns(
        locale=resolve_locales(rows, available_locales(templates), default_locale)
    )
    content = render(rows, templates)
    done = pl.concat(
        [
            rows.drop(c for c in content.columns if c in rows.columns),
            content,
        ],
        how="horizontal",
    )
    ok = pl.col("title").is_not_null() & pl.col("body").is_not_null()
    done = with_template_options(done, templates)
    done = done.with_columns(
        rich=rich_json([*RICH_CONTENT, *(o for o in OPTIONS if o in done.columns)])
    )
    return done.filter(ok), done.filter(~ok)


# Delivery options a template may default (the event's own value wins).
TEMPLATE_OPTIONS = {"ttl_s": pl.Int64, "priority": pl.String}


def with_template_options(rows: pl.DataFrame, templates: Mapping[str, Template]) -> pl.DataFrame:
    """`rows` whose `ttl_s` / `priority` left unset by the event take their template's (a
    join over the batch's templates, not a lookup per row)."""
    given = {
        (t.template_id, t.ttl_s, t.priority)
        for t in templates.values()
        if t.ttl_s is not None or t.priority is not None
    }
    if not given or "template_id" not in rows.columns:
        return rows
    defaults = pl.DataFrame(
        sorted(given, key=lambda g: g[0]),
        schema={"template_id": pl.String, **{f"_t_{k}": v for k, v in TEMPLATE_OPTIONS.items()}},
        orient="row",
    )
    rows = rows.join(defaults, on="template_id", how="left", maintain_order="left")
    return rows.with_columns(
        (
            pl.coalesce(pl.col(name).cast(dtype), f"_t_{name}")
            if name in rows.columns
            else pl.col(f"_t_{name}")
        ).alias(name)
        for name, dtype in TEMPLATE_OPTIONS.items()
    ).drop(f"_t_{name}" for name in TEMPLATE_OPTIONS)


def rich_json(names: list[str]) -> pl.Expr:
    """A `rich` JSON object of the columns `names` that are not null in the row (absent
    rather than null), or null when none is: a row without extras is exactly the request
    every sender made before rich push."""
    fragments = [
        pl.when(pl.col(name).is_not_null()).then(
            pl.struct(name).struct.json_encode().str.slice(1).str.strip_suffix("}")
        )
        for name in names
    ]
    joined = pl.concat_str(fragments, separator=",", ignore_nulls=True)
    return pl.when(joined != "").then(pl.concat_str(pl.lit("{"), joined, pl.lit("}"))).alias("rich")
