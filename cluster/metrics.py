"""Herald's metrics, on `ray.util.metrics`: Ray exports them on every node's Prometheus
endpoint (`ray start --metrics-export-port`, or the port in
`/tmp/ray/prom_metrics_service_discovery.json`), with Ray's `ray_` prefix — so
`herald_notifications_total` is scraped as `ray_herald_notifications_total`.

Metrics are recorded per batch from columns: one `group_by` per batch, then one `inc` per
(channel, lane, outcome) group. Ray's histogram takes one value per call, so the latency
histogram observes at most `LATENCY_SAMPLE` deliveries per batch and group (a uniform
sample; its `_count` is the sample size, `herald_notifications_total` is the exact count).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from functools import cache

import polars as pl
from ray.util.metrics import Counter, Gauge, Histogram

log = logging.getLogger("herald.metrics")
LATENCY_SAMPLE = 64
LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]


@cache
def ingested() -> Counter:
    return Counter(
        "herald_events_ingested_total",
        description="Events offered to the API or the Kafka ingestor, by type, lane and result.",
        tag_keys=("type", "lane", "result"),
    )


@cache
def notifications() -> Counter:
    return Counter(
        "herald_notifications_total",
        description="Provider answers per delivery attempt, by channel, lane and outcome "
        "(delivered, retry, dead_token, failed).",
        tag_keys=("channel", "lane", "outcome"),
    )


@cache
def suppressed() -> Counter:
    return Counter(
        "herald_notifications_suppressed_total",
        description="Notifications or pushes not sent, by lane and reason (superseded, "
        "expired, rate_limited, category_opt_out, channel_opt_out, no_active_device, ...).",
        tag_keys=("lane", "reason"),
    )


@cache
def latency() -> Histogram:
    return Histogram(
        "herald_delivery_latency_seconds",
        description="Event accepted to provider acknowledged, delivered attempts (sampled).",
        boundaries=LATENCY_BOUNDARIES,
        tag_keys=("channel", "lane"),
    )


@cache
def dead_letters() -> Counter:
    return Counter(
        "herald_dead_letters_total",
        description="Entries written to the dead-letter stream, by kind.",
        tag_keys=("kind",),
    )


@cache
def log_backlog() -> Gauge:
    return Gauge(
        "herald_log_backlog",
        description="Event-log entries not yet acknowledged, per lane.",
        tag_keys=("lane",),
    )


def _never_raises(record: Callable[..., None]) -> Callable[..., None]:
    """Metrics must never fail a delivery: a broken metric is logged, not raised."""

    @functools.wraps(record)
    def safe(*args, **kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception:  # noqa: BLE001
            log.warning("metrics: %s failed", record.__name__, exc_info=True)

    return safe


@_never_raises
def record_ingested(types: list[str], lanes: list[str], fresh: list[bool]) -> None:
    frame = pl.DataFrame({"type": types, "lane": lanes, "fresh": fresh})
    counts = frame.group_by("type", "lane", "fresh").len()
    for type_, lane, fresh_, n in counts.iter_rows():
        result = "accepted" if fresh_ else "duplicate"
        ingested().inc(n, tags={"type": type_, "lane": lane, "result": result})


@_never_raises
def record_answers(answered: pl.DataFrame) -> None:
    """One batch of provider answers (`channel`, `lane`, `outcome`, `accepted_at`,
    `acked_at` columns)."""
    if answered.height == 0:
        return
    for channel, lane, outcome, n in (
        answered.group_by("channel", "lane", "outcome").len().iter_rows()
    ):
        notifications().inc(n, tags={"channel": channel, "lane": lane, "outcome": outcome})
    delivered = answered.filter(pl.col("outcome") == "delivered").select(
        "channel", "lane", (pl.col("acked_at") - pl.col("accepted_at")).alias("seconds")
    )
    for (channel, lane), group in delivered.group_by("channel", "lane"):
        sample = group.sample(min(group.height, LATENCY_SAMPLE))
        for seconds in sample["seconds"]:
            latency().observe(max(0.0, seconds), tags={"channel": channel, "lane": lane})


@_never_raises
def count_dead_letters(kind: str, n: int) -> None:
    if n:
        dead_letters().inc(n, tags={"kind": kind})


@_never_raises
def count_suppressed(lane: str, reason: str, n: int) -> None:
    if n:
        suppressed().inc(n, tags={"lane": lane, "reason": reason})


@_never_raises
def record_suppressed(rows: pl.DataFrame, lane: str) -> None:
    """One batch's suppressed notifications (a `reason` column), counted by reason and by
    their `lane` column where they have one, else as `lane`."""
    if rows.height == 0 or "reason" not in rows.columns:
        return
    lanes = pl.col("lane") if "lane" in rows.columns else pl.lit(lane)
    counted = rows.group_by(lanes.alias("lane"), "reason").len()
    for row_lane, reason, n in counted.iter_rows():
        suppressed().inc(n, tags={"lane": row_lane or lane, "reason": reason or "unknown"})


@_never_raises
def set_backlog(lane: str, size: int) -> None:
    log_backlog().set(size, tags={"lane": lane})


@cache
def campaign_users() -> Counter:
    return Counter(
        "herald_campaign_users_total",
        description="Users through campaign planning per shard (targeted, eligible) and "
        "suppressed users by reason (stage=suppressed:<reason>).",
        tag_keys=("stage",),
    )


@cache
def fanout_plan_seconds() -> Histogram:
    return Histogram(
        "herald_fanout_plan_seconds",
        description="Time a fan-out worker takes to plan one shard of a campaign.",
        boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        tag_keys=("model_version",),
    )


@cache
def model_in_use() -> Gauge:
    return Gauge(
        "herald_model_in_use",
        description="1 for the ranker version each fan-out worker gives new campaigns, else 0.",
        tag_keys=("worker", "model_version"),
    )


@_never_raises
def record_plan(counts: dict[str, int], seconds: float, model_version: str) -> None:
    for stage, n in counts.items():
        if n:
            campaign_users().inc(n, tags={"stage": stage})
    fanout_plan_seconds().observe(seconds, tags={"model_version": model_version})


@_never_raises
def set_model_in_use(worker: int, version: str, previous: str | None) -> None:
    if previous is not None and previous != version:
        model_in_use().set(0, tags={"worker": str(worker), "model_version": previous})
    model_in_use().set(1, tags={"worker": str(worker), "model_version": version})


@cache
def shard_rows() -> Gauge:
    return Gauge(
        "herald_shard_rows",
        description="Rows a user shard holds, per shard and table (devices, active_devices, "
        "stale_devices, profiles, preferences, wishlist_rows, activity, affinities).",
        tag_keys=("shard", "table"),
    )


@_never_raises
def set_shard_rows(stats: dict[str, int]) -> None:
    shard = str(stats["shard"])
    for table, rows in stats.items():
        if table not in ("shard", "device_bytes"):
            shard_rows().set(rows, tags={"shard": shard, "table": table})


@cache
def fanout_workers() -> Gauge:
    return Gauge(
        "herald_fanout_workers",
        description="Fan-out workers a campaign last ran with (the fixed pool plus grown ones).",
    )


@_never_raises
def set_fanout_workers(n: int) -> None:
    fanout_workers().set(n)


@cache
def sender_replicas() -> Gauge:
    return Gauge(
        "herald_sender_replicas",
        description="Replicas of each push sender (APNs, FCM) per lane, grown with the backlog.",
        tag_keys=("lane",),
    )


@_never_raises
def set_sender_replicas(lane: str, n: int) -> None:
    sender_replicas().set(n, tags={"lane": lane})


@cache
def devices_skipped() -> Counter:
    return Counter(
        "herald_devices_skipped_total",
        description="Active devices left out when choosing where to push, by reason (stale: "
        "not seen for HERALD_DEVICE_STALE_DAYS), counted once per user and batch.",
        tag_keys=("reason",),
    )


@_never_raises
def count_devices_skipped(reason: str, n: int) -> None:
    if n:
        devices_skipped().inc(n, tags={"reason": reason})


@cache
def rows_skipped() -> Counter:
    return Counter(
        "herald_rows_skipped_total",
        description="Stored rows that did not decode and were skipped when a shard rebuilt "
        "from Redis, by table (the log names their keys).",
        tag_keys=("table",),
    )


@_never_raises
def count_rows_skipped(table: str, n: int) -> None:
    if n:
        rows_skipped().inc(n, tags={"table": table})
