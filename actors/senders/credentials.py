"""Push credentials that change under a running sender: the APNs .p8 key or the FCM
service account is replaced on disk, and new connections use the new one, no restart.

`CredentialFile` watches one configured path. It looks at most every
`HERALD_CREDENTIALS_CHECK_S` (on the sender's next send; `force` for the admin reload
route), compares the file's identity — where a symlink points, inode, size, mtime — and
only when that moved reads it and compares a SHA-256 of its content, so touching a file,
or re-pointing a symlink at the same bytes, is no change. A file that does not read or
does not parse keeps the credential in use (and is logged): a half-copied key must not
stop sends.

`Generations` holds the provider client built from each credential: a send takes the
current one for its whole duration; a replaced one is closed once nothing is in flight on
it any more (bounded by `grace_s`), so a rotation never cuts a request off mid-flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("herald.sender")

T = TypeVar("T")


class CredentialFile:
    """One credentials file and the content last taken from it (`read` first)."""

    def __init__(self, path: Path, check_s: float) -> None:
        self.path = Path(path)
        self.check_s = check_s
        self.digest: str | None = None
        self._identity: tuple | None = None
        self._pending: tuple | None = None  # the identity of what `changed` last returned
        self._checked_at = -math.inf

    def _stat(self) -> tuple:
        resolved = self.path.resolve()
        stat = resolved.stat()
        return (str(resolved), stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def read(self) -> bytes:
        """The file's content now, taken as the one in use."""
        identity = self._stat()
        content = self.path.read_bytes()
        self._identity, self.digest = identity, hashlib.sha256(content).hexdigest()
        self._checked_at = time.monotonic()
        return content

    def changed(self, force: bool = False) -> bytes | None:
        """The new content when the file changed since it was last taken, else None;
        without `force`, at most once per `check_s`. The caller `accept`s it once it has
        built a client from it (a content that does not parse is not taken)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.check_s:
            return None
        self._checked_at = now
        try:
            identity = self._stat()
            if identity == self._identity and not force:
                return None
            content = self.path.read_bytes()
        except OSError as error:
            log.error(
                "credentials file %s unreadable (keeping the one in use): %s", self.path, error
            )
            return None
        if hashlib.sha256(content).hexdigest() == self.digest:
            self._identity = identity
            return None
        self._pending = identity
        return content

    def accept(self, content: bytes) -> None:
        """`content` (from `changed`) is in use now."""
        self._identity = self._pending
        self.digest = hashlib.sha256(content).hexdigest()

    @property
    def fingerprint(self) -> str:
        """A short, non-secret name of the content in use (the start of its SHA-256)."""
        return (self.digest or "")[:12]


class Generations(Generic[T]):
    """The client in use, and the replaced ones until their last request is answered."""

    def __init__(self, client: T, close: Callable[[T], Awaitable[None]], grace_s: float) -> None:
        self.current = client
        self.close = close
        self.grace_s = grace_s
        self._in_flight: dict[int, int] = {}
        self._retiring: set[asyncio.Task] = set()

    @contextlib.contextmanager
    def use(self) -> Iterator[T]:
        """The current client, counted in flight on it until the block ends."""
        client = self.current
        key = id(client)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            yield client
        finally:
            self._in_flight[key] -= 1

    def replace(self, client: T) -> None:
        """New requests go to `client`; the old one closes once idle."""
        old, self.current = self.current, client
        task = asyncio.ensure_future(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: T) -> None:
        deadline = time.monotonic() + self.grace_s
        while self._in_flight.get(id(old), 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._in_flight.pop(id(old), None)
        try:
            await self.close(old)
        except Exception as error:  # a client that fails to close is dropped all the same
            log.warning("closing a replaced provider client failed: %s", error)

    async def close_all(self) -> None:
        """The sender's end: wait for retiring clients, then close the current one."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.close(self.current)
