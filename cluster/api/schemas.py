"""The HTTP contract: pydantic models for every request and answer of API v1.

Limits are part of the contract and live here, checked at the door: a bad field is a 422
that names it, never a 500 further down and never a silent drop.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from pipelines.order_updates import ORDER_STATUSES

ID_PATTERN = r"^[A-Za-z0-9._:@\-]{1,128}$"
Identifier = Annotated[str, Field(pattern=ID_PATTERN, description="1–128 of A–Z a–z 0–9 . _ : @ -")]
# A notification id is its event_id, or `<event_id>:<user_id>` for events that fan out.
NOTIFICATION_ID_PATTERN = r"^[A-Za-z0-9._:@\-]{1,257}$"

APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{64}$")
# FCM registration tokens: "<instance id>:<opaque>" of URL-safe base64 characters.
FCM_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{8,}:[A-Za-z0-9_\-]{20,4000}$")


def _timezone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


TimeZone = Annotated[str | None, AfterValidator(_timezone)]
HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, 24 h")]


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceIn(Contract):
    user_id: Identifier
    platform: Literal["ios", "android", "web"]
    token: str = Field(min_length=1, max_length=4096)
    app_id: Identifier = "default"
    locale: str | None = Field(None, max_length=35)
    timezone: TimeZone = None

    @model_validator(mode="after")
    def _token_shape(self) -> DeviceIn:
        if self.platform == "ios" and not APNS_TOKEN.match(self.token):
            raise ValueError("token: an APNs device token is 64 hexadecimal characters")
        if self.platform in ("android", "web") and not FCM_TOKEN.match(self.token):
            raise ValueError("token: not an FCM registration token ('<id>:<base64url>')")
        return self


class DeviceOut(BaseModel):
    device_id: str
    created: bool


class ProfileIn(Contract):
    country: str | None = Field(None, pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    locale: str | None = Field(None, max_length=35)
    timezone: TimeZone = None
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=64)


class Channels(Contract):
    push: bool = True
    inbox: bool = True
    email: bool = True


class Categories(Contract):
    order: bool = True
    price_alert: bool = True
    marketing: bool = True


class QuietHours(Contract):
    start: HHMM
    end: HHMM


class PreferencesIn(Contract):
    channels: Channels = Field(default_factory=Channels)
    categories: Categories = Field(default_factory=Categories)
    quiet_hours: QuietHours | None = None
    max_marketing_per_day: int = Field(3, ge=0, le=100)


class OrderUpdated(BaseModel):
    """An order changed state; goes to that one user, in the transactional lane."""

    model_config = ConfigDict(extra="allow")  # order details ride along in the log

    event_id: Identifier = Field(description="Producer-chosen idempotency key")
    type: Literal["order.updated"]
    user_id: Identifier
    order_id: Identifier
    status: Literal[ORDER_STATUSES]  # type: ignore[valid-type]


ProductId = Annotated[
    str, Field(min_length=1, max_length=128, description="A catalogue product id, 1–128 chars")
]
Price = Annotated[float, Field(gt=0, lt=1e12, allow_inf_nan=False, description="> 0")]
WISHLIST_MAX = 1000


class PriceDropped(BaseModel):
    """A product got cheaper; goes to every user whose wishlist holds it, in the marketing
    lane. Each (event, user) is one notification, id `<event_id>:<user_id>`."""

    model_config = ConfigDict(extra="allow")  # product details ride along in the log

    event_id: Identifier = Field(description="Producer-chosen idempotency key")
    type: Literal["price.dropped"]
    product_id: ProductId
    old_price: Price
    new_price: Price
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    title: str | None = Field(None, min_length=1, max_length=200, description="Product name")

    @model_validator(mode="after")
    def _is_a_drop(self) -> PriceDropped:
        if self.new_price >= self.old_price:
            raise ValueError("new_price: must be lower than old_price")
        return self


Event = Annotated[OrderUpdated | PriceDropped, Field(discriminator="type")]


class WishlistIn(Contract):
    product_ids: list[ProductId] = Field(
        max_length=WISHLIST_MAX, description="The whole wishlist; replaces the previous one"
    )


class WishlistOut(BaseModel):
    user_id: str
    product_ids: list[str] = Field(description="As stored: duplicates dropped, order kept")


class EventsIn(Contract):
    events: list[Event] = Field(min_length=1, max_length=1000)


class EventsAccepted(BaseModel):
    accepted: list[str] = Field(description="event_ids logged now; each is its notification_id")
    duplicate: list[str] = Field(description="event_ids seen before: nothing new is sent")


class DeliveryStatus(BaseModel):
    device_id: str
    channel: str
    status: Literal["queued", "retrying", "delivered", "dead", "failed", "dead_lettered"]
    attempts: int
    last_error: str | None = None
    acked_at: float | None = None
    updated_at: float


class NotificationStatus(BaseModel):
    notification_id: str
    state: Literal[
        "accepted", "in_progress", "delivered", "partially_delivered", "failed", "suppressed"
    ]
    user_id: str | None = None
    type: str | None = None
    accepted_at: float | None = None
    suppressed_reason: str | None = None
    deliveries: list[DeliveryStatus] = Field(default_factory=list)


class InboxItem(BaseModel):
    notification_id: str
    title: str
    body: str
    data: dict[str, Any]
    created_at: float


class Inbox(BaseModel):
    user_id: str
    items: list[InboxItem]


class FieldError(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[FieldError] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody
