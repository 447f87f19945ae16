"""searchlearn runtime: everything an episode needs to run.

Core types, the Policy protocol and its backends, verifiers, the episode context,
the scheduler (:class:`Runtime`), the SQLite episode store, task sources and config.
"""

from __future__ import annotations

from runtime.context import Context, Sampling, Verifiers
from runtime.errors import (
    BudgetExhausted,
    ConfigError,
    EpisodeBudgetError,
    EpisodeTimeout,
    PolicyError,
    PolicyRequestError,
    PolicyResponseError,
    PolicyUnavailable,
    SearchlearnError,
    StrategyError,
    TaskError,
    TokenBudgetExceeded,
    VerifierError,
)
from runtime.limits import EndpointLimiter, EndpointLimits, Price
from runtime.openai_policy import OpenAIPolicy
from runtime.policy import Completion, GenerationRequest, GenerationResult, Policy, ScriptedPolicy
from runtime.scheduler import Runtime, RunStats, SchedulerSettings
from runtime.store import EpisodeStore
from runtime.tasks import iterate_tasks, jsonl_tasks, reasoning_gym_tasks, tiny_tasks
from runtime.types import Episode, ErrorInfo, Node, Task, Usage, episode_from_json, episode_to_json
from runtime.verifiers import (
    AnswerExtractor,
    ExactMatch,
    MathVerify,
    OutcomeVerifier,
    ProcessVerifier,
    ReasoningGymVerifier,
    RegexMatch,
    Score,
    TableVerifier,
    TinyStepVerifier,
)

__all__ = [
    "AnswerExtractor",
    "BudgetExhausted",
    "Completion",
    "ConfigError",
    "Context",
    "EndpointLimiter",
    "EndpointLimits",
    "Episode",
    "EpisodeBudgetError",
    "EpisodeStore",
    "EpisodeTimeout",
    "ErrorInfo",
    "ExactMatch",
    "GenerationRequest",
    "GenerationResult",
    "MathVerify",
    "Node",
    "OpenAIPolicy",
    "OutcomeVerifier",
    "Policy",
    "PolicyError",
    "PolicyRequestError",
    "PolicyResponseError",
    "PolicyUnavailable",
    "Price",
    "ProcessVerifier",
    "ReasoningGymVerifier",
    "RegexMatch",
    "RunStats",
    "Runtime",
    "Sampling",
    "SchedulerSettings",
    "Score",
    "ScriptedPolicy",
    "SearchlearnError",
    "StrategyError",
    "TableVerifier",
    "Task",
    "TaskError",
    "TinyStepVerifier",
    "TokenBudgetExceeded",
    "Usage",
    "VerifierError",
    "Verifiers",
    "episode_from_json",
    "episode_to_json",
    "iterate_tasks",
    "jsonl_tasks",
    "reasoning_gym_tasks",
    "tiny_tasks",
]
