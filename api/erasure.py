"""Data protection: erase a user (`DELETE /v1/users/{user_id}`), export everything Herald
holds about them (`GET /v1/users/{user_id}/export`), and the audit of erasures
(`GET /v1/admin/erasures`). Admin scope, checked before the path is validated.

The routes are an `APIRouter` built by `erasure_router`, given a lookup of the replica's
`Erasure` services and of its key map, as `api.me` is (the routes exist before any
replica does). The work is the stores': the user's shard drops their rows
(`UserShard.erase_users`), `cluster.state.erasure` finds and removes the rest in Redis,
`pipelines.feedback_erasure` rewrites the Parquet feedback log, and
`cluster.state.erasure_audit` records the erasure.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import APIRouter, Path, Query, Security
from pydantic import BaseModel, Field

from api.auth import KeyLookup, RequireScope
from api.errors import ApiError
from api.schemas import ID_PATTERN, ErrorResponse
from cluster.settings import HeraldSettings
from cluster.state.erasure import Subject, UserData, mask
from cluster.state.erasure_audit import ErasureAudit, LockBusy
from pipelines import feedback_erasure

LOCK_WAIT_S = 60.0
KAFKA_NOTE = (
    "event log is Kafka: records cannot be deleted from its topics; they age out with the "
    "topics' retention (retention.ms). Redis and the feedback log were erased."
)
UserId = Annotated[str, Path(pattern=ID_PATTERN)]


@dataclass
class Erasure:
    """What the routes of one replica use: the shards (`api.fleet.Fleet`) and the stores."""

    settings: HeraldSettings
    fleet: Any
    data: UserData
    audit: ErasureAudit

    @classmethod
    def build(cls, settings: HeraldSettings, client: aioredis.Redis, fleet: Any) -> "Erasure":
        return cls(settings, fleet, UserData(settings, client), ErasureAudit(settings, client))

    def notes(self) -> list[str]:
        return [KAFKA_NOTE] if self.settings.eventlog.event_log == "kafka" else []


class ErasureOut(BaseModel):
    user_id: str
    erased: bool = Field(description="Whether anything was removed (false: nothing was left)")
    removed: dict[str, int] = Field(description="What was removed, per store")
    notes: list[str] = Field(description="What could not be erased, and why")
    audit_id: str = Field(description="The audit entry of this erasure")


class ErasureRecord(BaseModel):
    id: str
    at: float = Field(description="Epoch s")
    by: str = Field(description="The API key's fingerprint (a prefix of its SHA-256)")
    user_sha256: str = Field(description="SHA-256 (hex) of the erased user's id")
    removed: dict[str, int]
    notes: list[str]


class ErasureList(BaseModel):
    erasures: list[ErasureRecord]


class UserExport(BaseModel):
    """Everything Herald holds about one user. Device tokens are masked to their last 6
    characters: an export is run by a support agent for the data subject, and a full token
    is a credential to push to the phone, of no use to the person but of use to anyone
    who sees the file; the last characters still tell the devices apart."""

    user_id: str
    exported_at: float
    profile: dict[str, Any] | None
    preferences: dict[str, Any] | None
    activity: dict[str, Any] | None
    affinities: dict[str, Any] | None
    wishlist: list[str]
    devices: list[dict[str, Any]]
    devices_owned: list[str] = Field(description="Device ids the owner index gives the user")
    inbox: list[dict[str, Any]]
    notifications: list[dict[str, Any]] = Field(description="Delivery state, with feedback")
    orders: list[str] = Field(description="Orders whose newest update was the user's")
    marketing_sent: dict[str, int] = Field(description="Marketing sends per local day")
    pushes_per_minute: dict[str, int] = Field(description="Pushes per epoch minute")
    campaigns_reached: list[str]
    price_drops_reached: list[str]
    retries: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    feedback_stream: list[dict[str, Any]] = Field(description="Feedback not yet in the log")
    event_log: list[dict[str, Any]] = Field(description="Events about them not routed yet")
    feedback_log: dict[str, list[dict[str, Any]]] = Field(
        description="Their rows of the Parquet feedback log: sends, actions, shadow"
    )
    notes: list[str]


def erasure_router(services: Callable[[], Erasure], keys: KeyLookup) -> APIRouter:
    """The routes of the module docstring, all requiring the admin scope."""
    guard = Security(RequireScope("admin", keys), scopes=["admin"])
    router = APIRouter(tags=["data protection"], dependencies=[guard])

    @router.delete("/v1/users/{user_id}", responses={503: {"model": ErrorResponse}})
    async def erase_user(user_id: UserId, api_key: Annotated[str, guard]) -> ErasureOut:
        """Erase the user from every store: their shard's rows (devices, profile,
        preferences, activity, affinities, wishlist — Redis hashes and memory), the
        device-owner index, inbox and read state, live stream slots, notification
        statuses, order state, frequency and push counters, campaign and price-drop reach,
        retries, dead letters, the feedback stream, events not yet routed in the Redis
        event log, and their rows of the Parquet feedback log (`sends/`, `actions/`,
        `shadow/`). The Parquet files are **rewritten without the user's rows**, not
        pseudonymized: a keyed hash would leave linkable rows describing the person,
        re-identifiable by whoever holds the key. An event for several users keeps its
        other users. With the Kafka event log, records already in the topics cannot be
        deleted — the answer's `notes` say so; they age out with the topics' retention.

        Idempotent: erasing a user with nothing left answers 200 with every count 0 and
        `erased: false` — not 404: a retried erasure (after a timeout, say) must read as
        done, and with nothing kept of the user Herald cannot tell "erased before" from
        "never known" anyway. Each call writes an audit entry (`GET
        /v1/admin/erasures`): when, the key's fingerprint (never the key) and the user's
        id as SHA-256. Erasure does not stop future events: a later event about the user
        finds no devices and sends no push, but is recorded like any other."""
        erasure = services()
        removed = await _erase_locked(erasure, user_id)
        notes = erasure.notes()
        record = await erasure.audit.record(api_key, user_id, removed, notes)
        return ErasureOut(
            user_id=user_id,
            erased=any(removed.values()),
            removed=removed,
            notes=notes,
            audit_id=record["id"],
        )

    @router.get("/v1/users/{user_id}/export")
    async def export_user(user_id: UserId) -> UserExport:
        """Everything Herald holds about the user, as JSON: shard rows, inbox, delivery
        states with feedback, orders, counters, reach, retries, dead letters, events not
        routed yet and their rows of the Parquet feedback log. Device tokens are masked to
        their last 6 characters (why: see `UserExport`)."""
        return await _export(services(), user_id)

    @router.get("/v1/admin/erasures")
    async def list_erasures(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    ) -> ErasureList:
        """The newest erasures first; with `user_id`, only that user's (matched by the
        hash of the id: the audit never holds the id itself)."""
        found = await services().audit.recent(limit, user_id)
        return ErasureList(erasures=[ErasureRecord.model_validate(r) for r in found])

    return router


async def _erase_locked(erasure: Erasure, user_id: str) -> dict[str, int]:
    """`_erase` under the erasure lock; 503 when another erasure holds it too long."""
    try:
        async with erasure.audit.lock(LOCK_WAIT_S):
            return await _erase(erasure, user_id)
    except LockBusy:
        raise ApiError(
            503, "busy", "another erasure is running; try again",
            fields=[{"field": "user_id", "reason": "erasure lock held"}],
        ) from None  # fmt: skip


async def _erase(erasure: Erasure, user_id: str) -> dict[str, int]:
    """The shard first (no push reaches the user's devices from then on), then Redis,
    then the Parquet log — twice: once whole, then the files changed meanwhile, which
    catches a feedback export that read the stream before its entries were deleted."""
    shard = await erasure.fleet.shard(user_id).erase_users.remote([user_id])
    subject = Subject(user_id, set(shard["device_ids"]), set(shard["tokens"]))
    found = await erasure.data.find(subject)
    in_redis = await erasure.data.remove(found)
    root = erasure.settings.feedback_root
    started = time.time()
    parquet = await asyncio.to_thread(feedback_erasure.erase_users, root, [user_id])
    late = await asyncio.to_thread(feedback_erasure.erase_users, root, [user_id], started - 1)
    parquet = {name: n + late[name] for name, n in parquet.items()}
    return {**{f"shard_{t}": n for t, n in shard["rows"].items()}, **in_redis, **parquet}


async def _export(erasure: Erasure, user_id: str) -> UserExport:
    rows = await erasure.fleet.shard(user_id).user_rows.remote([user_id])
    devices = rows["devices"]
    subject = Subject(
        user_id, {d["device_id"] for d in devices}, {d["token"] for d in devices if d["token"]}
    )
    found = await erasure.data.find(subject)
    root = erasure.settings.feedback_root
    parquet = await asyncio.to_thread(feedback_erasure.user_rows, root, user_id)

    def one(table: str) -> dict[str, Any] | None:
        return rows[table][0] if rows[table] else None

    return UserExport(
        user_id=user_id,
        exported_at=time.time(),
        profile=one("profiles"),
        preferences=one("preferences"),
        activity=one("activity"),
        affinities=one("affinities"),
        wishlist=[r["product_id"] for r in rows["wishlists"]],
        devices=[{**d, "token": mask(d["token"])} for d in devices],
        feedback_log=parquet,
        notes=erasure.notes(),
        **erasure.data.exported(found),
    )
