"""A campaign over one shard's snapshot: segment → eligibility → scores per variant →
variant choice → top-k / threshold → deliveries. Pure functions over polars frames and
numpy arrays, so a fan-out worker, a benchmark and a test run exactly the same code.

The steps are split where a fan-out worker has to talk to Redis between them (the users'
marketing counts for today, after the segment and before eligibility) and where the
router has to see every shard at once (the global top `audience_limit`, after `plan` and
before `render`). Exactness of the global top-k: each shard keeps its own top
`audience_limit` and the router keeps the top `audience_limit` of their union, which is
the global top-k because no user outside a shard's top-k can be in the global one.

A campaign's notification id is `<campaign_id>~<user_id>`: one notification per user, a
push per active device and/or an inbox item, all carrying the chosen variant.

A variant is inline copy (`title`, `body`: one language, as written) or names a template
(`template_id`, its `variables` the same for every recipient): then each delivery reads in
its locale (`pipelines.localized`) — the device's where the devices frame has one, else
the user's profile's (the snapshot's `locale`), else the deployment default. The shards'
snapshots carry no device locale today, so a campaign follows the profile: the language the
user chose for the shop, a fair stand-in for the app's. `variant_templates` checks, before
anything is planned, that every named template exists and the variables fill it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from cluster.state.campaigns import SEPARATOR
from cluster.tables.deliveries import DELIVERIES, NO_EXTRAS, OPTIONAL_COLUMNS
from cluster.vocabulary import CHANNEL_OF_PLATFORM
from models.bandit import BY_EXPLORATION, BY_RANK, choose_logged, select_top
from models.ranker import Ranker
from pipelines import eligibility
from pipelines.localized import localized, with_locale_columns
from pipelines.segments import compile_segment
from pipelines.template_model import Template, validate_variables

TYPE = "campaign"
LANE = "marketing"
CHOSEN_COLUMNS = [
    "user_id",
    "variant_id",
    "score",
    "send_push",
    "send_inbox",
    "send_after",
    "local_day",
    "propensity",
    "propensity_se",
    "audience",
]
_DELIVERY_COLUMNS = [field.name for field in DELIVERIES]
RECORD_COLUMNS = ["send_after", "variant_id", "local_day"]
RENDER_CHUNK_USERS = 50_000  # users rendered at once: bounds a fan-out's memory
_VARIANT_COLUMNS = ("variant_id", "style", "title", "body", "deeplink", "template_id", "variables")
_CONTENT = ("title", "body", *OPTIONAL_COLUMNS)


class CampaignRefused(ValueError):
    """A campaign that can never be rendered (a variant's template is missing, or its
    variables do not fill it): the runner marks it failed at once, with this message."""


def variants_frame(campaign: Mapping[str, Any]) -> pl.DataFrame:
    """One row per variant: inline `title`/`body`, or `template_id` and its `variables`
    (JSON text); `style` is what the ranker scores either way."""
    rows = []
    for v in campaign["variants"]:
        variables = v.get("variables")
        rows.append(
            {
                **{k: v.get(k) for k in ("variant_id", "title", "body", "template_id")},
                "style": v.get("style") or "plain",
                "deeplink": v.get("deeplink") or "",
                "variables": json.dumps(variables, allow_nan=False)
                if variables is not None
                else None,
            }
        )
    return pl.DataFrame(rows, schema=dict.fromkeys(_VARIANT_COLUMNS, pl.String))


def variant_templates(
    campaign: Mapping[str, Any], templates: Mapping[str, Template]
) -> dict[str, Template]:
    """template_id → template of every template the campaign's variants name, from the
    templates in force. Raises `CampaignRefused` naming each variant that cannot render
    (an unknown template, a variable missing, mistyped or undeclared): better refused
    before planning than a fan-out whose every delivery fails."""
    found: dict[str, Template] = {}
    problems: list[str] = []
    for variant in campaign["variants"]:
        template_id, name = variant.get("template_id"), variant["variant_id"]
        if template_id is None:
            continue
        template = templates.get(template_id)
        if template is None:
            problems.append(f"variant {name}: no template {template_id!r}")
            continue
        found[template_id] = template
        given = variant.get("variables") or {}
        problems += [
            f"variant {name}: variable {var} of template {template_id}: {reason}"
            for var, reason in validate_variables(template, given)
        ]
    if problems:
        raise CampaignRefused("; ".join(problems))
    return found


def targeted(users: pl.DataFrame, campaign: Mapping[str, Any], now: float) -> pl.DataFrame:
    """The snapshot rows in the campaign's segment."""
    return users.filter(compile_segment(campaign["segment"], now, users.schema))


