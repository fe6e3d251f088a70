"""Device tokens sealed at rest: AES-256-GCM under the deployment's data keys.

A device token is a bearer credential for pushing to one phone, so it is never stored in
the clear: the UserShard's write-through hash (`cluster.state.shards`) holds each token as
`v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>`, a random 12-byte nonce per seal and the
row's device id and user id as associated data — a sealed token copied into another row
does not open. Retry sets and dead letters hold device ids instead (the token is looked up
again from the shard when a retry is sent); the feedback log never has a token column.

Keys come from `HERALD_DATA_KEYS`, `{"kid": "<base64 of 32 bytes>"}`: the last one seals,
every one opens, so a key is rotated by adding a new one last (every process), running
`herald keys rotate` (re-seals every row under it) and then removing the old one. With no
keys set, the local stack (`dev_mode`) generates one into `<data_dir>/data-keys.json`
(0600, created once, reused); anywhere else that is `DataKeysMissing`, and Herald refuses
to start.

A value that is not in the sealed form is a token written before sealing existed: it opens
as itself and `herald keys rotate` seals it. (Tokens cannot be mistaken for sealed values:
APNs tokens are hex, FCM tokens hold a `:`, which base64url never does.)
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cluster.settings import HeraldSettings

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE = "data-keys.json"
KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# The sealed form; a kid and base64url hold neither `.` nor `:`.
SEALED = re.compile(r"^v1\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]+)$")


class DataKeysMissing(RuntimeError):
    """No data key is configured outside dev mode: Herald must not start (tokens would be
    stored unsealed, or sealed under a key nobody keeps)."""


class InvalidDataKeys(ValueError):
    """`HERALD_DATA_KEYS` (or the dev key file) is not `{"kid": "<base64 of 32 bytes>"}`."""


class TokenNotOpened(ValueError):
    """A sealed token that no configured key opens: its key was removed before
    `herald keys rotate` re-sealed it, or the value was moved to another row or altered."""


def associated_data(device_id: str, user_id: str) -> bytes:
    """What a sealed token is bound to: its row's device and user (length-prefixed, so no
    two pairs encode alike)."""
    return f"{len(device_id)}:{device_id}|{user_id}".encode()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_sealed(value: str) -> bool:
    return SEALED.match(value) is not None


def kid_of(value: str) -> str | None:
    """The key id a sealed value names; None for a value that is not sealed."""
    match = SEALED.match(value)
    return match.group(1) if match else None


def new_key_entry() -> tuple[str, str]:
    """A fresh (kid, base64 key) pair, as HERALD_DATA_KEYS holds them."""
    kid = "k" + secrets.token_hex(4)
    return kid, base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


class DataKeys:
    """The keys of one process: the last one seals, every one opens. One `AESGCM` object
    per key, built once."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        if not entries:
            raise DataKeysMissing("no data keys given")
        self._aead: dict[str, AESGCM] = {}
        for kid, encoded in entries.items():
            if not isinstance(kid, str) or not KID.match(kid):
                raise InvalidDataKeys(f"data key id {kid!r}: 1-32 of [A-Za-z0-9_-]")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise InvalidDataKeys(f"data key {kid!r}: not base64") from None
            if len(key) != KEY_BYTES:
                raise InvalidDataKeys(f"data key {kid!r}: {len(key)} bytes, want {KEY_BYTES}")
            self._aead[kid] = AESGCM(key)
        self.current = list(entries)[-1]
        self.kids = tuple(entries)

    @classmethod
    def from_settings(cls, settings: HeraldSettings) -> DataKeys:
        """HERALD_DATA_KEYS; in dev mode without them, the generated key file. Raises
        `DataKeysMissing` outside dev mode without keys."""
        given = settings.protection.data_keys
        if given:
            return cls(given)
        if not settings.protection.dev_mode:
            raise DataKeysMissing(
                "HERALD_DATA_KEYS is not set: device tokens are sealed at rest and Herald "
                'needs at least one key, as JSON {"kid": "<base64 of 32 bytes>"} (make one '
                "with `herald keys new`). Only the local stack (HERALD_DEV_MODE) generates one."
            )
        return cls(dev_key_file(Path(settings.local.data_dir) / KEY_FILE))

    def seal(self, token: str, device_id: str, user_id: str) -> str:
        return self.seal_column([token], [device_id], [user_id])[0]

    def open(self, value: str, device_id: str, user_id: str) -> str:
        return self.open_column([value], [device_id], [user_id])[0]

    def seal_column(
        self, tokens: Sequence[str], device_ids: Sequence[str], user_ids: Sequence[str]
    ) -> list[str]:
        """Each token sealed under the current key, bound to its row's device and user
        (a null stays null). Only the AES-GCM call runs per row; the associated data and
        the base64url text are built by polars."""
        encrypt, n = self._aead[self.current].encrypt, len(tokens)
        plain = pl.Series(tokens, dtype=pl.String).cast(pl.Binary).to_list()
        bound = _associated_column(device_ids, user_ids)
        nonces = os.urandom(NONCE_BYTES * n)
        raw = [
            None
            if p is None
            else nonces[i : i + NONCE_BYTES] + encrypt(nonces[i : i + NONCE_BYTES], p, ad)
            for i, p, ad in zip(range(0, NONCE_BYTES * n, NONCE_BYTES), plain, bound, strict=True)
        ]
        text = pl.Series(raw, dtype=pl.Binary).bin.encode("base64")
        url = text.str.replace_all("+", "-", literal=True).str.replace_all("/", "_", literal=True)
        return (f"{VERSION}.{self.current}." + url.str.strip_chars_end("=")).to_list()

    def open_column(
        self, values: Sequence[str], device_ids: Sequence[str], user_ids: Sequence[str]
    ) -> list[str]:
        """Each value opened (one written before sealing existed, or null: as it is). Raises
        `TokenNotOpened` naming the first row that no key opens."""
        parts = pl.Series(values, dtype=pl.String).str.extract_groups(SEALED.pattern)
        kids, body = parts.struct.field("1"), parts.struct.field("2")
        std = body.str.replace_all("-", "+", literal=True).str.replace_all("_", "/", literal=True)
        pad = pl.Series(["", "", "==", "="])[(body.str.len_bytes() % 4).fill_null(0)]
        raw = (std + pad).str.decode("base64", strict=False).to_list()
        bound = _associated_column(device_ids, user_ids)
        out: list[str] = []
        for value, kid, sealed, ad, device_id in zip(
            values, kids.to_list(), raw, bound, device_ids, strict=True
        ):
            if kid is None:
                out.append(value)
                continue
            aead = self._aead.get(kid)
            if aead is None:
                raise TokenNotOpened(
                    f"device {device_id}: sealed under key {kid!r}, which is not among "
                    f"HERALD_DATA_KEYS {list(self.kids)} (was it removed before rotating?)"
                )
            try:
                out.append(aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad).decode())
            except (InvalidTag, TypeError):
                raise TokenNotOpened(
                    f"device {device_id}: its sealed token does not open under key {kid!r} "
                    "(altered, or moved from another row)"
                ) from None
        return out


