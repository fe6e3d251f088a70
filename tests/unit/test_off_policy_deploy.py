"""A candidate weighed on the logged sends before it ships: `herald model evaluate VERSION
--off-policy --since 7d` prints its estimates beside the live rate, and a deploy with
`require_lift` is refused (422, field `require_lift`) when its lower bound does not beat
the live policy. No cluster: the registry, the feedback log on disk and the same
`ModelControl` the Serve app calls."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from api.errors import ApiError
from api.models import ModelControl
from models.ranker import load_ranker
from models.registry import Registry
from models.train_default import VARIANTS
from models.training_data import simulate_feedback_log, synthetic_population
from ops.cli import app
from pipelines import feedback_log


@pytest.fixture(scope="module")
def feedback(tmp_path_factory) -> Path:
    """A week's log in the cluster's layout: uniformly random variants (the live policy,
    propensity 1/5), opens and clicks drawn from the synthetic world."""
    root = Path(tmp_path_factory.mktemp("feedback"))
    start = time.time() - 2 * 86_400
    log = simulate_feedback_log(synthetic_population(20_000, 8), seed=8, days=1, start=start)
    slot = (pl.col("sent_at") // 3600).cast(pl.Int64).cast(pl.String)
    sends = log.with_columns(
        campaign_id=pl.col("category") + "-" + slot,
        variant_id=pl.col("style"),
        propensity=pl.lit(1.0 / VARIANTS.height),
        propensity_se=pl.lit(0.0),
        audience=pl.lit("exploration"),
    ).with_columns(notification_id=pl.col("campaign_id") + "~" + pl.col("user_id"))
    feedback_log.write(sends.drop("opened", "clicked"), root, "sends", "sent_at")
    actions = sends.filter(pl.col("opened")).select(
        "notification_id", "user_id", "campaign_id", "variant_id",
        action=pl.when(pl.col("clicked")).then(pl.lit("clicked")).otherwise(pl.lit("opened")),
        at=pl.col("sent_at") + 60.0,
    )  # fmt: skip
    feedback_log.write(actions, root, "actions", "at")
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Registry, str, str]:
    """The shipped ranker (good on this world) and its negation (worse than random)."""
    registry = Registry(Path(tmp_path_factory.mktemp("models")))
    good = registry.register(load_ranker().model, metrics={}, trained_on="shipped")
    worse = copy.deepcopy(load_ranker().model)
    worse.coef_ = -worse.coef_
    bad = registry.register(worse, metrics={}, trained_on="negated")
    return registry, good, bad


async def _no_workers() -> list[str]:
    return []


def test_deploy_requiring_lift_refuses_a_worse_model(feedback, registry):
    reg, good, bad = registry
    control = ModelControl(reg, _no_workers, feedback)
    before = reg.current()
    with pytest.raises(ApiError) as refused:
        asyncio.run(control.deploy(bad, require_lift=True))
    error = refused.value
    assert error.status == 422 and error.code == "no_lift"
    assert error.fields[0]["field"] == "require_lift"
    assert "lower bound" in error.fields[0]["reason"] and "live" in error.fields[0]["reason"]
    assert reg.current() == before  # nothing moved
    deployed = asyncio.run(control.deploy(good, require_lift=True))
    assert deployed.current == good == reg.current()
    asyncio.run(control.deploy(bad))  # without the option, the operator's word stands
    assert reg.current() == bad


def test_deploy_requiring_lift_without_a_log_is_refused(tmp_path, registry):
    reg, good, _ = registry
    control = ModelControl(reg, _no_workers, tmp_path / "empty")
    with pytest.raises(ApiError) as refused:
        asyncio.run(control.deploy(good, require_lift=True))
    assert refused.value.status == 422 and "no sends logged" in refused.value.fields[0]["reason"]


def test_cli_off_policy_prints_estimates_beside_the_live_rate(feedback, registry, tmp_path):
    reg, good, _ = registry
    result = CliRunner().invoke(
        app,
        ["model", "evaluate", good, "--off-policy", "--since", "7d",
         "--feedback", str(feedback), "--model-dir", str(reg.root), "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "opened per send: live" in result.output and "dr" in result.output
    assert (tmp_path / "off_policy.json").is_file()
    stale = CliRunner().invoke(
        app,
        ["model", "evaluate", good, "--off-policy", "--since", "1h",
         "--feedback", str(feedback), "--model-dir", str(reg.root)],
    )  # fmt: skip
    assert stale.exit_code == 2 and "no sends logged" in stale.output


def test_a_log_without_opens_shows_no_lift(tmp_path, feedback, registry):
    """Sends but no actions yet (the export runs every few seconds): refused, not waved
    through on noise."""
    reg, good, _ = registry
    root = tmp_path / "no-actions"
    sends = feedback_log.read(feedback, "sends").drop("day")
    feedback_log.write(sends, root, "sends", "sent_at")
    control = ModelControl(reg, _no_workers, root)
    with pytest.raises(ApiError) as refused:
        asyncio.run(control.deploy(good, require_lift=True))
    assert "no opened among" in refused.value.fields[0]["reason"]


def test_cli_deploy_requiring_lift(feedback, registry):
    reg, good, bad = registry
    common = ["--require-lift", "--feedback", str(feedback), "--model-dir", str(reg.root)]
    reg.deploy(good)
    refused = CliRunner().invoke(app, ["model", "deploy", bad, *common])
    assert refused.exit_code == 2 and "refused" in refused.output, refused.output
    assert reg.current() == good
    reg.deploy(bad)
    deployed = CliRunner().invoke(app, ["model", "deploy", good, *common])
    assert deployed.exit_code == 0 and reg.current() == good, deployed.output
