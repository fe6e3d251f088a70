"""The devices table a UserShard holds: one row per registered device.

`last_seen_at` is when the app last showed it is alive: set on registration (the API, the
bulk import) and moved on by heartbeats. A device not seen for
`settings.protection.device_stale_days` gets no pushes (`pipelines.device_hygiene`). Rows
stored before the column existed have none; a shard fills it from `updated_at` when it
loads them (their last registration, re-registration or deactivation)."""

import hashlib

import pyarrow as pa

DEVICES = pa.schema(
    [
        pa.field("device_id", pa.string(), nullable=False),  # stable id, see device_id_for
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("platform", pa.string(), nullable=False),  # ios | android | web
        pa.field("token", pa.string(), nullable=False),
        pa.field("app_id", pa.string(), nullable=False),
        pa.field("locale", pa.string()),
        pa.field("timezone", pa.string()),
        pa.field("active", pa.bool_(), nullable=False),  # False once unregistered or dead
        pa.field("updated_at", pa.float64(), nullable=False),
        pa.field("last_seen_at", pa.float64()),  # epoch s: registration or last heartbeat
    ]
)


def device_id_for(platform: str, app_id: str, token: str) -> str:
    """The same (platform, app, token) always gets the same id, so re-registering a token
    updates its row instead of adding a second one."""
    digest = hashlib.blake2b(f"{platform}|{app_id}|{token}".encode(), digest_size=12).hexdigest()
    return f"dev_{digest}"
