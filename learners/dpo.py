"""Direct preference optimisation on the online loop (Rafailov et al. 2023), on pairs the
search tree gives (:mod:`learners.pairs`): solution pairs and step pairs (Step-DPO).

Per pair with chosen ``c`` and rejected ``r`` continuing the same prompt and prefix::

    margin = beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))
    loss   = -(1 - eps) * log sigmoid(margin) - eps * log sigmoid(-margin)  [+ sft_coef * NLL(c)]

Design decisions:
- The reference is a frozen copy of the weights the learner starts from (the run's start
  checkpoint, or the checkpoint it resumed from), never updated and never published;
  its log-probs are computed without gradients.
- A step pair's continuations end with the step delimiter (the policy ends a step by
  writing it); a solution pair's with the end-of-turn token.
- ``sft_coef`` > 0 adds the chosen continuation's token NLL (RPO, Pang et al. 2024),
  which keeps the chosen likelihood from falling while the margin grows.
- The step reports the share of pairs the policy already ranks right (``pair_accuracy``)
  and the mean margin.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from learners.base import LearnerSpec, UpdateResult
from learners.pairs import Pair, Pairs, PairSettings
from learners.trainer import TorchLearner, TrainerSettings
from runtime.rewards.prm import pad_rows
from runtime.search.context import Sampling

__all__ = ["DPO", "DPOLearner", "DPOSettings"]


class DPOSettings(TrainerSettings):
    """How the preference learner steps (part of a learner config section)."""

    beta: float = Field(0.1, gt=0, le=10)
    """Strength of the implicit KL to the reference (DPO's beta)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Share of a pair's loss that assumes its label is wrong (conservative DPO)."""
    sft_coef: float = Field(0.0, ge=0, le=100)
    """Weight of the chosen continuation's NLL added to the loss (RPO; 0: plain DPO)."""


class DPOLearner(TorchLearner):
    """DPO against a frozen reference on preference pairs (see module doc)."""

    name = "dpo"
    settings_class = DPOSettings
    settings: DPOSettings

    def __init__(
        self, model: Any, tokenizer: Any, settings: DPOSettings | None = None, *, delimiter: str = "\n", **kw: Any
    ) -> None:
        super().__init__(model, tokenizer, settings, **kw)
        self.delimiter = delimiter
        self.reference = copy.deepcopy(self.model).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)

    def extra_state(self) -> dict[str, Any]:
        return {"reference": self.reference.state_dict()}  # the start's weights, not the resumed ones

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.reference.load_state_dict(state["reference"])

    def _sequences(self, pair: Pair) -> tuple[list[int], list[int], int]:
        tok = self.tokenizer
        prompt_text = tok.apply_chat_template(pair.messages, tokenize=False, add_generation_prompt=True)
        prompt: list[int] = tok(prompt_text + pair.prefix, add_special_tokens=False)["input_ids"]
        end = self.delimiter if pair.level == "steps" else (tok.eos_token or "")
        ids = [prompt + tok(text + end, add_special_tokens=False)["input_ids"] for text in (pair.chosen, pair.rejected)]
        return ids[0][: self.settings.max_length], ids[1][: self.settings.max_length], len(prompt)

    def _logps(self, model: Any, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-prob of each row, and its completion token count."""
        ids, mask = pad_rows([row for row, _ in rows], self.tokenizer.pad_token_id or 0)
        completion = torch.zeros((len(rows), ids.shape[1] - 1), dtype=torch.bool)
        for i, (row, prompt) in enumerate(rows):
            completion[i, prompt - 1 : len(row) - 1] = True
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return (logp * completion).sum(-1), completion.sum(-1)

    def step(self, pairs: Sequence[Pair]) -> UpdateResult:
        if not pairs:
            raise ValueError("a learner step needs at least one pair")
        s = self.settings
        started = self.prepare()
        kept = [p for p in pairs if p.weight > 0]
        total_weight = sum(p.weight for p in kept) or 1.0
        loss_sum, tokens, right, margins = 0.0, 0, 0, 0.0
        for start in range(0, len(kept), max(1, s.micro_batch // 2)):
            micro = kept[start : start + max(1, s.micro_batch // 2)]
            rows: list[tuple[list[int], int]] = []
            for p in micro:
                chosen, rejected, prompt = self._sequences(p)
                rows += [(chosen, prompt), (rejected, prompt)]
            policy, counts = self._logps(self.model, rows)
            with torch.no_grad():
                reference, _ = self._logps(self.reference, rows)
            delta = policy - reference
            margin = s.beta * (delta[0::2] - delta[1::2])
            loss = -(1 - s.label_smoothing) * torch.nn.functional.logsigmoid(margin)
            loss = loss - s.label_smoothing * torch.nn.functional.logsigmoid(-margin)
            if s.sft_coef > 0:
                loss = loss + s.sft_coef * (-policy[0::2] / counts[0::2].clamp(min=1))
            weights = torch.tensor([p.weight for p in micro])
            micro_loss = (loss * weights).sum() / total_weight
            micro_loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(micro_loss.detach())
            tokens += int(counts.sum())
            right += int((margin > 0).sum())
            margins += float(margin.detach().sum())
        result = self.apply(started, loss_sum, len(kept), tokens)
        result.metrics.update(pair_accuracy=right / max(len(kept), 1), mean_margin=margins / max(len(kept), 1))
        return result


class DPO(LearnerSpec, DPOSettings, PairSettings):
    """Online DPO on solution and step pairs from the tree, against a frozen reference, on the run's policy."""

    kind: Literal["dpo"] = "dpo"

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> DPOLearner:
        return DPOLearner(model, tokenizer, self, delimiter=sampling.step_delimiter)

    def build_converter(self, delimiter: str) -> Pairs:
        return Pairs(self, delimiter=delimiter)
