"""Herald's configuration: one pydantic-settings class, every field from `HERALD_<NAME>`.

The same object is handed to every actor and Serve replica, so a cluster runs on one
consistent picture of its configuration instead of each process reading the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class HeraldSettings(BaseSettings):
    """Every knob Herald has. Each field is read from `HERALD_<FIELD>` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="forbid", frozen=True)

    # --- state and log -------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding state, delivery status, inboxes and the event log streams.",
    )
    key_prefix: str = Field(
        "herald:",
        description="Prefix of every Redis key and stream; lets tests and tenants share a Redis.",
    )
    idempotency_window_s: int = Field(
        7 * 24 * 3600,
        description="How long an event_id is remembered; a replay inside it is a duplicate.",
    )
    notification_ttl_s: int = Field(
        14 * 24 * 3600, description="How long delivery status of a notification is kept."
    )
    inbox_max_items: int = Field(200, description="Newest inbox items kept per user.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of Herald's own loggers (`herald.*`)."
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="One redacted JSON object per log line, or plain redacted text."
    )

    # --- fallback --------------------------------------------------------------------------
    fallback_webhook_url: str | None = Field(
        None,
        description="Webhook (e.g. an email service) for order updates no push could reach.",
    )
    fallback_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook call.")

    # --- Kafka ingestion (optional) ---------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; when set, Herald also consumes events there."
    )
    kafka_topic: str = Field("herald.events", description="Topic upstream services produce to.")
    kafka_group: str = Field("herald-ingest", description="Consumer group of Herald's ingestors.")
    kafka_batch_max: int = Field(
        1000, ge=1, description="Most Kafka records handed to the event log in one step."
    )
    event_log: Literal["redis", "kafka"] = Field(
        "redis",
        description="Where the durable event log lives: Redis Streams, or Kafka topics "
        "(needs HERALD_KAFKA_BOOTSTRAP).",
    )
    kafka_log_topic_prefix: str = Field(
        "herald.log.", description="Kafka event log: topic per lane is this prefix + lane."
    )
    kafka_log_group: str = Field(
        "herald-routers", description="Kafka event log: consumer group prefix of the routers."
    )
    kafka_log_partitions: int = Field(
        8, ge=1, description="Kafka event log: partitions per lane topic (created if missing)."
    )
    kafka_log_produce_timeout_s: float = Field(
        10.0, gt=0, description="Kafka event log: longest wait for the broker to take events."
    )

    # --- topology ------------------------------------------------------------------------
    namespace: str = Field("herald", description="Ray namespace of Herald's named actors.")
    shards: int = Field(4, ge=1, le=4096, description="Number of UserShard actors.")
    routers: int = Field(2, ge=1, le=256, description="Number of event-router actors.")
    router_loops: int = Field(
        4, ge=1, le=64, description="Concurrent read loops per router (batches in flight)."
    )
    batch_max_rows: int = Field(
        500, ge=1, le=10_000, description="Most stream entries a router reads in one batch."
    )
    batch_max_wait_ms: int = Field(
        50, ge=1, le=10_000, description="Longest a router blocks waiting for a batch."
    )
    actor_num_cpus: float = Field(
        0.1,
        gt=0,
        description="CPUs reserved per Herald actor; fractional so a 2-core box fits them all.",
    )

    # --- retries and dead letters ------------------------------------------------------
    retry_max_attempts: int = Field(
        10, ge=1, le=100, description="Send attempts per delivery before it is dead-lettered."
    )
    retry_base_s: float = Field(
        0.5, gt=0, description="First retry delay; doubles per attempt, with full jitter."
    )
    retry_max_s: float = Field(60.0, gt=0, description="Longest delay between two attempts.")
    retry_lease_s: float = Field(
        60.0,
        gt=0,
        description="A retry taken by a router that dies becomes due again after this long.",
    )
    claim_idle_ms: int = Field(
        30_000,
        ge=100,
        description="Log entries a router read but did not ack for this long are taken over.",
    )
    poison_attempts: int = Field(
        3, ge=1, description="Times an event may fail routing before it is dead-lettered."
    )

    # --- campaigns -----------------------------------------------------------------------
    fanout_workers: int = Field(
        2,
        ge=1,
        le=1024,
        description="Fan-out worker actors that plan campaigns per shard (always running).",
    )
    fanout_workers_max: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Most fan-out workers the pool grows to with campaign demand; unset: "
        "HERALD_FANOUT_WORKERS (a fixed pool).",
    )
    fanout_shards_per_worker: int = Field(
        1, ge=1, description="Shard plans per fan-out worker before the pool grows."
    )
    fanout_num_cpus: float | None = Field(
        None,
        gt=0,
        description="CPUs each fan-out worker reserves (what the autoscaler adds nodes for); "
        "unset: HERALD_ACTOR_NUM_CPUS.",
    )
    fanout_grow_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long a campaign waits for a new fan-out worker (e.g. on a node the "
        "autoscaler is adding) before going on with the workers it has.",
    )
    fanout_idle_s: float = Field(
        300.0, gt=0, description="Grown fan-out workers are removed after the pool idles this long."
    )
    sender_replicas_max: int = Field(
        1,
        ge=1,
        le=256,
        description="Most replicas of each push sender (APNs, FCM) per lane; the pool grows "
        "them with the lane's backlog. 1 (the default, right for one machine, where more "
        "replicas only compete for the same cores): one fixed sender per channel and lane.",
    )
    sender_backlog_per_replica: int = Field(
        20_000,
        ge=1,
        description="Lane backlog (log lag plus users running campaigns still have to reach) "
        "each push sender replica is sized for.",
    )
    sender_apns_capacity_per_s: float = Field(
        2_500,
        gt=0,
        description="Pushes/s one APNs sender replica sends with a core to itself (aioapns: "
        "~3k/s on the reference box). A lane whose APNs and FCM ceilings one replica covers "
        "never grows: more replicas would only split the same rate.",
    )
    sender_fcm_capacity_per_s: float = Field(
        600,
        gt=0,
        description="Pushes/s one FCM sender replica sends with a core to itself "
        "(firebase-admin: ~700/s on the reference box).",
    )
    sender_num_cpus: float | None = Field(
        None,
        gt=0,
        description="CPUs each grown sender replica reserves (what the autoscaler adds nodes "
        "for); unset: HERALD_ACTOR_NUM_CPUS.",
    )
    sender_grow_wait_s: float = Field(
        10.0, ge=0, description="How long one sizing round waits for new sender replicas."
    )
    sender_idle_s: float = Field(
        60.0,
        gt=0,
        description="Grown sender replicas are removed once the backlog has wanted fewer for "
        "this long.",
    )
    sender_scale_interval_s: float = Field(
        2.0, gt=0, description="How often router 0 sizes the sender pool to the backlog."
    )
    campaign_lease_s: float = Field(
        120.0,
        gt=0,
        description="A campaign taken by a router that dies is resumed by another after this.",
    )
    campaign_max_failures: int = Field(
        3, ge=1, description="Failed fan-out runs after which a campaign is marked failed."
    )
    fanout_in_flight: int = Field(
        4, ge=1, le=64, description="Delivery batches a campaign fan-out has in flight at most."
    )
    price_drop_audience_limit: int | None = Field(
        None,
        ge=1,
        description="Most wishers one price drop notifies, best-ranked first (the rest are "
        "counted, not sent); unset: every eligible wisher, still sent in ranked order.",
    )
    feedback_stream_max: int = Field(
        10_000_000, ge=1000, description="Newest feedback actions kept in the feedback stream."
    )
    feedback_export_s: float = Field(
        10.0, gt=0, description="How often feedback actions move from Redis to the Parquet log."
    )
    feedback_dir: Path | None = Field(
        None,
        description="Feedback log (Parquet by day: sends with features as scored, actions); "
        "<data_dir>/feedback when unset. Shared storage on a multi-node cluster.",
    )
    model_dir: Path | None = Field(
        None,
        description="Model registry campaigns rank with (versions, `current` pointer); "
        "<data_dir>/models when unset, seeded with the shipped default model.",
    )

    # --- API -----------------------------------------------------------------------------
    api_keys: dict[str, list[Literal["ingest", "admin"]]] = Field(
        default_factory=lambda: {"dev-admin-key": ["ingest", "admin"]},
        description='API keys and their scopes, as JSON: {"key": ["ingest", "admin"]}.',
    )
    http_host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds.")
    http_port: int = Field(8000, description="Port of the Serve HTTP proxy.")
    max_body_bytes: int = Field(1 << 20, description="Largest request body accepted.")

    # --- APNs ----------------------------------------------------------------------------
    apns_host: str = Field("api.push.apple.com", description="APNs host (an emulator in tests).")
    apns_port: int = Field(443, description="APNs port.")
    apns_ca_file: Path | None = Field(
        None, description="Extra CA bundle to trust for APNs (the emulator's test CA)."
    )
    apns_key_file: Path | None = Field(None, description="APNs auth key (.p8, ES256).")
    apns_key_id: str = Field("HERALDKEY1", description="Key ID of the APNs auth key.")
    apns_team_id: str = Field("HERALDTEAM", description="Apple developer team ID.")
    apns_topic: str = Field("com.example.shop", description="App bundle id (apns-topic).")
    apns_connections: int = Field(4, ge=1, description="HTTP/2 connections to APNs.")
    apns_concurrency: int = Field(200, ge=1, description="Most APNs requests in flight.")
    apns_rate_per_s: float = Field(20_000, gt=0, description="APNs send rate ceiling.")
    apns_timeout_s: float = Field(
        10.0, gt=0, description="An APNs answer not back by then is retried later."
    )

    # --- FCM -----------------------------------------------------------------------------
    fcm_project_id: str = Field("herald-demo", description="Firebase project id.")
    fcm_endpoint: str = Field(
        "https://fcm.googleapis.com", description="FCM base URL (an emulator in tests)."
    )
    fcm_ca_file: Path | None = Field(
        None, description="Extra CA bundle to trust for FCM (the emulator's test CA)."
    )
    fcm_credentials_file: Path | None = Field(
        None, description="Service-account JSON; its token_uri may point at the emulator."
    )
    fcm_concurrency: int = Field(100, ge=1, description="Most FCM requests in flight.")
    fcm_rate_per_s: float = Field(
        10_000, gt=0, description="FCM send rate ceiling (default quota is 10k/s/project)."
    )

    # --- marketing lane ------------------------------------------------------------------
    # Marketing (price drops, campaigns) has its own sender per channel; these ceilings keep
    # a big fan-out from taking the CPU and provider quota order updates need. The defaults
    # fit the 2-core reference box (~2.5k pushes/s in all); raise them on bigger machines.
    marketing_apns_rate_per_s: float = Field(
        1_000,
        gt=0,
        description="Marketing lane APNs send rate ceiling (transactional keeps the APNs one).",
    )
    marketing_fcm_rate_per_s: float = Field(
        500,
        gt=0,
        description="Marketing lane FCM send rate ceiling (transactional keeps the FCM one).",
    )

    # --- local stack (make run, tests) ---------------------------------------------------
    data_dir: Path = Field(
        Path(".herald"), description="Where the local stack keeps Redis data, certs and keys."
    )

    @model_validator(mode="after")
    def _kafka_log_needs_a_broker(self) -> HeraldSettings:
        if self.event_log == "kafka" and not self.kafka_bootstrap:
            raise ValueError("event_log=kafka needs kafka_bootstrap (HERALD_KAFKA_BOOTSTRAP)")
        if self.fanout_workers_max is not None and self.fanout_workers_max < self.fanout_workers:
            raise ValueError("fanout_workers_max must be at least fanout_workers")
        return self

    @property
    def pool_max_workers(self) -> int:
        """The fan-out pool's ceiling (`fanout_workers_max`, else `fanout_workers`)."""
        return self.fanout_workers_max or self.fanout_workers

    @property
    def feedback_root(self) -> Path:
        """The feedback log's directory (`feedback_dir`, else `<data_dir>/feedback`)."""
        return self.feedback_dir if self.feedback_dir is not None else self.data_dir / "feedback"

    @property
    def models_root(self) -> Path:
        """The model registry's directory (`model_dir`, else `<data_dir>/models`)."""
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"

    def send_rate_per_s(self, channel: str, lane: str) -> float:
        """The send rate ceiling of one (push channel, lane) sender."""
        if channel == "apns":
            provider, marketing = self.apns_rate_per_s, self.marketing_apns_rate_per_s
        else:
            provider, marketing = self.fcm_rate_per_s, self.marketing_fcm_rate_per_s
        return min(provider, marketing) if lane == "marketing" else provider

    def with_overrides(self, **overrides: Any) -> HeraldSettings:
        """A copy with some fields replaced; validated like the original."""
        data = self.model_dump()
        data.update(overrides)
        return HeraldSettings.model_validate(data)


def _args_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (field.annotation | None, Field(None, description=field.description))
        for name, field in HeraldSettings.model_fields.items()
    }
    return create_model(
        "HeraldArgs", __config__=ConfigDict(extra="forbid"), __doc__=_ARGS_DOC, **fields
    )


_ARGS_DOC = """Arguments of the Serve application builder: any HeraldSettings field.

Fields left unset fall back to `HERALD_*` environment variables and then to defaults, so
`serve run serve_app:app_builder shards=8` and a Serve config's `args:` block override only
what they name.
"""

HeraldArgs = _args_model()


def settings_from_args(args: BaseModel) -> HeraldSettings:
    """Environment-backed settings with the builder's explicit arguments on top."""
    explicit = {k: v for k, v in args.model_dump().items() if v is not None}
    return HeraldSettings(**explicit)
