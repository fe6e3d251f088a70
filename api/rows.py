"""API bodies as the one-row Arrow tables a `UserShard` upserts: the HTTP contract's
shapes (nested preferences, HH:MM quiet hours, free-form attributes) flattened into the
shard tables' columns."""

from __future__ import annotations

import json
import time

import pyarrow as pa

from api.schemas import Categories, DeviceIn, PreferencesIn, ProfileIn


def minutes(hhmm: str) -> int:
    """'07:30' → 450, minutes after midnight (how the shard keeps quiet hours)."""
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


def device_row(device: DeviceIn, device_id: str) -> pa.Table:
    """A registered device, active from now."""
    row = {**device.model_dump(), "device_id": device_id, "active": True, "updated_at": time.time()}
    return pa.Table.from_pylist([row])


def profile_row(user_id: str, profile: ProfileIn) -> pa.Table:
    """A profile; attributes are kept as one JSON string (the shard's column is a string)."""
    row = {**profile.model_dump(), "user_id": user_id, "updated_at": time.time()}
    row["attributes"] = json.dumps(row["attributes"], allow_nan=False)  # finite at the door
    return pa.Table.from_pylist([row])


def preferences_row(user_id: str, prefs: PreferencesIn) -> pa.Table:
    """Channels as columns, the fixed categories as `cat_<name>`, the shop's own ones
    turned off as the `categories_off` list, quiet hours as minutes."""
    quiet = prefs.quiet_hours
    categories = prefs.categories.model_dump()
    fixed = Categories.model_fields
    row = {
        "user_id": user_id,
        **prefs.channels.model_dump(),
        **{f"cat_{k}": categories[k] for k in fixed},
        "categories_off": sorted(k for k, on in categories.items() if k not in fixed and not on),
        "quiet_start_min": minutes(quiet.start) if quiet else None,
        "quiet_end_min": minutes(quiet.end) if quiet else None,
        "max_marketing_per_day": prefs.max_marketing_per_day,
        "updated_at": time.time(),
    }
    return pa.Table.from_pylist([row])


def wishlist_rows(user_id: str, product_ids: list[str]) -> pa.Table:
    """One (user_id, product_id) row per product."""
    return pa.table(
        {
            "user_id": pa.array([user_id] * len(product_ids), pa.string()),
            "product_id": pa.array(product_ids, pa.string()),
        }
    )
