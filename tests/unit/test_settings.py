"""Settings: every `HERALD_*` variable a deployment sets still lands in its (group, field),
flat builder arguments keep working, and the nested groups stay what the docs promise."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from cluster.settings import FLAT_NAMES, GROUP_CLASSES, HeraldArgs, HeraldSettings, flat_fields
from cluster.settings import settings_from_args as from_args

# Values a type-driven guess cannot get right: (env text, expected value).
SPECIAL = {
    "api_keys": (json.dumps({"k1": ["ingest"]}), {"k1": ["ingest"]}),
    "event_log": ("kafka", "kafka"),
    "kafka_bootstrap": ("127.0.0.1:9092", "127.0.0.1:9092"),
    "fanout_workers_max": ("9", 9),
    "log_level": ("DEBUG", "DEBUG"),
    "log_format": ("text", "text"),
    "marketing_categories": ('["promo", "digest"]', ["promo", "digest"]),
    "redis_cluster": ("true", True),
    "allowed_origins": ('["https://shop.example"]', ["https://shop.example"]),
    "dev_mode": ("true", True),
    "data_keys": ('{"k1": "AAAA"}', {"k1": "AAAA"}),
    "deeplink_schemes": ('["https", "myshop"]', ["https", "myshop"]),
    "stream_public_url": ("wss://live.shop.example/v1/me/stream",) * 2,
}


def _not_default(name: str, field) -> tuple[str, object]:
    """An environment value for `name` that differs from its default, and what it parses to."""
    if name in SPECIAL:
        return SPECIAL[name]
    kinds = set(typing.get_args(field.annotation)) or {field.annotation}
    kinds.discard(type(None))
    default = field.default
    if int in kinds:
        value = (default or 1) + 1
        return str(value), value
    if float in kinds:
        value = (default or 1.0) + 0.5
        return str(value), value
    if Path in kinds:
        return f"/tmp/herald-{name}", Path(f"/tmp/herald-{name}")
    assert str in kinds, f"no test value for {name}: {field.annotation}"
    return f"test-{name}", f"test-{name}"


def test_every_herald_variable_reaches_its_group_field(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {}
    for name, field in flat_fields().items():
        text, value = _not_default(name, field)
        monkeypatch.setenv(f"HERALD_{name.upper()}", text)
        expected[name] = value
    settings = HeraldSettings()
    for name, (group, attr) in FLAT_NAMES.items():
        assert getattr(getattr(settings, group), attr) == expected[name], name
    assert settings.flat() == expected
    assert len(FLAT_NAMES) == 103  # every variable: a new one needs its README row too


def test_defaults_without_environment_match_the_documented_ones() -> None:
    settings = HeraldSettings()
    assert settings.state.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.state.key_prefix == "herald:"
    assert settings.topology.shards == 4 and settings.topology.routers == 2
    assert settings.apns.host == "api.push.apple.com" and settings.apns.port == 443
    assert settings.fcm.endpoint == "https://fcm.googleapis.com"
    assert settings.senders.replicas_max == 1
    assert settings.eventlog.event_log == "redis"
    assert settings.send_rate_per_s("apns", "marketing") == 1_000
    assert settings.send_rate_per_s("fcm", "transactional") == 10_000


def test_flat_arguments_win_over_the_environment_and_keep_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HERALD_APNS_PORT", "2197")
    monkeypatch.setenv("HERALD_SHARDS", "6")
    settings = from_args(HeraldArgs(apns_host="apns.test", routers=3))
    assert (settings.apns.host, settings.apns.port) == ("apns.test", 2197)
    assert (settings.topology.shards, settings.topology.routers) == (6, 3)
    copy = settings.with_overrides(shards=2)
    assert copy.topology.shards == 2 and copy.apns.host == "apns.test"
    assert settings.topology.shards == 6  # frozen: the original is unchanged


def test_bad_values_and_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        HeraldSettings(no_such_knob=1)
    with pytest.raises(ValueError, match="kafka_bootstrap"):
        HeraldSettings(event_log="kafka")
    with pytest.raises(ValueError, match="fanout_workers_max"):
        HeraldSettings(fanout_workers=4, fanout_workers_max=2)
    monkeypatch.setenv("HERALD_SHARDS", "0")
    with pytest.raises(ValueError, match="shards"):
        HeraldSettings()


def test_every_group_forbids_extras_and_documents_each_field() -> None:
    for name, cls in GROUP_CLASSES.items():
        assert cls.model_config["extra"] == "forbid", name
        assert cls.__doc__, name
        for field_name, field in cls.model_fields.items():
            assert field.description, f"{name}.{field_name} has no description"
