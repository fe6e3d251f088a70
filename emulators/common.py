"""What both emulators share: the received log, the fault plan, the control endpoints
(`/_emulator/received`, `/_emulator/faults`, `/_emulator/reset`, `/_emulator/stats`,
`/_emulator/revoked`), the request cycle around each provider's own API
(`ProviderEmulator`), how a request's headers go into the log (`recorded_headers`), and the
keys an emulator trusts (`TrustedKeys`): every public key in the test PKI directory,
re-read when the directory changes, minus the key ids a test revoked."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emulators.h2server import Request, Response


class FaultPlan(BaseModel):
    """How the emulator misbehaves. Setting a plan replaces the previous one."""

    model_config = ConfigDict(extra="forbid")

    error_rate: dict[int, float] = Field(
        default_factory=dict, description='Share of sends answered with a status, e.g. {"503": 0.2}'
    )
    retry_after_s: float | None = Field(None, description="Retry-After sent with 429/503")
    latency_ms: float = Field(0, ge=0, description="Added before every answer")
    dead_tokens: list[str] = Field(default_factory=list, description="Tokens that are gone")


class EmulatorState:
    def __init__(self, seed: int | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.stats: Counter[int] = Counter()
        self.plan = FaultPlan()
        self.dead: frozenset[str] = frozenset()
        # Key ids the provider no longer accepts (a key revoked in Apple's or Google's
        # console): requests signed with them, and tokens minted from them, are refused.
        self.revoked: frozenset[str] = frozenset()
        self.random = random.Random(seed)

    def record(self, item: dict[str, Any], status: int) -> None:
        item["status"] = status
        item["received_at"] = time.time()
        self.received.append(item)
        self.stats[status] += 1

    def draw_fault(self) -> int | None:
        """A status from the plan's error rates, or None for a normal answer."""
        if not self.plan.error_rate:
            return None
        x = self.random.random()
        for status, rate in sorted(self.plan.error_rate.items()):
            if x < rate:
                return status
            x -= rate
        return None

    def control(self, request: Request) -> Response | None:
        """Answer a `/_emulator/*` request, or None when it is not one."""
        if not request.path.startswith("/_emulator/"):
            return None
        what = request.path.removeprefix("/_emulator/")
        if what == "received" and request.method == "GET":
            since = int(request.query.get("since", ["0"])[0])
            items = self.received[since:]
            return _json(200, {"received": items, "next": since + len(items)})
        if what == "faults" and request.method == "GET":
            return _json(200, self.plan.model_dump())
        if what == "faults" and request.method == "POST":
            try:
                self.plan = FaultPlan.model_validate_json(request.body or b"{}")
            except ValidationError as exc:
                return _json(422, {"error": json.loads(exc.json())})
            self.dead = frozenset(self.plan.dead_tokens)
            return _json(200, self.plan.model_dump())
        if what == "reset" and request.method == "POST":
            self.received.clear()
            self.stats.clear()
            self.plan = FaultPlan()
            self.dead = frozenset()
            self.revoked = frozenset()
            return _json(200, {"reset": True})
        if what == "revoked":
            return self._revoked(request)
        if what == "stats" and request.method == "GET":
            return _json(200, {"total": len(self.received), "by_status": dict(self.stats)})
        return _json(404, {"error": f"no control endpoint {request.method} {request.path}"})

    def _revoked(self, request: Request) -> Response:
        """GET: the revoked key ids; POST `{"key_ids": [...]}`: replace them."""
        if request.method == "POST":
            try:
                body = json.loads(request.body or b"{}")
                ids = body["key_ids"]
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return _json(422, {"error": 'body must be {"key_ids": ["<key id>", ...]}'})
            self.revoked = frozenset(ids)
        return _json(200, {"key_ids": sorted(self.revoked)})


class TrustedKeys:
    """Public keys by key id: `fixed` ones, plus every file in `directory` named
    `<prefix><key id>.pem`. The directory is looked at again at most every `recheck_s`
    and re-read only when its mtime changed (a key added, removed or renamed in), so a
    request costs one dict lookup and, now and then, one stat."""

    def __init__(
        self,
        fixed: dict[str, bytes],
        directory: Path | None = None,
        prefix: str = "",
        recheck_s: float = 0.25,
    ) -> None:
        self.fixed = dict(fixed)
        self.directory = Path(directory) if directory is not None else None
        self.prefix = prefix
        self.recheck_s = recheck_s
        self._found: dict[str, bytes] = {}
        self._mtime_ns: int | None = None
        self._checked_at = -math.inf

    def get(self, key_id: str | None) -> bytes | None:
        """The public key (PEM) of `key_id`, or None when it is not trusted."""
        if key_id is None:
            return None
        self._refresh()
        return self._found.get(key_id) or self.fixed.get(key_id)

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.directory is None or now - self._checked_at < self.recheck_s:
            return
        self._checked_at = now
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime_ns:
            return
        found = {}
        for path in self.directory.glob(f"{self.prefix}*.pem"):
            key_id = path.name.removeprefix(self.prefix).removesuffix(".pem")
            try:
                found[key_id] = path.read_bytes()
            except OSError:
                continue  # removed since the glob
        # A change within the filesystem's timestamp granularity of this read could leave
        # the mtime as it is: a directory changed in the last second is read again.
        settled = time.time_ns() - mtime > 1_000_000_000
        self._found, self._mtime_ns = found, mtime if settled else None


class ProviderEmulator(ABC):
    """The part of answering a request that does not depend on the provider: control
    endpoints first (never delayed, so a test can always reset or read the log), then the
    plan's latency, then the provider's own API in `route`."""

    def __init__(self) -> None:
        self.state = EmulatorState()

    async def handle(self, request: Request) -> Response:
        control = self.state.control(request)
        if control is not None:
            return control
        if self.state.plan.latency_ms:
            await asyncio.sleep(self.state.plan.latency_ms / 1000)
        return self.route(request)

    @abstractmethod
    def route(self, request: Request) -> Response:
        """The provider's answer to a request of its own API."""


def _json(status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(
        status,
        json.dumps(body, separators=(",", ":")).encode(),
        [("content-type", "application/json"), *(headers or [])],
    )


json_response = _json


def retry_after_header(state: EmulatorState, status: int) -> list[tuple[str, str]]:
    """Retry-After (whole seconds, as HTTP wants) on 429/503 when the plan sets one."""
    if status in (429, 503) and state.plan.retry_after_s is not None:
        return [("retry-after", str(math.ceil(state.plan.retry_after_s)))]
    return []


def recorded_headers(request: Request) -> dict[str, str]:
    """Every header the client sent, so a test can check the whole request and not only the
    few headers someone once thought of. HTTP/2's pseudo-headers are left out (the method
    and path are what routed the request here) and the credential is reduced to its scheme:
    the log, which any test reads and prints, shows that one was sent but never holds it."""
    headers = {k: v for k, v in request.headers.items() if not k.startswith(":")}
    if "authorization" in headers:
        scheme, space, _ = headers["authorization"].partition(" ")
        headers["authorization"] = f"{scheme} <redacted>" if space else "<redacted>"
    return headers
