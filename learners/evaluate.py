"""Evaluation of policy versions on a fixed held-out task set, inside the loop.

Design decisions:
- The evaluator has its own engine (a second :class:`~runtime.policy.local.LocalPolicy` over a
  copy of the model), so an evaluation sees exactly one policy version while the
  generation engine keeps serving and swapping; the evaluated version is swapped in
  first and every result carries it.
- Two figures per version: greedy pass@1 (one solution at temperature 0) and the
  accuracy of the run's own strategy with its own sampling settings.
- Evaluation episodes are not stored with the run's episodes (they are not training
  data); the figures go to the run's curve.
"""

from __future__ import annotations

from typing import Any

from runtime.core.types import Task
from runtime.policy.base import WeightedPolicy
from runtime.scheduling.scheduler import Runtime, SchedulerSettings
from runtime.search.context import Sampling, Verifiers
from runtime.search.strategy import Strategy
from strategies import BestOfN

__all__ = ["Evaluator"]


class Evaluator:
    """Greedy pass@1 and the configured strategy's accuracy of a version on ``tasks``."""

    def __init__(
        self,
        policy: WeightedPolicy,
        tasks: list[Task],
        verifiers: Verifiers,
        sampling: Sampling,
        strategy: Strategy | None = None,
        concurrency: int = 64,
    ) -> None:
        if not tasks:
            raise ValueError("an evaluator needs at least one held-out task")
        self.policy = policy
        self.tasks = tasks
        self.verifiers = verifiers
        self.sampling = sampling
        self.strategy = strategy
        self.concurrency = concurrency

    async def load(self, weights: dict[str, Any], version: int) -> None:
        """Serve ``weights`` as ``version`` on the evaluation engine (waits until done)."""
        await self.policy.load_weights(weights, version)

    async def accuracy(self, strategy: Strategy, sampling: Sampling) -> float:
        rt = Runtime(
            self.policy,
            strategy,
            verifiers=self.verifiers,
            sampling=sampling,
            settings=SchedulerSettings(concurrency=self.concurrency),
            store=None,
            run_id="eval",
        )
        async with rt:
            stats = await rt.run(self.tasks)
        return stats.solved / len(self.tasks)

    async def evaluate(self, weights: dict[str, Any] | None = None, version: int | None = None) -> dict[str, float]:
        if weights is not None:
            await self.load(weights, version if version is not None else self.policy.version)
        greedy = self.sampling.model_copy(update={"temperature": 0.0, "seed": None})
        out = {"greedy_pass@1": await self.accuracy(BestOfN(n=1, selection="majority"), greedy)}
        if self.strategy is not None:
            out["strategy_accuracy"] = await self.accuracy(self.strategy, self.sampling)
        return out

    async def aclose(self) -> None:
        await self.policy.aclose()
