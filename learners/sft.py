"""Supervised fine-tuning of a local causal LM on examples: the learner of expert
iteration and of distillation (the optimizer, schedule, LoRA and checkpoints are
:class:`~learners.trainer.TorchLearner`'s).

Design decisions:
- Loss on the completion tokens only (and the end-of-turn token), each example
  weighted (stale examples may be down-weighted), normalised by the weighted token
  count of the whole batch; micro-batches sorted by length keep padding small.
- Token ids are the record: an example that carries the ids its path was sampled as
  (``Example.parts``) is trained on exactly those, after the prompt encoded as the
  engine encoded it; only text without ids is encoded (counted per step as
  ``reencoded_tokens``: an example of text alone counts all its completion tokens).
- Agent episodes: a piece the example's ``mask`` gives 0 (an observation) is fed as the
  engine was fed it, at loss weight 0 (label -100): counted as ``masked_tokens``. An
  example whose sampled ids are not what the engine was fed is dropped and counted
  (:func:`~learners.examples.fed_mismatch`: ``mismatched_samples``, ``mismatched_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from learners.base import UpdateResult
from learners.examples import Example, fed_mismatch
from learners.trainer import LoraSettings, TorchLearner, TrainerSettings, part_ids
from runtime.policy.prompts import chat_prompt

__all__ = ["LoraSettings", "SFTLearner", "SFTSettings"]


@dataclass(slots=True)
class _Encoded:
    """An example as the learner trains it."""

    ids: list[int]
    labels: list[int]
    weights: list[float]
    reencoded: int = 0
    """Completion tokens encoded from text rather than taken as sampled."""
    masked: int = 0
    """Completion tokens fed but not trained (an observation's)."""
    mismatch: str | None = None
    """Why the example's ids are not what the engine was fed (None: they are)."""


class SFTSettings(TrainerSettings):
    """How the supervised learner steps (part of a learner config section)."""


class SFTLearner(TorchLearner):
    """Behaviour cloning of examples into a local transformers model (see module doc)."""

    name = "sft"
    settings_class = SFTSettings

    # -- examples to tensors -----------------------------------------------------------

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """Token ids of prompt + completion + end of turn, and labels (-100 on the prompt
        and on untrained lines)."""
        ids, labels, _ = self.encode_weighted(example)
        return ids, labels

    def encode_weighted(self, example: Example) -> tuple[list[int], list[int], list[float]]:
        """:meth:`encode` and each label's loss weight (the example's weight times its
        line's). A completion that does not end the answer (``example.ends`` false: a
        verified prefix) is followed by the line break the next step starts after, not
        by the end of turn."""
        e = self._encode(example)
        return e.ids, e.labels, e.weights

    def _encode(self, example: Example) -> _Encoded:
        """:meth:`encode_weighted`, with what was encoded from text, masked, or mismatched."""
        tok = self.tokenizer
        prompt = chat_prompt(tok, example.messages, example.tools)
        prompt_ids: list[int] = tok(prompt, add_special_tokens=False)["input_ids"]
        completion_ids: list[int] = []
        weights: list[float] = []
        reencoded = masked = 0
        mismatch = None
        if example.parts is not None:  # as sampled: ids as they are, text encoded piece by piece
            pieces = [piece for piece, _ in example.parts]
            mismatch = fed_mismatch(tok, pieces, example.texts)
            mask = example.mask if example.mask is not None else [1] * len(pieces)
            trained_weight = 1.0
            for (ids_k, sampled), (_, weight), m in zip(part_ids(tok, pieces), example.parts, mask, strict=True):
                completion_ids += ids_k
                weights += [float(weight) * example.weight * m] * len(ids_k)
                masked += 0 if m else len(ids_k)
                reencoded += 0 if sampled or not m else len(ids_k)
                trained_weight = float(weight) if m else trained_weight
            if example.ends and self._eos:  # the end of turn, at the last trained piece's weight
                end_ids = tok(self._eos, add_special_tokens=False)["input_ids"]
                completion_ids += end_ids
                weights += [trained_weight * example.weight] * len(end_ids)
        else:
            end = self._eos if example.ends else "\n"
            segments = example.segments if example.segments is not None else [(example.completion, 1.0)]
            last = len(segments) - 1
            for k, (text, weight) in enumerate(segments):  # lines tokenised one by one, each ending at a line break
                ids_k = tok(text + ("\n" if k < last else end), add_special_tokens=False)["input_ids"]
                completion_ids += ids_k
                weights += [float(weight) * example.weight] * len(ids_k)
            reencoded = len(completion_ids)
        ids = (prompt_ids + completion_ids)[: self.settings.max_length]
        weights = ([0.0] * len(prompt_ids) + weights)[: self.settings.max_length]
        labels = [t if w > 0 else -100 for t, w in zip(ids, weights, strict=True)]
        return _Encoded(ids, labels, weights, reencoded, masked, mismatch)

    # -- one optimizer step ------------------------------------------------------------

    def step(self, examples: Sequence[Example]) -> UpdateResult:
        if not examples:
            raise ValueError("a learner step needs at least one example")
        started = self.prepare()
        every = [self._encode(ex) for ex in examples if ex.weight > 0]
        full = [e for e in every if e.mismatch is None]
        dropped = [e for e in every if e.mismatch is not None]
        self.mismatched_samples += len(dropped)
        encoded = sorted(((e.ids, e.labels, e.weights) for e in full), key=lambda e: len(e[0]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        total_weight = sum(sum(w[1:]) for _, _, w in encoded) or 1.0
        loss_sum = 0.0
        tokens = processed = 0
        for start in range(0, len(encoded), self.settings.micro_batch):
            micro = encoded[start : start + self.settings.micro_batch]
            width = max(len(ids) for ids, _, _ in micro)
            ids = torch.full((len(micro), width), pad, dtype=torch.long)
            labels = torch.full((len(micro), width), -100, dtype=torch.long)
            mask = torch.zeros((len(micro), width), dtype=torch.long)
            weights = torch.zeros((len(micro), width))
            for i, (x, y, w) in enumerate(micro):
                ids[i, : len(x)] = torch.tensor(x)
                labels[i, : len(y)] = torch.tensor(y)
                mask[i, : len(x)] = 1
                weights[i, : len(w)] = torch.tensor(w)
            labels, weights = labels.to(self.device), weights.to(self.device)
            logits = self.forward(self.model, ids, mask).logits[:, :-1].float()
            target = labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
            ).view(target.shape)
            loss = (per_token * weights[:, 1:]).sum() / total_weight
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
            tokens += int((target != -100).sum())
            processed += int(mask.sum())
        result = self.apply(started, loss_sum, len(encoded), tokens)
        result.metrics["processed"] = float(processed)  # every input token, for the FLOP count
        result.metrics["reencoded_tokens"] = float(sum(e.reencoded for e in full))
        masked = sum(e.masked for e in full)
        if masked:  # agent episodes' observations (absent elsewhere, as in every summary before them)
            result.metrics["masked_tokens"] = float(masked)
        if dropped:
            result.metrics["mismatched_samples"] = float(len(dropped))
            result.metrics["mismatched_tokens"] = float(sum(len(e.ids) for e in dropped))
        return result

    @torch.no_grad()
    def loss(self, examples: Sequence[Example]) -> float:
        """Mean completion-token loss on ``examples`` (no update); for tests and logs."""
        self.model.eval()
        total, count = 0.0, 0
        for ex in examples:
            ids, labels = self.encode(ex)
            out = self.forward(self.model, torch.tensor([ids]), labels=torch.tensor([labels], device=self.device))
            n = sum(t != -100 for t in labels[1:])
            total += float(out.loss) * n
            count += n
        self.model.train()
        return total / max(count, 1)
