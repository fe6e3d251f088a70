"""A UserShard's write-through copy in Redis, from which a restarted shard rebuilds.

`{prefix}shard:<index>:<table>` is one hash per table (devices, profiles, preferences,
activity, affinities, wishlists): field = the row's key (device id, user id), value = the
row as JSON. A shard writes here before it changes its memory, one pipeline per batch, so
whatever it acknowledged survives a restart (`max_restarts`). JSON is encoded and decoded
column-wise by polars, never a Python dict per row.

The devices table's `token` column is sealed on its way in and opened on its way out
(`cluster.state.sealing`): Redis, its AOF and its replicas never hold a token, while the
shard's memory and snapshots hold them as before. `reseal` re-seals a table's tokens under
the newest key, batch by batch beside a running shard (`herald keys rotate`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl
import redis

from cluster import metrics
from cluster.settings import HeraldSettings
from cluster.state import keys
from cluster.state.sealing import DataKeys, kid_of

HSCAN_COUNT = 10_000
HSET_FIELDS = 5_000  # fields per HSET (or HDEL) command inside a pipeline
# The column sealed at rest, per table; each such table has device_id and user_id columns.
SEALED_COLUMNS = {"devices": "token"}
RESEAL_BATCH = 1_000
LOGGED_KEYS_MAX = 20
log = logging.getLogger(__name__)

# Compare-and-set per field, one key (one slot): a row the shard rewrote since it was read
# is left alone — its new value is already sealed under the key the shard holds.
RESEAL_IF_UNCHANGED = """
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n
"""


@dataclass
class Resealed:
    """What one `reseal` did: rows re-sealed under the newest key (`plaintext` of them
    stored before sealing existed), rows already on it, rows rewritten meanwhile (left)."""

    resealed: int = 0
    plaintext: int = 0
    current: int = 0
    changed: int = 0

    def add(self, other: Resealed) -> None:
        for name in ("resealed", "plaintext", "current", "changed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class ShardTables:
    def __init__(self, settings: HeraldSettings, index: int, client: redis.Redis) -> None:
        self.settings = settings
        self.index = index
        self.redis = client
        self.sealing = DataKeys.from_settings(settings)

    def key(self, table: str) -> str:
        return keys.shard_table(self.settings, self.index, table)

    def load(self, table: str, schema: Mapping[str, pl.DataType]) -> pl.DataFrame | None:
        """Every row of `table` decoded to `schema`'s columns; None when it has none. A row
        that does not decode (corrupt, or of another shape) is skipped, counted and logged
        with its key: one bad row must not keep a shard, and all its users, from starting."""
        found = dict(self.redis.hscan_iter(self.key(table), count=HSCAN_COUNT))
        if not found:
            return None
        values = pl.Series("row", list(found.values()), dtype=pl.Binary).cast(pl.String)
        parts, bad = _decodable(values, pl.Struct(dict(schema)))
        if bad:
            fields = list(found)
            _log_skipped(table, self.index, [fields[i].decode(errors="replace") for i in bad])
        rows = pl.concat(parts).struct.unnest() if parts else pl.DataFrame(schema=dict(schema))
        return self._sealed(table, rows, self.sealing.open_column)

    def _sealed(self, table: str, frame: pl.DataFrame, how) -> pl.DataFrame:
        """`frame` with its table's sealed column passed through `how` (seal or open)."""
        column = SEALED_COLUMNS.get(table)
        if column is None or column not in frame.columns or frame.height == 0:
            return frame
        values = how(
            frame[column].to_list(), frame["device_id"].to_list(), frame["user_id"].to_list()
        )
        return frame.with_columns(pl.Series(column, values, dtype=pl.String))

    def write(
        self,
        rows: Mapping[str, tuple[str, pl.DataFrame]],
        removed: Mapping[str, pl.Series] | None = None,
    ) -> None:
        """In one pipeline: per table, `rows` = (key column, frame) stored one field per key
        (the whole row as JSON), and the `removed` keys deleted."""
        pipe = self.redis.pipeline(transaction=False)
        for table, (key_column, frame) in rows.items():
            encoded = self._sealed(table, frame, self.sealing.seal_column).select(
                pl.col(key_column).alias("k"), pl.struct(pl.all()).struct.json_encode().alias("v")
            )
            self._queue_hset(pipe, self.key(table), encoded["k"].to_list(), encoded["v"].to_list())
        for table, ids in (removed or {}).items():
            for start in range(0, ids.len(), HSET_FIELDS):
                pipe.hdel(self.key(table), *ids.slice(start, HSET_FIELDS).to_list())
        pipe.execute()

    def reseal(self, table: str = "devices", batch: int = RESEAL_BATCH) -> Resealed:
        """Re-seal every row of `table` not sealed under the newest key, `batch` rows at a
        time (HSCAN, then one compare-and-set script per batch), while the shard keeps
        writing: a row rewritten between the read and the write is not clobbered."""
        done, key, cursor = Resealed(), self.key(table), 0
        script = self.redis.register_script(RESEAL_IF_UNCHANGED)
        while True:
            cursor, found = self.redis.hscan(key, cursor, count=batch)
            if found:
                part, args = self._reseal_batch(table, found)
                if args:
                    part.changed = part.resealed - int(script(keys=[key], args=args))
                    part.resealed -= part.changed
                done.add(part)
            if cursor == 0:
                return done

    def _reseal_batch(self, table: str, found: dict) -> tuple[Resealed, list]:
        """(counts, the script's ARGV: field, value as read, new value) of one batch."""
        column, part, args = SEALED_COLUMNS[table], Resealed(), []
        stale: list[tuple[bytes, bytes, dict]] = []
        for field, value in found.items():
            row = json.loads(value)
            if not isinstance(row.get(column), str):
                continue  # no token to seal (not a device row)
            kid = kid_of(row[column])
            if kid == self.sealing.current:
                part.current += 1
            else:
                part.plaintext += kid is None
                stale.append((field, value, row))
        if not stale:
            return part, args
        rows = [row for _, _, row in stale]
        device_ids, user_ids = [r["device_id"] for r in rows], [r["user_id"] for r in rows]
        opened = self.sealing.open_column([r[column] for r in rows], device_ids, user_ids)
        sealed = self.sealing.seal_column(opened, device_ids, user_ids)
        for (field, value, row), new in zip(stale, sealed, strict=True):
            row[column] = new
            args += [
                field,
                value,
                json.dumps(row, separators=(",", ":"), ensure_ascii=False, allow_nan=False),
            ]
        part.resealed = len(stale)
        return part, args

    @staticmethod
    def _queue_hset(pipe, key: str, fields: list[str], values: list[str]) -> None:
        """HSETs of `HSET_FIELDS` fields each, without a Python dict per chunk."""
        for start in range(0, len(fields), HSET_FIELDS):
            part = slice(start, start + HSET_FIELDS)
            pipe.hset(key, items=_interleaved(fields[part], values[part]))


