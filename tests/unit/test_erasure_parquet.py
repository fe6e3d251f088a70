"""Erasing users from the Parquet feedback log: their rows leave every file, nobody else's
do, a file left empty is deleted, files without them are not touched, and nothing of the
user — row, statistic, temporary file — remains anywhere under the root."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl

from pipelines import feedback_erasure, feedback_log

DAY1, DAY2 = 1_790_000_000.0, 1_790_100_000.0  # two UTC days


def sends(users: list[str], at: float, campaign: str = "c1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": users,
            "notification_id": [f"{campaign}~{u}" for u in users],
            "campaign_id": [campaign] * len(users),
            "variant_id": ["a"] * len(users),
            "score": [0.5] * len(users),
            "country": ["DE"] * len(users),
            "sent_at": [at] * len(users),
        }
    )


def actions(users: list[str], at: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "notification_id": [f"c1~{u}" for u in users],
            "user_id": users,
            "action": ["opened"] * len(users),
            "campaign_id": ["c1"] * len(users),
            "variant_id": ["a"] * len(users),
            "at": [at] * len(users),
        }
    )


def every_text(root: Path) -> list[str]:
    """Every value of every Parquet file under `root`, as text."""
    out = []
    for path in root.rglob("*.parquet"):
        frame = pl.read_parquet(path, hive_partitioning=False)
        for column in frame.columns:
            out += [str(v) for v in frame[column].to_list()]
    return out


def log(tmp_path: Path) -> Path:
    root = tmp_path / "feedback"
    feedback_log.write(sends(["alice", "bob", "carol"], DAY1), root, "sends", "sent_at")
    feedback_log.write(sends(["alice"], DAY2, "c2"), root, "sends", "sent_at")  # alice only
    feedback_log.write(sends(["bob"], DAY2, "c3"), root, "sends", "sent_at")  # not alice
    feedback_log.write(actions(["alice", "bob"], DAY1), root, "actions", "at")
    feedback_log.write(sends(["alice", "dave"], DAY1), root, "shadow", "sent_at")
    return root


def test_the_users_rows_leave_every_file_and_nobody_elses(tmp_path):
    root = log(tmp_path)
    before = {k: feedback_log.read(root, k).height for k in feedback_erasure.KINDS}
    counts = feedback_erasure.erase_users(root, ["alice"])
    assert counts == {
        "parquet_sends": 2, "parquet_actions": 1, "parquet_shadow": 1, "parquet_files": 4,
    }  # fmt: skip
    assert "alice" not in " ".join(every_text(root))
    # Nor in the bytes: a footer's column statistics (min/max) are stored uncompressed.
    assert not [p for p in root.rglob("*") if p.is_file() and b"alice" in p.read_bytes()]
    after = {k: feedback_log.read(root, k) for k in feedback_erasure.KINDS}
    assert {k: f.height for k, f in after.items()} == {
        k: before[k] - counts[f"parquet_{k}"] for k in before
    }
    assert sorted(after["sends"]["user_id"]) == ["bob", "bob", "carol"]
    assert after["actions"]["user_id"].to_list() == ["bob"]
    assert after["shadow"]["user_id"].to_list() == ["dave"]
    # The training join still works on what is left.
    assert sorted(feedback_log.training_rows(root)["user_id"]) == ["bob", "bob", "carol"]


def test_a_file_left_empty_is_deleted_and_others_are_untouched(tmp_path):
    root = log(tmp_path)
    untouched = [p for p in root.rglob("*.parquet") if "alice" not in every_text_of(p)]
    stamps = {p: p.stat().st_mtime_ns for p in untouched}
    files_before = len(list(root.rglob("*.parquet")))
    feedback_erasure.erase_users(root, ["alice"])
    assert len(list(root.rglob("*.parquet"))) == files_before - 1  # the c2 file was hers
    assert {p: p.stat().st_mtime_ns for p in untouched} == stamps
    assert not [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".parquet")]


def every_text_of(path: Path) -> str:
    frame = pl.read_parquet(path, hive_partitioning=False)
    return " ".join(str(v) for c in frame.columns for v in frame[c].to_list())


def test_a_second_erasure_removes_nothing(tmp_path):
    root = log(tmp_path)
    feedback_erasure.erase_users(root, ["alice"])
    again = feedback_erasure.erase_users(root, ["alice"])
    assert set(again.values()) == {0}


def test_newer_than_looks_only_at_files_changed_since(tmp_path):
    root = log(tmp_path)
    old = time.time() - 3600
    for path in root.rglob("*.parquet"):
        os.utime(path, (old, old))
    since = time.time() - 1
    late = feedback_log.write(actions(["alice"], DAY2), root, "actions", "at")
    counts = feedback_erasure.erase_users(root, ["alice"], newer_than=since)
    assert counts["parquet_actions"] == 1 and counts["parquet_files"] == 1
    assert not late[0].exists()
    assert "alice" in " ".join(every_text(root))  # the older files were not looked at


def test_export_reads_the_users_rows_with_their_day(tmp_path):
    root = log(tmp_path)
    rows = feedback_erasure.user_rows(root, "alice")
    assert {k: len(v) for k, v in rows.items()} == {"sends": 2, "actions": 1, "shadow": 1}
    assert {r["campaign_id"] for r in rows["sends"]} == {"c1", "c2"}
    assert all(r["user_id"] == "alice" and r["day"].startswith("2026-") for r in rows["sends"])
    assert feedback_erasure.user_rows(root, "nobody") == {"sends": [], "actions": [], "shadow": []}


def test_files_without_a_user_column_are_left_alone(tmp_path):
    root = tmp_path / "feedback"
    feedback_log.write(
        pl.DataFrame({"campaign_id": ["alice"], "sent_at": [DAY1]}), root, "sends", "sent_at"
    )
    assert feedback_erasure.erase_users(root, ["alice"])["parquet_files"] == 0
    assert feedback_erasure.user_rows(root, "alice")["sends"] == []
