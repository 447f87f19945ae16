"""Evaluation of policy versions on a fixed held-out task set, inside the loop.

Design decisions:
- The evaluator has its own engine (a second :class:`~runtime.policy.local.LocalPolicy` over a
  copy of the model), so an evaluation sees exactly one policy version while the
  generation engine keeps serving and swapping; the evaluated version is swapped in
  first and every result carries it.
- Two figures per version: greedy pass@1 (one solution at temperature 0) and the
  accuracy of the run's own strategy with its own sampling settings.
- Tasks that say how many steps they take (``metadata["steps"]``, as the tiny domain's
  do) also get greedy pass@1 per step count (``greedy_pass@1/4``), so one held-out mix
  gives the curve of its hardest problems too.
- Evaluation episodes are not stored with the run's episodes (they are not training
  data); the figures go to the run's curve.
"""

from __future__ import annotations

from typing import Any

from runtime.core.threads import CoreShare
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
        self.share: CoreShare | None = None
        """Cores handed with the generation engine: an evaluation holds ``threads`` of them."""
        self.threads = getattr(getattr(policy, "engine", None), "threads", None) or 1

    async def load(self, weights: dict[str, Any], version: int) -> None:
        """Serve ``weights`` as ``version`` on the evaluation engine (waits until done)."""
        await self.policy.load_weights(weights, version)

    async def accuracy(self, strategy: Strategy, sampling: Sampling) -> float:
        return (await self.accuracies(strategy, sampling))[""]

    async def accuracies(self, strategy: Strategy, sampling: Sampling) -> dict[str, float]:
        """Accuracy over every task (key ``""``) and per ``metadata["steps"]`` value."""
        rt = Runtime(
            self.policy,
            strategy,
            verifiers=self.verifiers,
            sampling=sampling,
            settings=SchedulerSettings(concurrency=self.concurrency),
            store=None,
            run_id="eval",
        )
        solved: dict[str, list[bool]] = {}
        async with rt:
            async for ep in rt.stream(self.tasks):
                ok = ep.status == "ok" and ep.reward is not None and ep.reward >= 1.0
                solved.setdefault("", []).append(ok)
                if "steps" in ep.task.metadata:
                    solved.setdefault(str(ep.task.metadata["steps"]), []).append(ok)
        out = {k: sum(v) / len(v) for k, v in solved.items()}
        out[""] = sum(solved.get("", [])) / len(self.tasks)
        return out

    async def evaluate(self, weights: dict[str, Any] | None = None, version: int | None = None) -> dict[str, float]:
        if self.share is None:
            return await self._evaluate(weights, version)
        with self.share.hold(self.threads):  # the generation engine runs on the other cores meanwhile
            return await self._evaluate(weights, version)

    async def _evaluate(self, weights: dict[str, Any] | None, version: int | None) -> dict[str, float]:
        if weights is not None:
            await self.load(weights, version if version is not None else self.policy.version)
        greedy = self.sampling.model_copy(update={"temperature": 0.0, "seed": None})
        greedy_acc = await self.accuracies(BestOfN(n=1, selection="majority"), greedy)
        out = {"greedy_pass@1": greedy_acc.pop("")}
        out.update({f"greedy_pass@1/{k}": v for k, v in sorted(greedy_acc.items())})
        if self.strategy is not None:
            out["strategy_accuracy"] = await self.accuracy(self.strategy, self.sampling)
        return out

    async def aclose(self) -> None:
        await self.policy.aclose()
