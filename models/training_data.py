"""What training reads: the feedback log, on disk or simulated.

The feedback log
----------------
One row per send; the contract the cluster side writes and `models.training.train` reads:

- the users-frame columns the feature contract reads (`models.features`): `user_id`,
  `timezone`, `country`, `attributes` (Struct or JSON string), `platforms` (List[String]),
  `last_active_at` (Float64 epoch s), `affinity_<category>` (Float32) — as they were at the
  send;
- `sent_at` Float64 epoch seconds (UTC), `category` String, `style` String (the variant's
  style, `cluster.vocabulary.VARIANT_STYLES`; unknown → "plain"), `opened` Boolean;
  optional extra columns (`clicked`, `notification_id`, `variant_id`, `campaign_id`, ...)
  are kept and ignored by training.

On disk (`write_feedback_log` / `read_feedback_log`) it is a Parquet dataset partitioned by
the UTC day of `sent_at`, hive style: `<dir>/day=YYYY-MM-DD/<part>.parquet`. Writers add
new files (a unique name per write, renamed into place when complete), never rewrite old
ones; readers may filter whole days.

Without a real log, `simulate_feedback_log` draws one from the simulated world
(`models.synth`): one send per user of a synthetic population, outcomes drawn with the
world's clock at each send.
"""

from __future__ import annotations

import tempfile
import uuid
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from cluster.vocabulary import CATEGORIES
from models import synth
from models.train_default import VARIANTS, hour_utc, world

DEFAULT_SEED = 7
SIMULATED_DAYS = 7

# What `features` reads from a user row; the log carries these as of the send.
USER_LOG_COLUMNS: tuple[str, ...] = (
    "user_id",
    "timezone",
    "country",
    "attributes",
    "platforms",
    "last_active_at",
    *(f"affinity_{c}" for c in CATEGORIES),
)
SEND_LOG_COLUMNS: tuple[str, ...] = ("sent_at", "category", "style", "opened")
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", *SEND_LOG_COLUMNS)


# --- the feedback log on disk --------------------------------------------------------------


def _day_column(rows: pl.DataFrame) -> pl.Expr:
    return (
        pl.from_epoch(pl.col("sent_at").cast(pl.Float64).mul(1e6).cast(pl.Int64), time_unit="us")
        .dt.strftime("%Y-%m-%d")
        .alias("day")
    )


def write_feedback_log(rows: pl.DataFrame, path: Path) -> Path:
    """Append `rows` (a feedback log frame, see the module docstring) to the day-partitioned
    Parquet dataset at `path` (`path/day=YYYY-MM-DD/part-<uuid>.parquet`); returns `path`.
    Each file is written under a hidden temporary name and renamed when complete, so a
    reader never sees a partial file."""
    path = Path(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"feedback rows lack column(s) {missing}")
    if "day" in rows.columns:
        rows = rows.drop("day")
    if rows.height == 0:
        path.mkdir(parents=True, exist_ok=True)
        return path
    part = uuid.uuid4().hex
    for (day,), chunk in (
        rows.with_columns(_day_column(rows))
        .partition_by("day", as_dict=True, maintain_order=True)
        .items()
    ):
        folder = path / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".part-{part}.parquet.tmp"
        chunk.drop("day").write_parquet(tmp)
        tmp.rename(folder / f"part-{part}.parquet")
    return path


def read_feedback_log(
    path: Path, *, since: date | str | None = None, until: date | str | None = None
) -> pl.DataFrame:
    """The feedback log at `path` (written by `write_feedback_log`), days `since`..`until`
    inclusive (UTC `YYYY-MM-DD`; None → unbounded): other days' partitions are not read.
    Files may differ in columns (e.g. only the campaign category's `affinity_<category>`):
    a column missing from a file reads as null there. The `day` partition column is not
    returned."""
    path = Path(path)
    files = []
    for folder in sorted(path.glob("day=*")):
        day = folder.name.removeprefix("day=")
        if (since is not None and day < str(since)) or (until is not None and day > str(until)):
            continue
        files.extend(sorted(folder.glob("*.parquet")))
    if not files:
        raise FileNotFoundError(
            f"no feedback log files (day=YYYY-MM-DD/*.parquet) in {path}"
            + (f" from {since} to {until}" if since is not None or until is not None else "")
        )
    frames = [pl.scan_parquet(f) for f in files]
    return pl.concat(frames, how="diagonal_relaxed").collect()


# --- simulated feedback ----------------------------------------------------------------------

_world = lru_cache(maxsize=512)(world)  # the simulated world at a send time (read only)


def synthetic_population(users: int, seed: int) -> pl.DataFrame:
    """A `models.synth` population (the snapshot frame with `timezone`), in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        synth.synthesize(users, seed, Path(tmp))
        return synth.load_population(Path(tmp))


def simulate_feedback_log(
    users: pl.DataFrame | int,
    *,
    seed: int = DEFAULT_SEED,
    days: int = SIMULATED_DAYS,
    start: float = synth.REFERENCE_TIME,
) -> pl.DataFrame:
    """A feedback log of one send per user of `users` (a population frame, or a number of
    synthetic users drawn with `seed`): a random category, a uniformly random variant style
    (the logging policy) and a send time spread over `days` days from `start` — one send
    time per (day, hour, category), as a campaign batch shares its `now`. `opened` /
    `clicked` are drawn from the simulated world (`models.synth`) with its clock at the
    send. Rows are in `sent_at` order."""
    if isinstance(users, int):
        users = synthetic_population(users, seed)
    rng = np.random.default_rng(seed)
    n = users.height
    n_cat = len(CATEGORIES)
    n_groups = days * 24 * n_cat
    group = rng.integers(0, n_groups, size=n)
    style = rng.integers(0, VARIANTS.height, size=n)
    # One send time per (day, hour) slot, shared by its categories (campaign batches at
    # the same moment): the world and the features' zone offsets are computed once per slot.
    minutes = rng.uniform(0, 3600, size=days * 24)
    user_columns = [c for c in USER_LOG_COLUMNS if c in users.columns]
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    frames = []
    for g in range(n_groups):  # a loop over send batches, not users
        rows = order[bounds[g] : bounds[g + 1]]
        if len(rows) == 0:
            continue
        slot, category_index = divmod(g, n_cat)
        category = CATEGORIES[category_index]
        now = start + slot * 3600.0 + minutes[slot]
        chunk = users[rows]
        styles = VARIANTS["style"].gather(style[rows])
        feedback = synth.simulate_feedback(
            chunk,
            category,
            styles,
            hour_utc(now),
            seed=int(rng.integers(2**31)),
            model=_world(now),
        )
        frames.append(
            chunk.select(user_columns).with_columns(
                pl.lit(now, dtype=pl.Float64).alias("sent_at"),
                pl.lit(category, dtype=pl.String).alias("category"),
                styles.alias("style"),
                feedback["opened"],
                feedback["clicked"],
            )
        )
    return pl.concat(frames, how="vertical")
