"""The event contract: what `POST /v1/events` and the Kafka topic take, one model per `type`.

Shape is checked here, by pydantic, at the door; whether an event's template exists and its
variables fill it is checked against the templates right after (`api.event_checks`, run by
`api.templates.TemplateBook`), also at the door, so a router never renders a hole.

Each event is logged as `logged(event)`: its fields as JSON with the optional fields it
left out absent (not null) — an order update without the new options is logged exactly
as before they existed. The log's consumers (routers) read these bodies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from api.input_rules import EPOCH_MAX, check_extra
from api.schemas import Contract, Identifier, ProductId
from cluster.vocabulary import CATEGORIES, LANE_OF_TYPE
from pipelines.order_updates import ORDER_STATUSES
from pipelines.template_model import (
    PUSH_FIELDS,
    TEMPLATE_ID_PATTERN,
    VARIABLE_NAME_PATTERN,
    Content,
)
from pipelines.text_rules import SINGLE_LINE_PATTERN, SingleLine
from pipelines.whole_numbers import WholeNumber

EVENTS_MAX = 1000
USERS_MAX = 1000
VARIABLES_MAX = 32  # as many as a template may declare
TTL_MAX_S = 2_419_200  # 28 days: the longest APNs keeps a notification for an offline device
CATEGORY_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
COLLAPSE_KEY_PATTERN = r"^[!-~]{1,64}$"  # printable ASCII: 64 characters are 64 bytes
DATA_KEY_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
DATA_MAX_KEYS = 32
DATA_MAX_BYTES = 1024
# Keys the providers or Herald's own data use (FCM refuses "from", "notification",
# "message_type" and google./gcm. prefixes; APNs owns "aps").
RESERVED_DATA_KEYS = frozenset(
    "aps from notification message_type collapse_key notification_id type event_id "
    "template_id campaign_id variant_id deeplink image_url subtitle".split()
)
RESERVED_DATA_PREFIXES = ("google", "gcm", "herald")
_DATA_KEY = re.compile(DATA_KEY_PATTERN)

TemplateId = Annotated[
    str,
    Field(
        pattern=TEMPLATE_ID_PATTERN,
        description="A template's id: 1–64 of a–z 0–9 . _ -, starting with a letter or digit",
    ),
]
Price = Annotated[float, Field(gt=0, lt=1e12, allow_inf_nan=False, description="> 0")]


class DeliveryOptions(BaseModel):
    """How the providers treat an event's pushes; every option is optional, and unset
    leaves the provider's (and the lane's) default."""

    model_config = ConfigDict(allow_inf_nan=False)

    priority: Literal["high", "normal"] | None = Field(
        None,
        description="`high`: deliver now, waking the device (APNs priority 10, FCM HIGH); "
        "`normal`: the OS may batch it to save power (APNs 5, FCM NORMAL)",
    )
    ttl_s: WholeNumber | None = Field(
        None,
        ge=0,
        le=TTL_MAX_S,
        description="Seconds a provider keeps trying an offline device (APNs "
        "`apns-expiration`, FCM `android.ttl`): 0 = now or never, at most 2,419,200 (28 days, "
        "APNs' limit)",
    )
    collapse_key: str | None = Field(
        None,
        pattern=COLLAPSE_KEY_PATTERN,
        description="Pushes with the same key replace each other on the device (APNs "
        "`apns-collapse-id`, FCM `collapse_key`): 1–64 printable ASCII characters, no spaces "
        "(APNs takes at most 64 bytes)",
    )
    occurred_at: float | None = Field(
        None,
        ge=0,
        lt=EPOCH_MAX,
        description="When it happened upstream, in epoch seconds (as `send_at` and "
        "`accepted_at` elsewhere in the API)",
    )


# Fields an event may leave out; `logged` leaves them out of the log too.
_OPTIONAL = ("template_id", *DeliveryOptions.model_fields)


class OrderUpdated(DeliveryOptions):
    """An order changed state; goes to that one user, in the transactional lane. Its
    content is the template `order.<status>` (the shop's, else the shipped one) unless
    `template_id` names another; the template's variables are filled from the event's own
    fields of the same names (`order_id`, and any extra field the producer sends). Extra
    fields: at most 8 levels deep and 8,192 bytes as JSON together, finite numbers only."""

    # Order details ride along in the log (bounded: `api.input_rules.extra_problems`).
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    event_id: Identifier = Field(description="Producer-chosen idempotency key")
    type: Literal["order.updated"]
    user_id: Identifier
    order_id: Identifier
    status: Literal[ORDER_STATUSES]  # type: ignore[valid-type]
    template_id: TemplateId | None = Field(
        None, description="The template to use instead of `order.<status>`; must exist"
    )
    sequence: WholeNumber | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="producer's per-order counter; compared before occurred_at",
    )

    @model_validator(mode="after")
    def _bounded_extra(self) -> OrderUpdated:
        check_extra("OrderUpdated", self.model_extra)
        return self

    def logged(self) -> dict[str, Any]:
        """The log body (module doc): options left unset are left out."""
        absent = {name for name in (*_OPTIONAL, "sequence") if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=absent)

    def template_of(self) -> str:
        return self.template_id or f"order.{self.status}"


class PriceDropped(BaseModel):
    """A product got cheaper; goes to every user whose wishlist holds it, in the marketing
    lane. Each (event, user) is one notification, id `<event_id>:<user_id>`. `new_price`
    must be lower than `old_price`. Extra fields (product details, kept in the log): at
    most 8 levels deep and 8,192 bytes as JSON together, finite numbers only."""

    # Product details ride along in the log (bounded, as an order update's).
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    event_id: Identifier = Field(description="Producer-chosen idempotency key")
    type: Literal["price.dropped"]
    product_id: ProductId
    old_price: Price
    new_price: Price
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    title: SingleLine | None = Field(None, min_length=1, max_length=200, description="Product name")
    category: Literal[CATEGORIES] | None = Field(  # type: ignore[valid-type]
        None, description="Product category; the ranker's affinity feature (unset: affinity 0)"
    )

    @model_validator(mode="after")
    def _is_a_drop(self) -> PriceDropped:
        if self.new_price >= self.old_price:
            raise ValueError("new_price: must be lower than old_price")
        check_extra("PriceDropped", self.model_extra)
        return self

    def logged(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# A template locale's push fields, with the same limits (email fields have no inline use).
InlineContent = create_model(
    "InlineContent",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __doc__="One notification's content, in one language: `title` and `body`, optionally "
    "the other push fields. Text may hold `{name}` placeholders, each filled from "
    "`variables` (`{{` and `}}` are literal braces). `category` here is the APNs category "
    "(Android: the click action), not the event's.",
    **{
        name: (Content.model_fields[name].annotation, Content.model_fields[name])
        for name in PUSH_FIELDS
    },
)


class NotificationRequested(DeliveryOptions):
    """The shop asks for one notification to each of 1–1,000 users: a stored template
    (`template_id`, the shop's or a shipped one) or inline `content` — exactly one of the
    two — filled with `variables`. Each (event, user) is one notification, id
    `<event_id>:<user_id>`; transactional lane.

    Checked at the door: the template exists; `variables` holds every variable it declares,
    of the declared type and length, and nothing else; inline content's placeholders are
    all in `variables` (strings of at most 2,000 characters without control characters,
    or numbers). With `data` (or inline content), the push rendered with these values must
    still fit the providers' 4,096 bytes in every locale."""

    model_config = ConfigDict(extra="forbid")

    event_id: Identifier = Field(description="Producer-chosen idempotency key")
    type: Literal["notification.requested"]
    user_ids: list[Identifier] = Field(
        min_length=1, max_length=USERS_MAX, description="1–1,000 distinct recipients"
    )
    template_id: TemplateId | None = Field(None, description="A template that exists")
    content: InlineContent | None = Field(None, description="Inline content (no template)")  # type: ignore[valid-type]
    variables: dict[str, Any] = Field(
        default_factory=dict,
        max_length=VARIABLES_MAX,
        description="name → value (a string or a finite number) for the placeholders: "
        "the template's declared variables, each of its declared type, and no others",
        json_schema_extra={
            "propertyNames": {"pattern": VARIABLE_NAME_PATTERN},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": 2000, "pattern": SINGLE_LINE_PATTERN},
                    {"type": "number"},
                ]
            },
        },
    )
    category: str = Field(
        pattern=CATEGORY_PATTERN,
        description="The shop's name for this kind of notification (e.g. `back_in_stock`): "
        "1–64 of a–z 0–9 _ . -, starting with a letter",
    )
    channels: list[Literal["push", "inbox"]] = Field(
        default_factory=lambda: ["push", "inbox"],
        min_length=1,
        max_length=2,
        description="Where it goes: push (every active device), inbox; default both",
    )
    data: dict[str, str] | None = Field(
        None,
        max_length=DATA_MAX_KEYS,
        description="Keys and string values the app receives with the push (APNs custom "
        "keys, FCM data): keys like `order_ref` (a letter, then letters, digits, _ . -; at "
        "most 64), none of Herald's or the providers' own; at most 1,024 bytes as JSON",
    )

    @field_validator("data")
    @classmethod
    def _data_keys(cls, data: dict[str, str] | None) -> dict[str, str] | None:
        for key in data or {}:
            if key in RESERVED_DATA_KEYS or key.lower().startswith(RESERVED_DATA_PREFIXES):
                raise ValueError(f"key {key!r} is reserved for Herald or the providers")
            if not _DATA_KEY.fullmatch(key):
                raise ValueError(f"key {key!r} is not a letter, then letters, digits, _ . -")
        if data and (size := data_bytes(data)) > DATA_MAX_BYTES:
            raise ValueError(f"{size} bytes as JSON; at most {DATA_MAX_BYTES}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> NotificationRequested:
        if (self.template_id is None) == (self.content is None):
            raise ValueError("template_id: give exactly one of template_id and content")
        if len(set(self.user_ids)) != len(self.user_ids):
            raise ValueError("user_ids: each user at most once")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels: listed twice")
        return self

    def logged(self) -> dict[str, Any]:
        """The log body: unset options (and inline content's unset fields) left out."""
        return self.model_dump(mode="json", exclude_none=True)


Event = Annotated[OrderUpdated | PriceDropped | NotificationRequested, Field(discriminator="type")]
AnyEvent = OrderUpdated | PriceDropped | NotificationRequested


class EventsIn(Contract):
    events: list[Event] = Field(min_length=1, max_length=EVENTS_MAX)


class EventsAccepted(BaseModel):
    accepted: list[str] = Field(
        description="event_ids logged now; an order update's is its notification_id, a "
        "price drop's and a notification request's are `<event_id>:<user_id>`"
    )
    duplicate: list[str] = Field(description="event_ids seen before: nothing new is sent")


def log_entries(
    events: Sequence[AnyEvent], marketing_categories: Sequence[str] = ()
) -> list[tuple[str, str, dict[str, Any]]]:
    """(event_id, lane, body) of each event, as the event log's `append` takes them. A
    `notification.requested` whose category the shop lists as marketing
    (`HERALD_MARKETING_CATEGORIES`) travels in the marketing lane; the lane is otherwise
    the type's."""
    return [(e.event_id, lane_of(e, marketing_categories), e.logged()) for e in events]


def lane_of(event: AnyEvent, marketing_categories: Sequence[str] = ()) -> str:
    if isinstance(event, NotificationRequested) and event.category in marketing_categories:
        return "marketing"
    return LANE_OF_TYPE[event.type]


def data_bytes(data: Mapping[str, str] | None) -> int:
    """Bytes `data` adds to a push (its JSON, as the providers' client libraries write it)."""
    return len(json.dumps(data, ensure_ascii=False).encode()) if data else 0
