"""Typed run configuration (YAML) and the one place that builds a run from it.

Each section is a small pydantic model with ranges checked at construction and a
docstring per field; unknown keys are errors. :func:`load_config` turns every problem
(missing file, bad YAML, bad value, missing API key) into a :class:`ConfigError` whose
message names the field, the value and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.core.errors import ConfigError

__all__ = ["RunConfig", "apply_overrides", "format_validation_error", "load_config"]

DEFAULT_STORE = "runs/searchlearn.db"
DEFAULT_CONCURRENCY = 64


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class PriceConfig(_Section):
    input: float = Field(ge=0)
    """USD per million prompt tokens."""
    output: float = Field(ge=0)
    """USD per million completion tokens."""


class PolicyConfig(_Section):
    kind: Literal["openai", "local", "scripted"] = "openai"
    """Backend: an OpenAI-compatible server, a local transformers checkpoint, or the scripted fake."""
    model: str = "gpt-4o-mini"
    """Model name sent to the server (openai) or used for the price table."""
    base_url: str | None = None
    """Server URL, e.g. http://127.0.0.1:8000/v1; None means OpenAI itself."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (required when base_url is None)."""
    mode: Literal["chat", "completion"] = "chat"
    """Chat completions or plain completions."""
    server: Literal["openai", "vllm", "sglang", "transformers", "llamacpp", "other"] = "openai"
    """Which server software, for its known quirks (n, sampling, continuation)."""
    prompt_template: Literal["chatml", "plain"] = "chatml"
    """How completion mode renders chat messages into a prompt."""
    max_concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1)
    """Most requests in flight to this endpoint at once."""
    requests_per_minute: float | None = Field(None, gt=0)
    """Request rate limit of the endpoint."""
    tokens_per_minute: float | None = Field(None, gt=0)
    """Token rate limit of the endpoint (prompt + completion)."""
    budget_usd: float | None = Field(None, ge=0)
    """Stop admitting episodes once this much has been spent."""
    price: PriceConfig | None = None
    """Price of the model; defaults to the built-in table."""
    timeout: float = Field(60.0, gt=0)
    """Seconds before one HTTP request times out."""
    retry_attempts: int = Field(6, ge=1)
    """Attempts per request on 429 / 5xx / timeouts / connection errors."""
    retry_max_wait: float = Field(30.0, gt=0)
    """Cap on one backoff wait, Retry-After included."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra JSON fields sent with every request."""
    path: str = "bundled"
    """Local checkpoint directory (kind local); 'bundled' is the shipped tiny policy."""
    script: list[str] = Field(default_factory=lambda: ["Answer: 42"])
    """Texts the scripted policy returns in turn (kind scripted)."""
    latency: float = Field(0.0, ge=0)
    """Seconds per call of the scripted policy."""


class TasksConfig(_Section):
    source: Literal["tiny", "reasoning_gym", "jsonl"] = "tiny"
    """Where tasks come from."""
    name: str | None = None
    """reasoning-gym dataset name (source reasoning_gym)."""
    size: int = Field(100, ge=1)
    """Number of tasks (tiny, reasoning_gym)."""
    seed: int = 0
    """Seed of the generated tasks."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Extra reasoning-gym dataset config."""
    path: str | None = None
    """JSONL file (source jsonl)."""
    steps: list[Annotated[int, Field(ge=1, le=8)]] = Field(default_factory=lambda: [3, 4])
    """Problem lengths of the tiny domain, cycled."""


class ChainOfThoughtConfig(_Section):
    name: Literal["chain_of_thought"]
    """Step-by-step chain-of-thought, one step per call."""


class BestOfNConfig(_Section):
    name: Literal["best_of_n"]
    """Best-of-N over full solutions."""
    n: int = Field(8, ge=1, le=1024)
    """Solutions sampled per episode."""
    selection: Literal["majority", "weighted_majority", "process", "outcome"] = "majority"
    """How the kept solution is chosen."""
    aggregate: Literal["last", "min", "product", "mean"] = "min"
    """How step scores combine for process selection."""


Aggregate = Literal["last", "min", "product", "mean"]


class BeamSearchConfig(_Section):
    name: Literal["beam_search"]
    """Step-level beam search guided by the process verifier (Snell et al. 2024)."""
    width: int = Field(4, ge=1, le=256)
    """Beams kept after each step."""
    expansions: int = Field(4, ge=1, le=64)
    """Next steps sampled from each beam."""
    lookahead: int = Field(0, ge=0, le=8)
    """Greedy steps rolled out before a candidate is scored (0: score the candidate itself)."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine into its beam score: last, min, product or mean."""


