"""The deliveries table: one row per (notification, device, channel) handed to a sender.

Routers build it, senders consume it and answer with a `RESULTS` table of the same length.
"""

import pyarrow as pa

DELIVERIES = pa.schema(
    [
        pa.field("delivery_id", pa.string(), nullable=False),  # "{notification_id}|{device_id}"
        pa.field("notification_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),  # "inbox" for the inbox channel
        pa.field("channel", pa.string(), nullable=False),  # apns | fcm | inbox
        pa.field("token", pa.string(), nullable=False),  # provider token ("" for inbox)
        pa.field("title", pa.string(), nullable=False),
        pa.field("body", pa.string(), nullable=False),
        pa.field("data", pa.string(), nullable=False),  # JSON object of str -> str
        pa.field("lane", pa.string(), nullable=False),  # transactional | marketing
        pa.field("accepted_at", pa.float64(), nullable=False),  # epoch s the event was logged
    ]
)

# What a sender answers for each delivery row, in the same order.
OUTCOMES = ("delivered", "retry", "dead_token", "failed")
RESULTS = pa.schema(
    [
        pa.field("delivery_id", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), nullable=False),  # one of OUTCOMES
        pa.field("error", pa.string()),  # provider reason, e.g. "Unregistered"
        pa.field("retry_after_s", pa.float64()),  # from Retry-After, when the provider said
        pa.field("acked_at", pa.float64(), nullable=False),  # epoch s of the provider's answer
    ]
)
