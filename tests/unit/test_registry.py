"""The model registry: versions, the deploy pointer, refusals, rollback, concurrency.

No Ray, no Redis: files in a temporary directory."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from models.features import FEATURE_COLUMNS, FEATURE_VERSION
from models.ranker import DEFAULT_PATH, Ranker, load_ranker, save_ranker
from models.registry import Registry


def fitted(seed: int) -> LogisticRegression:
    """A small LogisticRegression over FEATURE_COLUMNS (the ranker's shape)."""
    rng = np.random.default_rng(seed)
    x = rng.random((300, len(FEATURE_COLUMNS))).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.random(300) > 0.6).astype(np.int64)
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "models")


def default_version() -> str:
    return load_ranker().version


def test_empty_registry_deploys_the_shipped_default(registry: Registry) -> None:
    assert registry.current() == default_version()
    assert registry.load().version == default_version()
    (entry,) = registry.history()
    assert entry["action"] == "bootstrap" and entry["previous"] is None
    listed = registry.list()
    assert [m["version"] for m in listed] == [default_version()]
    assert listed[0]["current"] is True
    # the copy is byte-identical to the shipped archive
    copy = registry.path(default_version()).read_bytes()
    assert copy == DEFAULT_PATH.read_bytes()


def test_register_list_show_deploy_rollback_round_trip(registry: Registry) -> None:
    default = registry.current()
    v1 = registry.register(
        fitted(1),
        metrics={"holdout_auc": 0.81},
        trained_on="test data one",
        data_range={"from": "2026-11-01", "to": "2026-11-07"},
    )
    v2 = registry.register(Ranker(fitted(2), version="x"), metrics={}, trained_on="two")
    assert v1.startswith(f"lr-{FEATURE_VERSION}-") and len(v1) == len("lr-f1-") + 12
    assert len({default, v1, v2}) == 3
    assert registry.current() == default  # registering does not deploy

    listed = registry.list()
    assert [m["version"] for m in listed] == [v2, v1, default]  # newest first
    assert [m["current"] for m in listed] == [False, False, True]

    shown = registry.show(v1)
    assert shown["metrics"] == {"holdout_auc": 0.81}
    assert shown["trained_on"] == "test data one"
    assert shown["data_range"] == {"from": "2026-11-01", "to": "2026-11-07"}
    assert shown["feature_version"] == FEATURE_VERSION and shown["current"] is False
    sha = hashlib.sha256(Path(shown["path"]).read_bytes()).hexdigest()
    assert shown["sha256"] == sha and v1.endswith(sha[:12])

    assert registry.deploy(v1) == default
    assert registry.current() == v1 and registry.show(v1)["current"] is True
    assert registry.load().version == v1
    assert registry.deploy(v2) == v1
    assert registry.load(v1).version == v1  # any version loads by name

    assert registry.rollback() == v2 and registry.current() == v1
    assert registry.rollback() == v1 and registry.current() == default
    with pytest.raises(ValueError, match="nothing to roll back"):
        registry.rollback()
    assert registry.current() == default

    registry.deploy(v2)
    assert registry.rollback() == v2 and registry.current() == default  # v2 came after default
    actions = [e["action"] for e in registry.history()]
    assert actions == [
        "bootstrap",
        "deploy",
        "deploy",
        "rollback",
        "rollback",
        "deploy",
        "rollback",
    ]
    pointer = json.loads((registry.root / "current").read_text())
    assert pointer["version"] == default


def test_register_is_idempotent_for_identical_bytes(registry: Registry, tmp_path: Path) -> None:
    path = save_ranker(fitted(3), tmp_path / "m" / "ranker.skops", metrics={}, trained_on="t")
    first = registry.register(path, metrics={"a": 1}, trained_on="from a file")
    again = registry.register(str(path), metrics={"a": 2}, trained_on="again")
    assert first == again == load_ranker(path).version
    assert registry.show(first)["metrics"] == {"a": 1}  # the first registration stands
    assert sorted(p.name for p in (registry.root / "versions").iterdir()) == [first]
    assert not list(registry.root.glob(".staging-*"))


def test_unknown_version_is_a_clear_key_error(registry: Registry) -> None:
    for call in (registry.show, registry.deploy, registry.load):
        with pytest.raises(KeyError, match="unknown model version 'lr-f1-nope'"):
            call("lr-f1-nope")
    with pytest.raises(KeyError):
        registry.show("../../etc")


