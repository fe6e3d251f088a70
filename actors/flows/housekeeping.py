"""Router 0's background loops: one of each is enough for the whole deployment, and a
restarted router 0 resumes them from what they keep in Redis.

- Feedback export: `POST /v1/feedback` actions move from their Redis stream
  (`cluster.state.feedback`) to the Parquet feedback log a batch at a time. The stream
  position is saved after the file is written, so a crash in between writes a batch twice —
  harmless, training counts any action once.
- Fan-out pool shrink: the workers grown for campaigns are removed once the pool is idle
  (`actors.fanout_pool`), when the pool may grow at all.
- Sender scaling: each lane's push senders sized to its backlog (`actors.sender_pool`),
  when a lane may have more than one replica.
- Dead-token sweep: every `DEAD_SWEEP_S`, each shard deletes the dead tokens it kept for
  `settings.protection.dead_token_keep_days` (`UserShard.sweep_dead_devices`).

A failed round is logged and tried again; none of them ever stops the router.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass

from actors.fanout_pool import FanoutPool
from actors.flows.base import Flow
from actors.flows.shards import Shards
from actors.sender_pool import SenderPool
from cluster.state.feedback import FeedbackStore
from pipelines import feedback_log

log = logging.getLogger("herald.router")
DEAD_SWEEP_S = 3600.0  # keep days are counted in days: an hourly sweep is exact enough


@dataclass(eq=False)
class Housekeeping(Flow):
    feedback: FeedbackStore
    pool: FanoutPool
    senders: SenderPool
    shards: Shards | None = None  # the router's, or handles of its own

    def loops(self) -> list[Coroutine]:
        """The loops this deployment needs (router 0 runs them)."""
        loops = [self.export_feedback(), self.sweep_dead_tokens()]
        if self.settings.pool_max_workers > self.settings.fanout.workers:
            loops.append(self.shrink_pool())
        if self.settings.senders.replicas_max > 1:
            loops.append(self.scale_senders())
        return loops

    async def export_feedback(self) -> None:
        """Move feedback actions to the Parquet log, a batch at a time, for ever."""
        while True:
            try:
                rows, position = await self.feedback.next_batch(feedback_log.ACTION_SCHEMA)
                if rows.height == 0:
                    await asyncio.sleep(self.settings.feedback.export_s)
                    continue
                await asyncio.to_thread(
                    feedback_log.write, rows, self.settings.feedback_root, "actions", "at"
                )
                await self.feedback.mark_exported(position)
                self.counts["feedback_exported"] += rows.height
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router: feedback export failed; retrying")
                await asyncio.sleep(5)

    async def shrink_pool(self) -> None:
        """Remove the fan-out workers grown for campaigns once idle."""
        while True:
            await asyncio.sleep(min(self.settings.fanout.idle_s / 4, 30.0))
            try:
                await self.pool.shrink_if_idle()
            except Exception:  # noqa: BLE001 - next round tries again
                log.exception("router: shrinking the fan-out pool failed; retrying")

    async def scale_senders(self) -> None:
        """Size each lane's push senders to its backlog."""
        while True:
            await asyncio.sleep(self.settings.senders.scale_interval_s)
            try:
                await self.senders.scale()
            except Exception:  # noqa: BLE001 - next round tries again
                log.exception("router: sizing the sender pool failed; retrying")

    async def sweep_dead_tokens(self) -> None:
        """Each shard deletes its expired dead tokens: at start, then every DEAD_SWEEP_S."""
        shards = self.shards or Shards(self.settings)
        while True:
            try:
                calls = [
                    shards.shard(index).sweep_dead_devices.remote()
                    for index in range(self.settings.topology.shards)
                ]
                deleted = sum(await asyncio.gather(*calls))
                if deleted:
                    self.counts["dead_tokens_deleted"] += deleted
            except Exception:  # noqa: BLE001 - next round tries again
                log.exception("router: sweeping dead tokens failed; retrying")
            await asyncio.sleep(DEAD_SWEEP_S)
