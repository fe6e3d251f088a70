"""The deliveries table: one row per (notification, device, channel) handed to a sender.

Routers build it, senders consume it and answer with a `RESULTS` table of the same length.

Beyond title, body and data a row may carry `rich` — the provider-neutral push extras, a
JSON object whose contract is `Rich` (each key's APNs and FCM field is said there and done
in `actors.senders.apns` / `actors.senders.fcm`) — and what its content was rendered with
(`locale`, `template_version`). All three are null unless a producer fills them; a null
`rich` is exactly the request every sender made before rich push existed.

A `push_type: background` row is silent, data for the app only: it belongs on the push
channels (apns, fcm). Producers must not route one to the inbox — a silent push has nothing
to show — and the inbox sender answers such a row `failed` (`BackgroundPushInInbox`)
instead of storing a visible item, so a producer bug lands in the dead-letter stream.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import pyarrow as pa

from cluster import finite_json

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
        pa.field("rich", pa.string()),  # JSON object, see `Rich`; null: no extras
        pa.field("locale", pa.string()),  # the locale the content was rendered in
        pa.field("template_version", pa.int64()),  # the template version it was rendered from
    ]
)
# The columns a row may leave null, and their polars types.
OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "rich": pl.String(),
    "locale": pl.String(),
    "template_version": pl.Int64(),
}
# For builders of rows whose content was not rendered from a template and has no extras.
NO_EXTRAS = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in OPTIONAL_COLUMNS.items()]

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


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with every optional column, typed as the schema says. Rows read back from
    JSON (the retry set, replayed dead letters) come with all-null columns typed Null, or —
    written before a column existed — without it; both must still reach the senders."""
    return frame.with_columns(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in OPTIONAL_COLUMNS.items()
    )


def with_present(obj: pl.Expr, names: Sequence[str]) -> pl.Expr:
    """`obj`, a non-empty JSON object per row, with `"name": value` added for each column
    of `names` that is not null in that row: absent rather than null, so a row without
    extras encodes exactly as it did before they existed."""
    fragments = [
        pl.when(pl.col(name).is_not_null()).then(
            pl.lit(",") + pl.struct(name).struct.json_encode().str.slice(1).str.strip_suffix("}")
        )
        for name in names
    ]
    return pl.concat_str([obj.str.strip_suffix("}"), *fragments, pl.lit("}")], ignore_nulls=True)


# --- the rich contract -------------------------------------------------------------------
PUSH_TYPES = ("alert", "background")
PRIORITIES = ("high", "normal")
MAX_COLLAPSE_KEY = 64  # bytes: APNs' apns-collapse-id limit, the stricter provider's
MAX_TTL_S = 28 * 24 * 3600  # FCM keeps a message at most 4 weeks
_INTS = frozenset({"badge", "ttl_s"})
# What a silent push cannot carry: everything the user would see or hear.
VISIBLE_KEYS = frozenset({"subtitle", "sound", "badge", "thread_id", "category", "channel_id"})


class InvalidRich(ValueError):
    """A `rich` value outside the contract: the row cannot be sent as asked (give up)."""


