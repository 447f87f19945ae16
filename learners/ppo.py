"""PPO with a critic: token-level credit (the paper's third granularity; Schulman et al.
2017, GAE Schulman et al. 2016), on the online loop (``learner: {kind: ppo, ...}``).

A value head (one linear layer on the policy's last hidden state) predicts, at every
completion token, the return still to come. Rewards sit on tokens: the outcome reward on
the last token of a solution, and (``step_reward`` > 0) each step's process score,
centred at ``step_reward_center``, on the token that ends the step (``step_reward`` > 0). Generalised advantage
estimation turns rewards and values into per-token advantages::

    delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token: 0)
    A_t     = delta_t + gamma * lam * A_{t+1}
    R_t     = A_t + V_t                            (the value head's target)

Advantages are whitened over the batch; the policy loss is the same PPO-clip surrogate
(with the decoupled behaviour weight) as GRPO's (:mod:`learners.policy_gradient`), plus
``vf_coef`` times the value loss ``(V - R)^2 / 2``.

Design decisions:
- The value head is trained with the policy's optimizer (its own parameter group) and
  kept in the learner's checkpoint; it is never published (the engine serves the policy).
- The rollouts are the tree's finished solutions (every leaf, no group baseline needed:
  the critic is the baseline), with their outcome and step scores.
- Agent episodes: GAE runs over the policy's tokens only. An observation's tokens
  (the rollout's mask 0) are fed but are no actions: they get no reward, no advantage,
  no value target and no term in either loss, and the return flows across them from
  the call after the observation to the call before it (as verl's multi-turn response
  mask). The outcome reward sits on the last trained token. A rollout whose ids are
  not what the engine was fed is dropped and counted.
- ``mini_batches`` > 1 (PPO's several optimizer steps per batch): advantages and value
  targets are computed once, from the weights at the start of the update (the proximal
  policy and its critic); the batch is then split into that many shuffled parts, one
  optimizer step each, so from the second part on the ratio moves off 1 and the clip
  acts. With one part the ratio is 1 and the clip never binds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from learners.base import LearnerSpec, UpdateResult
from learners.policy_gradient import PGSettings, PolicyGradientLearner, _Encoded
from learners.rollouts import Rollout, Rollouts, RolloutSettings
from runtime.core.errors import ConfigError
from runtime.search.context import Sampling

__all__ = ["PPO", "PPOLearner", "PPOSettings", "gae"]


def gae(rewards: Sequence[float], values: Sequence[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Advantages and returns of one sequence (the value after its last token is 0)."""
    advantages = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        following = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * following - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


class PPOSettings(PGSettings):
    """The critic's settings, on top of the policy-gradient learner's."""

    gamma: float = Field(1.0, ge=0, le=1)
    """Discount per token."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE's lambda."""
    vf_coef: float = Field(0.5, ge=0, le=100)
    """Weight of the value loss."""
    step_reward: float = Field(0.0, ge=0, le=100)
    """Weight of each step's process score, centred at step_reward_center, as a reward on
    the token that ends the step (0: outcome reward only)."""
    step_reward_center: float = Field(0.5, ge=0, le=1)
    """A step scoring below this is a negative reward."""


