"""Herald's domain vocabulary: the closed sets the API validates and every layer shares.

These used to live beside the data simulator (`models.synth`); production code must not
import a simulator for its enums, so they sit here, at the bottom, and the simulator draws
from them like everyone else.
"""

from __future__ import annotations

# Log lanes: transactional (order updates) never waits behind marketing (price drops,
# campaigns) — separate streams/topics, separate senders.
LANES = ("transactional", "marketing")
# Which lane each event type travels in.
LANE_OF_TYPE = {
    "order.updated": "transactional",
    "price.dropped": "marketing",
    "notification.requested": "transactional",
}

# Delivery channels: the providers with a sender actor each, and the in-app inbox.
CHANNELS = ("apns", "fcm", "inbox")
PUSH_CHANNELS = ("apns", "fcm")
# Device platforms and which push channel serves each (web push goes through FCM today).
PLATFORMS = ("ios", "android", "web")
CHANNEL_OF_PLATFORM = {"ios": "apns", "android": "fcm", "web": "fcm"}

# Product categories (price drops, campaign ranking, per-category affinities).
CATEGORIES = ("fashion", "electronics", "home", "beauty", "sports")
# Campaign variant styles the ranker knows (one-hot features).
VARIANT_STYLES = ("plain", "urgent", "personalized", "discount", "emoji")

# The shop's markets and each one's main time zone: a user with no (or an unknown) zone is
# treated as living in their country's main zone when quiet hours and features need a clock.
COUNTRY_TIMEZONE: dict[str, str] = {
    "US": "America/New_York",
    "DE": "Europe/Berlin",
    "GB": "Europe/London",
    "IN": "Asia/Kolkata",
    "FR": "Europe/Paris",
    "BR": "America/Sao_Paulo",
    "JP": "Asia/Tokyo",
    "ES": "Europe/Madrid",
    "IT": "Europe/Rome",
    "CA": "America/Toronto",
    "MX": "America/Mexico_City",
    "NL": "Europe/Amsterdam",
    "PL": "Europe/Warsaw",
    "AU": "Australia/Sydney",
    "KR": "Asia/Seoul",
    "TR": "Europe/Istanbul",
    "ID": "Asia/Jakarta",
    "SE": "Europe/Stockholm",
    "CH": "Europe/Zurich",
    "AT": "Europe/Vienna",
    "BE": "Europe/Brussels",
    "AR": "America/Argentina/Buenos_Aires",
    "IE": "Europe/Dublin",
    "PT": "Europe/Lisbon",
}
COUNTRIES = tuple(COUNTRY_TIMEZONE)
