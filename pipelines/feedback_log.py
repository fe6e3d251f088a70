"""The feedback log: what the next ranking model is trained on, as Parquet files partitioned
by day (`<root>/sends/day=YYYY-MM-DD/*.parquet`, `<root>/actions/day=YYYY-MM-DD/*.parquet`).

*Sends* are written by the fan-out workers when a campaign is planned, and by the routers
when a price drop is (`pipelines.price_drops.sends`: campaign id = the event id): one row
per chosen user with the inputs of the feature contract exactly as they were scored (the
snapshot's columns, not a later copy), the campaign, category, variant and its style, the
model version and the score, and what off-policy evaluation needs (`models.off_policy`):
`propensity`, the probability the live policy had of choosing that variant for that user
(`models.propensity`: Monte-Carlo under Thompson sampling, 1.0 for a deterministic choice),
`propensity_se`, its Monte-Carlo error, and `audience` (`rank` or `exploration`: how the
user's variant, and so the score they were ranked into the audience by, was chosen).
*Actions* are `POST /v1/feedback` (opened, clicked,
dismissed), exported from the Redis feedback stream by the routers. `training_rows` joins
the two into one row per send with `opened` / `clicked` labels — the frame
`models.training` takes.

No file ever holds a device token (`NEVER_LOGGED`): the log is training data, copied and
kept for long, and a token is a credential to push to a phone. `write` drops such a column
should a producer's frame carry one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

# The snapshot columns the feature contract reads (`models.features`), kept as scored.
FEATURE_INPUTS = ("timezone", "country", "attributes", "platforms", "last_active_at")
# Off-policy columns of a send (`pipelines.campaigns.CHOSEN_COLUMNS`); rows planned before
# they existed read as null, which `models.off_policy` refuses rather than guesses.
PROPENSITY_COLUMNS = ("propensity", "propensity_se", "audience")
# Columns `write` never puts in a file: device tokens are sealed at rest everywhere else.
NEVER_LOGGED = ("token",)
ACTION_SCHEMA = {
    "notification_id": pl.String,
    "user_id": pl.String,
    "action": pl.String,
    "campaign_id": pl.String,
    "variant_id": pl.String,
    "at": pl.Float64,
}


def sends(
    chosen: pl.DataFrame,
    users: pl.DataFrame,
    campaign: Mapping[str, Any],
    *,
    model_version: str,
    now: float,
) -> pl.DataFrame:
    """One row per chosen user: the feature inputs as scored plus what was sent."""
    category = campaign.get("category")
    affinity = f"affinity_{category}" if category else None
    inputs = [c for c in FEATURE_INPUTS if c in users.columns]
    if affinity and affinity in users.columns:
        inputs.append(affinity)
    styles = {v["variant_id"]: v.get("style") or "plain" for v in campaign["variants"]}
    cid = campaign["campaign_id"]
    logged = [c for c in PROPENSITY_COLUMNS if c in chosen.columns]
    return chosen.select("user_id", "variant_id", "score", *logged).join(
        users.select("user_id", *inputs), on="user_id", how="left"
    ).with_columns(
        notification_id=pl.lit(f"{cid}~") + pl.col("user_id"),
        campaign_id=pl.lit(cid),
        category=pl.lit(category, dtype=pl.String),
        style=pl.col("variant_id").replace_strict(styles, return_dtype=pl.String),
        model_version=pl.lit(model_version),
        sent_at=pl.lit(now, dtype=pl.Float64),
    )  # fmt: skip


def deterministic() -> dict[str, pl.Expr]:
    """The off-policy columns of a send chosen with certainty (a price drop's one variant,
    by rank): the live policy would have sent exactly this again."""
    return {
        "propensity": pl.lit(1.0, dtype=pl.Float64),
        "propensity_se": pl.lit(0.0, dtype=pl.Float64),
        "audience": pl.lit("rank"),
    }


def write(rows: pl.DataFrame, root: Path, kind: str, at_column: str) -> list[Path]:
    """Append `rows` under `root/kind/day=<UTC day of at_column>/` as new Parquet files (one
    per day touched): files are never rewritten, so writers on several nodes never clash.
    A `NEVER_LOGGED` column is left out."""
    if rows.height == 0:
        return []
    days = rows.drop(NEVER_LOGGED, strict=False).with_columns(
        _day=pl.from_epoch(pl.col(at_column), time_unit="s").dt.strftime("%Y-%m-%d")
    )
    written = []
    for (day,), part in days.partition_by("_day", as_dict=True).items():
        folder = root / kind / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = path.with_suffix(".tmp")
        part.drop("_day").write_parquet(tmp)
        tmp.rename(path)  # readers never see a half-written file
        written.append(path)
    return written


def read(root: Path, kind: str) -> pl.DataFrame:
    """Every file of one kind, all days (an empty frame when there is none)."""
    files = sorted((root / kind).glob("day=*/*.parquet"))
    if not files:
        return pl.DataFrame()
    # File by file: campaigns of different categories log different affinity columns.
    return pl.concat(
        [
            pl.read_parquet(f).with_columns(day=pl.lit(f.parent.name.removeprefix("day=")))
            for f in files
        ],
        how="diagonal_relaxed",
    )


def training_rows(root: Path) -> pl.DataFrame:
    """One row per send with `opened` and `clicked` from the actions (a click counts as an
    open: a user cannot click what they did not open)."""
    sent = read(root, "sends")
    if sent.height == 0:
        return sent
    actions = read(root, "actions")
    if actions.height == 0:
        actions = pl.DataFrame(schema=ACTION_SCHEMA)
    did = actions.group_by("notification_id").agg(
        clicked=(pl.col("action") == "clicked").any(),
        opened=pl.col("action").is_in(["opened", "clicked"]).any(),
    )
    return (
        sent.unique("notification_id", keep="first")
        .join(did, on="notification_id", how="left")
        .with_columns(pl.col("opened", "clicked").fill_null(False))
    )


def logged_sends(root: Path, *, since_s: float | None = None, now: float | None = None):
    """`training_rows` of the sends of the last `since_s` seconds (all without it): what
    off-policy evaluation weighs a candidate on (`models.off_policy_log`)."""
    rows = training_rows(root)
    if since_s is None or rows.height == 0:
        return rows
    cutoff = (time.time() if now is None else now) - since_s
    return rows.filter(pl.col("sent_at") >= cutoff)
