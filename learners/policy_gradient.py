"""Policy gradient on rollouts: a PPO-clip surrogate with group advantages, against the
behaviour log-probs recorded at sampling time (GRPO, Shao et al. 2024; Dr. GRPO, Liu
et al. 2025; RLOO, Ahmadian et al. 2024), with AReaL's decoupled objective for stale
samples (Fu et al. 2025).

Per completion token t with advantage A (its step's, see :mod:`learners.rollouts`)::

    r_t  = pi_theta(t) / pi_prox(t)                      # proximal: the policy at the start of this update
    w_t  = min(pi_prox(t) / pi_behav(t), is_cap)         # behaviour: what the engine sampled from
    loss = -w_t * min(r_t * A, clip(r_t, 1 - clip_low, 1 + clip_high) * A)
           + kl_coef * KL_k3(pi_theta || pi_ref) - entropy_coef * H(pi_theta)

The clipped surrogate, the KL estimator and the normaliser below are the defaults of three
registries (``policy_loss: ppo_clip``, ``kl_estimator: k3``, ``loss_norm``; built-ins in
:mod:`learners.losses`): a config names another registered function, and this learner
keeps what they share (the proximal and behaviour log-probs, the importance weight, the
entropy, the mini-batches).

Design decisions:
- Log-probs are of the distribution that was sampled: ``logits / temperature``, and with
  ``top_p < 1`` the renormalised nucleus, the same as the engine's ``sample_logprobs``;
  so a fresh on-policy sample has ``w = 1`` up to rounding, and the learner checks it
  (``behaviour_ratio_max_dev`` in the step's metrics).
- The proximal policy is the learner's weights when ``update`` starts. With
  ``mini_batches = 1`` it equals the weights the gradient is taken at (``r = 1``, the
  clip is inactive, and no extra forward pass is spent); with more, the batch is split
  into that many optimizer steps against the same proximal policy (PPO's epochs), and
  the clip bounds how far a large-advantage token moves.
- ``w`` corrects for staleness (the batch was sampled by an older version): it is
  truncated at ``is_cap``, and truncated tokens are counted. A token without a recorded
  behaviour log-prob (a backend that gives none, text of the path the learner encodes)
  takes ``w = 1``.
- Token ids are the record: a rollout is trained on the ids its path's calls sampled,
  after its prefix as the request that sampled it sent it (:func:`part_ids`), so the
  learner scores the very sequence the policy saw and ``w = 1`` holds on every token of
  a fresh multi-call path; tokens the learner had to encode from text are reported
  (``reencoded_tokens``).
- Agent episodes: a rollout's ``mask`` gives an observation's tokens 0: they are fed (as
  the engine was fed them) and put nothing in the loss (no surrogate, KL or entropy
  term, and no count in the normaliser), and each step counts them
  (``masked_tokens``). A rollout's advantages are placed by piece (``part_steps``), so
  an observation of several lines moves no later step's advantage. A rollout whose
  ids are not what the engine was fed is dropped and counted
  (:func:`~learners.examples.fed_mismatch`).
- The end-of-turn token of a finished solution is trained too (the engine drops it from
  the ids it returns; its behaviour is taken to be the proximal policy's).
- Loss normaliser (``loss_norm``, a registry): ``token`` (sum over the batch's tokens / their
  number, DAPO), ``sequence`` (mean per rollout, then over rollouts, GRPO), ``constant``
  (sum / (rollouts x ``constant_tokens``), Dr. GRPO's length-unbiased form).
- KL to the initial policy (``kl_coef`` > 0) keeps a frozen copy of the starting weights
  and uses the registered ``kl_estimator`` (k3, Schulman 2020); the entropy bonus is
  exact over the vocabulary.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from learners.algorithms import KL_ESTIMATORS, LOSS_NORMS, POLICY_LOSSES, KLEstimatorName, LossNormName, PolicyLossName
from learners.base import UpdateResult
from learners.examples import fed_mismatch
from learners.rollouts import Rollout
from learners.trainer import TorchLearner, TrainerSettings, part_ids
from runtime.policy.prompts import chat_prompt
from runtime.rewards.prm import pad_rows

__all__ = ["PGSettings", "PolicyGradientLearner", "token_logprobs"]


class PGSettings(TrainerSettings):
    """How the policy-gradient learner steps (part of a learner config section)."""

    policy_loss: PolicyLossName = "ppo_clip"
    """The per-token policy loss, a registered one: ppo_clip (PPO's clipped surrogate,
    clipped at clip_low and clip_high), or one registered with
    ``learners.algorithms.register_policy_loss``."""
    clip_low: float = Field(0.2, ge=0, le=1)
    """PPO clip below 1: the ratio is clipped at 1 - clip_low."""
    clip_high: float = Field(0.2, ge=0, le=10)
    """PPO clip above 1: the ratio is clipped at 1 + clip_high (DAPO raises it)."""
    is_cap: float = Field(5.0, ge=1, le=1000)
    """Truncation of the behaviour-to-proximal importance weight (decoupled PPO)."""
    kl_coef: float = Field(0.0, ge=0, le=100)
    """Weight of the KL penalty to the initial policy (0: none, and no reference copy kept)."""
    kl_estimator: KLEstimatorName = "k3"
    """How the KL penalty is estimated per token, a registered KL estimator: k3
    (exp(d) - d - 1, d = log pi_ref - log pi_theta)."""
    entropy_coef: float = Field(0.0, ge=0, le=100)
    """Weight of the entropy bonus."""
    loss_norm: LossNormName = "token"
    """How the per-token losses become the batch's loss, a registered loss normaliser:
    token (over the batch's tokens), sequence (per rollout then over rollouts), constant
    (over rollouts x constant_tokens)."""
    constant_tokens: int = Field(256, ge=1, le=1_048_576)
    """The constant normaliser's tokens per rollout (loss_norm constant)."""
    mini_batches: int = Field(1, ge=1, le=64)
    """Optimizer steps per update, over shuffled parts of the batch, against one proximal policy."""
    temperature: float | None = Field(None, gt=0, le=2)
    """Sampling temperature the rollouts were drawn at (None: the run's sampling temperature)."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus mass the rollouts were drawn with (None: the run's sampling top_p)."""
    seed: int = 0
    """Seed of the mini-batch shuffle."""


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of ``targets`` under ``softmax(logits / temperature)``, restricted to the
    top-p nucleus and renormalised when ``top_p < 1`` (the engine's sampling distribution)."""
    scaled = logits / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(logp.exp(), dim=-1, descending=True)
        keep_sorted = torch.cumsum(sorted_p, -1) - sorted_p < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        logp = torch.log_softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@dataclass(slots=True)
class _Encoded:
    """A rollout as token ids: prompt + completion, and per completion token its advantage
    and behaviour log-prob."""

    ids: list[int]
    prompt: int
    advantages: list[float]
    behaviour: list[float]
    weight: float
    reencoded: int = 0
    """Completion tokens encoded from text rather than taken as sampled."""
    mask: list[int] | None = None
    """Per completion token: 1 trained, 0 fed only (an observation's). None: all trained."""
    mismatch: str | None = None
    """Why the rollout's ids are not what the engine was fed (None: they are)."""

    def trained(self, n: int) -> torch.Tensor:
        """Which of the first ``n`` completion tokens a loss trains on."""
        if self.mask is None:
            return torch.ones(n, dtype=torch.bool)
        return torch.tensor(self.mask[:n], dtype=torch.bool)

    @property
    def masked(self) -> int:
        return 0 if self.mask is None else len(self.mask) - sum(self.mask)


class PolicyGradientLearner(TorchLearner):
    """PPO-clip policy gradient with group advantages on rollouts (see module doc)."""

    name = "policy_gradient"
    settings_class = PGSettings
    settings: PGSettings

    def __init__(
        self, model: Any, tokenizer: Any, settings: PGSettings | None = None, *, delimiter: str = "\n", **overrides: Any
    ) -> None:
        super().__init__(model, tokenizer, settings, **overrides)
        self.delimiter = delimiter
        self.reference = None
        if self.settings.kl_coef > 0:
            self.reference = copy.deepcopy(self.model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        self.metrics: dict[str, float] = {"truncated_tokens": 0.0, "clipped_tokens": 0.0, "tokens": 0.0}
        self._last: dict[str, float] = {}
        self._rng = random.Random(self.settings.seed)

    def extra_state(self) -> dict[str, Any]:
        return {"reference": self.reference.state_dict()} if self.reference is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])

    # -- rollouts to tensors -----------------------------------------------------------

    def encode(self, rollout: Rollout) -> _Encoded:
        """Prompt (chat template + the rollout's prefix, as the engine encoded it) and
        completion ids (as sampled), each completion token with its step's advantage and
        behaviour log-prob (NaN where unknown)."""
        tok = self.tokenizer
        prompt_text = chat_prompt(tok, rollout.messages, rollout.tools)
        prompt: list[int]
        if rollout.prefix_parts is not None:
            prompt = [t for ids, _ in part_ids(tok, [prompt_text, *rollout.prefix_parts]) for t in ids]
        else:
            prompt = tok(prompt_text + rollout.prefix, add_special_tokens=False)["input_ids"]
        parts: list[str | list[int]]
        mask: list[int] | None = None
        if rollout.parts is not None:
            parts = list(rollout.parts)
            mask = list(rollout.mask) if rollout.mask is not None else None
        elif rollout.token_ids is not None:
            parts = [list(rollout.token_ids)]
        else:
            parts = [rollout.text]
        mismatch = fed_mismatch(tok, rollout.prefix_parts) or fed_mismatch(
            tok, parts, rollout.texts if rollout.parts is not None else None, rollout.behaviour
        )
        recorded = iter(rollout.behaviour or [])
        completion: list[int] = []
        behaviour: list[float] = []
        token_mask: list[int] = []
        reencoded = 0
        for k, (ids, sampled) in enumerate(part_ids(tok, parts)):
            completion += ids
            m = 1 if mask is None else mask[k]
            token_mask += [m] * len(ids)
            if sampled and rollout.behaviour is not None:
                behaviour += [next(recorded, math.nan) for _ in ids]
            else:
                behaviour += [math.nan] * len(ids)
                reencoded += 0 if sampled or not m else len(ids)
        steps = self._steps(rollout, completion, parts)
        if rollout.ends and tok.eos_token_id is not None:
            completion.append(tok.eos_token_id)
            behaviour.append(math.nan)
            token_mask.append(1)
            steps.append(steps[-1] if steps else 0)
        advantages = [rollout.step_advantages[s] for s in steps]
        if rollout.error_at is not None:
            advantages = self._at_error(completion, steps, advantages, *rollout.error_at)
        room = max(1, self.settings.max_length - len(prompt))
        return _Encoded(
            prompt + completion[:room], len(prompt), advantages[:room], behaviour[:room], rollout.weight, reencoded,
            token_mask[:room] if mask is not None else None, mismatch,
        )  # fmt: skip

    def _steps(self, rollout: Rollout, completion: list[int], parts: list[str | list[int]]) -> list[int]:
        """The step (index into ``step_advantages``) of each completion token: by piece
        where the rollout says which steps each piece holds, else by counting the lines
        of the whole completion."""
        last = len(rollout.step_advantages) - 1
        if rollout.part_steps is None or rollout.parts is None:
            return self._step_of_tokens(completion, last + 1)
        out: list[int] = []
        current = 0
        for (ids, _), held in zip(part_ids(self.tokenizer, parts), rollout.part_steps, strict=True):
            if not held:  # a delimiter: the step before it
                out += [current] * len(ids)
                continue
            local = self._step_of_tokens(ids, len(held))
            out += [min(held[i], last) for i in local]
            current = min(held[-1], last)
        return out

    def _at_error(
        self, ids: list[int], steps: list[int], advantages: list[float], step: int, offset: int
    ) -> list[float]:
        """``advantages`` with step ``step``'s advantage on the token holding character
        ``offset`` of that step's text only (its other tokens 0); unchanged where the
        tokens' texts do not add up to the completion's or the token is not the step's."""
        tok = self.tokenizer
        pieces = [tok.decode([t], skip_special_tokens=True) for t in ids]
        if "".join(pieces) != tok.decode(ids, skip_special_tokens=True) or step not in steps:
            return advantages
        ends = list(itertools.accumulate(len(p) for p in pieces))
        first = steps.index(step)
        before = "".join(pieces[:first])
        # The step's text starts after the last delimiter before its first token (the token
        # that closed the step before may hold the delimiter and the step's first characters).
        start = before.rfind(self.delimiter) + len(self.delimiter) if self.delimiter in before else 0
        position = start + offset
        holder = next((i for i, end in enumerate(ends) if end > position), None)
        if holder is None or steps[holder] not in (step, step - 1):
            return advantages
        out = [0.0 if s == step else a for s, a in zip(steps, advantages, strict=True)]
        out[holder] = advantages[first]
        return out

    def _step_of_tokens(self, ids: list[int], steps: int) -> list[int]:
        """The step each token belongs to: a step ends with the delimiter that closes it."""
        out, text, closed = [], "", 0
        for token in ids:
            out.append(min(closed, steps - 1))
            text += self.tokenizer.decode([token], skip_special_tokens=True)
            while self.delimiter in text:
                line, text = text.split(self.delimiter, 1)
                closed += bool(line.strip())
        return out

    # -- one update --------------------------------------------------------------------

    def step(self, rollouts: Sequence[Rollout]) -> UpdateResult:
        if not rollouts:
            raise ValueError("a learner step needs at least one rollout")
        started = self.prepare()
        encoded, dropped = self.fed_as_sampled([self.encode(r) for r in rollouts if r.weight > 0])
        # The proximal policy: these weights, before any step of this update (with one
        # step it is the graph's own detached log-probs, and needs no pass of its own).
        prox = self._logprobs(encoded) if self.settings.mini_batches > 1 else None
        order = list(range(len(encoded)))
        self._rng.shuffle(order)
        parts = [order[i :: self.settings.mini_batches] for i in range(self.settings.mini_batches)]
        parts = [p for p in parts if p]
        result = None
        loss_total, tokens_total = 0.0, 0
        refused: dict[str, float] = {}  # steps apply refused (non-finite, nothing to train), tokens clipped
        for part in parts:
            old = None if prox is None else [prox[i] for i in part]
            loss, tokens = self._loss_and_backward([encoded[i] for i in part], old)
            loss_total += loss
            tokens_total += tokens
            result = self.apply(started, loss, len(part), tokens)
            counted = [(k, v) for k, v in self._last.items() if k.endswith("_tokens")]  # every part's, not the last's
            for name, count in [*result.metrics.items(), *counted]:
                refused[name] = refused.get(name, 0.0) + count
        assert result is not None
        reencoded = {"reencoded_tokens": float(sum(e.reencoded for e in encoded)), **dropped}
        return UpdateResult(
            result.step, loss_total / len(parts), len(encoded), tokens_total, result.seconds, result.grad_norm,
            metrics={**self._last, **refused, **reencoded},
        )  # fmt: skip

    def fed_as_sampled(self, encoded: list[_Encoded]) -> tuple[list[_Encoded], dict[str, float]]:
        """The rollouts whose ids are what the engine was fed, and the counts of those
        dropped (``mismatched_samples``, ``mismatched_tokens``) and of masked tokens."""
        kept = [e for e in encoded if e.mismatch is None]
        dropped = [e for e in encoded if e.mismatch is not None]
        self.mismatched_samples += len(dropped)
        masked = sum(e.masked for e in kept)
        counts = {"masked_tokens": float(masked)} if masked else {}
        if dropped:
            counts["mismatched_samples"] = float(len(dropped))
            counts["mismatched_tokens"] = float(sum(len(e.ids) - e.prompt for e in dropped))
        return kept, counts

    def _padded(self, batch: list[_Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask, on the learner's device."""
        ids, mask = pad_rows([e.ids for e in batch], self.tokenizer.pad_token_id or 0)
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, batch: list[_Encoded], model: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at every position but the last (padded), the next tokens, and which of
        them are completion tokens."""
        ids, mask = self._padded(batch)
        logits = self.forward(model or self.model, ids, mask).logits[:, :-1].float()
        targets = ids[:, 1:]
        completion = torch.zeros_like(targets, dtype=torch.bool)
        for i, e in enumerate(batch):
            completion[i, e.prompt - 1 : len(e.ids) - 1] = True
        return logits, targets, completion

    def _temperature(self) -> tuple[float, float]:
        return self.settings.temperature or 1.0, self.settings.top_p or 1.0

    @torch.no_grad()
    def _logprobs(self, encoded: list[_Encoded]) -> list[list[float]]:
        """Per rollout, the completion tokens' log-probs under the current weights."""
        t, p = self._temperature()
        out: list[list[float]] = []
        for start in range(0, len(encoded), self.settings.micro_batch):
            batch = encoded[start : start + self.settings.micro_batch]
            logits, targets, completion = self._forward(batch)
            logp = token_logprobs(logits, targets, t, p)
            out.extend(logp[i][completion[i]].tolist() for i in range(len(batch)))
        return out

    def _loss_and_backward(self, batch: list[_Encoded], prox: list[list[float]] | None) -> tuple[float, int]:
        s = self.settings
        t, p = self._temperature()
        policy_loss, normalise = POLICY_LOSSES.get(s.policy_loss), LOSS_NORMS.get(s.loss_norm)
        kl_estimate = KL_ESTIMATORS.get(s.kl_estimator)
        total_tokens = sum(int(e.trained(len(e.advantages)).sum()) for e in batch) or 1
        loss_sum, tokens = 0.0, 0
        stats = {"ratio_sum": 0.0, "clipped": 0.0, "truncated": 0.0, "dev": 0.0, "kl": 0.0, "entropy": 0.0}
        for start in range(0, len(batch), s.micro_batch):
            micro = batch[start : start + s.micro_batch]
            logits, targets, completion = self._forward(micro)
            logp = token_logprobs(logits, targets, t, p)
            ref_logp = None
            if self.reference is not None:
                with torch.no_grad():
                    ref_logits, _, _ = self._forward(micro, self.reference)
                    ref_logp = token_logprobs(ref_logits, targets, t, p)
            micro_loss = torch.zeros((), device=self.device)
            for i, e in enumerate(micro):
                at = completion[i].nonzero().squeeze(-1)  # the completion's positions
                n = at.shape[0]
                trained = e.trained(n).to(self.device)
                at = at[trained]  # an observation's tokens: no term at all
                if at.numel() == 0:
                    continue
                lp = logp[i][at]
                adv = torch.tensor(e.advantages[:n], device=self.device)[trained]
                proximal = prox[start + i][:n] if prox is not None else None
                old = lp.detach() if proximal is None else torch.tensor(proximal, device=self.device)[trained]
                behaviour = torch.tensor(e.behaviour[:n], device=self.device)[trained]
                known = ~torch.isnan(behaviour)
                log_w = torch.where(known, old - torch.nan_to_num(behaviour), torch.zeros_like(old))
                w = log_w.exp()
                stats["dev"] = max(stats["dev"], float((w[known] - 1).abs().max()) if bool(known.any()) else 0.0)
                truncated = w > s.is_cap
                stats["truncated"] += float(truncated.sum())
                w = w.clamp(max=s.is_cap)
                loss, clipped = policy_loss(lp, old, adv, s)
                stats["clipped"] += float(clipped)
                stats["ratio_sum"] += float((lp - old).detach().exp().sum())
                per_token = w * loss
                if ref_logp is not None:
                    kl = kl_estimate(lp, ref_logp[i][at])
                    per_token = per_token + s.kl_coef * kl
                    stats["kl"] += float(kl.detach().sum())
                if s.entropy_coef > 0:
                    probs_logits = logits[i][at] / t
                    ent = -(torch.softmax(probs_logits, -1) * torch.log_softmax(probs_logits, -1)).sum(-1)
                    per_token = per_token - s.entropy_coef * ent
                    stats["entropy"] += float(ent.detach().sum())
                term = normalise(per_token, len(batch), total_tokens, s)
                micro_loss = micro_loss + e.weight * term
                tokens += int(at.shape[0])
            micro_loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(micro_loss.detach())
        self.metrics["truncated_tokens"] += stats["truncated"]
        self.metrics["clipped_tokens"] += stats["clipped"]
        self.metrics["tokens"] += tokens
        self._last = {
            "mean_ratio": stats["ratio_sum"] / max(tokens, 1),
            "clipped_tokens": stats["clipped"],
            "truncated_tokens": stats["truncated"],
            "behaviour_ratio_max_dev": stats["dev"],
            "kl": stats["kl"] / max(tokens, 1),
            "entropy": stats["entropy"] / max(tokens, 1),
        }
        return loss_sum, tokens