class PPOLearner(PolicyGradientLearner):
    """PPO-clip with a value head and GAE over tokens (see module doc)."""

    name = "ppo"
    settings_class = PPOSettings
    settings: PPOSettings

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: PPOSettings | None = None,
        *,
        delimiter: str = "\n",
        **overrides: Any,
    ) -> None:
        super().__init__(model, tokenizer, settings, delimiter=delimiter, **overrides)
        hidden = self.policy_config().hidden_size
        self.value_head = torch.nn.Linear(hidden, 1, device=self.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.optimizer.add_param_group({"params": list(self.value_head.parameters())})

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "value_head": self.value_head.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.value_head.load_state_dict(state["value_head"])

    def token_rewards(self, rollout: Rollout, encoded: _Encoded) -> list[float]:
        """The reward on each completion token: step scores at step ends, the outcome on
        the last trained token (an observation's tokens get none)."""
        n = len(encoded.advantages)
        rewards = [0.0] * n
        trained = encoded.mask[:n] if encoded.mask is not None else [1] * n
        steps = rollout.meta.get("step_scores") or []
        if self.settings.step_reward > 0 and steps:
            ends = self._step_ends(rollout, encoded, len(steps))
            for step, index in ends.items():
                rewards[index] += self.settings.step_reward * (steps[step] - self.settings.step_reward_center)
        last = max((i for i in range(n) if trained[i]), default=n - 1)
        rewards[last] += float(rollout.meta.get("reward", 0.0))
        return rewards

    def _step_ends(self, rollout: Rollout, encoded: _Encoded, steps: int) -> dict[int, int]:
        """The last trained token of each step of the path (by piece where the rollout
        says which steps each piece holds)."""
        n = len(encoded.advantages)
        trained = encoded.mask[:n] if encoded.mask is not None else [1] * n
        if rollout.part_steps is not None and rollout.parts is not None:
            of = self._steps(rollout, encoded.ids[encoded.prompt :], list(rollout.parts))
        else:
            of = self._step_of_tokens(encoded.ids[encoded.prompt :], steps)
        return {step: i for i, step in enumerate(of[:n]) if trained[i] and step < steps}

    def step(self, rollouts: Sequence[Rollout]) -> UpdateResult:
        if not rollouts:
            raise ValueError("a learner step needs at least one rollout")
        started = self.prepare()
        weighted = [r for r in rollouts if r.weight > 0]
        every = [self.encode(r) for r in weighted]
        encoded, counts = self.fed_as_sampled(every)
        kept = [r for r, e in zip(weighted, every, strict=True) if e.mismatch is None]
        values = self._values(encoded)
        targets: list[list[float]] = []
        for r, e, v in zip(kept, encoded, values, strict=True):
            e.advantages, returns = self._gae(r, e, v)
            targets.append(returns)
        flat = torch.tensor([a for e in encoded for a, m in zip(e.advantages, e.trained(len(e.advantages)), strict=True)
                             if m])  # fmt: skip
        mean, std = float(flat.mean()), float(flat.std()) if flat.numel() > 1 else 1.0
        mean = 0.0 if math.isnan(mean) else mean  # nothing to whiten (every rollout dropped)
        for e in encoded:
            e.advantages = [(a - mean) / (std + 1e-6) for a in e.advantages]
        # The proximal policy: these weights, before the first mini-batch's step (one
        # mini-batch: the graph's own detached log-probs, no pass of its own).
        prox = self._logprobs(encoded) if self.settings.mini_batches > 1 else None
        order = list(range(len(encoded)))
        self._rng.shuffle(order)
        parts = [p for i in range(self.settings.mini_batches) if (p := order[i :: self.settings.mini_batches])]
        parts = parts or [[]]  # nothing weighted: one empty step, which apply refuses and counts
        loss_total, value_total, tokens_total, ratio_sum = 0.0, 0.0, 0, 0.0
        summed: dict[str, float] = {}  # counts over every mini-batch (clipped, truncated, refused steps)
        result = None
        for part in parts:
            old = None if prox is None else [prox[i] for i in part]
            loss, tokens = self._loss_and_backward([encoded[i] for i in part], old)
            value_loss = self._value_loss([encoded[i] for i in part], [targets[i] for i in part])
            result = self.apply(started, loss + value_loss, len(part), tokens)
            loss_total, value_total, tokens_total = loss_total + loss, value_total + value_loss, tokens_total + tokens
            ratio_sum += self._last["mean_ratio"] * tokens
            for name, count in [*result.metrics.items(), *self._last.items()]:
                if name.endswith(("_tokens", "_steps")):
                    summed[name] = summed.get(name, 0.0) + count
        assert result is not None
        metrics = {
            **self._last,
            **summed,
            "mean_ratio": ratio_sum / max(tokens_total, 1),
            "value_loss": value_total / len(parts),
            "mini_batches": float(len(parts)),
            "reencoded_tokens": float(sum(e.reencoded for e in encoded)),
            **counts,
        }
        return UpdateResult(
            result.step, (loss_total + value_total) / len(parts), len(encoded), tokens_total, result.seconds,
            result.grad_norm, metrics=metrics,
        )  # fmt: skip

    def _gae(self, rollout: Rollout, encoded: _Encoded, values: list[float]) -> tuple[list[float], list[float]]:
        """Advantages and value targets of each completion token, GAE over the trained
        tokens only (an observation's tokens: advantage 0, target their own value)."""
        rewards = self.token_rewards(rollout, encoded)
        n = len(rewards)
        at = [i for i, m in enumerate(encoded.trained(n).tolist()) if m]
        adv, ret = gae([rewards[i] for i in at], [values[i] for i in at], self.settings.gamma, self.settings.lam)
        advantages, returns = [0.0] * n, list(values[:n])
        for k, i in enumerate(at):
            advantages[i], returns[i] = adv[k], ret[k]
        return advantages, returns

    def _hidden(self, batch: list[_Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._padded(batch)
        out = self.forward(self.model, ids, mask, output_hidden_states=True)
        return out.hidden_states[-1], mask

    @torch.no_grad()
    def _values(self, encoded: list[_Encoded]) -> list[list[float]]:
        """The value head's prediction at each completion token (the state before it)."""
        out: list[list[float]] = []
        for start in range(0, len(encoded), self.settings.micro_batch):
            batch = encoded[start : start + self.settings.micro_batch]
            hidden, _ = self._hidden(batch)
            v = self.value_head(hidden.float()).squeeze(-1)
            out += [v[i, e.prompt - 1 : len(e.ids) - 1].tolist() for i, e in enumerate(batch)]
        return out

    def _value_loss(self, encoded: list[_Encoded], targets: list[list[float]]) -> float:
        total_tokens = sum(int(e.trained(len(t)).sum()) for e, t in zip(encoded, targets, strict=True)) or 1
        loss_sum = 0.0
        for start in range(0, len(encoded), self.settings.micro_batch):
            batch = encoded[start : start + self.settings.micro_batch]
            hidden, _ = self._hidden(batch)
            v = self.value_head(hidden.float()).squeeze(-1)
            loss = torch.zeros((), device=self.device)
            for i, e in enumerate(batch):
                predicted = v[i, e.prompt - 1 : len(e.ids) - 1]
                trained = e.trained(predicted.shape[0]).to(self.device)  # no value target on an observation's tokens
                target = torch.tensor(targets[start + i][: predicted.shape[0]], device=self.device)
                loss = loss + 0.5 * ((predicted - target)[trained] ** 2).sum() / total_tokens
            (self.settings.vf_coef * loss).backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
        return loss_sum


class PPO(LearnerSpec, PPOSettings, RolloutSettings):
    """PPO with a critic: a value head, GAE over tokens with outcome and process rewards, on the run's policy."""

    kind: Literal["ppo"] = "ppo"

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> PPOLearner:
        if sampling.temperature <= 0 or not sampling.logprobs:
            raise ConfigError(
                "sampling: ppo needs sampled rollouts with their log-probs (temperature > 0, logprobs: true)"
            )
        drawn = {"temperature": self.temperature or sampling.temperature, "top_p": self.top_p or sampling.top_p}
        return PPOLearner(model, tokenizer, self.model_copy(update=drawn), delimiter=sampling.step_delimiter)

    def build_converter(self, delimiter: str) -> Rollouts:
        return Rollouts(self, delimiter=delimiter, critic=True)
