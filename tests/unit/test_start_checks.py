"""Herald refuses to start outside dev mode with the built-in admin key or without data
keys, with a message naming the variable to set; the local stack (dev mode) starts."""

from __future__ import annotations

import base64

import pytest

from api.credentials import InsecureSettings, refuse_insecure_defaults
from cluster.settings import HeraldArgs, HeraldSettings

DATA_KEYS = {"k1": base64.b64encode(b"\x01" * 32).decode()}
OWN_KEYS = {"a-real-key": ["ingest", "admin"]}


@pytest.fixture(autouse=True)
def no_herald_env(monkeypatch):
    for name in ("HERALD_API_KEYS", "HERALD_DATA_KEYS", "HERALD_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)


def test_builder_refuses_the_built_in_admin_key():
    from serve_app import app_builder

    with pytest.raises(InsecureSettings, match="HERALD_API_KEYS") as refused:
        app_builder(HeraldArgs(dev_mode=False, data_keys=DATA_KEYS))
    assert "dev-admin-key" in str(refused.value)
    assert "HERALD_DATA_KEYS" not in str(refused.value)  # that one is set


def test_builder_refuses_missing_data_keys():
    from serve_app import app_builder

    with pytest.raises(InsecureSettings, match="HERALD_DATA_KEYS") as refused:
        app_builder(HeraldArgs(dev_mode=False, api_keys=OWN_KEYS))
    assert "HERALD_API_KEYS" not in str(refused.value)


def test_both_problems_named_at_once():
    with pytest.raises(InsecureSettings) as refused:
        refuse_insecure_defaults(HeraldSettings(dev_mode=False))
    assert "HERALD_API_KEYS" in str(refused.value) and "HERALD_DATA_KEYS" in str(refused.value)


def test_malformed_data_keys_are_refused():
    settings = HeraldSettings(dev_mode=False, api_keys=OWN_KEYS, data_keys={"k1": "c2hvcnQ="})
    with pytest.raises(InsecureSettings, match="HERALD_DATA_KEYS.*32"):
        refuse_insecure_defaults(settings)


def test_ingress_replica_refuses_too():
    """`serve run serve_app:app` binds without the builder: the replica's constructor
    checks before it opens anything."""
    from serve_app import HeraldIngress

    wrapper = HeraldIngress.func_or_class  # Serve's ASGI wrapper around our class
    ingress = wrapper.__mro__[1]  # [0] is the wrapper, named like it
    with pytest.raises(InsecureSettings, match="HERALD_API_KEYS"):
        ingress.__init__(
            object.__new__(ingress), HeraldSettings(dev_mode=False, data_keys=DATA_KEYS)
        )


def test_dev_mode_builds_with_the_defaults(tmp_path):
    from serve_app import app_builder

    app = app_builder(HeraldArgs(dev_mode=True, data_dir=tmp_path))
    assert app._bound_deployment.name == "HeraldIngress"
    assert not list(tmp_path.iterdir())  # building starts nothing and writes nothing


def test_own_keys_build_outside_dev_mode():
    from serve_app import app_builder

    app = app_builder(HeraldArgs(dev_mode=False, api_keys=OWN_KEYS, data_keys=DATA_KEYS))
    assert app._bound_deployment.name == "HeraldIngress"
