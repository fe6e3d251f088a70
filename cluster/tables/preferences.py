"""The preferences table a UserShard holds: one row per user who set preferences.

Users without a row get `DEFAULTS`: every channel and category on, no quiet hours.
"""

import pyarrow as pa

PREFERENCES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("push", pa.bool_(), nullable=False),
        pa.field("inbox", pa.bool_(), nullable=False),
        pa.field("email", pa.bool_(), nullable=False),
        pa.field("cat_order", pa.bool_(), nullable=False),
        pa.field("cat_price_alert", pa.bool_(), nullable=False),
        pa.field("cat_marketing", pa.bool_(), nullable=False),
        pa.field("quiet_start_min", pa.int16()),  # minutes after local midnight, or null
        pa.field("quiet_end_min", pa.int16()),
        pa.field("max_marketing_per_day", pa.int32(), nullable=False),
        pa.field("updated_at", pa.float64(), nullable=False),
    ]
)

DEFAULTS = {
    "push": True,
    "inbox": True,
    "email": True,
    "cat_order": True,
    "cat_price_alert": True,
    "cat_marketing": True,
    "quiet_start_min": None,
    "quiet_end_min": None,
    "max_marketing_per_day": 3,
}
