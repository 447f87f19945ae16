"""Reward models learned from the run's own episodes, on the online loop: a run can learn
its own verifier while it searches.

- ``prm`` (:class:`PRMLearner`): a process reward model, a one-label value head on the
  policy's backbone, fitted with binary cross-entropy at each step's delimiter to labels
  the tree already holds: Monte-Carlo values (Math-Shepherd; ``node.value`` of MCTS or the
  ``mc_value`` verifier's step scores) or the process verifier's step scores (distilling a
  rule or a judge into a model). The exported checkpoint is served by
  ``verifiers.process: {name: prm, path: runs/RUN/policy}``.
- ``orm`` (:class:`OutcomeRMLearner`): a Bradley-Terry outcome reward model (Ouyang et al.
  2022) from solution pairs (a verified and a failed solution of one task):
  ``-log sigmoid(r(chosen) - r(rejected))``, the reward read at the last token. The
  exported checkpoint is served by ``verifiers.outcome: {name: orm, path: ...}``.

Design decisions:
- Both train a separate model (``trains_policy`` is false: nothing is published to the
  sampling engine), start from the run's policy checkpoint (its backbone, a fresh head)
  and are exported as transformers checkpoints (``*ForTokenClassification``).
- In-loop evaluation measures a policy, so these configs have none by default; the
  step's metrics report what the model gets right (label accuracy, pair accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from learners.base import LearnerSpec, UpdateResult
from learners.loop_settings import EvalSettings
from learners.pairs import Pair, Pairs, PairSettings, _levels
from learners.prm import value_head_model
from learners.trainer import TorchLearner, TrainerSettings
from runtime.core.errors import VerifierError
from runtime.core.types import Episode
from runtime.rewards.orm import encode_solution
from runtime.rewards.prm import encode_steps, pad_rows
from runtime.search.context import Context, Sampling, Verifiers

__all__ = ["ORM", "PRM", "LabelledPath", "OutcomeRMLearner", "PRMLearner", "StepLabels"]


class _HeadLearner(TorchLearner):
    """A learner over a value-head model: it exports that model, never a policy."""

    def write_export(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def policy_config(self) -> Any:
        return self.model.config


# -- process reward model ------------------------------------------------------------------


@dataclass(slots=True)
class LabelledPath:
    """A path of steps with a label in [0, 1] per step (a PRM example from the stream)."""

    messages: list[dict[str, str]]
    steps: list[str]
    labels: list[float]
    key: tuple[str, str, int]
    policy_version: int | None = None
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


class StepLabels:
    """Episodes to PRM examples: every path to a node with no children (finished or
    abandoned), each step labelled (see module doc)."""

    def __init__(self, label: str, delimiter: str = "\n") -> None:
        self.label = label
        self.delimiter = delimiter
        self.rejected_by_process = 0

    def state(self) -> list[bytes]:
        return []

    def load_state(self, seen: Sequence[bytes]) -> None:
        return None

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> list[LabelledPath]:
        if episode.status != "ok":
            return []
        ctx = Context.scoring(episode, verifiers or Verifiers(), self.delimiter)
        out = []
        for leaf in (n for n in episode.nodes[1:] if not n.children and n.text):  # dead ends too
            path = [n for n in ctx.path(leaf) if n.text and not n.meta.get("reflection")]
            labels = []
            for node in path:
                if self.label == "value":
                    value = node.value
                elif self.label == "mc_value":
                    value = node.scores.get("mc_value")
                else:
                    try:
                        value = await ctx.score(node) if ctx.verifiers.process is not None else None
                    except VerifierError:
                        value = None
                if value is None:
                    break
                labels.append(min(1.0, max(0.0, float(value))))
            if labels:
                steps = [n.text for n in path[: len(labels)]]
                out.append(LabelledPath(episode.task.as_messages(), steps, labels, episode.key))
        return out


class PRMLearner(_HeadLearner):
    """Binary cross-entropy at every step's delimiter, against soft labels."""

    name = "prm"

    def __init__(self, model: Any, tokenizer: Any, settings: TrainerSettings | None = None, *, delimiter: str = "\n",
                 **overrides: Any) -> None:  # fmt: skip
        super().__init__(value_head_model(model), tokenizer, settings, **overrides)
        self.delimiter = delimiter

    def step(self, examples: Sequence[LabelledPath]) -> UpdateResult:
        started = self.prepare()
        encoded = [(*encode_steps(self.tokenizer, self.delimiter, e.messages, e.steps), e.labels) for e in examples]
        total = sum(len(labels) for _, _, labels in encoded) or 1
        loss_sum, right = 0.0, 0
        for start in range(0, len(encoded), self.settings.micro_batch):
            micro = encoded[start : start + self.settings.micro_batch]
            ids, mask = pad_rows([ids for ids, _, _ in micro], self.tokenizer.pad_token_id or 0)
            logits = self.forward(self.model, ids, mask).logits[..., 0].float()
            rows = torch.tensor([i for i, (_, pos, _) in enumerate(micro) for _ in pos], device=self.device)
            cols = torch.tensor([p for _, pos, _ in micro for p in pos], device=self.device)
            labels = [v for _, _, labels in micro for v in labels]
            target = torch.tensor(labels, dtype=torch.float32, device=self.device)
            at = logits[rows, cols]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(at, target, reduction="sum") / total
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
            right += int(((at > 0) == (target >= 0.5)).sum())
        result = self.apply(started, loss_sum, len(encoded), total)
        result.metrics["label_accuracy"] = right / total
        return result


