"""Settings of what goes out and when: the content's fallback locale, how long a push may
still go out, how many a user may get a minute. Kept apart from `runtime` so each module
stays one screenful of groups."""

from __future__ import annotations

from pydantic import Field

from cluster.settings._group import Group, env_prefix


class DeliverySettings(Group):
    """Per-notification deadlines and per-user limits of the delivery step.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

    order_update_ttl_s: int = Field(
        24 * 3600,
        ge=1,
        description="Default time to live of an order update's push (event ttl_s wins); a retry "
        "or quiet-hours hold past it is dropped as expired.",
    )
    requested_ttl_s: int = Field(
        24 * 3600,
        ge=1,
        description="Default time to live of a notification.requested push (the event's or "
        "its template's ttl_s wins).",
    )
    user_push_limit_per_min: int = Field(
        0,
        ge=0,
        description="Most transactional pushes per user per minute (0: no limit); pushes over "
        "it go to the inbox only and are counted rate_limited.",
    )


class ContentSettings(Group):
    """What notifications say: the locale templates fall back to.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

    default_locale: str = Field(
        "en",
        min_length=1,
        max_length=35,
        description="Locale (BCP 47, e.g. en, pt-BR) a notification renders in when its "
        "template has neither the device's nor the profile's locale (nor their language); "
        "then its language, then the template's first locale.",
    )
