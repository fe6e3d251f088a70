"""Settings of data protection: keys that seal tokens at rest, device hygiene, what content
may carry, how long a slow client may take, when push credentials are looked at again."""

from __future__ import annotations

from pydantic import Field

from cluster.settings._group import Group, env_prefix


class ProtectionSettings(Group):
    """Data protection and hostile input: data keys, device hygiene, content rules.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

    data_keys: dict[str, str] = Field(
        default_factory=dict,
        description='AES-256-GCM data keys sealing device tokens at rest, as JSON {"kid": '
        '"<base64 of 32 bytes>"}; the last one seals new data, every one opens. Unset on the '
        "local stack: a generated key file (0600) under HERALD_DATA_DIR.",
    )
    dev_mode: bool = Field(
        False,
        description="The local stack and tests (set by `herald run`): allows the built-in "
        "dev-admin-key and a generated data key. Off, Herald refuses to start with either.",
    )
    device_stale_days: int = Field(
        270,
        ge=1,
        description="A device not seen (registration or heartbeat) for this many days is "
        "skipped and counted (Firebase's guidance).",
    )
    dead_token_keep_days: int = Field(
        30, ge=0, description="Days a token the provider called dead is kept before deletion."
    )
    deeplink_schemes: list[str] = Field(
        default_factory=lambda: ["https", "shop"],
        description="URL schemes a deeplink may use (JSON list): https and the app's own.",
    )
    http_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a client may take to send a request's headers or body.",
    )
    credentials_check_s: float = Field(
        5.0,
        gt=0,
        description="How often the APNs key and FCM service-account files are checked for "
        "a change (a changed file is used for new connections; no restart).",
    )