@dataclass(frozen=True, slots=True)
class Rich:
    """The push extras of one delivery. Each key, absent or null unless said otherwise, and
    where it goes (APNs payload/header · FCM `Message` field):

    - subtitle: `aps.alert.subtitle` · — (FCM has no subtitle)
    - image_url (http/https): top-level `image_url` + `aps.mutable-content: 1` for the
      app's notification service extension · `notification.image`
    - deeplink: top-level `deeplink` · `data.deeplink`
    - sound: `aps.sound` (default "default") · `android.notification.sound`
    - badge (int ≥ 0): `aps.badge` · `android.notification.notification_count`
    - thread_id: `aps.thread-id` · `android.notification.tag`
    - category: `aps.category` · `android.notification.click_action`
    - push_type: "alert" (default) | "background" — silent: `apns-push-type: background`,
      `apns-priority: 5`, `aps = {"content-available": 1}` · a data-only message (no
      `notification`, no `android.notification`); VISIBLE_KEYS are refused with it
    - collapse_key (≤ 64 bytes): `apns-collapse-id` · `android.collapse_key`, and
      `android.notification.tag` when there is no thread_id; default: the notification id
    - priority: "high" | "normal" — `apns-priority` 10 | 5 · `android.priority`; default:
      high for the transactional lane, normal for marketing
    - ttl_s (0 … 4 weeks): `apns-expiration` · `android.ttl`, counted from `accepted_at`
      (see `ttl_left`)
    - channel_id: — · `android.notification.channel_id`
    """

    subtitle: str | None = None
    image_url: str | None = None
    deeplink: str | None = None
    sound: str | None = None
    badge: int | None = None
    thread_id: str | None = None
    category: str | None = None
    push_type: str = "alert"
    collapse_key: str | None = None
    priority: str | None = None
    ttl_s: int | None = None
    channel_id: str | None = None

    @property
    def background(self) -> bool:
        return self.push_type == "background"

    def priority_for(self, lane: str) -> str:
        """ "high" or "normal": as asked, else the lane's (an order update is urgent, a
        marketing push is not)."""
        return self.priority or ("high" if lane == "transactional" else "normal")

    def ttl_left(self, accepted_at: float, now: float) -> int | None:
        """Seconds the provider may still hold the push: `ttl_s` counts from when the event
        was accepted, so a retry or a quiet-hours hold never extends it. Past it, 0 — one
        attempt now, never stored (APNs' expiration "now", FCM's ttl "0s") — since the
        device may be online right now."""
        if self.ttl_s is None:
            return None
        return max(0, int(accepted_at + self.ttl_s - now))

    def present(self) -> dict[str, Any]:
        """The keys given, as the JSON object holds them (what a webhook passes on)."""
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if given["push_type"] == "alert":
            del given["push_type"]
        return given

    def to_json(self) -> str:
        """The `rich` column's value for these extras (producers and tests)."""
        return finite_json.dumps(self.present(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, raw: str | None) -> Rich:
        """A row's `rich` checked against the contract: every key known, of its type and
        range, so a typo or a wrong type fails the row instead of a push going out without
        its picture. Raises `InvalidRich`."""
        if raw is None:
            return NO_RICH
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise InvalidRich(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidRich("not a JSON object")
        given = {k: v for k, v in value.items() if v is not None}
        unknown = sorted(given.keys() - _FIELDS)
        if unknown:
            raise InvalidRich(f"unknown keys {unknown}")
        for key, item in given.items():
            _check(key, item)
        if given.get("push_type") == "background" and given.keys() & VISIBLE_KEYS:
            shown = sorted(given.keys() & VISIBLE_KEYS)
            raise InvalidRich(f"a background push shows nothing: {shown} not allowed")
        return cls(**given)


def _check(key: str, value: Any) -> None:
    """One key's type and range (see `Rich`)."""
    if key in _INTS:
        upper = MAX_TTL_S if key == "ttl_s" else float("inf")
        if type(value) is not int or not 0 <= value <= upper:  # bool is an int: not here
            raise InvalidRich(f"{key} must be an integer from 0 to {upper}")
        return
    if not isinstance(value, str) or not value:
        raise InvalidRich(f"{key} must be a non-empty string")
    if key == "push_type" and value not in PUSH_TYPES:
        raise InvalidRich(f"push_type must be one of {PUSH_TYPES}")
    if key == "priority" and value not in PRIORITIES:
        raise InvalidRich(f"priority must be one of {PRIORITIES}")
    if key == "collapse_key" and len(value.encode()) > MAX_COLLAPSE_KEY:
        raise InvalidRich(f"collapse_key must be at most {MAX_COLLAPSE_KEY} bytes")
    if key == "image_url":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRich("image_url must be an http(s) URL")


NO_RICH = Rich()
_FIELDS = frozenset(Rich.__dataclass_fields__)


def parse_rich(values: pl.Series) -> tuple[list[Rich], list[str | None]]:
    """Per row of a `rich` column: its extras (`NO_RICH` for a null or invalid value) and
    why it is invalid (None when valid). Only non-null values are decoded, and a batch
    without extras is not looked at row by row at all."""
    if values.null_count() == values.len():
        return [NO_RICH] * values.len(), [None] * values.len()
    riches: list[Rich] = []
    errors: list[str | None] = []
    for raw in values.to_list():
        try:
            riches.append(NO_RICH if raw is None else Rich.parse(raw))
            errors.append(None)
        except InvalidRich as exc:
            riches.append(NO_RICH)
            errors.append(f"InvalidRich: {exc}")
    return riches, errors
