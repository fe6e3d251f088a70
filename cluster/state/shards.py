"""A UserShard's write-through copy in Redis, from which a restarted shard rebuilds.

`{prefix}shard:<index>:<table>` is one hash per table (devices, profiles, preferences,
activity, affinities, wishlists): field = the row's key (device id, user id), value = the
row as JSON. A shard writes here before it changes its memory, one pipeline per batch, so
whatever it acknowledged survives a restart (`max_restarts`). JSON is encoded and decoded
column-wise by polars, never a Python dict per row.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
import redis

from cluster.settings import HeraldSettings
from cluster.state import keys

HSCAN_COUNT = 10_000
HSET_FIELDS = 5_000  # fields per HSET (or HDEL) command inside a pipeline


class ShardTables:
    def __init__(self, settings: HeraldSettings, index: int, client: redis.Redis) -> None:
        self.settings = settings
        self.index = index
        self.redis = client

    def key(self, table: str) -> str:
        return keys.shard_table(self.settings, self.index, table)

    def load(self, table: str, schema: Mapping[str, pl.DataType]) -> pl.DataFrame | None:
        """Every row of `table` decoded to `schema`'s columns; None when it has none."""
        values = [v for _, v in self.redis.hscan_iter(self.key(table), count=HSCAN_COUNT)]
        if not values:
            return None
        decoded = pl.Series("row", values, dtype=pl.Binary).cast(pl.String)
        return decoded.str.json_decode(pl.Struct(dict(schema))).struct.unnest()

    def write(
        self,
        rows: Mapping[str, tuple[str, pl.DataFrame]],
        removed: Mapping[str, pl.Series] | None = None,
    ) -> None:
        """In one pipeline: per table, `rows` = (key column, frame) stored one field per key
        (the whole row as JSON), and the `removed` keys deleted."""
        pipe = self.redis.pipeline(transaction=False)
        for table, (key_column, frame) in rows.items():
            encoded = frame.select(
                pl.col(key_column).alias("k"), pl.struct(pl.all()).struct.json_encode().alias("v")
            )
            self._queue_hset(pipe, self.key(table), encoded["k"].to_list(), encoded["v"].to_list())
        for table, ids in (removed or {}).items():
            for start in range(0, ids.len(), HSET_FIELDS):
                pipe.hdel(self.key(table), *ids.slice(start, HSET_FIELDS).to_list())
        pipe.execute()

    @staticmethod
    def _queue_hset(pipe, key: str, fields: list[str], values: list[str]) -> None:
        """HSETs of `HSET_FIELDS` fields each, without a Python dict per chunk."""
        for start in range(0, len(fields), HSET_FIELDS):
            part = slice(start, start + HSET_FIELDS)
            pipe.hset(key, items=_interleaved(fields[part], values[part]))


def _interleaved(fields: list[str], values: list[str]) -> list[str]:
    """[f0, v0, f1, v1, ...] by two slice assignments (no per-pair Python work)."""
    flat: list[str] = [""] * (2 * len(fields))
    flat[0::2], flat[1::2] = fields, values
    return flat
