"""Settings groups of Herald's edges: the HTTP API and the push providers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cluster.settings._group import Group, env_prefix


class ApiSettings(Group):
    """The HTTP API: keys and scopes, bind address, body limit.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

    api_keys: dict[str, list[Literal["ingest", "read", "campaigns", "admin"]]] = Field(
        default_factory=lambda: {"dev-admin-key": ["ingest", "admin"]},
        description='Service API keys and their scopes, as JSON: {"key": ["ingest", "read"]}. '
        "Scopes: ingest, read, campaigns, admin (admin grants all).",
    )
    http_host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds.")
    http_port: int = Field(8000, description="Port of the Serve HTTP proxy.")
    max_body_bytes: int = Field(1 << 20, description="Largest request body accepted.")
    user_token_secret: str | None = Field(
        None,
        description="HS256 secret(s) verifying end users' tokens: a string, or JSON "
        '{"kid": "secret"} so keys rotate without downtime. Unset: /v1/me is closed.',
    )
    user_token_public_key: str | None = Field(
        None,
        description='ES256/RS256 public key(s) (PEM, or JSON {"kid": "PEM"}) verifying '
        "end users' tokens, instead of or beside the secret.",
    )
    user_token_audience: str = Field(
        "herald", description="The `aud` an end user's token must carry."
    )
    allowed_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000", "http://localhost:8000"],
        description="Origins (JSON list) whose pages may open /v1/me/stream; others get 4403.",
    )
    stream_max_per_user: int = Field(
        5, ge=1, le=100, description="Most live streams (WebSockets) one user may hold open."
    )
    stream_host: str = Field(
        "127.0.0.1", description="Address each node's stream gateway binds (0.0.0.0 behind an LB)."
    )
    stream_port: int = Field(
        8001, ge=1, le=65535, description="Port of the stream gateway on every node (WebSockets)."
    )
    stream_public_url: str | None = Field(
        None,
        pattern=r"^wss?://[^\s/]+(/\S*)?$",
        description="The stream URL pages connect to (wss://…/v1/me/stream), when a load "
        "balancer fronts the gateways; unset: the page's host on HERALD_STREAM_PORT.",
    )


class ApnsSettings(Group):
    """Apple Push Notification service.

    Variables: `HERALD_APNS_<FIELD>`.
    """

    model_config = env_prefix("HERALD_APNS_")

    host: str = Field("api.push.apple.com", description="APNs host (an emulator in tests).")
    port: int = Field(443, description="APNs port.")
    ca_file: Path | None = Field(
        None, description="Extra CA bundle to trust for APNs (the emulator's test CA)."
    )
    key_file: Path | None = Field(None, description="APNs auth key (.p8, ES256).")
    key_id: str = Field("HERALDKEY1", description="Key ID of the APNs auth key.")
    team_id: str = Field("HERALDTEAM", description="Apple developer team ID.")
    topic: str = Field("com.example.shop", description="App bundle id (apns-topic).")
    connections: int = Field(4, ge=1, description="HTTP/2 connections to APNs.")
    concurrency: int = Field(200, ge=1, description="Most APNs requests in flight.")
    rate_per_s: float = Field(20_000, gt=0, description="APNs send rate ceiling.")
    timeout_s: float = Field(
        10.0, gt=0, description="An APNs answer not back by then is retried later."
    )


class FcmSettings(Group):
    """Firebase Cloud Messaging (HTTP v1).

    Variables: `HERALD_FCM_<FIELD>`.
    """

    model_config = env_prefix("HERALD_FCM_")

    project_id: str = Field("herald-demo", description="Firebase project id.")
    endpoint: str = Field(
        "https://fcm.googleapis.com", description="FCM base URL (an emulator in tests)."
    )
    ca_file: Path | None = Field(
        None, description="Extra CA bundle to trust for FCM (the emulator's test CA)."
    )
    credentials_file: Path | None = Field(
        None, description="Service-account JSON; its token_uri may point at the emulator."
    )
    concurrency: int = Field(100, ge=1, description="Most FCM requests in flight.")
    rate_per_s: float = Field(
        10_000, gt=0, description="FCM send rate ceiling (default quota is 10k/s/project)."
    )


class LocalSettings(Group):
    """The local stack (`make run`, tests).

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

    data_dir: Path = Field(
        Path(".herald"), description="Where the local stack keeps Redis data, certs and keys."
    )
