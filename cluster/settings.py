"""Herald's configuration: nested pydantic-settings models, one per concern.

Every field is still read from the flat `HERALD_<NAME>` variable it always had (a deployment
written against the old flat settings keeps working): each group is a `BaseSettings` whose
`env_prefix` is the shared start of its variables (`HERALD_APNS_` for APNs, `HERALD_` where
a group's names share none). `FLAT_NAMES` maps every flat name to its (group, field), so the
Serve builder's flat arguments (`serve run serve_app:app_builder shards=8`) and
`with_overrides(apns_host=...)` keep their spelling.

The same object is handed to every actor and Serve replica, so a cluster runs on one
consistent picture of its configuration instead of each process reading the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="forbid", frozen=True)


class _Group(BaseSettings):
    """One concern's settings. Built through `__init__`, so variables not given fall back to
    the environment and then to the defaults."""


class StateSettings(_Group):
    """Redis: where state, delivery status, inboxes and the Redis event log live.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = _config("HERALD_")

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


class LogSettings(_Group):
    """Herald's own log lines.

    Variables: `HERALD_LOG_<FIELD>`.
    """

    model_config = _config("HERALD_LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of Herald's own loggers (`herald.*`)."
    )
    format: Literal["json", "text"] = Field(
        "json", description="One redacted JSON object per log line, or plain redacted text."
    )


class TopologySettings(_Group):
    """How many of each actor run, and how big their batches are.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = _config("HERALD_")

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


class EventLogSettings(_Group):
    """The durable event log: backend, claiming abandoned entries, poison events.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = _config("HERALD_")

    event_log: Literal["redis", "kafka"] = Field(
        "redis",
        description="Where the durable event log lives: Redis Streams, or Kafka topics "
        "(needs HERALD_KAFKA_BOOTSTRAP).",
    )
    claim_idle_ms: int = Field(
        30_000,
        ge=100,
        description="Log entries a router read but did not ack for this long are taken over.",
    )
    poison_attempts: int = Field(
        3, ge=1, description="Times an event may fail routing before it is dead-lettered."
    )


class KafkaSettings(_Group):
    """Kafka: optional ingestion topic, and the Kafka event log backend.

    Variables: `HERALD_KAFKA_<FIELD>`.
    """

    model_config = _config("HERALD_KAFKA_")

    bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; when set, Herald also consumes events there."
    )
    topic: str = Field("herald.events", description="Topic upstream services produce to.")
    group: str = Field("herald-ingest", description="Consumer group of Herald's ingestors.")
    batch_max: int = Field(
        1000, ge=1, description="Most Kafka records handed to the event log in one step."
    )
    log_topic_prefix: str = Field(
        "herald.log.", description="Kafka event log: topic per lane is this prefix + lane."
    )
    log_group: str = Field(
        "herald-routers", description="Kafka event log: consumer group prefix of the routers."
    )
    log_partitions: int = Field(
        8, ge=1, description="Kafka event log: partitions per lane topic (created if missing)."
    )
    log_produce_timeout_s: float = Field(
        10.0, gt=0, description="Kafka event log: longest wait for the broker to take events."
    )


class RetrySettings(_Group):
    """Retries of failed sends, with backoff, before a dead letter.

    Variables: `HERALD_RETRY_<FIELD>`.
    """

    model_config = _config("HERALD_RETRY_")

    max_attempts: int = Field(
        10, ge=1, le=100, description="Send attempts per delivery before it is dead-lettered."
    )
    base_s: float = Field(
        0.5, gt=0, description="First retry delay; doubles per attempt, with full jitter."
    )
    max_s: float = Field(60.0, gt=0, description="Longest delay between two attempts.")
    lease_s: float = Field(
        60.0,
        gt=0,
        description="A retry taken by a router that dies becomes due again after this long.",
    )


class FanoutSettings(_Group):
    """The fan-out worker pool that plans campaigns per shard.

    Variables: `HERALD_FANOUT_<FIELD>`.
    """

    model_config = _config("HERALD_FANOUT_")

    workers: int = Field(
        2,
        ge=1,
        le=1024,
        description="Fan-out worker actors that plan campaigns per shard (always running).",
    )
    workers_max: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Most fan-out workers the pool grows to with campaign demand; unset: "
        "HERALD_FANOUT_WORKERS (a fixed pool).",
    )
    shards_per_worker: int = Field(
        1, ge=1, description="Shard plans per fan-out worker before the pool grows."
    )
    num_cpus: float | None = Field(
        None,
        gt=0,
        description="CPUs each fan-out worker reserves (what the autoscaler adds nodes for); "
        "unset: HERALD_ACTOR_NUM_CPUS.",
    )
    grow_wait_s: float = Field(
        10.0,
        ge=0,
        description="How long a campaign waits for a new fan-out worker (e.g. on a node the "
        "autoscaler is adding) before going on with the workers it has.",
    )
    idle_s: float = Field(
        300.0, gt=0, description="Grown fan-out workers are removed after the pool idles this long."
    )
    in_flight: int = Field(
        4, ge=1, le=64, description="Delivery batches a campaign fan-out has in flight at most."
    )


