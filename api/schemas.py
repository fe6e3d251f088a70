"""The HTTP contract: pydantic models for every request and answer of API v1.

Limits are part of the contract and live here, checked at the door: a bad field is a 422
that names it, never a 500 further down and never a silent drop. The event contract
(`POST /v1/events`, Kafka) is `api.events`; the templates' is `api.templates`.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from api.errors import ErrorResponse  # noqa: F401  (re-exported: the error shape)
from api.input_rules import (
    APNS_TOKEN,
    FCM_TOKEN,
    TOKEN_BY_PLATFORM,
    VARIANT_SHAPE,
    AttributeName,
    AttributeValue,
    Epoch,
    TimeZone,
    VariableValue,
)
from cluster.vocabulary import CATEGORIES, VARIANT_STYLES
from pipelines.segments import Segment
from pipelines.text_rules import DEEPLINK_DESCRIPTION, Deeplink, MultiLine, SingleLine
from pipelines.whole_numbers import WholeNumber

ID_PATTERN = r"^[A-Za-z0-9._:@\-]{1,128}$"
Identifier = Annotated[str, Field(pattern=ID_PATTERN, description="1–128 of A–Z a–z 0–9 . _ : @ -")]
# A notification id is its event_id, `<event_id>:<user_id>` for events that fan out, or
# `<campaign_id>~<user_id>` for a campaign ("~" is in no other id, so it is unambiguous).
NOTIFICATION_ID_PATTERN = r"^[A-Za-z0-9._:@~\-]{1,257}$"
CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9._@\-]{1,64}$"

HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, 24 h")]


class Contract(BaseModel):
    """A request body: unknown fields refused, numbers finite (`api.input_rules`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class MyDeviceIn(Contract):
    """A device the signed-in user's app registers for itself (`POST /v1/me/devices`): the
    user is the token's, never the body's. `token`: an APNs device token (64 hexadecimal
    characters) for `ios`, an FCM registration token (`<id>:<base64url>`) otherwise."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra=TOKEN_BY_PLATFORM
    )

    platform: Literal["ios", "android", "web"]
    token: str = Field(
        min_length=1,
        max_length=4096,
        description="ios: 64 hexadecimal characters (APNs); android and web: "
        "`<id>:<base64url>` (FCM)",
    )
    app_id: Identifier = "default"
    locale: str | None = Field(None, max_length=35)
    timezone: TimeZone | None = None

    @model_validator(mode="after")
    def _token_shape(self) -> MyDeviceIn:
        if self.platform == "ios" and not APNS_TOKEN.match(self.token):
            raise ValueError("token: an APNs device token is 64 hexadecimal characters")
        if self.platform in ("android", "web") and not FCM_TOKEN.match(self.token):
            raise ValueError("token: not an FCM registration token ('<id>:<base64url>')")
        return self


class DeviceIn(MyDeviceIn):
    """A device a service registers for any user (`POST /v1/devices`, ingest scope)."""

    user_id: Identifier


class DeviceOut(BaseModel):
    device_id: str
    created: bool


class ProfileIn(Contract):
    country: str | None = Field(None, pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    locale: str | None = Field(None, max_length=35)
    timezone: TimeZone | None = None
    attributes: dict[AttributeName, AttributeValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Up to 64 name → string (≤ 1,000 characters), finite number or boolean",
    )


class Channels(Contract):
    push: StrictBool = True
    inbox: StrictBool = True
    email: StrictBool = True


class Categories(Contract):
    """The fixed categories (order updates, price drops, campaigns), and any of the shop's
    own (the `category` of a `notification.requested` event, e.g. `back_in_stock`) as
    further `name: bool` keys — 1–64 of a–z 0–9 _ . -, starting with a letter, at most
    `SHOP_MAX` of them. A category never mentioned is on."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "additionalProperties": {"type": "boolean"},
            "propertyNames": {"pattern": r"^[a-z][a-z0-9_.-]{0,63}$"},
            "maxProperties": 53,
        },
    )
    SHOP_PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
    SHOP_MAX: ClassVar[int] = 50

    order: StrictBool = True
    price_alert: StrictBool = True
    marketing: StrictBool = True

    @model_validator(mode="after")
    def _shop_categories(self) -> Categories:
        shop = self.model_extra or {}
        if len(shop) > self.SHOP_MAX:
            raise ValueError(f"at most {self.SHOP_MAX} categories of the shop's own")
        for name, on in shop.items():
            if not self.SHOP_PATTERN.fullmatch(name):
                raise ValueError(f"{name!r}: 1–64 of a–z 0–9 _ . -, starting with a letter")
            if type(on) is not bool:
                raise ValueError(f"{name!r}: must be true or false")
        return self