def _decodable(values: pl.Series, struct: pl.Struct, offset: int = 0):
    """(decoded parts, positions of the rows that do not decode). All at once when every row
    decodes; else halves, recursively, so k bad rows among n cost O(k log n) decodes."""
    try:
        return [values.str.json_decode(struct)], []
    except pl.exceptions.PolarsError:
        if values.len() == 1:
            return [], [offset]
    half = values.len() // 2
    left, bad_left = _decodable(values.slice(0, half), struct, offset)
    right, bad_right = _decodable(values.slice(half), struct, offset + half)
    return left + right, bad_left + bad_right


def _log_skipped(table: str, shard: int, row_keys: list[str]) -> None:
    log.error(
        "shard %d: skipped %d %s row(s) that do not decode (keys %s%s); rewrite them "
        "(register the device or PUT the user again)",
        shard, len(row_keys), table, ", ".join(row_keys[:LOGGED_KEYS_MAX]),
        " …" if len(row_keys) > LOGGED_KEYS_MAX else "",
    )  # fmt: skip
    metrics.count_rows_skipped(table, len(row_keys))


def _interleaved(fields: list[str], values: list[str]) -> list[str]:
    """[f0, v0, f1, v1, ...] by two slice assignments (no per-pair Python work)."""
    flat: list[str] = [""] * (2 * len(fields))
    flat[0::2], flat[1::2] = fields, values
    return flat


def reseal_shards(
    settings: HeraldSettings, client: redis.Redis, batch: int = RESEAL_BATCH
) -> Resealed:
    """`reseal` of every shard's devices table (`herald keys rotate`): the shards of
    `settings`, and any further one whose table exists (a deployment that had more)."""
    done, index = Resealed(), 0
    while index < settings.topology.shards or client.exists(
        keys.shard_table(settings, index, "devices")
    ):
        done.add(ShardTables(settings, index, client).reseal("devices", batch))
        index += 1
    return done
