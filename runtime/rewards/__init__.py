"""Part 2, reward design: the verifier protocols and components, answer extraction,
outcome checks, the LLM judge, sandboxed code execution, Monte-Carlo values, PRM
scoring, composition (weighted sums, gates) and potential-based shaping."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "AnswerExtractor": ".base",
    "CodeExecution": ".code_exec",
    "DEFAULT_OUTCOME_TEMPLATE": ".judge",
    "DEFAULT_STEP_TEMPLATE": ".judge",
    "EXTRACTORS": ".base",
    "ExactMatch": ".outcome",
    "Gate": ".composition",
    "LLMJudge": ".judge",
    "MathVerify": ".outcome",
    "MonteCarloValue": ".mc_value",
    "OutcomeVerifier": ".base",
    "PotentialShaping": ".shaping",
    "ProcessRewardModel": ".prm",
    "ProcessVerifier": ".base",
    "ReasoningGymVerifier": ".outcome",
    "RegexMatch": ".outcome",
    "Score": ".base",
    "TableVerifier": ".outcome",
    "UNPARSEABLE": ".judge",
    "Verifier": ".base",
    "VerifierEnv": ".base",
    "WeightedSum": ".composition",
    "encode_steps": ".prm",
    "extract_code": ".code_exec",
    "load_template": ".judge",
    "pad_rows": ".prm",
    "parse_judgement": ".judge",
    "run_tests": ".code_exec",
}

__all__ = [
    "DEFAULT_OUTCOME_TEMPLATE",
    "DEFAULT_STEP_TEMPLATE",
    "EXTRACTORS",
    "UNPARSEABLE",
    "AnswerExtractor",
    "CodeExecution",
    "ExactMatch",
    "Gate",
    "LLMJudge",
    "MathVerify",
    "MonteCarloValue",
    "OutcomeVerifier",
    "PotentialShaping",
    "ProcessRewardModel",
    "ProcessVerifier",
    "ReasoningGymVerifier",
    "RegexMatch",
    "Score",
    "TableVerifier",
    "Verifier",
    "VerifierEnv",
    "WeightedSum",
    "encode_steps",
    "extract_code",
    "load_template",
    "pad_rows",
    "parse_judgement",
    "run_tests",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