class SenderSettings(_Group):
    """The push sender pool per lane, grown with the backlog.

    Variables: `HERALD_SENDER_<FIELD>`.
    """

    model_config = _config("HERALD_SENDER_")

    replicas_max: int = Field(
        1,
        ge=1,
        le=256,
        description="Most replicas of each push sender (APNs, FCM) per lane; the pool grows "
        "them with the lane's backlog. 1 (the default, right for one machine, where more "
        "replicas only compete for the same cores): one fixed sender per channel and lane.",
    )
    backlog_per_replica: int = Field(
        20_000,
        ge=1,
        description="Lane backlog (log lag plus users running campaigns still have to reach) "
        "each push sender replica is sized for.",
    )
    apns_capacity_per_s: float = Field(
        2_500,
        gt=0,
        description="Pushes/s one APNs sender replica sends with a core to itself (aioapns: "
        "~3k/s on the reference box). A lane whose APNs and FCM ceilings one replica covers "
        "never grows: more replicas would only split the same rate.",
    )
    fcm_capacity_per_s: float = Field(
        600,
        gt=0,
        description="Pushes/s one FCM sender replica sends with a core to itself "
        "(firebase-admin: ~700/s on the reference box).",
    )
    num_cpus: float | None = Field(
        None,
        gt=0,
        description="CPUs each grown sender replica reserves (what the autoscaler adds nodes "
        "for); unset: HERALD_ACTOR_NUM_CPUS.",
    )
    grow_wait_s: float = Field(
        10.0, ge=0, description="How long one sizing round waits for new sender replicas."
    )
    idle_s: float = Field(
        60.0,
        gt=0,
        description="Grown sender replicas are removed once the backlog has wanted fewer for "
        "this long.",
    )
    scale_interval_s: float = Field(
        2.0, gt=0, description="How often router 0 sizes the sender pool to the backlog."
    )


class CampaignSettings(_Group):
    """Campaign runs: leases and failure limits.

    Variables: `HERALD_CAMPAIGN_<FIELD>`.
    """

    model_config = _config("HERALD_CAMPAIGN_")

    lease_s: float = Field(
        120.0,
        gt=0,
        description="A campaign taken by a router that dies is resumed by another after this.",
    )
    max_failures: int = Field(
        3, ge=1, description="Failed fan-out runs after which a campaign is marked failed."
    )


class PriceDropSettings(_Group):
    """Price-drop fan-out to wishers.

    Variables: `HERALD_PRICE_DROP_<FIELD>`.
    """

    model_config = _config("HERALD_PRICE_DROP_")

    audience_limit: int | None = Field(
        None,
        ge=1,
        description="Most wishers one price drop notifies, best-ranked first (the rest are "
        "counted, not sent); unset: every eligible wisher, still sent in ranked order.",
    )


class MarketingSettings(_Group):
    """The marketing lane's own send ceilings, so a fan-out never takes what order updates need.

    Variables: `HERALD_MARKETING_<FIELD>`.
    """

    model_config = _config("HERALD_MARKETING_")

    apns_rate_per_s: float = Field(
        1_000,
        gt=0,
        description="Marketing lane APNs send rate ceiling (transactional keeps the APNs one).",
    )
    fcm_rate_per_s: float = Field(
        500,
        gt=0,
        description="Marketing lane FCM send rate ceiling (transactional keeps the FCM one).",
    )


class FeedbackSettings(_Group):
    """The feedback stream and its Parquet log (training data).

    Variables: `HERALD_FEEDBACK_<FIELD>`.
    """

    model_config = _config("HERALD_FEEDBACK_")

    stream_max: int = Field(
        10_000_000, ge=1000, description="Newest feedback actions kept in the feedback stream."
    )
    export_s: float = Field(
        10.0, gt=0, description="How often feedback actions move from Redis to the Parquet log."
    )
    dir: Path | None = Field(
        None,
        description="Feedback log (Parquet by day: sends with features as scored, actions); "
        "<data_dir>/feedback when unset. Shared storage on a multi-node cluster.",
    )


class ModelSettings(_Group):
    """The model registry campaigns rank with.

    Variables: `HERALD_MODEL_<FIELD>`.
    """

    model_config = _config("HERALD_MODEL_")

    dir: Path | None = Field(
        None,
        description="Model registry campaigns rank with (versions, `current` pointer); "
        "<data_dir>/models when unset, seeded with the shipped default model.",
    )