def plan(
    users: pl.DataFrame,
    campaign: Mapping[str, Any],
    *,
    now: float,
    ranker: Ranker,
    variant_stats: Sequence[Sequence[int]] | None,
    rng: np.random.Generator,
    sent_today: pl.DataFrame | None = None,
    already_sent: pl.Series | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """`users` = `targeted(...)` of one shard. Returns the chosen users (`CHOSEN_COLUMNS`,
    at most `audience_limit` of them, best score first) and the counters: `eligible`,
    `selected`, `deferred` and `suppressed:<reason>` (`targeted` is the caller's)."""
    kept, suppressed = eligibility.eligible(
        users,
        now=now,
        channels=campaign["channels"],
        respect_quiet_hours=campaign.get("respect_quiet_hours", True),
        sent_today=sent_today,
        already_sent=already_sent,
    )
    counts = {f"suppressed:{reason}": n for reason, n in suppressed.items()}
    counts["eligible"] = kept.height
    variants = variants_frame(campaign)
    if kept.height == 0:
        return _empty_chosen(), {**counts, "selected": 0, "deferred": 0}
    scores = ranker.score(kept, variants, category=campaign.get("category"), now=now)
    stats = np.asarray(variant_stats, dtype=np.float64) if variant_stats else None
    if stats is not None and not stats.any():
        stats = None  # no feedback yet: the model alone, not a Beta(1, 1) coin per variant
    logged = choose_logged(scores, stats, exploration=campaign.get("exploration", 0.1), rng=rng)
    choice = logged.chosen
    best = scores[np.arange(kept.height), choice]
    keep = select_top(
        best,
        audience_limit=campaign.get("audience_limit"),
        score_threshold=campaign.get("score_threshold"),
    )
    mask = pl.Series(keep)
    chosen = kept.select("user_id", "timezone", "send_push", "send_inbox", "send_after").filter(
        mask
    )
    chosen = (
        chosen.with_columns(
            variant_id=variants["variant_id"].gather(choice[keep]),
            score=pl.Series(best[keep], dtype=pl.Float64),
            local_day=eligibility.local_day(chosen, now),
            **_logged_columns(logged, keep),
        )
        .sort("score", descending=True, maintain_order=True)
        .select(CHOSEN_COLUMNS)
    )
    counts["selected"] = chosen.height
    counts["deferred"] = int(chosen["send_after"].is_not_null().sum())
    return chosen, counts


def _logged_columns(logged, keep: np.ndarray) -> dict[str, pl.Series]:
    """What the feedback log needs for off-policy evaluation (`models.propensity`): the
    probability the policy had of choosing each kept user's variant, its Monte-Carlo error,
    and `audience` — `rank` when the model's choice put the user in the campaign with its
    score, `exploration` when the exploration share drew the variant. The propensity is
    the variant's given the user; the audience cut that follows ranks by the chosen
    variant's score, so near the cut-off it is only approximately the probability given
    that the user was sent (exact without an audience limit or threshold)."""
    audience = np.where(logged.explored[keep], BY_EXPLORATION, BY_RANK)
    return {
        "propensity": pl.Series(logged.propensity[keep], dtype=pl.Float64),
        "propensity_se": pl.Series(logged.propensity_se[keep], dtype=pl.Float64),
        "audience": pl.Series(audience, dtype=pl.String),
    }


def _empty_chosen() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "user_id": pl.String,
            "variant_id": pl.String,
            "score": pl.Float64,
            "send_push": pl.Boolean,
            "send_inbox": pl.Boolean,
            "send_after": pl.Float64,
            "local_day": pl.String,
            "propensity": pl.Float64,
            "propensity_se": pl.Float64,
            "audience": pl.String,
        }
    )


