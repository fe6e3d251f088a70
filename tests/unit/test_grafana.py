"""The Grafana dashboard is built on the metric names Herald really records."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cluster import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "herald.json"


def recorded() -> dict[str, set[str]]:
    """`ray_<name>` → tag keys, from the metric definitions themselves."""
    out = {}
    for make in (metrics.ingested, metrics.notifications, metrics.latency,
                 metrics.dead_letters, metrics.log_backlog, metrics.campaign_users,
                 metrics.fanout_plan_seconds, metrics.model_in_use,
                 metrics.shard_rows, metrics.fanout_workers, metrics.sender_replicas):  # fmt: skip
        metric = make()
        out[f"ray_{metric._name}"] = set(metric._tag_keys)
    return out


def test_every_query_uses_recorded_metrics_and_tags():
    known = recorded()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 6
    used = set()
    for expr in exprs:
        for name in re.findall(r"ray_herald_\w+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in known, f"{name} in {expr!r} is not a Herald metric"
            used.add(base)
            for group in re.findall(r"by \(([^)]*)\)", expr):
                tags = {t.strip() for t in group.split(",")} - {"le"}
                assert tags <= known[base], f"{expr!r} groups by unknown tags {tags}"
            for label in re.findall(r"(\w+)=\"", expr):
                assert label in known[base], f"{expr!r} filters on unknown tag {label}"
    assert used == set(known), f"metrics without a panel: {set(known) - used}"