class QuietHours(Contract):
    start: HHMM
    end: HHMM


class PreferencesIn(Contract):
    channels: Channels = Field(default_factory=Channels)
    categories: Categories = Field(default_factory=Categories)
    quiet_hours: QuietHours | None = None
    max_marketing_per_day: WholeNumber = Field(3, ge=0, le=100)


ProductId = Annotated[
    str, Field(min_length=1, max_length=128, description="A catalogue product id, 1–128 chars")
]
WISHLIST_MAX = 1000


class WishlistIn(Contract):
    product_ids: list[ProductId] = Field(
        max_length=WISHLIST_MAX, description="The whole wishlist; replaces the previous one"
    )


class WishlistOut(BaseModel):
    user_id: str
    product_ids: list[str] = Field(description="As stored: duplicates dropped, order kept")


class DeliveryStatus(BaseModel):
    device_id: str
    channel: str
    status: Literal[
        "queued", "retrying", "delivered", "dead", "failed", "dead_lettered",
        "cancelled", "expired", "superseded", "rate_limited",
    ]  # fmt: skip
    attempts: int
    last_error: str | None = None
    acked_at: float | None = None
    updated_at: float
    locale: str | None = Field(None, description="The locale its content was rendered in")
    template_version: int | None = Field(
        None, description="The version of the template it was rendered from (0: shipped)"
    )


class NotificationStatus(BaseModel):
    notification_id: str
    state: Literal[
        "accepted", "in_progress", "delivered", "partially_delivered", "failed", "suppressed",
        "expired",
    ]  # fmt: skip
    user_id: str | None = None
    type: str | None = None
    accepted_at: float | None = None
    suppressed_reason: str | None = None
    deliveries: list[DeliveryStatus] = Field(default_factory=list)


class InboxItem(BaseModel):
    notification_id: str
    title: str
    body: str
    subtitle: str | None = None
    image_url: str | None = None
    deeplink: str | None = None
    data: dict[str, Any]
    created_at: float


class Inbox(BaseModel):
    user_id: str
    items: list[InboxItem]


class MyInboxItem(InboxItem):
    read: bool = Field(description="Marked read on any of the user's devices or tabs")


class MyInbox(BaseModel):
    """A page of the signed-in user's inbox, newest first."""

    items: list[MyInboxItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page"
    )
    unread: int = Field(description="Unread items in the whole inbox")


class Unread(BaseModel):
    unread: int = Field(description="Unread items in the user's inbox, after the change")


class MyFeedbackIn(Contract):
    """What the signed-in user did with one of their own notifications."""

    notification_id: Annotated[str, Field(pattern=NOTIFICATION_ID_PATTERN)]
    action: Literal["opened", "clicked", "dismissed"]


# --- campaigns and feedback ------------------------------------------------------------------
# What a provider takes in one message; checked per variant at the door (APNs: the JSON
# payload; FCM v1: the message's notification and data), with room for Herald's own data.
PROVIDER_PAYLOAD_BYTES = 4096
HERALD_DATA_BYTES = 400  # notification_id, campaign_id, variant_id keys and values


def payload_bytes(title: str, body: str, deeplink: str | None) -> int:
    """Bytes of the APNs payload a variant becomes (the larger of the two providers')."""
    data = {"deeplink": deeplink} if deeplink else {}
    message = {"aps": {"alert": {"title": title, "body": body}, "sound": "default"}, **data}
    return len(json.dumps(message, separators=(",", ":")).encode()) + HERALD_DATA_BYTES


