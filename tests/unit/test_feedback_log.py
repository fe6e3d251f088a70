"""The feedback log the cluster writes is what training reads: sends as the fan-out workers
log them (features' inputs as scored) joined to the actions exported from Redis, trained on
with a time-based holdout — no cluster needed, the same functions the workers call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from models.synth import REFERENCE_TIME, load_population, simulate_feedback, synthesize
from models.training import train
from pipelines import feedback_log


def test_training_reads_what_the_workers_write(tmp_path: Path):
    synthesize(12_000, seed=4, out_dir=tmp_path / "pop")
    users = load_population(tmp_path / "pop")
    root = tmp_path / "feedback"
    for day in range(3):
        for category, style in (("fashion", "urgent"), ("home", "plain")):
            now = REFERENCE_TIME + day * 86_400 + 15 * 3600
            part = users.sample(4_000, seed=day * 10 + len(category))
            cid = f"c{day}{category}"
            chosen = part.select("user_id").with_columns(variant_id=pl.lit("v1"), score=0.1)
            campaign = {"campaign_id": cid, "category": category,
                        "variants": [{"variant_id": "v1", "title": "t", "body": "b",
                                      "style": style}]}  # fmt: skip
            sent = feedback_log.sends(chosen, part, campaign, model_version="m0", now=now)
            feedback_log.write(sent, root, "sends", "sent_at")
            did = simulate_feedback(part, category, style, 15.0, seed=day)
            actions = did.filter(pl.col("opened")).select(
                notification_id=pl.lit(f"{cid}~") + pl.col("user_id"),
                user_id="user_id",
                action=pl.when(pl.col("clicked"))
                .then(pl.lit("clicked"))
                .otherwise(pl.lit("opened")),
                campaign_id=pl.lit(cid),
                variant_id=pl.lit("v1"),
                at=pl.lit(now + 60.0),
            )
            feedback_log.write(actions, root, "actions", "at")
            feedback_log.write(actions.head(10), root, "actions", "at")  # exported twice

    rows = feedback_log.training_rows(root)
    assert rows.height == 3 * 2 * 4_000
    assert sorted(rows["day"].unique()) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert {"affinity_fashion", "affinity_home", "timezone", "platforms"} <= set(rows.columns)
    assert 0.03 < rows["opened"].mean() < 0.2
    assert (rows["opened"] | ~rows["clicked"]).all()  # a click is an open

    model, metrics = train(rows)
    assert rows.height // 5 <= metrics["holdout_rows"] < rows.height // 2  # the latest sends
    assert metrics["holdout_auc"] > 0.75
    assert np.isfinite(model.coef_).all()


def test_a_token_column_never_reaches_a_file(tmp_path: Path):
    token = "ab" * 32
    rows = pl.DataFrame(
        {"notification_id": ["n1"], "user_id": ["u1"], "token": [token], "sent_at": [1.7e9]}
    )
    (path,) = feedback_log.write(rows, tmp_path, "sends", "sent_at")
    assert token.encode() not in path.read_bytes()
    assert "token" not in feedback_log.read(tmp_path, "sends").columns
    assert feedback_log.read(tmp_path, "sends")["user_id"].to_list() == ["u1"]
