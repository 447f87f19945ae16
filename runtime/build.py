"""Builds the parts of a run (policy, strategy, verifiers, tasks, runtime) from a RunConfig."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from runtime.config import RunConfig
from runtime.context import Sampling, Verifiers
from runtime.errors import ConfigError, TaskError
from runtime.limits import EndpointLimits, Price
from runtime.policy import Policy, ScriptedPolicy
from runtime.scheduler import Runtime, SchedulerSettings
from runtime.tasks import jsonl_tasks, reasoning_gym_tasks, tiny_tasks
from runtime.types import Task
from runtime.verifiers import (
    AnswerExtractor,
    ExactMatch,
    MathVerify,
    OutcomeVerifier,
    ProcessVerifier,
    ReasoningGymVerifier,
    RegexMatch,
    TinyStepVerifier,
)

__all__ = ["build_policy", "build_runtime", "build_strategy", "build_tasks", "build_verifiers"]


def build_policy(config: RunConfig) -> Policy:
    p = config.policy
    if p.kind == "scripted":
        return ScriptedPolicy(p.script, latency=p.latency)
    if p.kind == "local":
        from runtime.local import LocalPolicy, resolve_checkpoint

        try:
            resolve_checkpoint(p.path)
        except FileNotFoundError as exc:
            raise ConfigError(f"policy.path: {exc}") from None
        return LocalPolicy.from_path(p.path, max_batch=p.max_concurrency)
    from runtime.openai_policy import OpenAIPolicy

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


def build_strategy(config: RunConfig) -> Any:
    from strategies import STRATEGIES

    fields = config.strategy.model_dump(exclude={"name"})
    return STRATEGIES[config.strategy.name](**fields)


def build_verifiers(config: RunConfig) -> Verifiers:
    v = config.verifiers
    outcome: OutcomeVerifier | None = {
        "exact": ExactMatch,
        "math": MathVerify,
        "reasoning_gym": ReasoningGymVerifier,
        "none": lambda: None,
    }.get(v.outcome, lambda: RegexMatch(v.regex))()
    process: ProcessVerifier | None = TinyStepVerifier() if v.process == "tiny_rule" else None
    try:
        extractor = AnswerExtractor(v.answer_patterns)
    except (ValueError, Exception) as exc:
        raise ConfigError(f"verifiers.answer_patterns: {exc}") from None
    return Verifiers(outcome=outcome, process=process, extractor=extractor, timeout=v.timeout)


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
        build_policy(config),
        build_strategy(config),
        verifiers=build_verifiers(config),
        sampling=sampling,
        settings=settings,
        store=config.store.path,
        run_id=config.run_id,
        config=config.model_dump(mode="json"),
        handle_signals=handle_signals,
    )
