"""The cluster configs are valid for the tools that read them, and agree with each other.

No Ray cluster is started and no cloud is called: the autoscaler configs go through Ray's
own defaults filling and JSON-schema validation (what `ray up` and the monitor do before
touching a provider), the Serve configs through Serve's deploy schema and Herald's typed
application builder, and the KubeRay manifest through PyYAML plus the same Serve checks.
"""

from __future__ import annotations

import copy
import importlib
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]
RAY_CLUSTER = ROOT / "ray-cluster.yaml"
LOCAL_CLUSTER = ROOT / "cluster" / "local-cluster.yaml"
SERVE_CONFIG = ROOT / "cluster" / "serve_config.yaml"
RAYSERVICE = ROOT / "cluster" / "kuberay" / "rayservice.yaml"

# Keys the v1 autoscaler reads from a config it was handed as is (StandardAutoscaler.reset
# and the node launcher index them directly; the monitor fills in no defaults).
MONITOR_KEYS = (
    "cluster_name",
    "max_workers",
    "idle_timeout_minutes",
    "provider",
    "available_node_types",
    "head_node_type",
    "file_mounts",
    "cluster_synced_files",
    "worker_setup_commands",
    "worker_start_ray_commands",
    "head_start_ray_commands",
)


def load(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def prepared(path: Path) -> dict[str, Any]:
    """The config as `ray up` sees it before it calls the cloud: defaults filled in
    (`prepare_config`, the first step of `commands._bootstrap_config`), then validated."""
    config = prepare_config(copy.deepcopy(load(path)))
    validate_config(config)
    return config


def herald_app(serve_config: dict[str, Any]) -> dict[str, Any]:
    (app,) = [a for a in serve_config["applications"] if a["name"] == "herald"]
    return app


def kuberay_serve_config() -> dict[str, Any]:
    return yaml.safe_load(load(RAYSERVICE)["spec"]["serveConfigV2"])


def requirement_names(specs: list[str]) -> set[str]:
    return {Requirement(s).name.lower().replace("_", "-") for s in specs}


# --- ray-cluster.yaml (AWS, `ray up`) --------------------------------------------------


def test_ray_cluster_yaml_passes_ray_validation():
    config = prepared(RAY_CLUSTER)
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"]
    assert config["provider"]["availability_zone"].startswith(config["provider"]["region"])
    assert config["idle_timeout_minutes"] > 0


def test_ray_cluster_node_types():
    config = prepared(RAY_CLUSTER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers, "a worker node type for the autoscaler to add"
    # The head runs no Herald work: no CPUs advertised to the scheduler.
    assert head["resources"].get("CPU") == 0
    assert head["max_workers"] == 0
    for node_type in types.values():
        assert node_type["node_config"]["InstanceType"]
        assert node_type["node_config"]["ImageId"].startswith("ami-")
        # Explicit resources: the launcher would otherwise ask EC2 to describe the type.
        assert "CPU" in node_type["resources"]
    for worker in workers.values():
        assert worker["resources"]["CPU"] > 0
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= config["max_workers"]
    assert sum(w["min_workers"] for w in workers.values()) >= 1


def test_ray_cluster_installs_herald_and_deploys_serve_config():
    config = prepared(RAY_CLUSTER)
    # The repository is synced to the directory the Serve config's working_dir names.
    assert config["file_mounts"]["~/herald"] == "."
    working_dir = herald_app(load(SERVE_CONFIG))["runtime_env"]["working_dir"]
    user_home = f"/home/{config['auth']['ssh_user']}"
    assert working_dir == f"local://{user_home}/herald"
    setup = config["setup_commands"]
    assert any("pip install -e ~/herald" in c for c in setup)
    # Ray pinned to the version the configs and the KubeRay image were written for.
    assert any(f"ray[default,serve]=={ray.__version__}" in c for c in setup)

    head = config["head_start_ray_commands"]
    start = next(i for i, c in enumerate(head) if "ray start --head" in c)
    deploy = next(i for i, c in enumerate(head) if "serve deploy cluster/serve_config.yaml" in c)
    assert start < deploy, "Serve is deployed after Ray has started"
    assert "--num-cpus=0" in head[start]
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head[start]
    assert any(
        "ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"]
    )


def test_ray_cluster_commands_are_whole_shell_lines():
    """A ` #` inside an unquoted YAML command starts a comment and cuts the command short;
    every command must still be a complete shell line (balanced quotes)."""
    config = prepared(RAY_CLUSTER)
    for key in (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        for command in config[key]:
            shlex.split(command)
    assert any("herald-venv' >> ~/.bashrc" in c for c in config["setup_commands"])


def test_every_ray_cluster_key_carries_a_comment():
    """Cluster YAML as documentation (DESIGN.md): each top-level key line is commented,
    or is a section whose own lines are."""
    lines = RAY_CLUSTER.read_text().splitlines()
    for line in lines:
        if line and not line.startswith((" ", "#", "-")):
            key, _, rest = line.partition(":")
            if rest.strip():  # a scalar or flow value on the same line
                assert "#" in rest, f"no comment on {key!r}"


# --- cluster/local-cluster.yaml (fake_multinode) ----------------------------------------


def test_local_cluster_yaml_is_valid_as_the_monitor_reads_it():
    config = load(LOCAL_CLUSTER)
    # The monitor (`ray start --head --autoscaling-config=...`) validates the file as is.
    validate_config(config)
    missing = [k for k in MONITOR_KEYS if k not in config]
    assert missing == []


def test_local_cluster_is_a_fake_multinode_cluster():
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    config = load(LOCAL_CLUSTER)
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["disable_node_updaters"] is True
    types = config["available_node_types"]
    # The fake provider tags the head it finds with this type name, whatever the file says.
    assert config["head_node_type"] == FAKE_HEAD_NODE_TYPE
    assert types[FAKE_HEAD_NODE_TYPE]["max_workers"] == 0
    (worker_name,) = [n for n in types if n != FAKE_HEAD_NODE_TYPE]
    worker = types[worker_name]
    assert worker["resources"]["CPU"] == 2
    assert types[FAKE_HEAD_NODE_TYPE]["resources"]["CPU"] == 2
    assert worker["min_workers"] == 0 < worker["max_workers"] == 3 == config["max_workers"]
    assert "--num-cpus=2" in LOCAL_CLUSTER.read_text()


def test_local_cluster_provider_constructs(monkeypatch: pytest.MonkeyPatch):
    """Ray's provider registry maps the type to the fake provider, which accepts the
    provider section (it only checks RAY_FAKE_CLUSTER; nothing is started)."""
    from ray.autoscaler._private.fake_multi_node.node_provider import (
        FAKE_HEAD_NODE_TYPE,
        FakeMultiNodeProvider,
    )
    from ray.autoscaler._private.providers import _get_node_provider
    from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE

    monkeypatch.setenv("RAY_FAKE_CLUSTER", "1")
    config = load(LOCAL_CLUSTER)
    provider = _get_node_provider(config["provider"], config["cluster_name"], use_cache=False)
    assert isinstance(provider, FakeMultiNodeProvider)
    (head,) = provider.non_terminated_nodes({})
    assert provider.node_tags(head)[TAG_RAY_USER_NODE_TYPE] == FAKE_HEAD_NODE_TYPE


# --- cluster/serve_config.yaml -----------------------------------------------------------


def test_serve_config_passes_serve_schema():
    schema = ServeDeploySchema.model_validate(load(SERVE_CONFIG))
    assert schema.http_options.host == "0.0.0.0"
    assert schema.http_options.port == 8000
    (app,) = schema.applications
    assert app.name == "herald"
    assert app.route_prefix == "/"
    assert app.import_path == "serve_app:app_builder"
    assert app.runtime_env["working_dir"].startswith("local:///")


def test_serve_config_deployment_options():
    app = herald_app(load(SERVE_CONFIG))
    (ingress,) = app["deployments"]
    autoscaling = ingress["autoscaling_config"]
    assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"]
    assert autoscaling["target_ongoing_requests"] > 0
    # The current option names, not num_replicas next to autoscaling or the old ones.
    assert "num_replicas" not in ingress
    assert "target_num_ongoing_requests_per_replica" not in autoscaling
    assert ingress["max_ongoing_requests"] >= autoscaling["target_ongoing_requests"]


def test_serve_config_imports_and_builds_with_its_args(monkeypatch):
    """Serve's own builder call: import the path, validate `args` against the builder's
    annotated model (HeraldArgs, extra=forbid), build. Binding starts nothing. The secrets
    come from the nodes' environment, as in a deployment (without them the builder refuses,
    `api.credentials`)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    monkeypatch.setenv("HERALD_API_KEYS", '{"a-deployment-key": ["ingest", "admin"]}')
    monkeypatch.setenv("HERALD_DATA_KEYS", '{"k1": "' + "A" * 43 + '="}')

    from cluster.settings import HeraldArgs, settings_from_args

    app = herald_app(load(SERVE_CONFIG))
    module_name, attr = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module_name), attr)
    built = call_user_app_builder_with_args_if_necessary(builder, app["args"])
    names = {d["name"] for d in app["deployments"]}
    assert built._bound_deployment.name in names

    settings = settings_from_args(HeraldArgs(**app["args"]))
    for name, value in app["args"].items():
        assert settings.flat()[name] == value


def test_serve_config_args_are_checked():
    from pydantic import ValidationError

    from cluster.settings import HeraldArgs

    with pytest.raises(ValidationError):
        HeraldArgs(**{**herald_app(load(SERVE_CONFIG))["args"], "shard": 8})


# --- cluster/kuberay/rayservice.yaml -----------------------------------------------------


def test_rayservice_kind_and_version():
    manifest = load(RAYSERVICE)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"]


def test_rayservice_serve_config_matches_serve_config_yaml():
    embedded = ServeDeploySchema.model_validate(kuberay_serve_config())
    assert [a.name for a in embedded.applications] == ["herald"]
    ours = herald_app(load(SERVE_CONFIG))
    theirs = herald_app(kuberay_serve_config())
    # The same app, args and deployment options; only where the code comes from differs
    # (a synced dir on `ray up` nodes, a release zip + pip list on the stock image).
    strip = {"runtime_env"}
    assert {k: v for k, v in theirs.items() if k not in strip} == {
        k: v for k, v in ours.items() if k not in strip
    }
    assert theirs["runtime_env"]["working_dir"].startswith("https://")


def test_rayservice_pip_list_mirrors_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = requirement_names(pyproject["project"]["dependencies"]) - {"ray"}
    pip = requirement_names(herald_app(kuberay_serve_config())["runtime_env"]["pip"])
    assert wanted - pip == set(), "dependencies missing from the RayService pip list"
    assert pip - wanted == set(), "pip list has packages pyproject.toml does not"


def test_rayservice_cluster_autoscales():
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pods = [head["template"]["spec"], group["template"]["spec"]]
    for pod in pods:
        container = pod["containers"][0]
        assert container["image"] == f"rayproject/ray:{ray.__version__}-py311"
        assert container["resources"]["requests"] and container["resources"]["limits"]
        env = {e["name"]: e for e in container["env"]}
        secret = env["HERALD_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert secret["name"] and secret["key"]
        assert "value" not in env["HERALD_REDIS_URL"]


def test_rayservice_env_names_are_herald_settings():
    from cluster.settings import FLAT_NAMES

    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    specs = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    fields = {f"HERALD_{name.upper()}" for name in FLAT_NAMES}
    for spec in specs:
        for env in spec["template"]["spec"]["containers"][0]["env"]:
            if env["name"].startswith("HERALD_"):
                assert env["name"] in fields
