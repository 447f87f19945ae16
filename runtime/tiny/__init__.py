"""The bundled tiny arithmetic domain as one environment: its tasks, its rule
verifier, its prompt format and the policy checkpoints that ship with the package."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "ArithProblem": ".domain",
    "BUNDLED": ".policy_format",
    "BUNDLED_POLICY": ".policy_format",
    "CHAT_TEMPLATE": ".policy_format",
    "SPECIAL_TOKENS": ".policy_format",
    "STEP_DELIMITER": ".policy_format",
    "TinyStepVerifier": ".verifier",
    "TinyTasks": ".tasks",
    "WEAK_POLICY": ".policy_format",
    "assistant_prefix": ".policy_format",
    "check_step": ".domain",
    "corrupt_tiny_step": ".corruption",
    "evaluate_greedy": ".policy_format",
    "generate_problem": ".domain",
    "parse_expression": ".domain",
    "solution_steps": ".domain",
    "tiny_tasks": ".tasks",
    "training_trace": ".domain",
}

__all__ = [
    "BUNDLED",
    "BUNDLED_POLICY",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "STEP_DELIMITER",
    "WEAK_POLICY",
    "ArithProblem",
    "TinyStepVerifier",
    "TinyTasks",
    "assistant_prefix",
    "check_step",
    "corrupt_tiny_step",
    "evaluate_greedy",
    "generate_problem",
    "parse_expression",
    "solution_steps",
    "tiny_tasks",
    "training_trace",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
