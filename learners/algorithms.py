"""Learning algorithms by name: advantage estimators, step credit, policy losses, loss
normalisers and KL estimators, each a registry of plain functions (as verl's
``register_adv_est`` / ``register_policy_loss`` in ``verl/trainer/ppo/core_algos.py``).

A new algorithm is one decorated function; a config names it::

    from learners.algorithms import register_advantage

    @register_advantage("max_baseline", paper="Someone et al. 2026")
    def max_baseline(rewards: Sequence[float]) -> list[float]:
        \"\"\"r_i - max of the group.\"\"\"
        best = max(rewards)
        return [r - best for r in rewards]

    # learner: {kind: grpo, estimator: max_baseline}

The families and the config field that names a member of each:

==========================  ==================  =============================================
registry                    config field        built-ins (module)
==========================  ==================  =============================================
``advantage_estimators``    ``estimator``       grpo, dr_grpo, rloo (:mod:`learners.advantages`)
``step_credits``            ``advantage``       outcome, process, outcome_process, first_error
``policy_losses``           ``policy_loss``     ppo_clip (:mod:`learners.losses`)
``loss_norms``              ``loss_norm``       token, sequence, constant
``kl_estimators``           ``kl_estimator``    k3
==========================  ==================  =============================================

Design decisions:
- Functions, not classes: an algorithm has no state and its settings are the learner's
  (a function reads the fields it needs from the settings object it is given), so a
  registration adds a name, never a config section.
- A config field holding a name is a plain ``str`` checked against its registry when the
  config is validated (``EstimatorName`` etc.: ``Annotated[str, AfterValidator(registry.check),
  registry]``, the registry itself marking the field for the config reference): a bad name fails at load, naming the
  field, the value and the registered names, not at the first update. The check is
  read off the registry at that moment, so a function registered before the config is
  built is accepted; there is no ``Literal`` to extend.
- A name is found as :func:`runtime.core.registry.lookup` finds a component: registered
  (its module imported), then ``module:function`` (imported, then required to have
  registered itself), then an entry point in the group ``searchlearn.<registry>``
  (how an installed package adds one), then the built-in module (imported on first use,
  so this module stays free of torch and of the learners).
- Each member carries the paper it follows (``paper``, "this project's" when original);
  its docstring says what it computes and cites the paper too, and is what ``searchlearn
  components`` shows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from runtime.core.errors import ConfigError

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_NORMS",
    "POLICY_LOSSES",
    "REGISTRIES",
    "STEP_CREDITS",
    "Algorithm",
    "CreditName",
    "EstimatorName",
    "KLEstimatorName",
    "LossNormName",
    "PolicyLossName",
    "Registry",
    "register_advantage",
    "register_credit",
    "register_kl_estimator",
    "register_loss_norm",
    "register_policy_loss",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Algorithm(Generic[F]):
    """One registered function, with the paper it follows and what its caller must know
    about it (``traits``: e.g. a step credit that reads the process verifier's scores)."""

    name: str
    fn: F
    paper: str
    traits: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """Functions of one family by name (see module doc)."""

    def __init__(self, family: str, what: str, builtins: str) -> None:
        """``family``: the registry's name (and entry point group ``searchlearn.<family>``);
        ``what``: one member, in words (for errors); ``builtins``: the module defining the
        built-in members, imported on first lookup."""
        self.family = family
        self.what = what
        self.builtins = builtins
        self._members: dict[str, Algorithm[F]] = {}

    def register(self, name: str, *, paper: str, **traits: Any) -> Callable[[F], F]:
        """Decorator: register the function under ``name``; ``paper`` is the work it
        follows ("this project's" when it is original). Registering another function
        under a taken name is an error naming both; re-running the same definition (a
        reloaded module) replaces it."""

        def add(fn: F) -> F:
            other = self._members.get(name)
            if other is not None and _where(other.fn) != _where(fn):
                raise ConfigError(f"{self.what} name {name!r} is claimed by both {_where(other.fn)} and {_where(fn)}")
            self._members[name] = Algorithm(name, fn, paper, dict(traits))
            return fn

        return add

    def entry(self, name: str) -> Algorithm[F]:
        """The registered member ``name``; ConfigError listing the registered names if none."""
        found = self._members.get(name)
        if found is not None:
            return found
        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"cannot import {self.what} {name!r}: {exc}") from None
            for member in self._members.values():
                if member.fn is fn:
                    return member
            raise ConfigError(f"{name!r} is not a registered {self.what} (decorate it with the registry's register)")
        self._load(name)
        if name in self._members:
            return self._members[name]
        raise ConfigError(f"unknown {self.what} {name!r} (registered: {', '.join(self.names())})")

    def get(self, name: str) -> F:
        """The function registered under ``name`` (see :meth:`entry`)."""
        return self.entry(name).fn

    def names(self) -> list[str]:
        """Every registered name, built-ins first in their order of definition."""
        self._load()
        builtin = [n for n, m in self._members.items() if m.fn.__module__ == self.builtins]
        return builtin + [n for n in self._members if n not in builtin]

    def members(self) -> dict[str, Algorithm[F]]:
        """Every registered member by name, with its paper."""
        return {name: self._members[name] for name in self.names()}

    def functions(self) -> dict[str, F]:
        """Every registered function by name (what ``searchlearn components`` lists: its
        module, name and docstring, which cites its paper)."""
        return {name: member.fn for name, member in self.members().items()}

    def check(self, value: str) -> str:
        """``value`` if it names a member (a pydantic validator: a bad name is a
        validation error listing the registered names)."""
        try:
            self.entry(value)
        except ConfigError as exc:
            raise PydanticCustomError("registered_name", "{problem}", {"problem": str(exc)}) from None
        return value

    def builtin_names(self) -> list[str]:
        """The names this project defines (the config reference lists them; a plug-in
        documents its own)."""
        self._load()
        return [n for n, m in self._members.items() if m.fn.__module__ == self.builtins]

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a test or a notebook removing what it registered)."""
        self._members.pop(name, None)

    def _load(self, name: str | None = None) -> None:
        """Import the built-ins, then the installed entry points (all, or ``name``'s)."""
        importlib.import_module(self.builtins)
        for ep in entry_points(group=f"searchlearn.{self.family}"):
            if ep.name not in self._members and (name is None or ep.name == name):
                ep.load()

    def __repr__(self) -> str:
        return f"Registry({self.family!r})"

    def __copy__(self) -> Registry[F]:
        return self  # one registry per family: a copied config field checks against the same

    def __deepcopy__(self, memo: dict[int, Any]) -> Registry[F]:
        return self


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


ADVANTAGE_ESTIMATORS: Registry[Callable[..., list[float]]] = Registry(
    "advantage_estimators", "advantage estimator", "learners.advantages"
)
"""Group baselines: a group's rewards (at least two) to one advantage each (``estimator``)."""
STEP_CREDITS: Registry[Callable[..., list[float]]] = Registry("step_credits", "step credit", "learners.advantages")
"""Per-step credit of a finished solution: its outcome advantage and its steps' process
scores to one advantage per step (``advantage``)."""
POLICY_LOSSES: Registry[Callable[..., Any]] = Registry("policy_losses", "policy loss", "learners.losses")
"""Per-token policy losses from the new and proximal log-probs and the advantages (``policy_loss``)."""
LOSS_NORMS: Registry[Callable[..., Any]] = Registry("loss_norms", "loss normaliser", "learners.losses")
"""How a rollout's per-token losses are summed into the batch's loss (``loss_norm``)."""
KL_ESTIMATORS: Registry[Callable[..., Any]] = Registry("kl_estimators", "KL estimator", "learners.losses")
"""Per-token estimators of KL(pi_theta || pi_ref) from the two log-probs (``kl_estimator``)."""

REGISTRIES: dict[str, Registry[Any]] = {
    r.family: r for r in (ADVANTAGE_ESTIMATORS, STEP_CREDITS, POLICY_LOSSES, LOSS_NORMS, KL_ESTIMATORS)
}
"""Every algorithm registry by family name (``searchlearn components <family>``)."""

EstimatorName = Annotated[str, AfterValidator(ADVANTAGE_ESTIMATORS.check), ADVANTAGE_ESTIMATORS]
"""A config field naming a registered advantage estimator."""
CreditName = Annotated[str, AfterValidator(STEP_CREDITS.check), STEP_CREDITS]
"""A config field naming a registered step credit."""
PolicyLossName = Annotated[str, AfterValidator(POLICY_LOSSES.check), POLICY_LOSSES]
"""A config field naming a registered policy loss."""
LossNormName = Annotated[str, AfterValidator(LOSS_NORMS.check), LOSS_NORMS]
"""A config field naming a registered loss normaliser."""
KLEstimatorName = Annotated[str, AfterValidator(KL_ESTIMATORS.check), KL_ESTIMATORS]
"""A config field naming a registered KL estimator."""


def register_advantage(name: str, *, paper: str) -> Callable[[F], F]:
    """Register a group baseline ``fn(rewards) -> advantages`` (``rewards``: a group of at
    least two outcome rewards; one advantage each, in order)."""
    return ADVANTAGE_ESTIMATORS.register(name, paper=paper)  # type: ignore[return-value]


def register_credit(name: str, *, paper: str, process: bool = True) -> Callable[[F], F]:
    """Register a step credit ``fn(leaf, settings) -> per-step advantages`` (``leaf``: a
    :class:`learners.advantages.LeafCredit`); ``process``: it reads the process
    verifier's step scores (False: the steps are not scored for it)."""
    return STEP_CREDITS.register(name, paper=paper, process=process)  # type: ignore[return-value]


def register_policy_loss(name: str, *, paper: str) -> Callable[[F], F]:
    """Register a policy loss ``fn(logp, old_logp, advantages, settings) -> (loss, clipped)``:
    per-token loss to minimise (before the behaviour weight) and how many tokens the loss
    clipped (a count)."""
    return POLICY_LOSSES.register(name, paper=paper)  # type: ignore[return-value]


def register_loss_norm(name: str, *, paper: str) -> Callable[[F], F]:
    """Register a loss normaliser ``fn(per_token, rollouts, tokens, settings) -> loss``: one
    rollout's share of the batch loss (``rollouts``, ``tokens``: the batch's counts)."""
    return LOSS_NORMS.register(name, paper=paper)  # type: ignore[return-value]


def register_kl_estimator(name: str, *, paper: str) -> Callable[[F], F]:
    """Register a KL estimator ``fn(logp, ref_logp) -> per-token KL``."""
    return KL_ESTIMATORS.register(name, paper=paper)  # type: ignore[return-value]
