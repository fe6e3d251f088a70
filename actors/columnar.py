"""A keyed, columnar, upsert-only table: what a UserShard keeps each of its tables in.

Rows live in one polars frame plus a short list of recent upserts, so a registration does
not rewrite the whole frame and a lookup does not wait for a compaction; the two are merged
once the recent part grows past `compact_rows` rows or `compact_parts` writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import polars as pl
import pyarrow as pa


class _ColumnarTable(ABC):
    """What both tables share: a schema, a key, one compacted frame plus a short list of
    recent writes merged once they pass `compact_rows` rows or `compact_parts` writes."""

    def __init__(self, schema: pa.Schema, key: str, compact_rows: int, compact_parts: int) -> None:
        self.schema = schema
        self.key = key
        self.compact_rows = compact_rows
        # Many one-row writes (device registrations) would otherwise pile up as thousands of
        # tiny frames that every lookup filters one by one.
        self.compact_parts = compact_parts
        self._polars_schema = pl.from_arrow(schema.empty_table()).schema
        self._frame = pl.DataFrame(schema=self._polars_schema)
        self._recent: list = []
        self._recent_rows = 0

    @property
    def polars_schema(self) -> pl.Schema:
        """The table's columns as polars types (what rows are conformed and decoded to)."""
        return self._polars_schema

    def _added(self, part: object, rows: int) -> None:
        self._recent.append(part)
        self._recent_rows += rows
        if self._recent_rows >= self.compact_rows or len(self._recent) >= self.compact_parts:
            self.compact()

    @abstractmethod
    def compact(self) -> None:
        """Merge the recent writes into the frame (each table merges its own way)."""

    def frame(self) -> pl.DataFrame:
        self.compact()
        return self._frame

    def __len__(self) -> int:
        return self.frame().height


class KeyedTable(_ColumnarTable):
    """Latest row per key wins; deletion is an upsert that flips a flag, never a hole."""

    def __init__(
        self, schema: pa.Schema, key: str, compact_rows: int = 20_000, compact_parts: int = 64
    ) -> None:
        super().__init__(schema, key, compact_rows, compact_parts)
        self._recent: list[pl.DataFrame] = []

    def conform(self, rows: pl.DataFrame | pa.Table) -> pl.DataFrame:
        """Rows in this table's column order and types (missing nullable columns as null)."""
        frame = rows if isinstance(rows, pl.DataFrame) else pl.from_arrow(rows)
        missing = [
            pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in self._polars_schema.items()
            if name not in frame.columns
        ]
        if missing:
            frame = frame.with_columns(missing)
        return frame.select(
            [pl.col(name).cast(dtype) for name, dtype in self._polars_schema.items()]
        )

    def upsert(self, rows: pl.DataFrame | pa.Table) -> None:
        frame = self.conform(rows)
        if frame.height:
            self._added(frame, frame.height)

    def replace_all(self, rows: pl.DataFrame | pa.Table) -> None:
        """Load a whole table at once (rebuild from Redis, bulk import)."""
        self._frame = self._latest(self.conform(rows))
        self._recent, self._recent_rows = [], 0

    def compact(self) -> None:
        if self._recent:
            self._frame = self._latest(pl.concat([self._frame, *self._recent], rechunk=True))
            self._recent, self._recent_rows = [], 0

    def where_in(self, column: str, values: Sequence[str] | pl.Series) -> pl.DataFrame:
        """Latest rows whose `column` is one of `values`, without forcing a compaction."""
        values = pl.Series(values, dtype=pl.String)
        parts = [self._frame.filter(pl.col(column).is_in(values))]
        parts += [part.filter(pl.col(column).is_in(values)) for part in self._recent]
        return self._latest(pl.concat(parts)) if len(parts) > 1 else parts[0]

    def _latest(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.unique(subset=[self.key], keep="last", maintain_order=True)


class GroupedTable(_ColumnarTable):
    """Rows grouped by a key (e.g. a user's wishlist: (user_id, product_id) rows); writing a
    key replaces its whole group, and a key written with no rows has none.

    Like `KeyedTable`: one compacted frame plus a short list of recent replacements, each
    with the keys it replaced, so a write does not rewrite the frame and a lookup does not
    wait for a compaction."""

    def __init__(
        self, schema: pa.Schema, key: str, compact_rows: int = 20_000, compact_parts: int = 256
    ) -> None:
        super().__init__(schema, key, compact_rows, compact_parts)
        self._recent: list[tuple[pl.Series, pl.DataFrame]] = []

    def conform(self, rows: pl.DataFrame | pa.Table) -> pl.DataFrame:
        frame = rows if isinstance(rows, pl.DataFrame) else pl.from_arrow(rows)
        return frame.select(
            [pl.col(name).cast(dtype) for name, dtype in self._polars_schema.items()]
        )

    def replace(self, rows: pl.DataFrame | pa.Table, keys: Sequence[str] | None = None) -> None:
        """Replace the groups of `keys` (default: the keys in `rows`) with `rows`."""
        frame = self.conform(rows)
        keys = pl.Series(
            self.key, frame[self.key].unique() if keys is None else keys, dtype=pl.String
        )
        if keys.len():
            self._added((keys, frame), frame.height + keys.len())

    def replace_all(self, rows: pl.DataFrame | pa.Table) -> None:
        """Load a whole table at once (rebuild from Redis, bulk import)."""
        self._frame = self.conform(rows)
        self._recent, self._recent_rows = [], 0

    def compact(self) -> None:
        if not self._recent:
            return
        frame = self._frame
        for keys, rows in self._recent:
            frame = pl.concat([frame.filter(~pl.col(self.key).is_in(keys)), rows])
        self._frame = frame.rechunk()
        self._recent, self._recent_rows = [], 0

    def where_in(self, column: str, values: Sequence[str] | pl.Series) -> pl.DataFrame:
        """Current rows whose `column` is one of `values`, without forcing a compaction: a
        row counts only if no later write replaced its key."""
        values = pl.Series(values, dtype=pl.String)
        parts: list[pl.DataFrame] = []
        replaced_later = pl.Series(self.key, [], dtype=pl.String)
        for keys, rows in reversed(self._recent):
            hits = rows.filter(pl.col(column).is_in(values))
            if replaced_later.len():
                hits = hits.filter(~pl.col(self.key).is_in(replaced_later))
            parts.append(hits)
            replaced_later = pl.concat([replaced_later, keys])
        base = self._frame.filter(pl.col(column).is_in(values))
        if replaced_later.len():
            base = base.filter(~pl.col(self.key).is_in(replaced_later))
        parts.append(base)
        return pl.concat(parts[::-1]) if len(parts) > 1 else parts[0]
