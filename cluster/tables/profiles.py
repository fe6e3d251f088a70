"""The profiles table a UserShard holds: one row per user who has a profile."""

import pyarrow as pa

PROFILES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("country", pa.string()),
        pa.field("locale", pa.string()),
        pa.field("timezone", pa.string()),
        pa.field("attributes", pa.string()),  # JSON object
        pa.field("updated_at", pa.float64(), nullable=False),
    ]
)
