"""Builds the parts of a run (policy, strategy, verifiers, tasks) from a RunConfig;
:mod:`runtime.app.build` puts them together into a runtime.

Every component in the config is already a validated object; building only binds it to
the run's resources (a verifier to the run's policy and step delimiter, a task source to
its data), so no setting is copied here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from runtime.app.config import RunConfig, WeightedVerifier, format_validation_error
from runtime.core.errors import ConfigError, TaskError
from runtime.core.threads import thread_share
from runtime.core.types import Task
from runtime.policy.backends import USER_CONFIG, validate_backend
from runtime.policy.base import Policy
from runtime.rewards.base import AnswerExtractor, OutcomeVerifier, ProcessVerifier, Verifier, VerifierEnv
from runtime.rewards.composition import Gate, WeightedSum
from runtime.rewards.shaping import PotentialShaping
from runtime.search.context import Verifiers
from runtime.search.strategy import BaseStrategy

__all__ = ["build_policy", "build_strategy", "build_tasks", "build_verifiers", "torch_consumers"]


def torch_consumers(config: RunConfig) -> int:
    """Torch consumers of a run that compute at the same time: the local engine, the
    learner (not beside this process's engine in ``learner.mode: sync``: they take
    turns), the evaluator's engine, a process reward model, an outcome reward model."""
    learner = config.learner
    engines = 1
    if config.cluster is not None:  # the workers' engines share this machine only on a local cluster
        engines = config.cluster.workers if config.cluster.address is None else 0
    count = engines * int(config.policy.torch_engine)
    if learner is not None:
        takes_turns = getattr(learner, "mode", "online") == "sync" and count > 0
        count += int(not takes_turns) + int(learner.eval is not None)
    v = config.verifiers
    parts = [p.verifier for p in v.process] if isinstance(v.process, list) else [v.process]
    count += sum(getattr(part, "name", None) == "prm" for part in parts)
    count += int(getattr(v.outcome, "name", None) == "orm")
    return max(1, int(count))


def build_policy(config: RunConfig) -> Policy:
    """The run's policy, from its backend's settings (``policy.kind``)."""
    policy: Policy = config.policy.build(thread_share(torch_consumers(config)))
    return policy


def build_strategy(config: RunConfig) -> BaseStrategy:
    """A fresh copy of the configured strategy (a strategy may keep run-wide state, such
    as compute-optimal's global token budget, so two runtimes never share one)."""
    strategy: BaseStrategy = config.strategy.model_copy(deep=True)
    return strategy


def _own_policy(section: dict[str, Any]) -> Policy:
    try:
        backend = validate_backend(section, USER_CONFIG)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "verifiers: a verifier's policy")) from None
    except ValueError as exc:  # an unknown kind
        raise ConfigError(f"verifiers: a verifier's policy: {exc}") from None
    policy: Policy = backend.build()
    return policy


def _extractor(patterns: list[str], field: str) -> AnswerExtractor:
    try:
        return AnswerExtractor(patterns)
    except Exception as exc:  # a bad regex, or one without a group
        raise ConfigError(f"verifiers.{field}: {exc}") from None


def build_verifiers(config: RunConfig, policy: Policy | None = None) -> Verifiers:
    """The run's verifiers. ``policy`` is the run's policy, used by the Monte-Carlo
    value and by an LLM judge without a ``policy`` of its own."""
    v = config.verifiers
    extractor = _extractor(v.answer_patterns, "answer_patterns")
    final = None if v.final_answer_patterns is None else _extractor(v.final_answer_patterns, "final_answer_patterns")
    env = VerifierEnv(
        policy=policy,
        delimiter=config.sampling.step_delimiter,
        extractor=extractor,
        make_policy=_own_policy,
        threads=thread_share(torch_consumers(config)),
        environment=config.environment,
    )
    built: dict[str, Any] = {}

    def bind(component: Verifier, field: str) -> Any:
        """One verifier per distinct component (a judge for outcomes and steps is one judge)."""
        key = f"{type(component).__qualname__}:{component.model_dump_json()}"
        if key not in built:
            built[key] = component.build(replace(env, field=field))
        return built[key]

    outcome: OutcomeVerifier | None = bind(v.outcome, "verifiers.outcome") if v.outcome is not None else None
    process: ProcessVerifier | None = None
    if isinstance(v.process, list):
        parts: list[WeightedVerifier] = v.process
        weighted = [(bind(p.verifier, f"verifiers.process.{i}"), p.weight) for i, p in enumerate(parts)]
        process = WeightedSum(weighted) if weighted else None
    elif v.process is not None:
        process = bind(v.process, "verifiers.process")
    if v.gate:
        assert process is not None and outcome is not None  # check_config
        outcome = Gate(
            process, outcome, threshold=v.gate_threshold, delimiter=config.sampling.step_delimiter, per_step=True
        )
    shaping = None
    if v.shaping_gamma is not None:
        assert process is not None  # check_config
        shaping = PotentialShaping(process, gamma=v.shaping_gamma, scope=v.shaping_scope)
    return Verifiers(
        outcome=outcome,
        process=process,
        extractor=extractor,
        timeout=v.call_timeout(),
        shaping=shaping,
        final=final,
        environment=config.environment,
    )


def build_tasks(config: RunConfig) -> Iterable[Task]:
    """The run's tasks, checked up front (a missing file or dataset fails here)."""
    try:
        tasks: Iterable[Task] = config.tasks.tasks()
        return tasks
    except TaskError as exc:
        field = config.tasks.input_field
        raise ConfigError(f"tasks.{field}: {exc}" if field else f"tasks: {exc}") from None
