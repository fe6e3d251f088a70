"""The users frame, built so that one bad stored record never fails a whole campaign.

`models.snapshot.users_frame` decodes every profile's `attributes` JSON in one polars
pass; one value polars cannot read — a `NaN` written before the door refused it, a hand
edit in Redis, an object where every other row holds a number — fails that pass, and with
it every campaign and segment over the shard until the record is overwritten. Here the
one pass runs as before; only when it fails are the rows looked at one by one: a row whose
attributes are not a JSON object of finite scalars (what `PUT /v1/users/{id}` admits) is
counted, logged with its user id, and kept without attributes (its user stays in the
snapshot, matching no `attr` segment). The per-row look is the error path only.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import polars as pl

from models.snapshot import ATTRIBUTES, USER_ID
from models.snapshot import users_frame as _users_frame

log = logging.getLogger("herald.segments")
LOGGED_IDS_MAX = 20  # user ids named in the log line; the count covers the rest


def users_frame(
    profiles: pl.DataFrame,
    devices: pl.DataFrame | None = None,
    wishlists: pl.DataFrame | None = None,
    *,
    activity: pl.DataFrame | None = None,
    affinities: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """`models.snapshot.users_frame` (its doc gives the columns), with the profile rows
    whose attributes do not decode skipped as the module doc says."""
    try:
        return _users_frame(profiles, devices, wishlists, activity=activity, affinities=affinities)
    except pl.exceptions.PolarsError:
        if ATTRIBUTES not in profiles.columns:
            raise
    cleaned = without_bad_attributes(profiles)
    return _users_frame(cleaned, devices, wishlists, activity=activity, affinities=affinities)


def without_bad_attributes(profiles: pl.DataFrame) -> pl.DataFrame:
    """`profiles` with null `attributes` where a row's value is not a JSON object of
    finite scalars; the count and the first user ids logged."""
    values = profiles[ATTRIBUTES].cast(pl.String).to_list()
    good = [value is None or _readable(value) for value in values]
    bad_ids = [uid for uid, ok in zip(profiles[USER_ID].to_list(), good, strict=True) if not ok]
    if bad_ids:
        log.error(
            "skipped the attributes of %d profile row(s) that do not decode (users %s%s): "
            "they match no attribute segment until rewritten",
            len(bad_ids),
            ", ".join(map(str, bad_ids[:LOGGED_IDS_MAX])),
            " …" if len(bad_ids) > LOGGED_IDS_MAX else "",
        )
    keep = pl.Series("keep", good, dtype=pl.Boolean)
    return profiles.with_columns(
        pl.when(keep).then(pl.col(ATTRIBUTES)).otherwise(None).alias(ATTRIBUTES)
    )


def _readable(value: str) -> bool:
    try:
        decoded: Any = json.loads(value, parse_constant=_refuse)
    except ValueError:
        return False
    return isinstance(decoded, dict) and all(_scalar(v) for v in decoded.values())


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
