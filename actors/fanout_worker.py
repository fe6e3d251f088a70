"""FanoutWorker: plans a campaign over one shard's snapshot and streams its deliveries.

A pool of these (`HERALD_FANOUT_WORKERS`) does the heavy columnar work of campaigns, away
from the routers' event loops: the snapshot comes zero-copy from the object store (the
shard `ray.put` it once per version), the plan is polars and numpy in a thread, and the
deliveries leave as Arrow batches through a Ray streaming generator whose backpressure
(`fanout_in_flight` batches not yet taken by the router) keeps memory flat for any
audience size.

Marketing counts per user and day live in Redis (`cluster.state.frequency`), read here
before eligibility and incremented by the router's delivery step after each batch is
recorded; a resumed campaign also reads who it already reached (`CampaignStore`).

Template variants render from the templates the router checked and put in the campaign as
it hands it over (`campaign["templates"]`, one snapshot for every shard of a run), so a
worker reads no template store; each delivery reads in its user's profile locale, the
snapshot having no device locale (`pipelines.campaigns`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import ray

from cluster import metrics
from cluster.logs import configure_logging
from cluster.settings import HeraldSettings
from cluster.state.campaigns import SEPARATOR, CampaignStore
from cluster.state.clients import async_client
from cluster.state.frequency import FrequencyCounters
from models.ranker import Ranker
from models.registry import Registry
from pipelines import campaigns, feedback_log
from pipelines.device_hygiene import skipped
from pipelines.eligibility import local_day
from pipelines.templates import parse


class FanoutWorker:
    """Plain class; `actors.bootstrap` wraps it with `ray.remote` and its options."""

    def __init__(self, settings: HeraldSettings, index: int) -> None:
        configure_logging(settings)
        self.settings = settings
        self.index = index
        redis = async_client(settings)
        self.frequency = FrequencyCounters(settings, redis)
        self.campaign_store = CampaignStore(settings, redis)
        self.registry = Registry(settings.models_root)
        self.rankers: dict[str, Ranker] = {}
        self.current = self.registry.current()
        self._ranker(self.current)
        self.shadow = self.registry.shadow()
        if self.shadow is not None:
            self._ranker(self.shadow)
        metrics.set_model_in_use(index, self.current, None)

    def _ranker(self, version: str) -> Ranker:
        """Every version this worker was asked for stays loaded: a campaign finishes on the
        version it started with, whatever is deployed meanwhile."""
        if version not in self.rankers:
            self.rankers[version] = self.registry.load(version)
        return self.rankers[version]

    async def ping(self) -> dict[str, Any]:
        return {"worker": self.index, "model_version": self.current, "shadow": self.shadow}

    async def model_version(self) -> str:
        return self.current

    async def reload(self) -> str:
        """Switch new campaigns to the registry's current version (loaded before the switch,
        so no plan ever waits on a load or sees a half-loaded model), and pick up the shadow
        version, if any."""
        version = await asyncio.to_thread(self.registry.current)
        await asyncio.to_thread(self._ranker, version)
        shadow = await asyncio.to_thread(self.registry.shadow)
        if shadow is not None:
            await asyncio.to_thread(self._ranker, shadow)
        self.shadow = shadow
        previous, self.current = self.current, version
        metrics.set_model_in_use(self.index, version, previous)
        return version

    async def plan(
        self,
        campaign: dict[str, Any],
        snapshot: dict[str, Any],
        now: float,
        variant_stats: list[list[int]] | None,
        resumed: bool,
        model_version: str,
    ) -> tuple[pa.Table, dict[str, int]]:
        """The shard's chosen users (`campaigns.CHOSEN_COLUMNS`) and its counters, ranked by
        the campaign's own model version."""
        ranker = await asyncio.to_thread(self._ranker, model_version)
        started = time.perf_counter()
        users = pl.from_arrow(await snapshot["users"])
        hit = await asyncio.to_thread(campaigns.targeted, users, campaign, now)
        days = hit.select("user_id", day=local_day(hit, now))
        sent_today = await self.frequency.sent_today(days)
        already = None
        if resumed:
            already = await self.campaign_store.already_sent(
                campaign["campaign_id"], hit["user_id"]
            )
        rng = np.random.default_rng()
        chosen, counts = await asyncio.to_thread(
            campaigns.plan,
            hit,
            campaign,
            now=now,
            ranker=ranker,
            variant_stats=variant_stats,
            rng=rng,
            sent_today=sent_today,
            already_sent=already,
        )
        counts = {"targeted": hit.height, **counts}
        stages = {k: v for k, v in counts.items() if k not in ("selected", "deferred")}
        metrics.record_plan(stages, time.perf_counter() - started, model_version)
        return chosen.to_arrow(), counts

    async def render(
        self,
        campaign: dict[str, Any],
        snapshot: dict[str, Any],
        chosen: pa.Table,
        accepted_at: float,
        model_version: str,
    ) -> AsyncIterator[pa.Table]:
        """Log the sends (features as scored) to the feedback log, then stream the
        deliveries of the chosen users in batches of about `batch_max_rows` rows (a
        user's pushes and inbox item stay in one batch), rendered `RENDER_CHUNK_USERS` users
        at a time. Called as a streaming generator: Ray holds it back when the router has
        `fanout_in_flight` batches it has not taken yet."""
        devices = pl.from_arrow(await snapshot["devices"])
        frame = pl.from_arrow(chosen)
        users = pl.from_arrow(await snapshot["users"])
        sent = feedback_log.sends(
            frame, users, campaign, model_version=model_version, now=accepted_at
        )
        await asyncio.to_thread(
            feedback_log.write, sent, self.settings.feedback_root, "sends", "sent_at"
        )
        if self.shadow is not None and self.shadow != model_version:
            await asyncio.to_thread(self._log_shadow, frame, users, campaign, accepted_at)
        devices = devices.join(frame.select("user_id"), on="user_id", how="semi")
        reached = users.join(frame.select("user_id"), on="user_id", how="semi")
        metrics.count_devices_skipped("stale", skipped(reached))  # as transactional sends
        shown = {tid: parse(t) for tid, t in campaign.get("templates", {}).items()}
        profiles = None  # only template variants read a locale
        if shown and "locale" in users.columns:
            profiles = users.select("user_id", "locale").join(frame, on="user_id", how="semi")
        for start in range(0, frame.height, campaigns.RENDER_CHUNK_USERS):
            part = frame.slice(start, campaigns.RENDER_CHUNK_USERS)
            rows = await asyncio.to_thread(
                campaigns.render,
                part,
                devices,
                campaign,
                accepted_at,
                templates=shown,
                profiles=profiles,
                default_locale=self.settings.content.default_locale,
            )
            for batch in campaigns.batches(rows, self.settings.topology.batch_max_rows):
                yield batch.to_arrow()

    def _log_shadow(
        self, chosen: pl.DataFrame, users: pl.DataFrame, campaign: dict[str, Any], now: float
    ) -> None:
        """Shadow mode: the shadow version scores the same users at the same moment; its
        choices are logged next to the live ones and never acted on."""
        shadow = self._ranker(self.shadow)
        rows = users.join(chosen.select("user_id"), on="user_id", how="semi")
        rows = chosen.select("user_id").join(rows, on="user_id", how="left")
        variants = campaigns.variants_frame(campaign)
        scores = shadow.score(rows, variants, category=campaign.get("category"), now=now)
        best = scores.argmax(axis=1) if rows.height else np.zeros(0, dtype=np.int64)
        logged = chosen.select(
            "user_id",
            live_variant="variant_id",
            live_score="score",
            notification_id=pl.lit(f"{campaign['campaign_id']}{SEPARATOR}") + pl.col("user_id"),
            campaign_id=pl.lit(campaign["campaign_id"]),
            shadow_version=pl.lit(self.shadow),
            sent_at=pl.lit(now, dtype=pl.Float64),
        ).with_columns(
            shadow_variant=variants["variant_id"].gather(best),
            shadow_score=pl.Series(scores[np.arange(rows.height), best], dtype=pl.Float64),
        )
        feedback_log.write(logged, self.settings.feedback_root, "shadow", "sent_at")


def snapshot_tables(snapshot: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both tables of a shard snapshot, for callers outside a worker (benchmarks, CLI)."""
    users, devices = ray.get([snapshot["users"], snapshot["devices"]])
    return pl.from_arrow(users), pl.from_arrow(devices)
