"""The built-in advantage estimators and step credits (registries of
:mod:`learners.algorithms`), and :func:`group_advantages`.

Advantage estimators (``estimator``) turn a group's rewards ``r_1 .. r_G`` into one
advantage each: ``grpo``, ``dr_grpo``, ``rloo``. Step credits (``advantage``) place a
finished solution's advantage on its steps, from its outcome advantage and the process
verifier's step scores: ``outcome``, ``process``, ``outcome_process``, ``first_error``.
:class:`~learners.rollouts.Rollouts` calls both; a new one is a decorated function
anywhere (see :mod:`learners.algorithms`).

Design decisions:
- An estimator sees groups of two or more only: a group of one has nothing to be
  relative to and gets 0 (:func:`group_advantages`), whatever the estimator.
- A step credit gets the group's work done already (:class:`LeafCredit`: the outcome
  advantage under the run's estimator, each step's score, and each score as an advantage
  over all the group's steps), so it is one short function per rule.
- A credit that reads step scores (``process=True``, the default) falls back to the
  outcome on every step of a solution nobody scored (no process verifier): the caller
  does it, so no credit repeats it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from learners.algorithms import ADVANTAGE_ESTIMATORS, register_advantage, register_credit

__all__ = [
    "EPS",
    "LeafCredit",
    "dr_grpo",
    "first_error",
    "group_advantages",
    "grpo",
    "outcome",
    "outcome_process",
    "process",
    "rloo",
]

EPS = 1e-6
"""Below this a group's standard deviation is zero, and so is an advantage."""


def group_advantages(rewards: Sequence[float], estimator: str) -> list[float]:
    """Each reward's advantage relative to its group under the registered ``estimator``
    (a group of fewer than two: zeros)."""
    if len(rewards) < 2:
        return [0.0] * len(rewards)
    return ADVANTAGE_ESTIMATORS.get(estimator)(rewards)


# -- advantage estimators ----------------------------------------------------------------


@register_advantage("grpo", paper="Shao et al. 2024, DeepSeekMath (GRPO)")
def grpo(rewards: Sequence[float]) -> list[float]:
    """``(r_i - mean) / (std + eps)``, 0 for a group without spread (Shao et al. 2024,
    DeepSeekMath: GRPO's group-normalised outcome advantage)."""
    n = len(rewards)
    mean = sum(rewards) / n
    centred = [r - mean for r in rewards]
    std = (sum(c * c for c in centred) / (n - 1)) ** 0.5
    return [c / (std + EPS) if std > EPS else 0.0 for c in centred]


@register_advantage("dr_grpo", paper="Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO)")
def dr_grpo(rewards: Sequence[float]) -> list[float]:
    """``r_i - mean``: no division by the std, which favours groups of low variance
    (Liu et al. 2025, Dr. GRPO; pair it with ``loss_norm: constant``)."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


@register_advantage("rloo", paper="Ahmadian et al. 2024, Back to Basics (RLOO)")
def rloo(rewards: Sequence[float]) -> list[float]:
    """``r_i - mean of the others``: the leave-one-out baseline (Ahmadian et al. 2024, RLOO)."""
    n = len(rewards)
    return [r - (sum(rewards) - r) / (n - 1) for r in rewards]


# -- step credits ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeafCredit:
    """What a step credit knows of one finished solution of a group."""

    outcome: float
    """The solution's outcome advantage (its reward under the run's estimator)."""
    reward: float
    """Its outcome reward."""
    steps: int
    """How many steps its path has (the credit returns one advantage each)."""
    scores: Sequence[float]
    """The process verifier's score of each step (empty: not scored)."""
    process: Sequence[float]
    """Each step's score as an advantage over all the group's steps, by the run's estimator."""


@register_credit("outcome", paper="Shao et al. 2024, DeepSeekMath (GRPO's outcome supervision)", process=False)
def outcome(leaf: LeafCredit, settings: Any) -> list[float]:
    """Every step (so every token) carries the solution's outcome advantage (Shao et al.
    2024, DeepSeekMath: outcome supervision)."""
    return [leaf.outcome] * leaf.steps


@register_credit("process", paper="Shao et al. 2024, DeepSeekMath (GRPO's process supervision, simplified)")
def process(leaf: LeafCredit, settings: Any) -> list[float]:
    """Each step carries its own process score, normalised over all the group's steps as
    in Shao et al. 2024 (DeepSeekMath, process supervision), where a token carries the sum
    of the normalised scores from its step on; here a step carries its own."""
    return list(leaf.process)


@register_credit("outcome_process", paper="this project's (step checks as in Lightman et al. 2023 gate outcome credit)")
def outcome_process(leaf: LeafCredit, settings: Any) -> list[float]:
    """``outcome_weight * outcome + process_weight * process`` per step, where no outcome
    credit flows through a step scored below ``reject_below``: a right answer reached
    through a wrong step pushes that step down (this project's; step-level verification
    as in Lightman et al. 2023, Let's Verify Step by Step)."""
    s = settings
    return [
        s.outcome_weight * leaf.outcome * (v >= s.reject_below) + s.process_weight * p
        for v, p in zip(leaf.scores, leaf.process, strict=True)
    ]


@register_credit("first_error", paper="this project's (first-error localisation as in Lightman et al. 2023)")
def first_error(leaf: LeafCredit, settings: Any) -> list[float]:
    """The outcome advantage, placed where the process verifier says it belongs: a wrong
    solution is blamed at its first rejected step only (none rejected: every step); a
    right one credits its accepted steps and charges its rejected ones the same amount
    (this project's; the first wrong step is what Lightman et al. 2023's PRM800K labels)."""
    return [_first_error_credit(leaf.outcome, leaf.scores, j, settings.reject_below) for j in range(leaf.steps)]


def _first_error_credit(advantage: float, scores: Sequence[float], j: int, reject_below: float) -> float:
    """Step ``j``'s share of a solution's outcome ``advantage`` under first-error credit."""
    rejected = [v < reject_below for v in scores]
    if advantage <= 0:
        if not any(rejected):
            return advantage
        return advantage if j == rejected.index(True) else 0.0
    return -advantage if rejected[j] else advantage
