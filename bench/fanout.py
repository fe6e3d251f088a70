"""Campaign fan-out planning speed: segment → eligibility → scores per variant → variant →
selection → device join, over a synthetic population split into shards the way the cluster
splits it, with the exact functions a fan-out worker runs (`pipelines.campaigns`). Senders
are in counting mode: the delivery batches are produced and counted, not sent.

    .venv/bin/python bench/fanout.py --users 1000000 --users 10000000

For each size it also runs the naive per-user baseline (`bench/baseline_naive.py`) on a
sample, and reports the shard memory a device costs next to the bytes of its token.
Results: printed, and written to `bench/results/fanout.json`.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import typer
from sklearn.ensemble import HistGradientBoostingClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baseline_naive import naive_rate  # noqa: E402
from cluster.sharding import shard_of  # noqa: E402
from cluster.tables.devices import DEVICES  # noqa: E402
from cluster.tables.preferences import DEFAULTS  # noqa: E402
from models.features import features  # noqa: E402
from models.ranker import Ranker, load_ranker  # noqa: E402
from models.synth import REFERENCE_TIME, load_population, simulate_feedback, synthesize  # noqa: E402
from pipelines import campaigns  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fanout.json"
NOW = REFERENCE_TIME + 15 * 3600  # 15:00 UTC on the population's reference day

CAMPAIGN = {
    "campaign_id": "bench",
    "segment": {
        "all": [
            {"active_within_days": 90},
            {"not": {"attr": {"name": "tier", "op": "eq", "value": "vip"}}},
        ]
    },
    "variants": [
        {"variant_id": "plain", "title": "Flash sale", "body": "Up to 50 % off", "style": "plain"},
        {"variant_id": "urgent", "title": "2 h left", "body": "Ends soon", "style": "urgent"},
        {"variant_id": "perso", "title": "For you", "body": "Picked", "style": "personalized"},
    ],
    "channels": ["push", "inbox"],
    "category": "fashion",
    "score_threshold": 0.2,
    "exploration": 0.1,
    "respect_quiet_hours": True,
}


def population(users: int, cache: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The shards' snapshot frames for the whole population: users (with preferences,
    defaults and a quiet window for 10 %) and active devices."""
    out = cache / f"pop-{users}"
    if not (out / "users.parquet").exists():
        synthesize(users, seed=11, out_dir=out)
    frame = load_population(out)
    n = frame.height
    rng = np.random.default_rng(1)
    quiet = rng.random(n) < 0.10
    frame = frame.with_columns(
        *[
            pl.lit(v).alias(k)
            for k, v in DEFAULTS.items()
            if v is not None and k != "cat_marketing"
        ],
        quiet_start_min=pl.when(pl.Series(quiet)).then(22 * 60).cast(pl.Int16),
        quiet_end_min=pl.when(pl.Series(quiet)).then(7 * 60).cast(pl.Int16),
        cat_marketing=pl.Series(rng.random(n) > 0.05),
        has_push_device=pl.col("platforms").list.len() > 0,
    )
    devices = pl.read_parquet(out / "devices.parquet").with_columns(
        device_id=pl.format("dev_{}", pl.int_range(pl.len()))
    )
    return frame, devices.select("user_id", "device_id", "platform", "token", "app_id")


def tree_ranker(users: pl.DataFrame) -> Ranker:
    """A HistGradientBoosting model on the same features, for the tree timing."""
    sample = users.sample(min(users.height, 50_000), seed=2)
    variants = campaigns.variants_frame(CAMPAIGN).select("variant_id", "style")
    x = features(sample, variants, category="fashion", now=NOW)
    hour_utc = (NOW % 86_400) / 3600
    y = np.stack(
        [
            simulate_feedback(sample, "fashion", style, hour_utc, seed=3 + i)["opened"].to_numpy()
            for i, style in enumerate(variants["style"])
        ],
        axis=1,
    ).ravel()  # user-major, like the feature rows
    model = HistGradientBoostingClassifier(max_iter=100).fit(x, y)
    return Ranker(model, version="bench-tree")