def top(chosen: pl.DataFrame, audience_limit: int | None) -> pl.DataFrame:
    """The global top `audience_limit` of the shards' chosen users (ties: first shard)."""
    if audience_limit is None or chosen.height <= audience_limit:
        return chosen
    scores = chosen["score"].to_numpy()
    keep = select_top(scores, audience_limit=audience_limit, score_threshold=None)
    return chosen.filter(pl.Series(keep))


def render(
    chosen: pl.DataFrame,
    devices: pl.DataFrame,
    campaign: Mapping[str, Any],
    accepted_at: float,
    *,
    templates: Mapping[str, Template] | None = None,
    profiles: pl.DataFrame | None = None,
    default_locale: str = "en",
) -> pl.DataFrame:
    """DELIVERIES rows for chosen users — a push per active device of a user who gets push,
    an inbox item per user who gets the inbox — plus what the router records per user:
    `send_after`, `variant_id`, `local_day`. Rows of one user are adjacent.

    Inline content comes by gathering per-variant strings by variant index, and `data` is
    glued from per-variant JSON fragments around the notification id (ids are
    pattern-checked: no character needs escaping), which is several times faster than a
    join and a JSON encoder per row. Template variants (`templates`: `variant_templates`;
    `profiles`: user_id and `locale`, the snapshot's users) render in one
    `pipelines.localized` pass over their rows."""
    cid = campaign["campaign_id"]
    variants = variants_frame(campaign)
    templated = bool(variants["template_id"].is_not_null().any())
    index = {v: i for i, v in enumerate(variants["variant_id"])}
    users = chosen.select(
        "user_id",
        "send_push",
        "send_inbox",
        *RECORD_COLUMNS,
        _v=pl.col("variant_id").replace_strict(index, return_dtype=pl.UInt32),
    ).with_row_index("_order")
    rows = _channel_rows(users, devices, profiles, locales=templated)
    v = rows["_v"]
    nid = pl.lit(cid + SEPARATOR) + pl.col("user_id")
    rows = rows.with_columns(
        *NO_EXTRAS,
        notification_id=nid,
        delivery_id=pl.concat_str(nid, pl.lit("|"), pl.col("device_id")),
        title=variants["title"].gather(v),
        body=variants["body"].gather(v),
        data=pl.concat_str(
            pl.lit('{"notification_id":"'),
            nid,
            pl.lit('",'),
            _data_tails(cid, variants).gather(v),
        ),
        lane=pl.lit(LANE),
        accepted_at=pl.lit(accepted_at, dtype=pl.Float64),
    )
    if templated:
        rows = _from_templates(rows, variants, templates or {}, default_locale)
    return rows.select(*_DELIVERY_COLUMNS, *RECORD_COLUMNS)


def _data_tails(campaign_id: str, variants: pl.DataFrame) -> pl.Series:
    """Per variant, its deliveries' `data` JSON after the notification id."""
    tails = [
        json.dumps(
            {"type": TYPE, "campaign_id": campaign_id, "variant_id": v, "deeplink": d},
            separators=(",", ":"),
        )[1:]
        for v, d in zip(variants["variant_id"], variants["deeplink"], strict=True)
    ]
    return pl.Series(tails, dtype=pl.String)


