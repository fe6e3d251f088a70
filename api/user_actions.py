"""What the service routes and the end user's `/v1/me` routes both do — register or drop a
device, record feedback, read preferences — written once, so the two doors cannot drift
apart. The callers decide who the user is (a path id under a service key, the token's
`sub` under a user token); these functions never take it from a body they did not check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from api.errors import ApiError, not_found
from api.rows import device_row
from api.schemas import Categories, DeviceIn, FeedbackAccepted, PreferencesIn
from cluster.state.campaigns import campaign_of
from cluster.state.deliveries import DeliveryState
from cluster.state.devices import DeviceOwners
from cluster.state.feedback import FeedbackStore
from cluster.tables.devices import device_id_for
from cluster.tables.preferences import DEFAULTS


@dataclass
class Users:
    """The stores and the shard lookup these actions need (`fleet.shard(user_id)`)."""

    fleet: Any
    owners: DeviceOwners
    state: DeliveryState
    feedback: FeedbackStore


async def register_device(users: Users, device: DeviceIn) -> tuple[str, bool]:
    """(device_id, created). The same token again updates its row; a token seen with
    another user moves to this one (the phone changed hands): the old user's row of it is
    deleted, token and all, so nothing of it is left in two shards."""
    device_id = device_id_for(device.platform, device.app_id, device.token)
    previous = await users.owners.owner(device_id)
    if previous is not None and previous != device.user_id:
        await users.fleet.shard(previous).remove_devices.remote([device_id], previous)
    await users.fleet.shard(device.user_id).upsert_devices.remote(device_row(device, device_id))
    await users.owners.set_owner(device_id, device.user_id)
    return device_id, previous is None


async def _owner_of(users: Users, device_id: str, user_id: str | None) -> str:
    """The device's owner; 404 when it is unknown — or, with `user_id`, not that user's
    (so nobody learns of another user's device)."""
    owner = await users.owners.owner(device_id)
    if owner is None or (user_id is not None and owner != user_id):
        raise not_found("device", device_id, "device_id", "unknown device")
    return owner


async def unregister_device(users: Users, device_id: str, user_id: str | None = None) -> None:
    """Delete the device — its row and token in the owner's shard (memory and Redis), then
    its owner-index entry; 404 as `_owner_of`."""
    owner = await _owner_of(users, device_id, user_id)
    await users.fleet.shard(owner).remove_devices.remote([device_id])
    await users.owners.forget(device_id)


async def device_heartbeat(users: Users, device_id: str, user_id: str | None = None) -> None:
    """The app on this device is alive: its `last_seen_at` becomes now (a stale device
    gets pushes again). 404 as `_owner_of`, or when the owner's shard has no such row."""
    owner = await _owner_of(users, device_id, user_id)
    if not await users.fleet.shard(owner).heartbeat.remote([device_id]):
        raise not_found("device", device_id, "device_id", "unknown device")


async def record_feedback(
    users: Users, notification_id: str, user_id: str, action: str, hide_others: bool
) -> FeedbackAccepted:
    """Count what the user did with a notification once per (notification, action). When
    the notification is not the user's: 404 with `hide_others` (an end user must not learn
    that the id exists), else 422 naming `user_id`."""
    record = await users.state.get(notification_id)
    theirs = record is not None and record["meta"].get("user_id") == user_id
    if record is None or (hide_others and not theirs):
        raise not_found("notification", notification_id, "notification_id", "unknown id")
    if not theirs:
        raise ApiError(
            422,
            "invalid",
            "the notification was not sent to this user",
            fields=[{"field": "user_id", "reason": "not the notification's recipient"}],
        )
    counted = await users.feedback.record(
        notification_id,
        user_id,
        action,
        record["meta"],
        campaign_of(notification_id),
        time.time(),
    )
    return FeedbackAccepted(notification_id=notification_id, action=action, counted=counted)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def preferences_of(lookup: pa.Table) -> PreferencesIn:
    """The user's preferences from a shard `lookup` of that one user (defaults filled in),
    in the shape `PUT …/preferences` takes — the inverse of `api.rows.preferences_row`."""
    row = lookup.slice(0, 1).to_pylist()[0] if lookup.num_rows else {}
    value = {name: row.get(name, default) for name, default in DEFAULTS.items()}
    categories = {name: bool(value[f"cat_{name}"]) for name in Categories.model_fields}
    categories.update({name: False for name in value["categories_off"] or ()})
    start, end = value["quiet_start_min"], value["quiet_end_min"]
    return PreferencesIn.model_validate(
        {
            "channels": {k: bool(value[k]) for k in ("push", "inbox", "email")},
            "categories": categories,
            "quiet_hours": None if start is None else {"start": _hhmm(start), "end": _hhmm(end)},
            "max_marketing_per_day": int(value["max_marketing_per_day"]),
        }
    )
