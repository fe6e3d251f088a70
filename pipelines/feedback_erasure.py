"""Erasing users from the Parquet feedback log (`pipelines.feedback_log`), and reading
their rows out of it for an export.

Rows are *removed*, files rewritten without them — not pseudonymized. A keyed hash in place
of the id would keep the rows for training, but the rows still describe the person (their
country, time zone, attributes, activity, what they opened), the hash is the same for all
of their rows so they stay linkable, and whoever holds the key can re-identify them: under
the GDPR that is pseudonymous data, still personal. Removing them is the guarantee an
erasure promises; the training set loses one user's rows, which it does not miss.

A file is rewritten only if it holds a row of the users (a scan with the filter pushed
down reads the row groups' statistics first, not the whole file), to a temporary name
beside it that the log's readers do not glob (`*.parquet`), then renamed over it: a reader
sees the old file or the new one, never half of one. A file left with no rows is deleted.
Writers never rewrite a file — they only add new ones — so the only writer to race with is
another erasure, which the erasure lock keeps out (`cluster.state.erasure_audit`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl

KINDS = ("sends", "actions", "shadow")  # every folder of the log with per-user rows
TEMP_SUFFIX = ".erasing"


def log_files(root: Path, kind: str, newer_than: float | None = None) -> list[Path]:
    """The kind's files, every day; with `newer_than` (epoch s) only those changed since."""
    files = sorted((root / kind).glob("day=*/*.parquet"))
    if newer_than is None:
        return files
    return [f for f in files if f.stat().st_mtime >= newer_than]


def _user_column(path: Path) -> pl.LazyFrame | None:
    """The file as a lazy frame, or None when it has no `user_id` column."""
    lazy = pl.scan_parquet(path, hive_partitioning=False)
    return lazy if "user_id" in lazy.collect_schema().names() else None


def erase_file(path: Path, user_ids: Sequence[str]) -> int:
    """Rewrite one file without the rows of `user_ids` (module docstring); rows removed."""
    lazy = _user_column(path)
    if lazy is None:
        return 0
    theirs = pl.col("user_id").is_in(pl.Series(user_ids, dtype=pl.String).implode())
    hits = lazy.filter(theirs).select(pl.len()).collect().item()
    if not hits:
        return 0
    kept = pl.read_parquet(path, hive_partitioning=False).filter(~theirs)
    if kept.height == 0:
        path.unlink()
        return hits
    temp = path.with_name(path.name + TEMP_SUFFIX)
    kept.write_parquet(temp)
    with open(temp, "rb") as written:
        os.fsync(written.fileno())
    os.replace(temp, path)
    return hits


def erase_users(
    root: Path, user_ids: Sequence[str], newer_than: float | None = None
) -> dict[str, int]:
    """Remove the rows of `user_ids` from every file of every kind: rows removed per kind
    (`parquet_<kind>`) and `parquet_files` rewritten or deleted."""
    counts = {f"parquet_{kind}": 0 for kind in KINDS} | {"parquet_files": 0}
    for kind in KINDS:
        for path in log_files(root, kind, newer_than):
            removed = erase_file(path, user_ids)
            counts[f"parquet_{kind}"] += removed
            counts["parquet_files"] += bool(removed)
    return counts


def user_rows(root: Path, user_id: str) -> dict[str, list[dict]]:
    """Every row of the user in the log, per kind, with the file's `day` (for an export)."""
    out: dict[str, list[dict]] = {}
    for kind in KINDS:
        parts = []
        for path in log_files(root, kind):
            lazy = _user_column(path)
            if lazy is None:
                continue
            rows = lazy.filter(pl.col("user_id") == user_id).collect()
            if rows.height:
                day = path.parent.name.removeprefix("day=")
                parts.append(rows.with_columns(day=pl.lit(day)))
        out[kind] = pl.concat(parts, how="diagonal_relaxed").to_dicts() if parts else []
    return out
