"""searchlearn runtime: everything an episode needs to run.

Core types, the Policy protocol and its backends, verifiers (rules, PRM, Monte-Carlo
value, LLM judge, code execution, composition and shaping), the episode context,
the scheduler (:class:`Runtime`), the SQLite episode store, task sources and config.
"""

from __future__ import annotations

from runtime.code_exec import CodeExecution
from runtime.composition import Gate, WeightedSum
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
from runtime.judge import UNPARSEABLE, LLMJudge
from runtime.limits import EndpointLimiter, EndpointLimits, Price
from runtime.mc_value import MonteCarloValue
from runtime.openai_policy import OpenAIPolicy
from runtime.policy import Completion, GenerationRequest, GenerationResult, Policy, ScriptedPolicy
from runtime.prm import PRMExample, ProcessRewardModel, mc_examples, train_prm
from runtime.scheduler import RunStats, Runtime, SchedulerSettings
from runtime.shaping import PotentialShaping
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
    "UNPARSEABLE",
    "AnswerExtractor",
    "BudgetExhausted",
    "CodeExecution",
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
    "Gate",
    "GenerationRequest",
    "GenerationResult",
    "LLMJudge",
    "MathVerify",
    "MonteCarloValue",
    "Node",
    "OpenAIPolicy",
    "OutcomeVerifier",
    "PRMExample",
    "Policy",
    "PolicyError",
    "PolicyRequestError",
    "PolicyResponseError",
    "PolicyUnavailable",
    "PotentialShaping",
    "Price",
    "ProcessRewardModel",
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
    "WeightedSum",
    "episode_from_json",
    "episode_to_json",
    "iterate_tasks",
    "jsonl_tasks",
    "mc_examples",
    "reasoning_gym_tasks",
    "tiny_tasks",
    "train_prm",
]