class DVTSConfig(_Section):
    name: Literal["dvts"]
    """Diverse verifier tree search: independent greedy subtrees (Beeching et al. 2024)."""
    subtrees: int = Field(4, ge=1, le=256)
    """Independent subtrees (N/M of a budget of N with M expansions)."""
    expansions: int = Field(4, ge=1, le=64)
    """Next steps sampled per subtree and step; the best one is kept."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine: last, min, product or mean."""
    selection: Literal["best", "weighted_majority"] = "best"
    """Answer: the best-scored subtree, or the answer with the most score across subtrees."""


class MCTSConfig(_Section):
    name: Literal["mcts"]
    """Monte-Carlo tree search over steps with PUCT selection."""
    simulations: int = Field(16, ge=1, le=4096)
    """Select-expand-evaluate-backpropagate rounds."""
    expansions: int = Field(4, ge=1, le=64)
    """Next steps sampled when a node is expanded."""
    c_puct: float = Field(1.5, gt=0, le=100)
    """Exploration constant of PUCT."""
    value: Literal["process", "rollout_process", "rollout_outcome"] = "process"
    """Node value: its process score, or the mean score of rollouts from it (process or outcome)."""
    rollouts: int = Field(1, ge=1, le=64)
    """Rollouts per evaluation (rollout values)."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine: last, min, product or mean."""
    dirichlet_alpha: float = Field(0.3, gt=0, le=10)
    """Concentration of the Dirichlet noise on the root's priors."""
    dirichlet_weight: float = Field(0.0, ge=0, le=1)
    """Share of Dirichlet noise in the root's priors (0: none; use > 0 for training-time search)."""
    seed: int | None = None
    """Seed of the noise."""


class TreeOfThoughtConfig(_Section):
    name: Literal["tree_of_thought"]
    """Tree of thoughts (Yao et al. 2023) with the process verifier as state evaluator."""
    search: Literal["bfs", "dfs"] = "bfs"
    """Breadth-first (keep the best states per level) or depth-first with pruning and backtracking."""
    breadth: int = Field(3, ge=1, le=64)
    """States kept per level (bfs)."""
    expansions: int = Field(3, ge=1, le=64)
    """Thoughts proposed per state."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Thoughts scoring below this are pruned (dfs)."""
    max_expansions: int = Field(32, ge=1, le=4096)
    """Expansion calls before dfs gives up searching (dfs)."""
    aggregate: Aggregate = "min"
    """How a path's step scores combine into a state's value."""


class VerifyBacktrackConfig(_Section):
    name: Literal["verify_backtrack"]
    """Propose a step, verify it, backtrack to the last accepted step on rejection."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Process score a step needs to be accepted."""
    step_retries: int = Field(3, ge=0, le=64)
    """Resamples after rejections at one step before backtracking a further step."""
    episode_retries: int = Field(16, ge=0, le=1024)
    """Rejections allowed in the whole episode; then the rest is completed unverified."""
    reflect: bool = False
    """Write the verifier's explanation into the prefix (a reflection node) before resampling."""
    reflection: str = Field("check: {explanation}", min_length=1)
    """Reflection text; fields {step} (the rejected step) and {explanation}."""


class SelfRefineConfig(_Section):
    name: Literal["self_refine"]
    """Sequential revision (Self-Refine / Reflexion): generate, get feedback, revise."""
    rounds: int = Field(3, ge=0, le=16)
    """Revisions after the first attempt, at most."""
    feedback: Literal["process", "outcome", "critique"] = "process"
    """Feedback from the process verifier, the outcome verifier, or the policy's own critique."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Score that counts as passing."""
    template: str = Field("check: {feedback}", min_length=1)
    """Feedback note written before a revision; field {feedback}."""
    explain: bool = False
    """Pass the outcome verifier's explanation on (it may contain the reference answer)."""
    critique_prompt: str = Field(
        "Review: is every step above correct? Say CORRECT, or name the first wrong step.", min_length=1
    )
    """Prompt for the policy's critique (feedback critique)."""


class LeastToMostConfig(_Section):
    name: Literal["least_to_most"]
    """Decomposition (least-to-most): sub-questions first, solved in order, then the question."""
    max_subquestions: int = Field(4, ge=1, le=16)
    """Sub-questions solved at most."""
    decompose_prompt: str = Field(
        "To solve this, first answer these simpler sub-questions, one per line:", min_length=1
    )
    """Text that asks the policy for sub-questions."""
    subquestion_template: str = Field("Sub-question: {question}", min_length=1)
    """Text that poses one sub-question; field {question}."""
    final_template: str = Field("Now the original question: {question}", min_length=1)
    """Text that poses the original question at the end; field {question}."""


