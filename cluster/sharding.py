"""Which UserShard owns a user: a stable 64-bit hash of the user id and jump consistent hash.

Both steps run on whole numpy columns. The hash is FNV-1a computed column-wise over the
user ids' bytes (not Python's `hash`, which is salted per process, nor polars' hash, which
may change between releases): shard ownership must be the same in every process, on every
machine and after upgrades, because shards rebuild themselves from Redis by that rule.
Jump consistent hash (Lamping & Veach, 2014) moves only ~1/n of the users when the shard
count grows from n-1 to n.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_JUMP_MULT = np.uint64(2862933555777941757)


def hash64(ids: Sequence[str] | pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """FNV-1a 64 of each UTF-8 string, one numpy pass per byte position.

    Reads the bytes straight from an Arrow string buffer (numpy's fixed-width strings would
    drop trailing NUL characters and change the hash)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    array = ids if isinstance(ids, pa.Array) else pa.array(list(ids), type=pa.large_string())
    array = array.cast(pa.large_string())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(int(lengths.max(initial=0))):
            live = lengths > i
            byte = data[np.where(live, starts + i, 0)].astype(np.uint64) if data.size else 0
            h = np.where(live, (h ^ byte) * _FNV_PRIME, h)
    return h


def jump_hash(keys: np.ndarray, buckets: int) -> np.ndarray:
    """Jump consistent hash of uint64 keys into `buckets` buckets, vectorized."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    key = keys.astype(np.uint64, copy=True)
    b = np.full(key.shape, -1, dtype=np.int64)
    j = np.zeros(key.shape, dtype=np.int64)
    active = j < buckets
    with np.errstate(over="ignore"):
        while active.any():
            b = np.where(active, j, b)
            key = np.where(active, key * _JUMP_MULT + np.uint64(1), key)
            r = ((key >> np.uint64(33)) + np.uint64(1)).astype(np.float64)
            j = np.where(active, ((b + 1) * (float(1 << 31) / r)).astype(np.int64), j)
            active = j < buckets
    return b


def shard_of(user_ids: Sequence[str] | pa.Array | pa.ChunkedArray | np.ndarray, shards: int):
    """Shard index (int64 numpy array) of each user id."""
    return jump_hash(hash64(user_ids), shards)
