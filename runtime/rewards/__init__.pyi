"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.rewards.base import (
    EXTRACTORS as EXTRACTORS,
)
from runtime.rewards.base import (
    AnswerExtractor as AnswerExtractor,
)
from runtime.rewards.base import (
    OutcomeVerifier as OutcomeVerifier,
)
from runtime.rewards.base import (
    ProcessVerifier as ProcessVerifier,
)
from runtime.rewards.base import (
    Score as Score,
)
from runtime.rewards.base import (
    Verifier as Verifier,
)
from runtime.rewards.base import (
    VerifierEnv as VerifierEnv,
)
from runtime.rewards.code_exec import (
    CodeExecution as CodeExecution,
)
from runtime.rewards.code_exec import (
    extract_code as extract_code,
)
from runtime.rewards.code_exec import (
    run_tests as run_tests,
)
from runtime.rewards.composition import (
    Gate as Gate,
)
from runtime.rewards.composition import (
    WeightedSum as WeightedSum,
)
from runtime.rewards.judge import (
    DEFAULT_OUTCOME_TEMPLATE as DEFAULT_OUTCOME_TEMPLATE,
)
from runtime.rewards.judge import (
    DEFAULT_STEP_TEMPLATE as DEFAULT_STEP_TEMPLATE,
)
from runtime.rewards.judge import (
    UNPARSEABLE as UNPARSEABLE,
)
from runtime.rewards.judge import (
    LLMJudge as LLMJudge,
)
from runtime.rewards.judge import (
    load_template as load_template,
)
from runtime.rewards.judge import (
    parse_judgement as parse_judgement,
)
from runtime.rewards.mc_value import (
    MonteCarloValue as MonteCarloValue,
)
from runtime.rewards.orm import (
    OutcomeRewardModel as OutcomeRewardModel,
)
from runtime.rewards.orm import (
    encode_solution as encode_solution,
)
from runtime.rewards.outcome import (
    ExactMatch as ExactMatch,
)
from runtime.rewards.outcome import (
    MathVerify as MathVerify,
)
from runtime.rewards.outcome import (
    ReasoningGymVerifier as ReasoningGymVerifier,
)
from runtime.rewards.outcome import (
    RegexMatch as RegexMatch,
)
from runtime.rewards.outcome import (
    TableVerifier as TableVerifier,
)
from runtime.rewards.prm import (
    ProcessRewardModel as ProcessRewardModel,
)
from runtime.rewards.prm import (
    encode_steps as encode_steps,
)
from runtime.rewards.prm import (
    pad_rows as pad_rows,
)
from runtime.rewards.shaping import (
    PotentialShaping as PotentialShaping,
)
from runtime.rewards.tool_call import (
    ToolCallVerifier as ToolCallVerifier,
)
from runtime.rewards.verifiers_rubric import (
    VerifiersRubric as VerifiersRubric,
)
from runtime.rewards.workers import (
    WorkerCrashed as WorkerCrashed,
)
from runtime.rewards.workers import (
    WorkerSettings as WorkerSettings,
)
from runtime.rewards.workers import (
    WorkerStatistics as WorkerStatistics,
)
from runtime.rewards.workers import (
    configure_workers as configure_workers,
)
from runtime.rewards.workers import (
    run_in_worker as run_in_worker,
)
from runtime.rewards.workers import (
    shutdown_workers as shutdown_workers,
)
from runtime.rewards.workers import (
    worker_statistics as worker_statistics,
)
