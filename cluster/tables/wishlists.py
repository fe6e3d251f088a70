"""The wishlists table a UserShard holds: one row per (user, product) a user wishes for.

A user's rows are replaced together (`PUT /v1/users/{id}/wishlist` sends the whole list).
In Redis each user is one hash field, `user_id` → `{"user_id", "product_ids": [...]}`, so a
replacement is one HSET (or an HDEL for an empty list).
"""

import pyarrow as pa

WISHLISTS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
    ]
)
