"""On the running cluster: the fan-out workers log each campaign send with the live policy's
propensity, and `POST /v1/models/{v}/deploy?require_lift=true` refuses a candidate whose
off-policy lower bound on the logged sends does not beat the live rate (422, field
`require_lift`), leaving the deployed version as it was."""

from __future__ import annotations

import copy
import uuid

import polars as pl
import pytest

from models.ranker import load_ranker
from models.registry import Registry
from pipelines import feedback_log
from tests.cluster.test_api import fields_of
from tests.cluster.test_campaigns import campaign_body, import_cohort, wait_campaign
from tests.cluster.test_dead_letters import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(stack, tmp_path_factory) -> str:
    name = f"o{uuid.uuid4().hex[:8]}"
    import_cohort(stack, name, 1_000, 13, tmp_path_factory.mktemp("pop"))
    return name


def test_sends_carry_propensities_and_a_worse_model_is_refused(stack, api, cohort):
    cid = f"ope-{uuid.uuid4().hex[:8]}"
    body = campaign_body(cohort, cid, channels=["inbox"], audience_limit=300, exploration=0.5)
    assert api.post("/v1/campaigns", json=body).status_code == 202
    assert wait_campaign(api, cid, timeout_s=120)["selected"] == 300
    sends = feedback_log.read(stack.settings.feedback_root, "sends").filter(
        pl.col("campaign_id") == cid
    )
    assert sends.height == 300
    assert sends["propensity"].is_between(0.0, 1.0, closed="right").all()
    assert set(sends["audience"]) == {"rank", "exploration"}
    # no feedback yet: the model's choice has 1 − ε + ε/3, any other variant ε/3
    assert set(sends["propensity"].round(9)) <= {round(0.5 + 0.5 / 3, 9), round(0.5 / 3, 9)}

    # opens for the model's own choices: the live policy looks good, its negation does not
    chosen = sends.filter(pl.col("audience") == "rank").head(60)
    for user in chosen["user_id"]:
        opened = {"notification_id": f"{cid}~{user}", "user_id": user, "action": "opened"}
        assert api.post("/v1/feedback", json=opened).status_code == 200

    def exported() -> list[bool]:
        rows = feedback_log.training_rows(stack.settings.feedback_root)
        mine = rows.filter(pl.col("campaign_id") == cid)
        return [True] if mine.height and mine["opened"].sum() == chosen.height else []

    wait_for(exported, timeout_s=60)

    registry = Registry(stack.settings.models_root)
    current = api.get("/v1/models").json()["current"]
    worse = copy.deepcopy(load_ranker().model)
    worse.coef_ = -worse.coef_
    bad = registry.register(worse, metrics={}, trained_on="negated, for require_lift")
    refused = api.post(f"/v1/models/{bad}/deploy", params={"require_lift": "true"})
    reason = fields_of(refused, 422)["require_lift"]
    assert "lower bound" in reason and "live" in reason, reason
    assert api.get("/v1/models").json()["current"] == current
