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
- Token ids are the record: a side the pair carries as pieces (:class:`~learners.pairs.
  Continuation`) is scored on its ids as sampled, after the prefix as the request sent
  it; an observation's tokens (mask 0) are fed but are not in the side's
  log-probability, so they cancel nowhere and train nothing (``masked_tokens``). A pair
  either of whose sides' ids are not what the engine was fed is dropped and counted
  (:func:`~learners.examples.fed_mismatch`).
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
from learners.examples import fed_mismatch
from learners.pairs import Continuation, Pair, Pairs, PairSettings
from learners.trainer import TorchLearner, TrainerSettings, part_ids
from runtime.policy.prompts import chat_prompt
from runtime.rewards.prm import pad_rows
from runtime.search.context import Sampling

__all__ = ["DPO", "DPOLearner", "DPOSettings"]

_Row = tuple[list[int], int, list[int]]
"""A side as the learner scores it: prompt + completion ids, the prompt's length, and a
mask per completion token (1: in the log-probability)."""


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

    def _sequences(self, pair: Pair) -> tuple[_Row, _Row, str | None]:
        """The chosen and rejected rows (ids, prompt length, per-completion-token mask),
        and why the pair's ids are not what the engine was fed (None: they are)."""
        tok = self.tokenizer
        prompt_text = chat_prompt(tok, pair.messages, pair.tools)
        prompt: list[int]
        sent = pair.prefix_pieces
        if sent is not None and any(not isinstance(part, str) for part in sent.parts):  # as the request sent it
            prompt = [t for ids, _ in part_ids(tok, [prompt_text, *sent.parts]) for t in ids]
        else:
            prompt = tok(prompt_text + pair.prefix, add_special_tokens=False)["input_ids"]
        end = self.delimiter if pair.level == "steps" else (tok.eos_token or "")
        rows: list[_Row] = []
        problem = None
        for text, side in ((pair.chosen, pair.chosen_parts), (pair.rejected, pair.rejected_parts)):
            if side is None:
                completion: list[int] = tok(text + end, add_special_tokens=False)["input_ids"]
                mask = [1] * len(completion)
            else:
                completion, mask = self._side(side, pair.level == "solutions")
                problem = problem or fed_mismatch(tok, side.parts, side.texts)
            ids = (prompt + completion)[: self.settings.max_length]
            rows.append((ids, len(prompt), mask[: max(0, len(ids) - len(prompt))]))
        if sent is not None:
            problem = problem or fed_mismatch(tok, sent.parts, sent.texts)
        return rows[0], rows[1], problem

    def _side(self, side: Continuation, ends: bool) -> tuple[list[int], list[int]]:
        """A side's completion ids as sampled (an end of turn after a whole solution) and mask."""
        completion: list[int] = []
        mask: list[int] = []
        for (ids, _), m in zip(part_ids(self.tokenizer, side.parts), side.mask, strict=True):
            completion += ids
            mask += [m] * len(ids)
        if ends and self._eos:
            end_ids = self.tokenizer(self._eos, add_special_tokens=False)["input_ids"]
            completion += end_ids
            mask += [1] * len(end_ids)
        return completion, mask

    def _logps(self, model: Any, rows: list[_Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-prob of each row's trained completion tokens, and their count."""
        ids, mask = pad_rows([row for row, _, _ in rows], self.tokenizer.pad_token_id or 0)
        completion = torch.zeros((len(rows), ids.shape[1] - 1), dtype=torch.bool)
        for i, (row, prompt, trained) in enumerate(rows):
            completion[i, prompt - 1 : len(row) - 1] = torch.tensor(trained, dtype=torch.bool)
        ids, completion = ids.to(self.device), completion.to(self.device)
        logits = self.forward(model, ids, mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return (logp * completion).sum(-1), completion.sum(-1)

    def step(self, pairs: Sequence[Pair]) -> UpdateResult:
        if not pairs:
            raise ValueError("a learner step needs at least one pair")
        s = self.settings
        started = self.prepare()
        kept, rows_of, masked, dropped = [], [], 0, 0
        for p in pairs:
            if p.weight <= 0:
                continue
            chosen, rejected, problem = self._sequences(p)
            if problem is not None:  # not what the engine was fed: never trained
                dropped += 1
                continue
            kept.append(p)
            rows_of.append([chosen, rejected])
            masked += sum(len(m) - sum(m) for _, _, m in (chosen, rejected))
        self.mismatched_samples += dropped
        total_weight = sum(p.weight for p in kept) or 1.0
        loss_sum, tokens, right, margins = 0.0, 0, 0, 0.0
        for start in range(0, len(kept), max(1, s.micro_batch // 2)):
            micro = kept[start : start + max(1, s.micro_batch // 2)]
            rows = [row for pair_rows in rows_of[start : start + len(micro)] for row in pair_rows]
            policy, counts = self._logps(self.model, rows)
            with torch.no_grad():
                reference, _ = self._logps(self.reference, rows)
            delta = policy - reference
            margin = s.beta * (delta[0::2] - delta[1::2])
            loss = -(1 - s.label_smoothing) * torch.nn.functional.logsigmoid(margin)
            loss = loss - s.label_smoothing * torch.nn.functional.logsigmoid(-margin)
            if s.sft_coef > 0:
                loss = loss + s.sft_coef * (-policy[0::2] / counts[0::2].clamp(min=1))
            weights = torch.tensor([p.weight for p in micro], device=self.device)
            micro_loss = (loss * weights).sum() / total_weight
            micro_loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(micro_loss.detach())
            tokens += int(counts.sum())
            right += int((margin > 0).sum())
            margins += float(margin.detach().sum())
        result = self.apply(started, loss_sum, len(kept), tokens)
        result.metrics.update(pair_accuracy=right / max(len(kept), 1), mean_margin=margins / max(len(kept), 1))
        if masked:
            result.metrics["masked_tokens"] = float(masked)
        if dropped:
            result.metrics["mismatched_samples"] = float(dropped)
        return result


class DPO(LearnerSpec, DPOSettings, PairSettings):
    """Online DPO on solution and step pairs from the tree, against a frozen reference, on the run's policy."""

    kind: Literal["dpo"] = "dpo"

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> DPOLearner:
        return DPOLearner(model, tokenizer, self, delimiter=sampling.step_delimiter)

    def build_converter(self, delimiter: str) -> Pairs:
        return Pairs(self, delimiter=delimiter)
