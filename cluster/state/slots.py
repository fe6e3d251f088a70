"""Redis Cluster hash slots of whole key columns, so a store can split a batch by slot.

A Lua script may only touch keys of one slot on a cluster. A store whose script runs over a
batch of many orders or users (`state.orders`) calls it once per slot instead, all calls
in one pipeline; on one Redis there is one group and one call, as before. The slot is
Redis's: CRC16/XMODEM of the key's hash tag (the text between its first `{` and the next
`}`, when not empty) or of the whole key, modulo 16,384 — computed here over the column's
Arrow bytes one numpy pass per byte position (as `cluster.sharding.hash64`), not one
Python call per key. `tests/unit/test_slots.py` checks it against redis-py's `key_slot`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import redis
import redis.asyncio as aioredis

SLOTS = 16_384
_TAG = r"^[^{]*\{([^}]+)\}"  # Redis's rule: first `{`, then the first `}` after it


def _crc16_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table[byte] = crc & 0xFFFF
    return table


_TABLE = _crc16_table()


def _crc16(values: pa.Array) -> np.ndarray:
    """CRC16/XMODEM of each UTF-8 string of `values`, vectorized over the rows."""
    values = values.cast(pa.large_string())
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[values.offset : values.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    starts, lengths = offsets[:-1], np.diff(offsets)
    crc = np.zeros(n, dtype=np.uint32)
    for i in range(int(lengths.max(initial=0))):
        live = lengths > i
        byte = data[np.where(live, starts + i, 0)].astype(np.uint32)
        step = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]
        crc = np.where(live, step, crc)
    return crc


def key_slots(keys: pl.Series) -> pl.Series:
    """The Redis Cluster slot of each key (UInt16)."""
    hashed = keys.str.extract(_TAG, 1).fill_null(keys)
    crc = _crc16(hashed.to_arrow()) if hashed.len() else np.zeros(0, dtype=np.uint32)
    return pl.Series("slot", (crc % SLOTS).astype(np.uint16))


def is_cluster_client(client: Any) -> bool:
    """Whether `client` (sync or async) talks to a Redis Cluster."""
    return isinstance(client, aioredis.RedisCluster | redis.RedisCluster)


def slot_groups(client: Any, keys: pl.Series) -> pl.Series:
    """Per key, the group its script call goes in: its slot on a cluster, 0 on one Redis
    (where any keys may share a script, and one call is one round trip)."""
    if is_cluster_client(client):
        return key_slots(keys)
    return pl.Series("slot", np.zeros(keys.len(), dtype=np.uint16))
