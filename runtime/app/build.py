"""Builds the parts of a run (policy, strategy, verifiers, tasks, runtime) from a RunConfig."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from runtime.app.config import ComputeOptimalConfig, PolicyConfig, RunConfig
from runtime.core.errors import ConfigError, TaskError
from runtime.core.types import Task
from runtime.policy.base import Policy
from runtime.policy.limits import EndpointLimits, Price
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import AnswerExtractor, OutcomeVerifier, ProcessVerifier
from runtime.rewards.composition import Gate, WeightedSum
from runtime.rewards.outcome import ExactMatch, MathVerify, ReasoningGymVerifier, RegexMatch
from runtime.rewards.shaping import PotentialShaping
from runtime.scheduling.scheduler import Runtime, SchedulerSettings
from runtime.scheduling.tasks import jsonl_tasks, reasoning_gym_tasks
from runtime.search.context import Sampling, Verifiers
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier

__all__ = ["build_policy", "build_runtime", "build_strategy", "build_tasks", "build_verifiers"]


def build_policy(config: RunConfig) -> Policy:
    return _policy(config.policy)


def _policy(p: PolicyConfig) -> Policy:
    if p.kind == "scripted":
        return ScriptedPolicy(p.script, latency=p.latency)
    if p.kind == "local":
        from runtime.policy.local import LocalPolicy, resolve_checkpoint

        try:
            resolve_checkpoint(p.path)
        except FileNotFoundError as exc:
            raise ConfigError(f"policy.path: {exc}") from None
        return LocalPolicy.from_path(p.path, max_batch=p.max_concurrency)
    from runtime.policy.openai_compatible import OpenAIPolicy

    return OpenAIPolicy(
        p.model,
        base_url=p.base_url,
        api_key=os.environ.get(p.api_key_env) or "EMPTY",
        mode=p.mode,
        server=p.server,
        limits=EndpointLimits(p.max_concurrency, p.requests_per_minute, p.tokens_per_minute, p.budget_usd),
        timeout=p.timeout,
        retry_attempts=p.retry_attempts,
        retry_max_wait=p.retry_max_wait,
        price=Price(p.price.input, p.price.output) if p.price else None,
        prompt_template=p.prompt_template,
        extra_body=p.extra_body,
    )


#: Strategy configs that score steps, so they need a process verifier.
_NEEDS_PROCESS = {"beam_search", "dvts", "tree_of_thought", "verify_backtrack"}


def build_strategy(config: RunConfig) -> Any:
    from strategies import STRATEGIES

    s = config.strategy
    v = config.verifiers
    has_process = v.process != "none" or bool(v.process_weights)
    option = {k: getattr(s, k, None) for k in ("value", "feedback", "medium_strategy", "hard_strategy")}
    needs = (
        s.name in _NEEDS_PROCESS
        or (s.name == "mcts" and option["value"] != "rollout_outcome")
        or (s.name == "self_refine" and option["feedback"] == "process")
        or (s.name == "compute_optimal" and bool({option["medium_strategy"], option["hard_strategy"]} - {"best_of_n"}))
    )
    if needs and not has_process:
        raise ConfigError(
            f"verifiers.process: strategy {s.name!r} scores steps and needs a process verifier "
            "(allowed: tiny_rule, prm, mc_value, judge)"
        )
    if isinstance(s, ComputeOptimalConfig) and s.hard_agreement > s.easy_agreement:
        raise ConfigError(
            f"strategy.hard_agreement: {s.hard_agreement} must not exceed strategy.easy_agreement ({s.easy_agreement})"
        )
    if v.outcome == "none" and (option["value"] == "rollout_outcome" or option["feedback"] == "outcome"):
        raise ConfigError(f"verifiers.outcome: strategy {s.name!r} as configured needs an outcome verifier")
    fields = s.model_dump(exclude={"name"})
    return STRATEGIES[s.name](**fields)


def build_verifiers(config: RunConfig, policy: Policy | None = None) -> Verifiers:
    """The run's verifiers. ``policy`` is the run's policy, used by the Monte-Carlo
    value and by an LLM judge without a ``judge_policy`` of its own."""
    v = config.verifiers
    try:
        extractor = AnswerExtractor(v.answer_patterns)
    except (ValueError, Exception) as exc:
        raise ConfigError(f"verifiers.answer_patterns: {exc}") from None
    judges: dict[str, Any] = {}

    def judge() -> Any:
        if not judges:
            judges["judge"] = _judge(config, policy)
        return judges["judge"]

    def needs_policy(what: str) -> Policy:
        if policy is None:
            raise ConfigError(f"verifiers.process: {what} needs the run's policy")
        return policy

    def process_verifier(name: str) -> ProcessVerifier:
        if name == "tiny_rule":
            return TinyStepVerifier(hints=v.tiny_rule_hints)
        if name == "prm":
            if not v.prm_path:
                raise ConfigError("verifiers.prm_path: process 'prm' needs a checkpoint directory")
            from runtime.rewards.prm import ProcessRewardModel

            try:
                return ProcessRewardModel(
                    v.prm_path, batch_size=v.prm_batch_size, delimiter=config.sampling.step_delimiter
                )
            except (FileNotFoundError, OSError, ValueError) as exc:
                raise ConfigError(f"verifiers.prm_path: {exc}") from None
        if name == "mc_value":
            from runtime.rewards.mc_value import MonteCarloValue

            return MonteCarloValue(
                needs_policy("mc_value"),
                rollouts=v.mc_rollouts,
                temperature=v.mc_temperature,
                max_tokens=v.mc_max_tokens,
                delimiter=config.sampling.step_delimiter,
                outcome=ExactMatch(),
                extractor=extractor,
            )
        process_judge: ProcessVerifier = judge()
        return process_judge

    outcome: OutcomeVerifier | None
    if v.outcome == "judge":
        outcome = judge()
    elif v.outcome == "code":
        from runtime.rewards.code_exec import CodeExecution

        outcome = CodeExecution(timeout=v.code_timeout, memory_mb=v.code_memory_mb)
    else:
        makers: dict[str, Callable[[], OutcomeVerifier | None]] = {
            "exact": ExactMatch,
            "math": MathVerify,
            "reasoning_gym": ReasoningGymVerifier,
            "none": lambda: None,
        }
        outcome = makers.get(v.outcome, lambda: RegexMatch(v.regex))()
    process: ProcessVerifier | None = None
    if v.process_weights:
        process = WeightedSum([(process_verifier(name), w) for name, w in v.process_weights.items()])
    elif v.process != "none":
        process = process_verifier(v.process)
    if v.gate:
        if process is None or outcome is None:
            raise ConfigError("verifiers.gate: a gate needs both a process and an outcome verifier")
        outcome = Gate(
            process, outcome, threshold=v.gate_threshold, delimiter=config.sampling.step_delimiter, per_step=True
        )
    shaping = None
    if v.shaping_gamma is not None:
        if process is None:
            raise ConfigError(
                "verifiers.shaping_gamma: shaping takes its potential from the process verifier; none is set"
            )
        shaping = PotentialShaping(process, gamma=v.shaping_gamma, scope=v.shaping_scope)
    return Verifiers(outcome=outcome, process=process, extractor=extractor, timeout=v.timeout, shaping=shaping)


def _judge(config: RunConfig, policy: Policy | None) -> Any:
    from runtime.rewards.judge import LLMJudge, load_template

    v = config.verifiers
    judge_policy = _policy(v.judge_policy) if v.judge_policy is not None else policy
    if judge_policy is None:
        raise ConfigError("verifiers.judge_policy: an LLM judge needs a policy (the run's, or judge_policy)")
    try:
        outcome_template = load_template(v.judge_outcome_template)
        step_template = load_template(v.judge_step_template)
    except FileNotFoundError as exc:
        raise ConfigError(f"verifiers.judge_*_template: {exc}") from None
    return LLMJudge(
        judge_policy,
        outcome_template=outcome_template,
        step_template=step_template,
        samples=v.judge_samples,
        max_tokens=v.judge_max_tokens,
    )


def build_tasks(config: RunConfig) -> Iterable[Task]:
    """The run's tasks, checked up front (a missing file or dataset fails here)."""
    t = config.tasks
    try:
        if t.source == "jsonl":
            return jsonl_tasks(t.path or "")
        if t.source == "reasoning_gym":
            return list(reasoning_gym_tasks(t.name or "", t.size, t.seed, t.config))
        return list(tiny_tasks(t.size, t.steps, t.seed))
    except TaskError as exc:
        field = {"jsonl": "tasks.path", "reasoning_gym": "tasks.name"}.get(t.source, "tasks")
        raise ConfigError(f"{field}: {exc}") from None


def build_runtime(config: RunConfig, *, handle_signals: bool = False) -> Runtime:
    s = config.scheduler
    sampling = Sampling(**config.sampling.model_dump())
    policy = build_policy(config)
    settings = SchedulerSettings(
        concurrency=s.concurrency,
        buffer=s.buffer,
        samples_per_task=s.samples_per_task,
        episode_timeout=s.episode_timeout,
        token_budget=s.token_budget,
        on_shutdown=s.on_shutdown,
        drain_timeout=s.drain_timeout,
        retry_failed=s.retry_failed,
    )
    return Runtime(
        policy,
        build_strategy(config),
        verifiers=build_verifiers(config, policy),
        sampling=sampling,
        settings=settings,
        store=config.store.path,
        run_id=config.run_id,
        config=config.model_dump(mode="json"),
        handle_signals=handle_signals,
    )
