"""The devices table a UserShard holds: one row per registered device."""

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
    ]
)


def device_id_for(platform: str, app_id: str, token: str) -> str:
    """The same (platform, app, token) always gets the same id, so re-registering a token
    updates its row instead of adding a second one."""
    digest = hashlib.blake2b(f"{platform}|{app_id}|{token}".encode(), digest_size=12).hexdigest()
    return f"dev_{digest}"