class ComputeOptimalConfig(_Section):
    name: Literal["compute_optimal"]
    """Compute-optimal allocation (Snell et al. 2024): strategy and budget per task by difficulty."""
    probes: int = Field(4, ge=1, le=64)
    """Cheap full samples that estimate a task's difficulty (their answers' agreement)."""
    easy_agreement: float = Field(0.75, ge=0, le=1)
    """Agreement from which a task is easy: the probes' majority answer is kept."""
    hard_agreement: float = Field(0.5, ge=0, le=1)
    """Agreement below which a task is hard."""
    medium_strategy: Literal["best_of_n", "beam_search", "dvts", "verify_backtrack"] = "best_of_n"
    """Strategy for medium tasks."""
    medium_budget: int = Field(8, ge=1, le=1024)
    """Samples-equivalent for a medium task."""
    hard_strategy: Literal["best_of_n", "beam_search", "dvts", "verify_backtrack"] = "beam_search"
    """Strategy for hard tasks."""
    hard_budget: int = Field(16, ge=1, le=1024)
    """Samples-equivalent for a hard task."""
    global_token_budget: int | None = Field(None, ge=1)
    """Generated tokens all tasks of the run may spend together (None: no cap)."""


StrategyConfig = Annotated[
    ChainOfThoughtConfig
    | BestOfNConfig
    | BeamSearchConfig
    | DVTSConfig
    | MCTSConfig
    | TreeOfThoughtConfig
    | VerifyBacktrackConfig
    | SelfRefineConfig
    | LeastToMostConfig
    | ComputeOptimalConfig,
    Field(discriminator="name"),
]


class SamplingConfig(_Section):
    temperature: float = Field(0.8, ge=0, le=2)
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    step_delimiter: str = Field("\n", min_length=1)
    """Text that ends one reasoning step."""
    step_max_tokens: int = Field(64, ge=1)
    """Token cap of one step."""
    max_tokens: int = Field(512, ge=1)
    """Token cap of a full solution."""
    max_steps: int = Field(16, ge=1)
    """Steps before a path is cut off."""
    logprobs: bool = False
    """Ask the backend for token logprobs."""
    seed: int | None = None
    """Base sampling seed, where the backend honours seeds."""


ProcessName = Literal["tiny_rule", "prm", "mc_value", "judge"]