def _tampered_versions(registry: Registry) -> dict[str, str]:
    """Registered versions whose files were then broken in the ways deploy must catch."""
    out = {}
    corrupt = registry.register(fitted(4), metrics={}, trained_on="t")
    archive = registry.path(corrupt)
    archive.write_bytes(archive.read_bytes()[:200] + b"garbage" * 10)
    out["corrupt"] = corrupt

    wrong = registry.register(fitted(5), metrics={}, trained_on="t")
    meta_file = registry.path(wrong).with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    meta["feature_version"] = "f0"
    meta_file.write_text(json.dumps(meta))
    out["wrong_feature_version"] = wrong

    # a pickle dropped into the registry by hand, with metadata that matches its bytes
    folder = registry.root / "versions" / "lr-f1-pickle000000"
    folder.mkdir(parents=True)
    data = pickle.dumps(fitted(6))
    (folder / "ranker.skops").write_bytes(data)
    (folder / "ranker.json").write_text(
        json.dumps({"feature_version": FEATURE_VERSION, "sha256": hashlib.sha256(data).hexdigest()})
    )
    out["pickle"] = folder.name

    # an archive without a recorded sha256
    unsigned = registry.register(fitted(7), metrics={}, trained_on="t")
    meta_file = registry.path(unsigned).with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    del meta["sha256"]
    meta_file.write_text(json.dumps(meta))
    out["unsigned"] = unsigned
    return out


def test_deploy_refuses_models_that_do_not_load_and_keeps_current(registry: Registry) -> None:
    good = registry.register(fitted(8), metrics={}, trained_on="t")
    registry.deploy(good)
    history = registry.history()
    for kind, version in _tampered_versions(registry).items():
        with pytest.raises(ValueError, match=f"model {version} refused") as info:
            registry.deploy(version)
        assert "\n" not in str(info.value), kind
        assert registry.current() == good, kind
    assert registry.history() == history
    assert registry.load().version == good


def test_register_refuses_foreign_files(registry: Registry, tmp_path: Path) -> None:
    foreign = tmp_path / "model.skops"
    foreign.write_bytes(pickle.dumps(fitted(9)))
    with pytest.raises(ValueError, match="refused"):
        registry.register(foreign, metrics={}, trained_on="a pickle")
    with pytest.raises(FileNotFoundError):
        registry.register(tmp_path / "missing.skops", metrics={}, trained_on="nothing")
    assert not (registry.root / "versions").exists() or not any(
        (registry.root / "versions").iterdir()
    )


def test_rollback_refuses_a_target_that_no_longer_loads(registry: Registry) -> None:
    v1 = registry.register(fitted(10), metrics={}, trained_on="t")
    v2 = registry.register(fitted(11), metrics={}, trained_on="t")
    registry.deploy(v1)
    registry.deploy(v2)
    registry.path(v1).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="refused"):
        registry.rollback()
    assert registry.current() == v2


def test_concurrent_deploys_leave_a_valid_pointer(registry: Registry) -> None:
    versions = [registry.register(fitted(20 + i), metrics={}, trained_on="t") for i in range(2)]
    registry.current()
    errors: list[BaseException] = []

    def deployer(order: list[str]) -> None:
        try:
            for _ in range(15):
                for version in order:
                    other = Registry(registry.root)  # as another process would
                    other.deploy(version)
                    assert json.loads((registry.root / "current").read_text())["version"]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=deployer, args=(versions,)),
        threading.Thread(target=deployer, args=(versions[::-1],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pointer = json.loads((registry.root / "current").read_text())
    assert pointer["version"] in versions
    assert registry.load().version == pointer["version"]
    history = registry.history()
    lines = (registry.root / "history.jsonl").read_text().splitlines()
    assert len(lines) == len(history)  # no torn or interleaved lines
    # each deploy's `previous` is the version the entry before it deployed
    for before, after in zip(history, history[1:], strict=False):
        assert after["previous"] == before["version"]
    assert history[-1]["version"] == pointer["version"]
    assert not list(registry.root.glob(".current.*"))


def test_cli_model_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ops.cli import app

    runner = CliRunner()
    model_dir = tmp_path / "models"
    registry = Registry(model_dir)
    version = registry.register(fitted(30), metrics={"holdout_auc": 0.8}, trained_on="cli test")
    args = ["--model-dir", str(model_dir)]

    listed = runner.invoke(app, ["model", "list", *args])
    assert listed.exit_code == 0, listed.output
    assert version in listed.output and f"* {default_version()}" in listed.output

    deployed = runner.invoke(app, ["model", "deploy", version, *args])
    assert deployed.exit_code == 0, deployed.output
    assert version in deployed.output and default_version() in deployed.output
    assert registry.current() == version

    shown = runner.invoke(app, ["model", "show", version, *args])
    assert shown.exit_code == 0 and json.loads(shown.output)["current"] is True

    unknown = runner.invoke(app, ["model", "deploy", "lr-f1-nope", *args])
    assert unknown.exit_code == 2 and "unknown model version" in unknown.output

    rolled = runner.invoke(app, ["model", "rollback", *args])
    assert rolled.exit_code == 0 and registry.current() == default_version()
    again = runner.invoke(app, ["model", "rollback", *args])
    assert again.exit_code == 2 and "nothing to roll back" in again.output
