"""What every flow of one router shares: the deployment's settings and the router's
counters (`EventRouter.ping` reports them). Each flow is a dataclass of these plus the
parts it is composed of — stores, the delivery step, the shard calls — handed in by the
router, so a test can build one flow with stand-ins for the rest."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cluster.settings import HeraldSettings


@dataclass(eq=False)
class Flow:
    settings: HeraldSettings
    counts: Counter[str]