class VerifiersConfig(_Section):
    outcome: Literal["exact", "regex", "math", "reasoning_gym", "judge", "code", "none"] = "exact"
    """Outcome verifier that sets the episode's reward (judge: an LLM judge; code: run metadata.tests)."""
    regex: str | None = None
    """Pattern for the regex outcome verifier."""
    process: Literal["tiny_rule", "prm", "mc_value", "judge", "none"] = "none"
    """Process (step) verifier: the tiny domain's rules, a PRM checkpoint, Monte-Carlo rollouts, an LLM judge."""
    tiny_rule_hints: bool = False
    """The tiny rule verifier explains a rejected step with the correct one (feeds reflections and revisions)."""
    prm_path: str | None = None
    """Checkpoint directory of the process reward model (process prm)."""
    prm_batch_size: int = Field(32, ge=1, le=1024)
    """Paths the PRM scores in one forward pass."""
    mc_rollouts: int = Field(4, ge=1, le=256)
    """Completions per step for the Monte-Carlo value (process mc_value; needs reference answers)."""
    mc_temperature: float = Field(0.8, ge=0, le=2)
    """Sampling temperature of the Monte-Carlo rollouts."""
    mc_max_tokens: int = Field(256, ge=1)
    """Token cap of one Monte-Carlo rollout."""
    judge_outcome_template: str = Field("outcome", min_length=1)
    """Judge prompt for solutions: a file path, or a name in configs/judges."""
    judge_step_template: str = Field("step", min_length=1)
    """Judge prompt for steps: a file path, or a name in configs/judges."""
    judge_samples: int = Field(1, ge=1, le=16)
    """Judgements averaged per verdict."""
    judge_max_tokens: int = Field(256, ge=1)
    """Token cap of one judgement."""
    judge_policy: PolicyConfig | None = None
    """Model that judges; None: the run's own policy."""
    code_timeout: float = Field(5.0, gt=0, le=600)
    """Wall-clock seconds one code-execution run may take (outcome code)."""
    code_memory_mb: int = Field(256, ge=32, le=65536)
    """Address-space limit of one code-execution run, in MiB."""
    gate: bool = False
    """The outcome counts only if every step of the solution passes the process verifier."""
    gate_threshold: float = Field(1.0, ge=0, le=1)
    """Process score each step needs to pass the gate."""
    process_weights: dict[ProcessName, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    """Weighted sum of several process verifiers, e.g. {tiny_rule: 0.7, prm: 0.3}; replaces process when set."""
    shaping_gamma: float | None = Field(None, ge=0, le=1)
    """Potential-based shaping r + gamma*Phi(s') - Phi(s), Phi the process verifier, per node (None: off)."""
    shaping_scope: Literal["tree", "path"] = "tree"
    """Shape every explored node, or only the chosen path."""
    answer_patterns: list[str] = Field(default_factory=lambda: ["boxed", "answer_line"])
    """Answer extraction, in order: boxed, answer_line, last_number, or a regex with one group."""
    timeout: float = Field(30.0, gt=0)
    """Seconds one verifier call may take."""


class SchedulerConfig(_Section):
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1)
    """Episodes running at once."""
    buffer: int = Field(256, ge=1)
    """Finished episodes buffered for the consumer."""
    samples_per_task: int = Field(1, ge=1)
    """Episodes per task."""
    episode_timeout: float | None = Field(None, gt=0)
    """Seconds before an episode fails with EpisodeTimeout."""
    token_budget: int | None = Field(None, ge=1)
    """Tokens one episode may use."""
    on_shutdown: Literal["finish", "abandon"] = "finish"
    """On SIGINT/SIGTERM: let in-flight episodes finish, or abandon them (they rerun on resume)."""
    drain_timeout: float = Field(30.0, ge=0)
    """Seconds in-flight episodes get to finish on shutdown."""
    retry_failed: bool = False
    """On resume, run failed episodes again."""