class FallbackSettings(_Group):
    """The webhook fallback for order updates no push could reach.

    Variables: `HERALD_FALLBACK_<FIELD>`.
    """

    model_config = _config("HERALD_FALLBACK_")

    webhook_url: str | None = Field(
        None,
        description="Webhook (e.g. an email service) for order updates no push could reach.",
    )
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook call.")


class ApiSettings(_Group):
    """The HTTP API: keys and scopes, bind address, body limit.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = _config("HERALD_")

    api_keys: dict[str, list[Literal["ingest", "admin"]]] = Field(
        default_factory=lambda: {"dev-admin-key": ["ingest", "admin"]},
        description='API keys and their scopes, as JSON: {"key": ["ingest", "admin"]}.',
    )
    http_host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds.")
    http_port: int = Field(8000, description="Port of the Serve HTTP proxy.")
    max_body_bytes: int = Field(1 << 20, description="Largest request body accepted.")


class ApnsSettings(_Group):
    """Apple Push Notification service.

    Variables: `HERALD_APNS_<FIELD>`.
    """

    model_config = _config("HERALD_APNS_")

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


class FcmSettings(_Group):
    """Firebase Cloud Messaging (HTTP v1).

    Variables: `HERALD_FCM_<FIELD>`.
    """

    model_config = _config("HERALD_FCM_")

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


class LocalSettings(_Group):
    """The local stack (`make run`, tests).

    Variables: `HERALD_<FIELD>`.
    """

    model_config = _config("HERALD_")

    data_dir: Path = Field(
        Path(".herald"), description="Where the local stack keeps Redis data, certs and keys."
    )


class HeraldSettings(BaseModel):
    """Every knob Herald has, grouped by concern; each field reads `HERALD_<FLAT_NAME>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: StateSettings = Field(
        default_factory=StateSettings, description=StateSettings.__doc__.split(" Variables")[0]
    )
    log: LogSettings = Field(
        default_factory=LogSettings, description=LogSettings.__doc__.split(" Variables")[0]
    )
    topology: TopologySettings = Field(
        default_factory=TopologySettings,
        description=TopologySettings.__doc__.split(" Variables")[0],
    )
    eventlog: EventLogSettings = Field(
        default_factory=EventLogSettings,
        description=EventLogSettings.__doc__.split(" Variables")[0],
    )
    kafka: KafkaSettings = Field(
        default_factory=KafkaSettings, description=KafkaSettings.__doc__.split(" Variables")[0]
    )
    retry: RetrySettings = Field(
        default_factory=RetrySettings, description=RetrySettings.__doc__.split(" Variables")[0]
    )
    fanout: FanoutSettings = Field(
        default_factory=FanoutSettings, description=FanoutSettings.__doc__.split(" Variables")[0]
    )
    senders: SenderSettings = Field(
        default_factory=SenderSettings, description=SenderSettings.__doc__.split(" Variables")[0]
    )
    campaigns: CampaignSettings = Field(
        default_factory=CampaignSettings,
        description=CampaignSettings.__doc__.split(" Variables")[0],
    )
    price_drops: PriceDropSettings = Field(
        default_factory=PriceDropSettings,
        description=PriceDropSettings.__doc__.split(" Variables")[0],
    )
    marketing: MarketingSettings = Field(
        default_factory=MarketingSettings,
        description=MarketingSettings.__doc__.split(" Variables")[0],
    )
    feedback: FeedbackSettings = Field(
        default_factory=FeedbackSettings,
        description=FeedbackSettings.__doc__.split(" Variables")[0],
    )
    models: ModelSettings = Field(
        default_factory=ModelSettings, description=ModelSettings.__doc__.split(" Variables")[0]
    )
    fallback: FallbackSettings = Field(
        default_factory=FallbackSettings,
        description=FallbackSettings.__doc__.split(" Variables")[0],
    )
    api: ApiSettings = Field(
        default_factory=ApiSettings, description=ApiSettings.__doc__.split(" Variables")[0]
    )
    apns: ApnsSettings = Field(
        default_factory=ApnsSettings, description=ApnsSettings.__doc__.split(" Variables")[0]
    )
    fcm: FcmSettings = Field(
        default_factory=FcmSettings, description=FcmSettings.__doc__.split(" Variables")[0]
    )
    local: LocalSettings = Field(
        default_factory=LocalSettings, description=LocalSettings.__doc__.split(" Variables")[0]
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_names(cls, data: Any) -> Any:
        """Accept flat names (`shards=8`) beside groups, and build every group through its
        own constructor, so what is not given still comes from the environment."""
        if not isinstance(data, dict):
            return data
        groups: dict[str, dict[str, Any]] = {}
        for name, value in data.items():
            if name in GROUP_CLASSES:
                given = value.model_dump() if isinstance(value, BaseModel) else dict(value)
                groups.setdefault(name, {}).update(given)
            elif name in FLAT_NAMES:
                group, field = FLAT_NAMES[name]
                groups.setdefault(group, {})[field] = value
            else:
                raise ValueError(f"unknown setting {name!r}")
        return {group: GROUP_CLASSES[group](**given) for group, given in groups.items()}

    @model_validator(mode="after")
    def _consistent(self) -> HeraldSettings:
        if self.eventlog.event_log == "kafka" and not self.kafka.bootstrap:
            raise ValueError("event_log=kafka needs kafka_bootstrap (HERALD_KAFKA_BOOTSTRAP)")
        fanout = self.fanout
        if fanout.workers_max is not None and fanout.workers_max < fanout.workers:
            raise ValueError("fanout_workers_max must be at least fanout_workers")
        return self

    @property
    def pool_max_workers(self) -> int:
        """The fan-out pool's ceiling (`fanout_workers_max`, else `fanout_workers`)."""
        return self.fanout.workers_max or self.fanout.workers

    @property
    def feedback_root(self) -> Path:
        """The feedback log's directory (`feedback_dir`, else `<data_dir>/feedback`)."""
        if self.feedback.dir is not None:
            return self.feedback.dir
        return self.local.data_dir / "feedback"

    @property
    def models_root(self) -> Path:
        """The model registry's directory (`model_dir`, else `<data_dir>/models`)."""
        return self.models.dir if self.models.dir is not None else self.local.data_dir / "models"

    def send_rate_per_s(self, channel: str, lane: str) -> float:
        """The send rate ceiling of one (push channel, lane) sender."""
        if channel == "apns":
            provider, marketing = self.apns.rate_per_s, self.marketing.apns_rate_per_s
        else:
            provider, marketing = self.fcm.rate_per_s, self.marketing.fcm_rate_per_s
        return min(provider, marketing) if lane == "marketing" else provider

    def flat(self) -> dict[str, Any]:
        """Every setting under its flat name (`apns_host`), as the builder's args take them."""
        return {
            name: getattr(getattr(self, group), field)
            for name, (group, field) in FLAT_NAMES.items()
        }

    def with_overrides(self, **overrides: Any) -> HeraldSettings:
        """A copy with some fields (flat names) replaced; validated like the original."""
        data = self.flat()
        data.update(overrides)
        return HeraldSettings.model_validate(data)


GROUP_CLASSES: dict[str, type[_Group]] = {
    "state": StateSettings,
    "log": LogSettings,
    "topology": TopologySettings,
    "eventlog": EventLogSettings,
    "kafka": KafkaSettings,
    "retry": RetrySettings,
    "fanout": FanoutSettings,
    "senders": SenderSettings,
    "campaigns": CampaignSettings,
    "price_drops": PriceDropSettings,
    "marketing": MarketingSettings,
    "feedback": FeedbackSettings,
    "models": ModelSettings,
    "fallback": FallbackSettings,
    "api": ApiSettings,
    "apns": ApnsSettings,
    "fcm": FcmSettings,
    "local": LocalSettings,
}

# flat name (the `HERALD_*` variable, lower-cased, without the prefix) → (group, field)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    (GROUP_CLASSES[group].model_config["env_prefix"].lower()[len("herald_") :] + field): (
        group,
        field,
    )
    for group, cls in GROUP_CLASSES.items()
    for field in cls.model_fields
}


def flat_fields() -> dict[str, Any]:
    """Every flat name and its pydantic field (type, default, description)."""
    return {
        name: GROUP_CLASSES[group].model_fields[field]
        for name, (group, field) in FLAT_NAMES.items()
    }


def _args_model() -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (field.annotation | None, Field(None, description=field.description))
        for name, field in flat_fields().items()
    }
    return create_model(
        "HeraldArgs", __config__=ConfigDict(extra="forbid"), __doc__=_ARGS_DOC, **fields
    )


_ARGS_DOC = """Arguments of the Serve application builder: any setting, by its flat name.

Fields left unset fall back to `HERALD_*` environment variables and then to defaults, so
`serve run serve_app:app_builder shards=8` and a Serve config's `args:` block override only
what they name.
"""

HeraldArgs = _args_model()


def settings_from_args(args: BaseModel) -> HeraldSettings:
    """Environment-backed settings with the builder's explicit arguments on top."""
    explicit = {k: v for k, v in args.model_dump().items() if v is not None}
    return HeraldSettings(**explicit)