def _channel_rows(
    users: pl.DataFrame, devices: pl.DataFrame, profiles: pl.DataFrame | None, *, locales: bool
) -> pl.DataFrame:
    """A push row per active device of the users who get push, an inbox row per user who
    gets the inbox, in the users' order. With `locales`, each row's `device_locale` and
    `profile_locale`; the inbox, which has no device, reads in the profile's locale, else
    the user's first device's (by id) that has one."""
    columns = ["user_id", "device_id", "platform", "token"]
    if locales:
        devices = with_locale_columns(devices).select(*columns, "device_locale")
        users = _with_profile_locale(users, profiles)
    else:
        devices = devices.select(columns)
    pushes = (
        users.filter(pl.col("send_push"))
        .join(devices, on="user_id")
        .with_columns(
            channel=pl.col("platform").replace_strict(CHANNEL_OF_PLATFORM, return_dtype=pl.String)
        )
        .drop("platform")
    )
    inbox = users.filter(pl.col("send_inbox")).with_columns(
        device_id=pl.lit("inbox"), token=pl.lit(""), channel=pl.lit("inbox")
    )
    if locales:
        first = devices.group_by("user_id").agg(
            _device=pl.col("device_locale").sort_by("device_id").drop_nulls().first()
        )
        inbox = inbox.join(first, on="user_id", how="left").select(
            pl.exclude("_device"), device_locale=pl.coalesce("profile_locale", "_device")
        )
    return pl.concat([pushes, inbox], how="diagonal_relaxed").sort("_order")


def _with_profile_locale(users: pl.DataFrame, profiles: pl.DataFrame | None) -> pl.DataFrame:
    """`users` with `profile_locale`: `profiles`' `locale` (null without it)."""
    if profiles is None or "locale" not in profiles.columns:
        return users.with_columns(profile_locale=pl.lit(None, dtype=pl.String))
    mine = profiles.select("user_id", profile_locale="locale")
    return users.join(mine, on="user_id", how="left", maintain_order="left")


def _from_templates(
    rows: pl.DataFrame,
    variants: pl.DataFrame,
    templates: Mapping[str, Template],
    default_locale: str,
) -> pl.DataFrame:
    """`rows` with the content of the template variants' rows rendered in their locale
    (with `rich`, `locale`, `template_version`); inline variants' rows as they are. A row
    that does not render means the templates changed under a checked campaign: refused
    rather than sent with a hole."""
    v = rows["_v"]
    rows = rows.with_columns(
        template_id=variants["template_id"].gather(v),
        variables=variants["variables"].gather(v),
    ).with_row_index("_i")
    done, failed = localized(
        rows.filter(pl.col("template_id").is_not_null()), templates, default_locale
    )
    if failed.height:
        missing = sorted(set(failed["template_id"]))
        raise CampaignRefused(f"templates {missing} no longer render this campaign's variants")
    filled = done.select("_i", *_CONTENT)
    joined = rows.join(filled, on="_i", how="left", suffix="_t", maintain_order="left")
    return joined.with_columns(pl.coalesce(f"{c}_t", c).alias(c) for c in _CONTENT)


def meta(batch: pl.DataFrame, campaign_id: str) -> pl.DataFrame:
    """The delivery state's meta per notification of a rendered batch: what feedback
    needs to find the variant."""
    return batch.unique("notification_id", keep="first", maintain_order=True).select(
        "notification_id",
        type=pl.lit(TYPE),
        user_id="user_id",
        accepted_at="accepted_at",
        campaign_id=pl.lit(campaign_id),
        variant_id="variant_id",
    )


def ttl_until_end(ends_at: float | None) -> pl.Expr | None:
    """A campaign's pushes live until its `ends_at` (none without one): per row, the
    seconds from `accepted_at` to it, rounded up so the last second still counts."""
    if ends_at is None:
        return None
    return (pl.lit(float(ends_at)) - pl.col("accepted_at")).ceil().cast(pl.Int64)


def batches(rows: pl.DataFrame, max_rows: int) -> Iterator[pl.DataFrame]:
    """Slices of about `max_rows` rendered rows that never split a user's rows."""
    if rows.height == 0:
        return
    # a cut may only fall where a new notification starts
    starts = rows["notification_id"].ne(rows["notification_id"].shift(1)).fill_null(True)
    boundaries = np.flatnonzero(starts.to_numpy())
    cut, n = 0, rows.height
    while cut < n:
        target = cut + max_rows
        if target >= n:
            end = n
        else:
            i = int(np.searchsorted(boundaries, target, side="right")) - 1
            end = int(boundaries[i]) if boundaries[i] > cut else target
        yield rows.slice(cut, end - cut)
        cut = end