class LoraConfig(_Section):
    r: int = Field(8, ge=1, le=256)
    """LoRA rank."""
    alpha: int = Field(16, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""


class EvalConfig(_Section):
    every: int = Field(5, ge=1)
    """Evaluate every this many policy versions (and at the start and the end)."""
    tasks: TasksConfig = Field(default_factory=lambda: TasksConfig(size=100, seed=10_000))
    """Held-out tasks; use a seed the training tasks do not use."""
    strategy: bool = True
    """Also measure the run's strategy (besides greedy pass@1)."""


class LearnerConfig(_Section):
    kind: Literal["expert_iteration", "distill"] = "expert_iteration"
    """expert_iteration: the policy learns from its own verified episodes (policy.kind local);
    distill: episodes come from policy (any backend, e.g. a hosted teacher) and train the student."""
    student: str | None = None
    """Distill: the student's checkpoint directory ('bundled' or a path)."""
    student_init: Literal["pretrained", "scratch", "scratch_small"] = "pretrained"
    """Distill: start from the student's weights, or a fresh model of its architecture
    (scratch_small: with half its layers)."""
    mode: Literal["online", "sync"] = "online"
    """online: generation and training overlap; sync: generate a batch, stop, train, repeat (baseline)."""
    keep: Literal["chosen", "all_correct"] = "chosen"
    """Which verified paths of an episode become examples."""
    min_reward: float = Field(1.0, ge=0, le=1)
    """A path counts as correct at this outcome score."""
    min_step_score: float | None = Field(0.5, ge=0, le=1)
    """With a process verifier, every step of a kept path must score at least this
    (right answers reached through wrong steps are not kept); null: outcome only."""
    weighting: Literal["uniform", "pass_rate"] = "uniform"
    """pass_rate: weigh an episode's examples by the share of its samples that failed
    (a problem every sample solves gives none)."""
    dedupe: bool = True
    """Skip an example whose (task, text) was already trained on."""
    lr: float = Field(1e-4, gt=0, le=1)
    """AdamW learning rate."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear learning-rate warmup."""
    decay_steps: int | None = Field(None, ge=1)
    """After warmup the rate falls linearly over this many steps to min_lr_ratio x lr (null: flat)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Where the decay ends, as a fraction of lr."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    batch_examples: int = Field(32, ge=1)
    """Examples per optimizer step (whole episodes: a step may take a few more)."""
    micro_batch: int = Field(16, ge=1)
    """Examples per forward pass inside a step."""
    passes: int = Field(1, ge=1, le=100)
    """Optimizer steps each example is trained in (reuse of scarce examples): each round
    steps on the new batch and the previous passes-1 batches, shuffled together."""
    steps_per_version: int = Field(1, ge=1)
    """Optimizer steps between published policy versions."""
    max_staleness: int = Field(4, ge=0)
    """k: examples sampled more than k versions ago are dropped or down-weighted."""
    stale: Literal["drop", "downweight"] = "drop"
    """What happens to a stale example (always counted)."""
    stale_decay: float = Field(0.5, gt=0, le=1)
    """Down-weighting: weight x decay ** (staleness - k)."""
    buffer_episodes: int = Field(64, ge=1)
    """Finished episodes waiting for the learner; a full buffer slows admission."""
    sync_episodes: int = Field(64, ge=1)
    """Sync mode: episodes generated per round."""
    max_minutes: float | None = Field(None, gt=0)
    """Stop after this much wall time."""
    max_versions: int | None = Field(None, ge=1)
    """Stop after this many published versions."""
    checkpoint: str | None = None
    """Learner checkpoint file; default runs/<run_id>/learner.pt next to the store."""
    checkpoint_every: int = Field(1, ge=1)
    """Checkpoint every this many versions."""
    lora: LoraConfig | None = None
    """Train LoRA adapters (peft) instead of all weights; published weights are merged."""
    threads: int | None = Field(None, ge=1)
    """torch threads of the learner's steps."""
    eval: EvalConfig | None = Field(default_factory=EvalConfig)
    """Held-out evaluation inside the loop (null: none)."""


class StoreConfig(_Section):
    path: str = DEFAULT_STORE
    """SQLite file of the episode store."""


class RunConfig(_Section):
    run_id: str = Field("default", min_length=1)
    """Name of the run; rerunning the same id resumes it."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    strategy: StrategyConfig = Field(default_factory=lambda: ChainOfThoughtConfig(name="chain_of_thought"))
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    verifiers: VerifiersConfig = Field(default_factory=VerifiersConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    learner: LearnerConfig | None = None
    """Train on the episodes as they finish (expert iteration, distillation); null: only run."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: ``invalid config SOURCE: field: what is allowed (got value); ...``.

    One line because the CLI prints it as its whole answer to a bad config; several
    errors are joined with ``; `` in pydantic's order.
    """
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if err["type"] == "missing" else f" (got {got!r})"
        problems.append(f"{loc}: {err['msg']}{shown}")
    return f"invalid config {source}: " + "; ".join(problems)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            target = child
        target[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML config; every failure is a ConfigError."""
    data: Any = {}
    source = str(path) if path else "(defaults)"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping, not {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    check_config(config)
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: ``line L, column C: problem`` (its own text is a
    multi-line excerpt of the file)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def check_config(config: RunConfig) -> None:
    """Checks that need more than one field, or the environment."""
    p, t = config.policy, config.tasks
    if p.kind == "openai" and p.base_url is None and not os.environ.get(p.api_key_env):
        raise ConfigError(
            f"policy.api_key_env: environment variable {p.api_key_env} is not set; "
            "set it, or point policy.base_url at a local OpenAI-compatible server"
        )
    learner = config.learner
    if learner is not None:
        if learner.kind == "expert_iteration" and p.kind != "local":
            raise ConfigError(
                f"learner.kind: expert_iteration trains the policy it samples from, so policy.kind must be local "
                f"(got {p.kind!r}); use learner.kind: distill to learn from a {p.kind} policy"
            )
        if learner.kind == "distill" and not learner.student:
            raise ConfigError(
                "learner.student: distillation needs a student checkpoint directory ('bundled' or a path)"
            )
        if learner.eval is not None and learner.eval.tasks.source != "tiny" and not (
            learner.eval.tasks.name or learner.eval.tasks.path
        ):
            raise ConfigError("learner.eval.tasks: a reasoning_gym or jsonl source needs a name or path")
    if t.source == "reasoning_gym" and not t.name:
        raise ConfigError("tasks.name: a reasoning_gym source needs a dataset name (e.g. basic_arithmetic)")
    if t.source == "jsonl" and not t.path:
        raise ConfigError("tasks.path: a jsonl source needs a file path")
    selection = getattr(config.strategy, "selection", "")
    if config.verifiers.process == "none" and selection in ("process", "weighted_majority"):
        raise ConfigError(
            f"verifiers.process: strategy.selection {config.strategy.selection!r} needs a process verifier "  # type: ignore[union-attr]
            "(allowed: tiny_rule)"
        )
