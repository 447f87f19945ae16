"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.core import (
    BudgetExhausted as BudgetExhausted,
)
from runtime.core import (
    Component as Component,
)
from runtime.core import (
    ConfigError as ConfigError,
)
from runtime.core import (
    Episode as Episode,
)
from runtime.core import (
    EpisodeBudgetError as EpisodeBudgetError,
)
from runtime.core import (
    EpisodeTimeout as EpisodeTimeout,
)
from runtime.core import (
    ErrorInfo as ErrorInfo,
)
from runtime.core import (
    Node as Node,
)
from runtime.core import (
    PolicyError as PolicyError,
)
from runtime.core import (
    PolicyRequestError as PolicyRequestError,
)
from runtime.core import (
    PolicyResponseError as PolicyResponseError,
)
from runtime.core import (
    PolicyUnavailable as PolicyUnavailable,
)
from runtime.core import (
    SearchlearnError as SearchlearnError,
)
from runtime.core import (
    StrategyError as StrategyError,
)
from runtime.core import (
    Task as Task,
)
from runtime.core import (
    TaskError as TaskError,
)
from runtime.core import (
    TokenBudgetExceeded as TokenBudgetExceeded,
)
from runtime.core import (
    Usage as Usage,
)
from runtime.core import (
    VerifierError as VerifierError,
)
from runtime.core import (
    components as components,
)
from runtime.core import (
    episode_from_json as episode_from_json,
)
from runtime.core import (
    episode_to_json as episode_to_json,
)
from runtime.core import (
    gather as gather,
)
from runtime.core import (
    lookup as lookup,
)
from runtime.policy import (
    Completion as Completion,
)
from runtime.policy import (
    EndpointLimiter as EndpointLimiter,
)
from runtime.policy import (
    EndpointLimits as EndpointLimits,
)
from runtime.policy import (
    GenerationRequest as GenerationRequest,
)
from runtime.policy import (
    GenerationResult as GenerationResult,
)
from runtime.policy import (
    OpenAIPolicy as OpenAIPolicy,
)
from runtime.policy import (
    Policy as Policy,
)
from runtime.policy import (
    Price as Price,
)
from runtime.policy import (
    ScriptedPolicy as ScriptedPolicy,
)
from runtime.policy import (
    WeightedPolicy as WeightedPolicy,
)
from runtime.policy import (
    named_checkpoints as named_checkpoints,
)
from runtime.policy import (
    resolve_checkpoint as resolve_checkpoint,
)
from runtime.rewards import (
    UNPARSEABLE as UNPARSEABLE,
)
from runtime.rewards import (
    AnswerExtractor as AnswerExtractor,
)
from runtime.rewards import (
    CodeExecution as CodeExecution,
)
from runtime.rewards import (
    ExactMatch as ExactMatch,
)
from runtime.rewards import (
    Gate as Gate,
)
from runtime.rewards import (
    LLMJudge as LLMJudge,
)
from runtime.rewards import (
    MathVerify as MathVerify,
)
from runtime.rewards import (
    MonteCarloValue as MonteCarloValue,
)
from runtime.rewards import (
    OutcomeVerifier as OutcomeVerifier,
)
from runtime.rewards import (
    PotentialShaping as PotentialShaping,
)
from runtime.rewards import (
    ProcessRewardModel as ProcessRewardModel,
)
from runtime.rewards import (
    ProcessVerifier as ProcessVerifier,
)
from runtime.rewards import (
    ReasoningGymVerifier as ReasoningGymVerifier,
)
from runtime.rewards import (
    RegexMatch as RegexMatch,
)
from runtime.rewards import (
    Score as Score,
)
from runtime.rewards import (
    TableVerifier as TableVerifier,
)
from runtime.rewards import (
    Verifier as Verifier,
)
from runtime.rewards import (
    VerifierEnv as VerifierEnv,
)
from runtime.rewards import (
    WeightedSum as WeightedSum,
)
from runtime.scheduling import (
    EpisodeExport as EpisodeExport,
)
from runtime.scheduling import (
    EpisodeStore as EpisodeStore,
)
from runtime.scheduling import (
    JsonlTasks as JsonlTasks,
)
from runtime.scheduling import (
    ReasoningGymTasks as ReasoningGymTasks,
)
from runtime.scheduling import (
    RunStats as RunStats,
)
from runtime.scheduling import (
    Runtime as Runtime,
)
from runtime.scheduling import (
    SchedulerSettings as SchedulerSettings,
)
from runtime.scheduling import (
    TaskSource as TaskSource,
)
from runtime.scheduling import (
    TaskStream as TaskStream,
)
from runtime.scheduling import (
    iterate_tasks as iterate_tasks,
)
from runtime.scheduling import (
    jsonl_stream as jsonl_stream,
)
from runtime.scheduling import (
    jsonl_tasks as jsonl_tasks,
)
from runtime.scheduling import (
    reasoning_gym_tasks as reasoning_gym_tasks,
)
from runtime.search import (
    BaseStrategy as BaseStrategy,
)
from runtime.search import (
    Context as Context,
)
from runtime.search import (
    Sampling as Sampling,
)
from runtime.search import (
    Strategy as Strategy,
)
from runtime.search import (
    Verifiers as Verifiers,
)
from runtime.tiny import (
    TinyStepVerifier as TinyStepVerifier,
)
from runtime.tiny import (
    TinyTasks as TinyTasks,
)
from runtime.tiny import (
    tiny_tasks as tiny_tasks,
)
