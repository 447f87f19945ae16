"""Part 4, learning: turn episodes into training signal and publish new policy versions.

The learner contract (:class:`Learner`): ``async update(examples) -> UpdateResult``
takes one optimizer step, ``weights()`` is what gets published to the policy.
:class:`OnlineLoop` runs a scheduler and a learner together, :class:`VerifiedPaths`
turns episodes into examples, :class:`Evaluator` scores policy versions on held-out
tasks, :mod:`learners.prm` trains process reward models. Policy gradient:
:class:`Rollouts` turns search trees into groups with per-step advantages and
:class:`PolicyGradientLearner` takes PPO-clip steps on them. Learner configs
(:class:`ExpertIteration`, :class:`Distill`, :class:`OnPolicyDistill`, :class:`GRPO`,
:class:`PPO`, :class:`DPO`, and the reward models :class:`PRM` and :class:`ORM`) register
under their ``kind``. Advantage estimators, step credits, policy losses, loss normalisers
and KL estimators are registries of functions (:mod:`learners.algorithms`): a new one is
a function decorated with :func:`register_advantage`, :func:`register_credit`,
:func:`register_policy_loss`, :func:`register_loss_norm` or :func:`register_kl_estimator`,
named in the learner's config. Names are imported on first use (torch loads with the
first learner).
"""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
