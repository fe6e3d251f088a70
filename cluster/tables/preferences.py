"""The preferences table a UserShard holds: one row per user who set preferences.

Users without a row get `DEFAULTS`: every channel and category on, no quiet hours.

The three fixed categories are columns (`cat_<name>`: campaigns and price drops filter on
them); the shop's own categories (a `notification.requested` event's `category`) are too
many and too open to be columns: `categories_off` lists those the user turned off (null or
empty: none), so a category nobody mentioned is on.
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
        pa.field("categories_off", pa.list_(pa.string())),  # the shop's categories turned off
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
    "categories_off": None,  # none turned off
    "quiet_start_min": None,
    "quiet_end_min": None,
    "max_marketing_per_day": 3,
}
