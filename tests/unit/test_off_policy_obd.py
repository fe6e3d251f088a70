"""The Open Bandit Dataset check of the off-policy estimators (the OBP paper's own
evaluation of estimators): from the uniform-random policy's logged ZOZOTOWN impressions,
estimate the click rate Bernoulli Thompson Sampling would get and compare with the rate BTS
had in its own log. Needs the dataset files of the `obp` wheel (`pip install --no-deps
obp==0.4.1`, which `make install` does) or OBD_DIR."""

from __future__ import annotations

import numpy as np
import pytest

from models import obd

try:
    obd.root().joinpath("random", "all", "all.csv").stat()
except (FileNotFoundError, OSError) as exc:  # pragma: no cover - CI installs the data
    pytest.skip(f"Open Bandit Dataset not installed: {exc}", allow_module_level=True)


def test_bts_distribution_is_a_ranking():
    dist = obd.bts_action_dist("all", sims=20_000)
    assert dist.shape == (80, obd.LEN_LIST)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)  # one item per position
    assert np.all(dist.sum(axis=1) <= 1.0 + 1e-12)  # an item takes one position at most


@pytest.mark.parametrize("campaign", ["all", "men"])
def test_estimators_recover_bts_click_rate_from_random_logs(campaign: str):
    result = obd.estimator_check(campaign, draws=1_000)
    assert result["n_random"] == result["n_bts"] == 10_000
    for name in ("ips", "snips", "dr"):
        e = result[name]
        assert e["low"] < e["value"] < e["high"], (name, e)
        assert e["truth_inside"], (campaign, name, e, result["obd_bts_true_ctr"])
        assert e["relative_error"] < 0.6  # 38-46 clicks per 10,000: wide, but not blind


def test_herald_ranker_on_obd_is_a_valid_policy_and_reported():
    from models.obd_ranker import policy_from_scores, ranker_on_obd

    logits = np.random.default_rng(0).normal(size=(50, 80))
    pi = policy_from_scores(logits, np.arange(50) % 3)
    np.testing.assert_allclose(pi.sum(axis=1), 1.0)
    result = ranker_on_obd("men", draws=200)
    assert result["train_rows"] == result["test_rows"] == 5_000
    for name in ("ips", "snips", "dr"):
        e = result["herald_ranker"][name]
        assert e["low"] <= e["value"] <= e["high"]
