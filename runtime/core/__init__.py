"""The base layer: core types (task, node, episode, usage), the exception tree, the
component registry and concurrency helpers. Everything else builds on it."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "BudgetExhausted": ".errors",
    "Component": ".registry",
    "ComponentField": ".registry",
    "ConfigError": ".errors",
    "Episode": ".types",
    "EpisodeBudgetError": ".errors",
    "EpisodeTimeout": ".errors",
    "ErrorInfo": ".types",
    "Node": ".types",
    "PolicyError": ".errors",
    "PolicyRequestError": ".errors",
    "PolicyResponseError": ".errors",
    "PolicyUnavailable": ".errors",
    "SearchlearnError": ".errors",
    "StrategyError": ".errors",
    "Task": ".types",
    "TaskError": ".errors",
    "TokenBudgetExceeded": ".errors",
    "Usage": ".types",
    "VerifierError": ".errors",
    "boundary_of": ".errors",
    "component_name": ".registry",
    "components": ".registry",
    "episode_from_json": ".types",
    "episode_to_json": ".types",
    "gather": ".concurrency",
    "lookup": ".registry",
    "register_builtins": ".registry",
    "validate_component": ".registry",
    "with_overrides": ".registry",
}

__all__ = [
    "BudgetExhausted",
    "Component",
    "ComponentField",
    "ConfigError",
    "Episode",
    "EpisodeBudgetError",
    "EpisodeTimeout",
    "ErrorInfo",
    "Node",
    "PolicyError",
    "PolicyRequestError",
    "PolicyResponseError",
    "PolicyUnavailable",
    "SearchlearnError",
    "StrategyError",
    "Task",
    "TaskError",
    "TokenBudgetExceeded",
    "Usage",
    "VerifierError",
    "boundary_of",
    "component_name",
    "components",
    "episode_from_json",
    "episode_to_json",
    "gather",
    "lookup",
    "register_builtins",
    "validate_component",
    "with_overrides",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
