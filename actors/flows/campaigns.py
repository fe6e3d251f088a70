"""The campaign runner: routers take due campaigns (leased, like retries) one at a time and
fan them out through the fan-out worker pool.

A campaign is planned per shard in the pool (`FanoutWorker.plan`: segment → eligibility →
ranker → variant), then the router keeps the global top `audience_limit` and streams each
shard's deliveries from its worker (`FanoutWorker.render`, a Ray streaming generator held
back at `fanout_in_flight` batches), sending them batch by batch through the delivery
step's marketing path. The lease is renewed while it runs; finished shards are recorded,
so a campaign resumed after a crash only redoes the rest, and deliveries already recorded
are skipped. A cancelled campaign stops between two batches; its deliveries still in the
retry set are dropped by the delivery step when they come due.

A fan-out that fails resumes after its lease (Redis or an actor may be back by then); one
that failed `campaign_max_failures` times is marked failed with its error. One that can
never render — a variant names a template that does not exist, or its variables do not
fill it (`campaigns.variant_templates`, checked before anything is planned) — is marked
failed at once with that reason: running it again would not change the answer.

The templates its variants name travel with the campaign to the workers (`templates` in
the spec they get, never in the stored one): one snapshot of the router's cache per run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

import polars as pl
import ray

from actors.fanout_pool import FanoutPool
from actors.flows.base import Flow
from actors.flows.delivery import DeliveryStep
from actors.flows.shards import Shards
from cluster.names import fanout_name
from cluster.state.campaigns import CampaignStore
from cluster.state.templates import TemplateCache, TemplateStore
from pipelines import campaigns
from pipelines.templates import Template, cache

log = logging.getLogger("herald.router")


@dataclass(eq=False)
class CampaignRunner(Flow):
    store: CampaignStore
    pool: FanoutPool
    shards: Shards
    delivery: DeliveryStep
    # The router's cache (shared by its flows); None: one of the runner's own, same store.
    templates: TemplateCache[Template] | None = None

    def __post_init__(self) -> None:
        if self.templates is None:
            self.templates = cache(TemplateStore(self.settings, self.store.redis))

    async def run(self) -> None:
        """Take due campaigns one at a time and fan them out, for ever."""
        while True:
            try:
                due = await self.store.take_due(1)
                if not due:
                    await asyncio.sleep(0.5)
                    continue
                for campaign_id in due:
                    try:
                        await self.run_one(campaign_id)
                    except asyncio.CancelledError:
                        raise
                    except campaigns.CampaignRefused as exc:
                        await self._refused(campaign_id, exc)
                    except Exception as exc:
                        log.exception(
                            "router: campaign %s fan-out failed",
                            campaign_id,
                            extra={"campaign_id": campaign_id},
                        )
                        await self._failed(campaign_id, exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router: taking due campaigns failed; retrying")
                await asyncio.sleep(1.0)

    async def _failed(self, campaign_id: str, error: Exception) -> None:
        """Count the failure; give the campaign up after `campaign_max_failures`, so one
        that can never run does not come back forever."""
        try:
            failures = await self.store.record_failure(campaign_id, error)
            if failures >= self.settings.campaigns.max_failures:
                await self.store.give_up(campaign_id)
        except Exception:  # noqa: BLE001 - Redis itself may be what failed
            log.warning("router: could not record campaign %s's failure", campaign_id)
        await asyncio.sleep(1.0)

    async def _refused(self, campaign_id: str, error: campaigns.CampaignRefused) -> None:
        """Mark a campaign that can never render failed now, its reason as the error."""
        log.warning(
            "router: campaign %s refused: %s",
            campaign_id,
            error,
            extra={"campaign_id": campaign_id},
        )
        try:
            await self.store.record_failure(campaign_id, error)
            await self.store.give_up(campaign_id)
        except Exception:  # noqa: BLE001 - Redis itself may be down: it resumes, fails again
            log.warning("router: could not record campaign %s's refusal", campaign_id)

    async def run_one(self, campaign_id: str) -> None:
        """Fan one campaign out under its lease (renewed, with the pool's in-use stamp)."""
        spec = await self.store.spec(campaign_id)
        state = await self.store.state(campaign_id)
        if spec is None or state in ("done", "cancelled"):
            await self.store.drop_due(campaign_id)
            return

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.campaigns.lease_s / 3)
                await self.store.renew(campaign_id)
                await self.pool.touch()

        keeper = asyncio.create_task(renew())
        try:
            await self._fan_out(campaign_id, spec)
        finally:
            keeper.cancel()

    async def _fan_out(self, campaign_id: str, spec: dict) -> None:
        """Plan every shard not done yet in the worker pool, keep the global top-k, then
        send each shard's deliveries as its worker streams them."""
        found = campaigns.variant_templates(spec, await self.templates.templates())
        spec = {**spec, "templates": {t: v.model_dump(mode="json") for t, v in found.items()}}
        version = await self.shards.handle(fanout_name(0)).model_version.remote()
        version, resumed = await self.store.start(campaign_id, version)
        now = time.time()
        done = await self.store.shards_done(campaign_id)
        todo = [s for s in range(self.settings.topology.shards) if s not in done]
        pool = await self.pool.workers_for(len(todo))
        worker_of = {s: pool[i % len(pool)] for i, s in enumerate(todo)}
        snapshots = await asyncio.gather(*[self.shards.shard(s).snapshot.remote() for s in todo])
        planned = [(worker_of[s], s, snap) for s, snap in zip(todo, snapshots, strict=True)]
        chosen = await self._plan(campaign_id, spec, now, resumed, version, planned)
        accepted_at = now  # a campaign's deliveries count their latency from its start
        for worker, shard, snapshot in planned:
            mine = chosen.filter(pl.col("shard") == shard).drop("shard")
            streamed = await self._stream_shard(
                campaign_id, worker, spec, snapshot, mine, accepted_at, version
            )
            if not streamed:
                return  # cancelled
            await self.store.shard_done(campaign_id, shard)
        await self.store.finish(campaign_id)
        self.counts["campaigns"] += 1

    async def _plan(
        self,
        campaign_id: str,
        spec: dict,
        now: float,
        resumed: bool,
        version: str,
        shards: list[tuple[ray.actor.ActorHandle, int, dict]],
    ) -> pl.DataFrame:
        """Every (worker, shard, snapshot)'s plan at once; each shard's counters recorded
        (kept from its first plan); the chosen users of all shards, tagged with their
        shard, cut to the campaign's global top `audience_limit`."""
        stats = await self.store.variant_stats(
            campaign_id, [v["variant_id"] for v in spec["variants"]]
        )
        plans = await asyncio.gather(
            *[w.plan.remote(spec, snap, now, stats, resumed, version) for w, _, snap in shards]
        )
        for (_, shard, _), (_, counts) in zip(shards, plans, strict=True):
            shard_only = {k: v for k, v in counts.items() if k not in ("selected", "deferred")}
            await self.store.record_plan(campaign_id, shard, shard_only)
        chosen = pl.concat(
            [
                pl.from_arrow(table).with_columns(shard=pl.lit(shard, dtype=pl.Int32))
                for (_, shard, _), (table, _) in zip(shards, plans, strict=True)
            ],
            how="vertical_relaxed",
        )
        chosen = campaigns.top(chosen, spec.get("audience_limit"))
        if not resumed:  # a resumed campaign re-plans only who is left
            await self.store.record_selection(
                campaign_id, chosen.height, int(chosen["send_after"].is_not_null().sum())
            )
        return chosen

    async def _stream_shard(
        self,
        campaign_id: str,
        worker: ray.actor.ActorHandle,
        spec: dict,
        snapshot: dict,
        chosen: pl.DataFrame,
        accepted_at: float,
        version: str,
    ) -> bool:
        """Send one shard's deliveries as its worker streams them; False when cancelled."""
        if chosen.height == 0:
            return True
        stream = worker.render.options(
            num_returns="streaming",
            _generator_backpressure_num_objects=self.settings.fanout.in_flight,
        ).remote(spec, snapshot, chosen.to_arrow(), accepted_at, version)
        meta = functools.partial(campaigns.meta, campaign_id=campaign_id)
        reached = functools.partial(self.store.record_reached, campaign_id)
        ttl_s = campaigns.ttl_until_end(spec.get("ends_at"))
        async for ref in stream:
            if await self.store.state(campaign_id) == "cancelled":
                return False
            # every batch is checked against the delivery state: a resumed campaign may
            # stream deliveries its previous run already recorded
            await self.delivery.deliver_marketing(
                pl.from_arrow(await ref), meta, reached, ttl_s=ttl_s
            )
        return True