def _associated_column(device_ids: Sequence[str], user_ids: Sequence[str]) -> list[bytes]:
    """`associated_data` of whole columns, built by polars."""
    frame = pl.DataFrame(
        {"d": pl.Series(device_ids, dtype=pl.String), "u": pl.Series(user_ids, dtype=pl.String)}
    )
    bound = frame.select(pl.format("{}:{}|{}", pl.col("d").str.len_chars(), "d", "u"))
    return bound.to_series().cast(pl.Binary).to_list()


def dev_key_file(path: Path) -> dict[str, str]:
    """The dev-mode key file's keys, created with one fresh key if there is none.

    Created atomically: the whole file is written under a unique name (O_CREAT|O_EXCL,
    0600) and hard-linked into place, which fails if another process got there first —
    then everyone re-reads the one that won. So racing shards all end on the same key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        kid, key = new_key_entry()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({kid: key}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        raise InvalidDataKeys(f"{path} is readable by others: chmod 600 {path}")
    try:
        entries = json.loads(path.read_text())
    except ValueError:
        raise InvalidDataKeys(f"{path}: not JSON") from None
    if not isinstance(entries, dict) or not entries:
        raise InvalidDataKeys(f'{path}: want a JSON object {{"kid": "<base64 key>"}}')
    return entries
