"""The built-in policy losses, loss normalisers and KL estimators (registries of
:mod:`learners.algorithms`), on torch tensors of one rollout's completion tokens.

:class:`~learners.policy_gradient.PolicyGradientLearner` (and PPO, which inherits its
loss) computes, per completion token::

    loss_t = w_t * policy_loss(logp, old_logp, A)_t  +  kl_coef * kl_estimator(logp, ref_logp)_t
             - entropy_coef * H_t

with ``w_t`` the truncated behaviour weight (decoupled PPO), then one rollout's share of
the batch loss is ``loss_norm(loss, rollouts, tokens)``. Each of the three is named in the
learner's config (``policy_loss``, ``kl_estimator``, ``loss_norm``); a new one is one
registered function (see :mod:`learners.algorithms`).

Design decisions:
- A policy loss returns the loss to minimise before the behaviour weight, and how many
  tokens it clipped (the learner reports ``clipped_tokens``; a loss without a clip
  returns 0); it reads its own settings (``clip_low``, ``clip_high``) off the learner's.
- A normaliser sees one rollout's per-token loss and the batch's counts, so token-,
  sequence- and constant-normalised losses are each one line, and a micro-batch's
  backward needs no second pass.
"""

from __future__ import annotations

from typing import Any

import torch

from learners.algorithms import register_kl_estimator, register_loss_norm, register_policy_loss

__all__ = ["constant", "k3", "ppo_clip", "sequence", "token"]


# -- policy losses -----------------------------------------------------------------------


@register_policy_loss("ppo_clip", paper="Schulman et al. 2017, PPO (clip-higher: Yu et al. 2025, DAPO)")
def ppo_clip(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, settings: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``-min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)`` with ``r = pi_theta /
    pi_prox`` (Schulman et al. 2017, PPO's clipped surrogate; a separate upper clip,
    ``clip_high``, as DAPO's clip-higher, Yu et al. 2025). A clipped token has no gradient."""
    ratio = (logp - old_logp).exp()
    clipped = ratio.clamp(1 - settings.clip_low, 1 + settings.clip_high)
    unclipped = ratio * advantages
    surrogate = torch.minimum(unclipped, clipped * advantages)
    return -surrogate, (surrogate != unclipped).sum()


# -- loss normalisers --------------------------------------------------------------------


@register_loss_norm("token", paper="Yu et al. 2025, DAPO (token-level policy gradient loss)")
def token(per_token: torch.Tensor, rollouts: int, tokens: int, settings: Any) -> torch.Tensor:
    """Sum over the batch's tokens / their number: every token weighs the same, so a long
    solution is not diluted (Yu et al. 2025, DAPO's token-level loss)."""
    return per_token.sum() / tokens


@register_loss_norm("sequence", paper="Shao et al. 2024, DeepSeekMath (GRPO)")
def sequence(per_token: torch.Tensor, rollouts: int, tokens: int, settings: Any) -> torch.Tensor:
    """Mean over each rollout's tokens, then over rollouts (Shao et al. 2024, GRPO's
    objective as written)."""
    return per_token.mean() / rollouts


@register_loss_norm("constant", paper="Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO)")
def constant(per_token: torch.Tensor, rollouts: int, tokens: int, settings: Any) -> torch.Tensor:
    """Sum / (rollouts x ``constant_tokens``): a normaliser that does not depend on the
    lengths, so none is favoured (Liu et al. 2025, Dr. GRPO)."""
    divisor: int = rollouts * settings.constant_tokens
    return per_token.sum() / divisor


# -- KL estimators -----------------------------------------------------------------------


@register_kl_estimator("k3", paper="Schulman 2020, Approximating KL Divergence (as GRPO, Shao et al. 2024)")
def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``exp(d) - d - 1`` with ``d = log pi_ref - log pi_theta``: unbiased, never negative,
    low variance (Schulman 2020's k3 estimator of KL(pi_theta || pi_ref), GRPO's)."""
    d = ref_logp - logp
    return d.exp() - d - 1