class Variant(Contract):
    """Inline copy (`title` and `body`, sent as written) or a template (`template_id`, with
    the `variables` every recipient's copy is filled with), which each recipient gets in
    their language. Whether the template exists and the variables fill it is checked at
    the door (422 naming `variants[i].…`), as is the deeplink's scheme."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=VARIANT_SHAPE)

    variant_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-]{1,32}$")]
    title: SingleLine | None = Field(None, min_length=1, max_length=200)
    body: MultiLine | None = Field(
        None, min_length=1, max_length=2000, description="Tab and line breaks allowed"
    )
    template_id: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Instead of title and body"
    )
    variables: dict[str, VariableValue] | None = Field(
        None, max_length=32, description="The template's variables, the same for everyone"
    )
    deeplink: Deeplink | None = Field(None, max_length=1000, description=DEEPLINK_DESCRIPTION)
    style: Literal[VARIANT_STYLES] = Field(  # type: ignore[valid-type]
        "plain", description="What kind of copy this is; a feature the ranker scores"
    )

    @model_validator(mode="after")
    def _fits_providers(self) -> Variant:
        inline = self.title is not None and self.body is not None
        if (self.template_id is None) != inline or (inline and self.variables is not None):
            raise ValueError(
                "a variant has either title and body, or template_id (with its variables)"
            )
        if self.template_id is not None:
            return self  # the template's own check bounds its size (`PUT /v1/templates`)
        size = payload_bytes(self.title, self.body, self.deeplink)
        if size > PROVIDER_PAYLOAD_BYTES:
            raise ValueError(
                f"title, body and deeplink make a {size}-byte push payload; "
                f"APNs and FCM take at most {PROVIDER_PAYLOAD_BYTES}"
            )
        return self


class CampaignIn(Contract):
    campaign_id: Annotated[str, Field(pattern=CAMPAIGN_ID_PATTERN)]
    segment: Segment
    variants: list[Variant] = Field(min_length=1, max_length=10)
    channels: list[Literal["push", "inbox"]] = Field(
        default_factory=lambda: ["push", "inbox"], min_length=1, max_length=2
    )
    category: Literal[CATEGORIES] | None = Field(  # type: ignore[valid-type]
        None, description="Product category the campaign is about; a ranking feature"
    )
    audience_limit: WholeNumber | None = Field(None, ge=1, le=100_000_000)
    score_threshold: float | None = Field(None, ge=0, le=1)
    exploration: float = Field(
        0.1, ge=0, le=1, description="Share of users given a Thompson-sampled variant"
    )
    respect_quiet_hours: StrictBool = True
    send_at: Epoch | None = Field(
        None, description="Epoch seconds (before 2286) to start; now when absent or past"
    )
    ends_at: Epoch | None = Field(
        None,
        description="Epoch seconds after which its pushes are not sent: each push's TTL "
        "(apns-expiration, android.ttl) ends then, and retries or quiet-hours holds past it "
        "are dropped as expired; must be after send_at",
    )

    @model_validator(mode="after")
    def _distinct(self) -> CampaignIn:
        ids = [v.variant_id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variants: variant_id values must be distinct")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels: listed twice")
        if self.ends_at is not None and self.ends_at <= (self.send_at or 0):
            raise ValueError("ends_at: must be after send_at")
        return self


class CampaignAccepted(BaseModel):
    campaign_id: str
    state: str
    send_at: float
    created: bool = Field(description="False when the same campaign was posted before")


class VariantCounts(BaseModel):
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    dismissed: int = 0


class CampaignStatus(BaseModel):
    campaign_id: str
    state: Literal["scheduled", "running", "done", "cancelled", "failed"]
    send_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    model_version: str | None = None
    targeted: int = Field(0, description="Users in the segment")
    eligible: int = Field(0, description="Targeted users not suppressed")
    selected: int = Field(0, description="Eligible users kept by audience_limit / threshold")
    deferred: int = Field(0, description="Selected users held to the end of quiet hours")
    suppressed: dict[str, int] = Field(default_factory=dict)
    sent: int = Field(0, description="Deliveries handed to the senders")
    delivered: int = 0
    failed: int = 0
    cancelled: int = Field(0, description="Deliveries dropped by a cancellation")
    failures: int = Field(0, description="Fan-out runs that failed (each resumes after its lease)")
    error: str | None = Field(None, description="The last fan-out failure")
    variants: dict[str, VariantCounts] = Field(default_factory=dict)


class FeedbackIn(Contract):
    notification_id: Annotated[str, Field(pattern=NOTIFICATION_ID_PATTERN)]
    user_id: Identifier
    action: Literal["opened", "clicked", "dismissed"]


class FeedbackAccepted(BaseModel):
    notification_id: str
    action: str
    counted: bool = Field(description="False when this action was already recorded")


# --- models --------------------------------------------------------------------------------
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"


class ModelList(BaseModel):
    current: str
    shadow: str | None = Field(None, description="Scores alongside `current`, logged only")
    models: list[dict[str, Any]] = Field(description="Registry metadata, newest first")


class ModelDeployed(BaseModel):
    previous: str
    current: str
    workers: list[str] = Field(description="The version each fan-out worker now ranks with")
    took_s: float = Field(description="From the request to every worker switched")
