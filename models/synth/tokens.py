"""Push tokens for synthetic devices, drawn in bulk: a million tokens are a few numpy
operations on one random buffer, not a million calls to `secrets`.

The shapes are those of `ops.demo`'s tokens (and so of what `api.schemas` accepts): APNs 64
lower-case hex characters; FCM `<token_urlsafe(16)>:APA91b<token_urlsafe(100)>`.
"""

from __future__ import annotations

import binascii
import math

import numpy as np
import pyarrow as pa


def _strings(data: bytes, width: int) -> pa.Array:
    """Fixed-width ASCII records in one buffer → an Arrow string array, without a copy per
    row."""
    n = len(data) // width
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def apns_tokens(rng: np.random.Generator, n: int) -> pa.Array:
    """`n` APNs tokens like `ops.demo.apns_token()`: 32 random bytes as 64 hex chars."""
    return _strings(rng.bytes(32 * n).hex().encode("ascii"), 64)


def _urlsafe(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    """`n` × `secrets.token_urlsafe(nbytes)` as a (n, chars) uint8 matrix: base64url of each
    row's bytes without padding. Rows are padded with zero bytes to a multiple of 3 so one
    base64 pass over the whole buffer keeps rows aligned; the padding only adds characters
    past the unpadded length, which are cut off."""
    padded = -(-nbytes // 3) * 3
    raw = np.zeros((n, padded), dtype=np.uint8)
    raw[:, :nbytes] = np.frombuffer(rng.bytes(n * nbytes), dtype=np.uint8).reshape(n, nbytes)
    encoded = np.frombuffer(binascii.b2a_base64(raw.tobytes(), newline=False), dtype=np.uint8)
    chars = math.ceil(nbytes * 4 / 3)
    rows = encoded.reshape(n, padded // 3 * 4)[:, :chars].copy()
    rows[rows == ord("+")] = ord("-")
    rows[rows == ord("/")] = ord("_")
    return rows


def fcm_tokens(rng: np.random.Generator, n: int) -> pa.Array:
    """`n` FCM registration tokens like `ops.demo.fcm_token()`:
    `<token_urlsafe(16)>:APA91b<token_urlsafe(100)>` (22 + 7 + 134 = 163 characters)."""
    head, tail = _urlsafe(rng, n, 16), _urlsafe(rng, n, 100)
    sep = np.broadcast_to(np.frombuffer(b":APA91b", dtype=np.uint8), (n, 7))
    rows = np.ascontiguousarray(np.hstack([head, sep, tail]))
    return _strings(rows.tobytes(), rows.shape[1])
