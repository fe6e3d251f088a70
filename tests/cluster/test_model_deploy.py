"""Zero-downtime model deploys: a new ranker version goes live in every fan-out worker while
events and campaigns keep coming, no request fails, a campaign keeps the version it started
with, rollback is one call, and a model that does not fit the contract is refused."""

from __future__ import annotations

import copy
import threading
import time
import uuid

import httpx
import polars as pl
import pytest

from models.features import FEATURE_COLUMNS
from models.ranker import load_ranker
from models.registry import Registry
from pipelines import feedback_log
from tests.cluster.test_api import fields_of
from tests.cluster.test_campaigns import campaign_body, import_cohort, wait_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(stack, tmp_path_factory) -> str:
    name = f"m{uuid.uuid4().hex[:8]}"
    import_cohort(stack, name, 2_000, 9, tmp_path_factory.mktemp("pop"))
    return name


def candidate_version(registry: Registry) -> str:
    """A second model: the default's coefficients nudged (a stand-in for a retrained one)."""
    model = copy.deepcopy(load_ranker().model)
    model.coef_ = model.coef_ * 1.05
    return registry.register(model, metrics={"note": "test candidate"}, trained_on="test")


class Traffic(threading.Thread):
    """Keeps posting order updates and small campaigns; remembers every failure."""

    def __init__(self, url: str, cohort: str) -> None:
        super().__init__(daemon=True)
        self.url, self.cohort = url, cohort
        self.stop = threading.Event()
        self.requests = 0
        self.failures: list[str] = []
        self.campaigns: list[tuple[str, float]] = []

    def run(self) -> None:
        headers = {"Authorization": "Bearer test-admin"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                events = [
                    {"event_id": f"dep-{uuid.uuid4().hex}", "type": "order.updated",
                     "user_id": f"{self.cohort}-s{j}", "order_id": "o1", "status": "paid"}
                    for j in range(20)
                ]  # fmt: skip
                self._check(client.post("/v1/events", json={"events": events}), 202)
                if i % 3 == 0:
                    cid = f"dep-{uuid.uuid4().hex[:12]}"
                    body = campaign_body(self.cohort, cid, channels=["inbox"], audience_limit=20)
                    self._check(client.post("/v1/campaigns", json=body), 202)
                    self.campaigns.append((cid, time.time()))
                time.sleep(0.05)

    def _check(self, answer: httpx.Response, status: int) -> None:
        self.requests += 1
        if answer.status_code != status:
            self.failures.append(f"{answer.request.url.path} {answer.status_code} {answer.text}")


def test_deploy_and_rollback_under_load(stack, api, cohort):
    registry = Registry(stack.settings.models_root)
    before = api.get("/v1/models").json()["current"]
    candidate = candidate_version(registry)
    assert candidate != before
    listed = {m["version"] for m in api.get("/v1/models").json()["models"]}
    assert {before, candidate} <= listed

    # A campaign running on the old version when the new one is deployed.
    early = f"early-{uuid.uuid4().hex[:8]}"
    body = campaign_body(cohort, early, channels=["inbox"], audience_limit=200)
    assert api.post("/v1/campaigns", json=body).status_code == 202

    traffic = Traffic(stack.api_url, cohort)
    traffic.start()
    try:
        time.sleep(2)
        deployed = api.post(f"/v1/models/{candidate}/deploy")
        assert deployed.status_code == 200, deployed.text
        switch = deployed.json()
        switched_at = time.time()
        assert switch["previous"] == before and switch["current"] == candidate
        assert set(switch["workers"]) == {candidate}
        print(f"\ndeploy: every worker switched {switch['took_s'] * 1000:.0f} ms after the request")
        time.sleep(3)
        rolled = api.post("/v1/models/rollback")
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["current"] == before
        assert set(rolled.json()["workers"]) == {before}
        rolled_at = time.time()
        time.sleep(2)
    finally:
        traffic.stop.set()
        traffic.join(timeout=30)
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.requests > 20
    assert api.get("/v1/models").json()["current"] == before

    # Every campaign ran on one version: the old one before the deploy, the candidate for
    # those started between deploy and rollback, and it says which in its status.
    assert wait_campaign(api, early, timeout_s=120)["model_version"] == before
    versions = {}
    for cid, _ in traffic.campaigns:
        status = wait_campaign(api, cid, timeout_s=120)
        versions[cid] = (status["model_version"], status["started_at"])
    assert {v for v, _ in versions.values()} <= {before, candidate}
    assert any(v == candidate for v, _ in versions.values()), versions
    for version, started in versions.values():
        if started > switched_at + 1 and started < rolled_at - 1:
            assert version == candidate
        if started > rolled_at + 1:
            assert version == before


def test_a_model_that_does_not_fit_is_refused(stack, api):
    registry = Registry(stack.settings.models_root)
    current = api.get("/v1/models").json()["current"]
    # A registered version whose file was replaced by something that is not a skops model.
    version = candidate_version(registry)
    registry.path(version).write_bytes(b"not a model")
    refused = api.post(f"/v1/models/{version}/deploy")
    assert "version" in fields_of(refused, 422)
    assert "version" in fields_of(api.post("/v1/models/no-such-version/deploy"), 404)
    assert api.get("/v1/models").json()["current"] == current
    ingest_only = {"Authorization": "Bearer test-ingest"}
    assert api.post(f"/v1/models/{current}/deploy", headers=ingest_only).status_code == 403


def test_shadow_mode_logs_and_does_not_act(stack, api, cohort):
    registry = Registry(stack.settings.models_root)
    current = api.get("/v1/models").json()["current"]
    # A shadow that disagrees: it prefers the urgent copy much more than the live model.
    model = copy.deepcopy(load_ranker().model)
    model.intercept_ = model.intercept_ + 0.5
    urgent = list(FEATURE_COLUMNS).index("style_urgent")
    model.coef_[0, urgent] += 3.0
    shadow = registry.register(model, metrics={"note": "shadow candidate"}, trained_on="test")
    answer = api.post(f"/v1/models/{shadow}/shadow")
    assert answer.status_code == 200, answer.text
    assert answer.json()["shadow"] == shadow and answer.json()["current"] == current
    try:
        cid = f"shadow-{uuid.uuid4().hex[:8]}"
        body = campaign_body(cohort, cid, channels=["inbox"], audience_limit=100)
        assert api.post("/v1/campaigns", json=body).status_code == 202
        status = wait_campaign(api, cid, timeout_s=120)
    finally:
        assert api.delete("/v1/models/shadow").json()["shadow"] is None
    # It did not act: the campaign ran on the current version, with its choices.
    assert status["model_version"] == current and status["selected"] == 100
    root = stack.settings.feedback_root
    sends = feedback_log.read(root, "sends").filter(pl.col("campaign_id") == cid)
    logged = feedback_log.read(root, "shadow").filter(pl.col("campaign_id") == cid)
    assert logged.height == sends.height == 100
    assert set(logged["shadow_version"]) == {shadow}
    joined = sends.join(logged, on="user_id")
    assert (joined["variant_id"] == joined["live_variant"]).all()
    assert set(sends["model_version"]) == {current}
    # ...and it did score: it picks "urgent" where the live model mostly does not.
    assert (logged["shadow_variant"] == "urgent").mean() > 0.9
    assert (logged["shadow_variant"] != logged["live_variant"]).any()
    assert logged["shadow_score"].is_between(0, 1).all()
