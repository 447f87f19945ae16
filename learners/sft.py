"""Supervised fine-tuning of a local causal LM on examples: the learner of expert
iteration and of distillation (the optimizer, schedule, LoRA and checkpoints are
:class:`~learners.trainer.TorchLearner`'s).

Design decisions:
- Loss on the completion tokens only (and the end-of-turn token), each example
  weighted (stale examples may be down-weighted), normalised by the weighted token
  count of the whole batch; micro-batches sorted by length keep padding small.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from learners.base import UpdateResult
from learners.examples import Example
from learners.trainer import LoraSettings, TorchLearner, TrainerSettings

__all__ = ["LoraSettings", "SFTLearner", "SFTSettings"]


class SFTSettings(TrainerSettings):
    """How the supervised learner steps (part of a learner config section)."""


class SFTLearner(TorchLearner):
    """Behaviour cloning of examples into a local transformers model (see module doc)."""

    name = "sft"
    settings_class = SFTSettings

    # -- examples to tensors -----------------------------------------------------------

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """Token ids of prompt + completion + end of turn, and labels (-100 on the prompt)."""
        tok = self.tokenizer
        prompt = tok.apply_chat_template(example.messages, tokenize=False, add_generation_prompt=True)
        prompt_ids: list[int] = tok(prompt, add_special_tokens=False)["input_ids"]
        if example.segments is None:
            completion_ids: list[int] = tok(example.completion + self._eos, add_special_tokens=False)["input_ids"]
            trained = completion_ids
        else:  # lines tokenised one by one (each ends at a line break), untrained ones unlabelled
            completion_ids, trained = [], []
            last = len(example.segments) - 1
            for k, (text, learn) in enumerate(example.segments):
                ids_k = tok(text + ("\n" if k < last else self._eos), add_special_tokens=False)["input_ids"]
                completion_ids += ids_k
                trained += ids_k if learn else [-100] * len(ids_k)
        ids = (prompt_ids + completion_ids)[: self.settings.max_length]
        labels = ([-100] * len(prompt_ids) + trained)[: self.settings.max_length]
        return ids, labels

    # -- one optimizer step ------------------------------------------------------------

    def step(self, examples: Sequence[Example]) -> UpdateResult:
        if not examples:
            raise ValueError("a learner step needs at least one example")
        started = self.prepare()
        encoded = sorted(((*self.encode(ex), ex.weight) for ex in examples if ex.weight > 0), key=lambda e: len(e[0]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        total_weight = sum(w * sum(t != -100 for t in y[1:]) for _, y, w in encoded) or 1.0
        loss_sum = 0.0
        tokens = 0
        for start in range(0, len(encoded), self.settings.micro_batch):
            micro = encoded[start : start + self.settings.micro_batch]
            width = max(len(ids) for ids, _, _ in micro)
            ids = torch.full((len(micro), width), pad, dtype=torch.long)
            labels = torch.full((len(micro), width), -100, dtype=torch.long)
            mask = torch.zeros((len(micro), width), dtype=torch.long)
            weights = torch.zeros(len(micro))
            for i, (x, y, w) in enumerate(micro):
                ids[i, : len(x)] = torch.tensor(x)
                labels[i, : len(y)] = torch.tensor(y)
                mask[i, : len(x)] = 1
                weights[i] = w
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
            ).view(target.shape)
            loss = (per_token * weights[:, None]).sum() / total_weight
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
            tokens += int((target != -100).sum())
        return self.apply(started, loss_sum, len(encoded), tokens)

    @torch.no_grad()
    def loss(self, examples: Sequence[Example]) -> float:
        """Mean completion-token loss on ``examples`` (no update); for tests and logs."""
        self.model.eval()
        total, count = 0.0, 0
        for ex in examples:
            ids, labels = self.encode(ex)
            out = self.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            n = sum(t != -100 for t in labels[1:])
            total += float(out.loss) * n
            count += n
        self.model.train()
        return total / max(count, 1)
