"""Settings groups of Herald's own machinery: Redis state, topology, the event log,
retries, fan-out, senders, campaigns, feedback, models, content, the local stack."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cluster.settings._group import Group, env_prefix


class StateSettings(Group):
    """Redis: where state, delivery status, inboxes and the Redis event log live.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

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
    redis_cluster: bool = Field(
        False,
        description="Talk to HERALD_REDIS_URL as a Redis Cluster (redis.asyncio.RedisCluster); "
        "every key carries a hash tag so each script touches one slot.",
    )
    redis_username: str | None = Field(
        None, description="Redis ACL user (with HERALD_REDIS_PASSWORD); unset: `default`."
    )
    redis_password: str | None = Field(
        None,
        description="Redis password (AUTH / ACL). The local stack generates one (0600 file).",
    )
    redis_ca_file: Path | None = Field(
        None, description="CA bundle to verify a `rediss://` Redis's TLS certificate."
    )


class LogSettings(Group):
    """Herald's own log lines.

    Variables: `HERALD_LOG_<FIELD>`.
    """

    model_config = env_prefix("HERALD_LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of Herald's own loggers (`herald.*`)."
    )
    format: Literal["json", "text"] = Field(
        "json", description="One redacted JSON object per log line, or plain redacted text."
    )


class TopologySettings(Group):
    """How many of each actor run, and how big their batches are.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

    namespace: str = Field("herald", description="Ray namespace of Herald's named actors.")
    shards: int = Field(4, ge=1, le=4096, description="Number of UserShard actors.")
    routers: int = Field(2, ge=1, le=256, description="Number of event-router actors.")
    router_loops: int = Field(
        4,
        ge=1,
        le=64,
        description="Most batches per lane a router processes at once (Redis: over the "
        "partitions it holds; Kafka: consumers per lane).",
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


class EventLogSettings(Group):
    """The durable event log: backend, claiming abandoned entries, poison events.

    Variables: `HERALD_<FIELD>`.
    """

    model_config = env_prefix("HERALD_")

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
    log_partitions: int = Field(
        8,
        ge=1,
        le=1024,
        description="Partitions of each lane's log (Redis: a stream each, read under a lease; "
        "Kafka: the topic's partitions), chosen from the user id (product id for price drops).",
    )


class KafkaSettings(Group):
    """Kafka: optional ingestion topic, and the Kafka event log backend.

    Variables: `HERALD_KAFKA_<FIELD>`.
    """

    model_config = env_prefix("HERALD_KAFKA_")

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
    log_partitions: int | None = Field(
        None,
        ge=1,
        description="Kafka event log: partitions per lane topic when created (default "
        "HERALD_LOG_PARTITIONS).",
    )
    log_produce_timeout_s: float = Field(
        10.0, gt=0, description="Kafka event log: longest wait for the broker to take events."
    )


class RetrySettings(Group):
    """Retries of failed sends, with backoff, before a dead letter.

    Variables: `HERALD_RETRY_<FIELD>`.
    """

    model_config = env_prefix("HERALD_RETRY_")

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


class FanoutSettings(Group):
    """The fan-out worker pool that plans campaigns per shard.

    Variables: `HERALD_FANOUT_<FIELD>`.
    """

    model_config = env_prefix("HERALD_FANOUT_")

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


class SenderSettings(Group):
    """The push sender pool per lane, grown with the backlog.

    Variables: `HERALD_SENDER_<FIELD>`.
    """

    model_config = env_prefix("HERALD_SENDER_")

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


class CampaignSettings(Group):
    """Campaign runs: leases and failure limits.

    Variables: `HERALD_CAMPAIGN_<FIELD>`.
    """

    model_config = env_prefix("HERALD_CAMPAIGN_")

    lease_s: float = Field(
        120.0,
        gt=0,
        description="A campaign taken by a router that dies is resumed by another after this.",
    )
    max_failures: int = Field(
        3, ge=1, description="Failed fan-out runs after which a campaign is marked failed."
    )


class PriceDropSettings(Group):
    """Price-drop fan-out to wishers.

    Variables: `HERALD_PRICE_DROP_<FIELD>`.
    """

    model_config = env_prefix("HERALD_PRICE_DROP_")

    audience_limit: int | None = Field(
        None,
        ge=1,
        description="Most wishers one price drop notifies, best-ranked first (the rest are "
        "counted, not sent); unset: every eligible wisher, still sent in ranked order.",
    )
    ttl_s: int = Field(
        6 * 3600,
        ge=1,
        description="Time to live of a price-drop push; a retry or hold past it is expired.",
    )


class MarketingSettings(Group):
    """The marketing lane's own send ceilings, so a fan-out never takes what order updates need.

    Variables: `HERALD_MARKETING_<FIELD>`.
    """

    model_config = env_prefix("HERALD_MARKETING_")

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
    categories: list[str] = Field(
        default_factory=lambda: ["marketing"],
        description="Shop categories whose `notification.requested` travel in the marketing "
        "lane (its own senders and rate ceilings), as a JSON list; every other category is "
        "transactional.",
    )


class FeedbackSettings(Group):
    """The feedback stream and its Parquet log (training data).

    Variables: `HERALD_FEEDBACK_<FIELD>`.
    """

    model_config = env_prefix("HERALD_FEEDBACK_")

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


class ModelSettings(Group):
    """The model registry campaigns rank with.

    Variables: `HERALD_MODEL_<FIELD>`.
    """

    model_config = env_prefix("HERALD_MODEL_")

    dir: Path | None = Field(
        None,
        description="Model registry campaigns rank with (versions, `current` pointer); "
        "<data_dir>/models when unset, seeded with the shipped default model.",
    )


class FallbackSettings(Group):
    """The webhook fallback for order updates no push could reach.

    Variables: `HERALD_FALLBACK_<FIELD>`.
    """

    model_config = env_prefix("HERALD_FALLBACK_")

    webhook_url: str | None = Field(
        None,
        description="Webhook (e.g. an email service) for order updates no push could reach.",
    )
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook call.")
