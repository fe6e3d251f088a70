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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from cluster.settings._group import Group
from cluster.settings.delivery import ContentSettings, DeliverySettings
from cluster.settings.edges import ApiSettings, ApnsSettings, FcmSettings, LocalSettings
from cluster.settings.protection import ProtectionSettings
from cluster.settings.runtime import (
    CampaignSettings,
    EventLogSettings,
    FallbackSettings,
    FanoutSettings,
    FeedbackSettings,
    KafkaSettings,
    LogSettings,
    MarketingSettings,
    ModelSettings,
    PriceDropSettings,
    RetrySettings,
    SenderSettings,
    StateSettings,
    TopologySettings,
)


def _group(cls: type[Group]) -> Any:
    """A group field: built from the environment unless given, described by its docstring."""
    return Field(default_factory=cls, description=cls.__doc__.split("\n")[0])


class HeraldSettings(BaseModel):
    """Every knob Herald has, grouped by concern; each field reads `HERALD_<FLAT_NAME>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: StateSettings = _group(StateSettings)
    log: LogSettings = _group(LogSettings)
    topology: TopologySettings = _group(TopologySettings)
    eventlog: EventLogSettings = _group(EventLogSettings)
    kafka: KafkaSettings = _group(KafkaSettings)
    retry: RetrySettings = _group(RetrySettings)
    fanout: FanoutSettings = _group(FanoutSettings)
    senders: SenderSettings = _group(SenderSettings)
    campaigns: CampaignSettings = _group(CampaignSettings)
    price_drops: PriceDropSettings = _group(PriceDropSettings)
    marketing: MarketingSettings = _group(MarketingSettings)
    feedback: FeedbackSettings = _group(FeedbackSettings)
    models: ModelSettings = _group(ModelSettings)
    fallback: FallbackSettings = _group(FallbackSettings)
    content: ContentSettings = _group(ContentSettings)
    delivery: DeliverySettings = _group(DeliverySettings)
    api: ApiSettings = _group(ApiSettings)
    apns: ApnsSettings = _group(ApnsSettings)
    fcm: FcmSettings = _group(FcmSettings)
    local: LocalSettings = _group(LocalSettings)
    protection: ProtectionSettings = _group(ProtectionSettings)

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


GROUP_CLASSES: dict[str, type[Group]] = {
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
    "content": ContentSettings,
    "delivery": DeliverySettings,
    "api": ApiSettings,
    "apns": ApnsSettings,
    "fcm": FcmSettings,
    "local": LocalSettings,
    "protection": ProtectionSettings,
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
