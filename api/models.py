"""The admin model routes' work: registry changes, each followed by the reload that puts
the new version into every fan-out worker, and the errors a refused change answers.

Registry calls read and write files under a lock, so they run in a thread and never hold
the ingress's event loop. How workers are reloaded is handed in (`reload`): finding and
calling the fan-out workers is the actors' business, a layer above this one.

`deploy(version, require_lift=True)` first weighs the candidate on the sends the live policy
logged in the last `LIFT_WINDOW_S` (`models.off_policy_log`: doubly robust, 95 % bootstrap
interval, opens per send) and refuses it — 422 `no_lift`, field `require_lift`, the numbers
in the reason — unless its lower bound beats the live policy's observed rate: a worse
model is stopped before it ships, not after a week of campaigns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from api.errors import ApiError, not_found
from api.schemas import ModelDeployed, ModelList
from models.off_policy_log import evaluate_candidate, lift_verdict
from models.registry import Registry
from pipelines.feedback_log import logged_sends

LIFT_WINDOW_S = 7 * 86_400.0  # the logged sends a require_lift deploy is weighed on


def model_error(version: str, exc: Exception) -> ApiError:
    """A version the registry does not have is a 404; one that does not load or does not
    match the feature contract is a 422 that says why."""
    if isinstance(exc, KeyError):
        return not_found("model version", version, "version", "not in the registry")
    return ApiError(
        422,
        "model_refused",
        f"model {version!r} cannot be deployed",
        fields=[{"field": "version", "reason": str(exc)}],
    )


class ModelControl:
    def __init__(
        self,
        registry: Registry,
        reload: Callable[[], Awaitable[list[str]]],
        feedback_root: Path | None = None,
    ) -> None:
        self.registry = registry
        self.reload = reload
        self.feedback_root = feedback_root

    async def listing(self) -> ModelList:
        """Every version with its metrics, the deployed one and the shadow."""
        current = await asyncio.to_thread(self.registry.current)
        shadow = await asyncio.to_thread(self.registry.shadow)
        models = await asyncio.to_thread(self.registry.list)
        return ModelList(current=current, shadow=shadow, models=models)

    async def set_shadow(self, version: str | None) -> ModelList:
        """Score with `version` alongside the current model (None: stop), in every worker."""
        try:
            await asyncio.to_thread(self.registry.set_shadow, version)
        except (KeyError, ValueError) as exc:
            raise model_error(str(version), exc) from exc
        await self.reload()
        return await self.listing()

    async def deploy(self, version: str, *, require_lift: bool = False) -> ModelDeployed:
        started = time.perf_counter()
        if require_lift:
            await self.check_lift(version)
        try:
            previous = await asyncio.to_thread(self.registry.deploy, version)
        except (KeyError, ValueError) as exc:
            raise model_error(version, exc) from exc
        return await self._switched(previous, version, started)

    async def check_lift(self, version: str) -> dict:
        """The candidate's off-policy estimate on the logged sends; ApiError 422 when its
        lower bound does not beat the live rate, or when there is nothing to weigh it on."""
        try:
            ranker = await asyncio.to_thread(self.registry.load, version)
        except (KeyError, ValueError) as exc:
            raise model_error(version, exc) from exc
        try:
            result = await asyncio.to_thread(self._estimate, ranker)
        except (ValueError, OSError) as exc:
            raise _no_lift(f"cannot estimate the candidate's lift: {exc}") from exc
        reason = lift_verdict(result)
        if reason is not None:
            raise _no_lift(reason)
        return result

    def _estimate(self, ranker) -> dict:
        if self.feedback_root is None:
            raise ValueError("no feedback log configured")
        rows = logged_sends(self.feedback_root, since_s=LIFT_WINDOW_S)
        if rows.height == 0:
            raise ValueError(f"no sends logged in the last {LIFT_WINDOW_S / 86_400:.0f} days")
        return evaluate_candidate(rows, ranker)

    async def rollback(self) -> ModelDeployed:
        """Back to the version deployed before the current one; 409 when there is none."""
        started = time.perf_counter()
        try:
            previous = await asyncio.to_thread(self.registry.rollback)
        except ValueError as exc:
            raise ApiError(409, "nothing_to_roll_back", str(exc)) from exc
        current = await asyncio.to_thread(self.registry.current)
        return await self._switched(previous, current, started)

    async def _switched(self, previous: str, current: str, started: float) -> ModelDeployed:
        """Reload the workers onto the registry's new state; `took_s` counts from the
        request to the last worker switched."""
        workers = await self.reload()
        return ModelDeployed(
            previous=previous, current=current, workers=workers,
            took_s=time.perf_counter() - started,
        )  # fmt: skip


def _no_lift(reason: str) -> ApiError:
    return ApiError(
        422,
        "no_lift",
        "the candidate is not shown to beat the live policy",
        fields=[{"field": "require_lift", "reason": reason}],
    )
