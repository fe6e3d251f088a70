"""The activity table a UserShard holds: when each user was last active."""

import pyarrow as pa

ACTIVITY = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("last_active_at", pa.float64()),  # epoch seconds
    ]
)