def plan_shard(shard_users: pl.DataFrame, shard_devices: pl.DataFrame, ranker: Ranker) -> dict:
    """What one fan-out worker does for one shard, timed per stage; deliveries counted."""
    out = {"segment": 0.0, "plan": 0.0, "render": 0.0, "targeted": 0, "selected": 0,
           "deliveries": 0, "batches": 0}  # fmt: skip
    t0 = time.perf_counter()
    hit = campaigns.targeted(shard_users, CAMPAIGN, NOW)
    t1 = time.perf_counter()
    chosen, _ = campaigns.plan(
        hit, CAMPAIGN, now=NOW, ranker=ranker, variant_stats=None, rng=np.random.default_rng(5)
    )
    t2 = time.perf_counter()
    devices = shard_devices.join(chosen.select("user_id"), on="user_id", how="semi")
    for s in range(0, chosen.height, campaigns.RENDER_CHUNK_USERS):
        part = chosen.slice(s, campaigns.RENDER_CHUNK_USERS)
        rows = campaigns.render(part, devices, CAMPAIGN, NOW)
        for batch in campaigns.batches(rows, 500):
            out["deliveries"] += batch.height
            out["batches"] += 1
    t3 = time.perf_counter()
    out.update(segment=t1 - t0, plan=t2 - t1, render=t3 - t2)
    out.update(targeted=hit.height, selected=chosen.height)
    return out


def run(
    users: pl.DataFrame, devices: pl.DataFrame, ranker: Ranker, shards: int, workers: int
) -> dict:
    """One campaign over every shard, `workers` shards at a time (the fan-out worker pool),
    from the shards' snapshot frames to the last delivery batch."""
    owners = shard_of(users["user_id"].to_arrow(), shards)
    device_owners = shard_of(devices["user_id"].to_arrow(), shards)
    parts = [
        (users.filter(pl.Series(owners == s)), devices.filter(pl.Series(device_owners == s)))
        for s in range(shards)
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda part: plan_shard(*part, ranker), parts))
    elapsed = time.perf_counter() - start
    stages = {k: round(sum(d[k] for d in done), 3) for k in ("segment", "plan", "render")}
    counted = {
        k: sum(d[k] for d in done) for k in ("targeted", "selected", "deliveries", "batches")
    }
    return {"seconds": round(elapsed, 3), "stage_cpu_s": stages, **counted}


def shard_bytes_per_device(devices: pl.DataFrame) -> tuple[float, float]:
    """Bytes per device of a shard's devices table (DEVICES columns, as a shard holds it)
    next to the bytes of the token alone."""
    table = devices.with_columns(
        locale=pl.lit(None, pl.String),
        timezone=pl.lit(None, pl.String),
        active=pl.lit(True),
        updated_at=pl.lit(NOW),
        last_seen_at=pl.lit(NOW),
    ).select([f.name for f in DEVICES])
    token_bytes = float(devices["token"].str.len_bytes().mean())
    return table.estimated_size() / table.height, token_bytes


def main(
    users: list[int] = typer.Option([1_000_000], help="Population sizes to run"),
    shards: int = typer.Option(4, help="Shards the population is split into"),
    workers: int = typer.Option(2, help="Fan-out workers: shards planned at once"),
    naive_sample: int = typer.Option(5_000, help="Users the naive baseline loops over"),
    cache: Path = typer.Option(Path("/tmp/herald-bench"), help="Where populations are kept"),
) -> None:
    linear = load_ranker()
    results = []
    for n in users:
        frame, devices = population(n, cache)
        tree = tree_ranker(frame)
        lin = run(frame, devices, linear, shards, workers)
        tre = run(frame, devices, tree, shards, workers)
        naive = naive_rate(frame, devices, linear, CAMPAIGN, NOW, naive_sample)
        per_device, token = shard_bytes_per_device(devices)
        result = {
            "users": n,
            "users_per_s_linear": round(n / lin["seconds"]),
            "users_per_s_tree": round(n / tre["seconds"]),
            "naive_users_per_s": round(naive),
            "ratio_vs_naive": round(n / lin["seconds"] / naive, 1),
            "bytes_per_device": round(per_device, 1),
            "token_bytes_per_device": round(token, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "linear": lin,
            "tree": tre,
            "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
            "shards": shards,
            "workers": workers,
            "command": "python bench/fanout.py " + " ".join(f"--users {u}" for u in users),
        }
        print(json.dumps(result, indent=1))
        results.append(result)
        del frame, devices
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    typer.run(main)