class PRM(LearnerSpec, TrainerSettings):
    """A process reward model trained from the tree's own step labels (Monte-Carlo values or verifier scores)."""

    kind: Literal["prm"] = "prm"
    trains_policy: ClassVar[bool] = False
    label: Literal["mc_value", "value", "process"] = "mc_value"
    """Step labels: the mc_value verifier's scores, node values (MCTS), or the process verifier's scores."""
    eval: EvalSettings | None = None
    """In-loop evaluation measures a policy; a reward model has none."""

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> PRMLearner:
        return PRMLearner(model, tokenizer, self, delimiter=sampling.step_delimiter)

    def build_converter(self, delimiter: str) -> StepLabels:
        return StepLabels(self.label, delimiter)


# -- outcome reward model (Bradley-Terry) --------------------------------------------------


class OutcomeRMLearner(_HeadLearner):
    """``-log sigmoid(r(chosen) - r(rejected))`` with the reward at the last token."""

    name = "orm"

    def __init__(self, model: Any, tokenizer: Any, settings: TrainerSettings | None = None, **overrides: Any) -> None:
        super().__init__(value_head_model(model), tokenizer, settings, **overrides)

    def rewards(self, rows: list[list[int]]) -> torch.Tensor:
        ids, mask = pad_rows(rows, self.tokenizer.pad_token_id or 0)
        logits = self.forward(self.model, ids, mask).logits[..., 0].float()
        ends = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        last: torch.Tensor = logits[torch.arange(len(rows), device=self.device), ends]
        return last

    def _ids(self, pair: Pair, text: str) -> list[int]:
        # The encoding the `orm` verifier scores with: one function, so they cannot drift.
        return encode_solution(self.tokenizer, pair.messages, pair.prefix + text, self.settings.max_length)

    def step(self, pairs: Sequence[Pair]) -> UpdateResult:
        started = self.prepare()
        kept = [p for p in pairs if p.weight > 0]
        loss_sum, right, tokens = 0.0, 0, 0
        size = max(1, self.settings.micro_batch // 2)
        for start in range(0, len(kept), size):
            micro = kept[start : start + size]
            rows = [self._ids(p, t) for p in micro for t in (p.chosen, p.rejected)]
            r = self.rewards(rows)
            margin = r[0::2] - r[1::2]
            loss = -torch.nn.functional.logsigmoid(margin).sum() / max(len(kept), 1)
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
            right += int((margin > 0).sum())
            tokens += sum(len(x) for x in rows)
        result = self.apply(started, loss_sum, len(kept), tokens)
        result.metrics["pair_accuracy"] = right / max(len(kept), 1)
        return result


class ORM(LearnerSpec, TrainerSettings, PairSettings):
    """A Bradley-Terry outcome reward model trained on the run's verified vs failed solutions."""

    kind: Literal["orm"] = "orm"
    trains_policy: ClassVar[bool] = False
    levels: list[Literal["solutions", "steps"]] = Field(default_factory=lambda: _levels("solutions"), min_length=1)
    """Pairs of whole solutions (the outcome model's data)."""
    eval: EvalSettings | None = None
    """In-loop evaluation measures a policy; a reward model has none."""

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> OutcomeRMLearner:
        return OutcomeRMLearner(model, tokenizer, self)

    def build_converter(self, delimiter: str) -> Pairs:
        return Pairs(self, delimiter=delimiter)
