"""Typed run configuration (YAML), assembled from the component registries.

The run config's own sections (policy, verifiers, store) are small pydantic models;
every other section is owned by the part that uses it: ``sampling`` is
:class:`~runtime.search.context.Sampling`, ``scheduler`` is
:class:`~runtime.scheduling.scheduler.SchedulerSettings`, and ``tasks``, ``strategy``,
``verifiers.outcome`` / ``verifiers.process`` and ``learner`` name a registered
component (:mod:`runtime.core.registry`) whose own fields are its settings. So adding a
strategy, a verifier, a learner or a task source never edits this file.

Unknown keys are errors. :func:`load_config` turns every problem (missing file, bad
YAML, bad value, unknown component, missing API key) into a :class:`ConfigError` whose
message names the field, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from learners.base import LearnerSpec
from runtime.core.errors import ConfigError
from runtime.core.registry import ComponentField, register_builtins, validate_component
from runtime.core.secrets import redact
from runtime.policy.backends import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY  # the scheduler default too
from runtime.policy.backends import USER_CONFIG, OpenAIBackend, PolicyBackend, validate_backend
from runtime.rewards.base import OutcomeVerifier, ProcessVerifier, Verifier
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.export import ExportFilter
from runtime.scheduling.scheduler import SchedulerSettings
from runtime.scheduling.tasks import TaskSource
from runtime.search.context import Sampling
from runtime.search.strategy import BaseStrategy
from runtime.tiny.tasks import TinyTasks
from runtime.tools.environment import BaseEnvironment
from strategies.chain_of_thought import ChainOfThought

__all__ = ["RunConfig", "apply_overrides", "format_validation_error", "load_config"]

DEFAULT_STORE = "runs/searchlearn.db"


# Where each family's built-in components live; plug-ins add theirs through entry points.
register_builtins("strategies", "strategies")
register_builtins("verifiers", "runtime.rewards", "runtime.tiny")
register_builtins("tasks", "runtime.scheduling", "runtime.tiny")
register_builtins("learners", "learners")
register_builtins("environments", "runtime.tools")
register_builtins("tools", "runtime.tools")
register_builtins("tool_formats", "runtime.tools")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def _none_or_component(value: Any) -> Any:
    return None if value in (None, "none") else validate_component("verifiers", value)


def _process(value: Any) -> Any:
    """A process verifier, or a list of them, each with an optional ``weight`` (a weighted sum)."""
    if not isinstance(value, list):
        return _none_or_component(value)
    parts = []
    for item in value:
        if isinstance(item, dict) and "weight" in item:
            item = dict(item)
            parts.append(WeightedVerifier(weight=item.pop("weight"), verifier=item))
        else:
            parts.append(WeightedVerifier(verifier=item))
    return parts


class WeightedVerifier(_Section):
    """One term of a weighted sum of process verifiers (an item of ``verifiers.process``)."""

    verifier: ComponentField("verifiers", Verifier)  # type: ignore[valid-type]
    """The process verifier."""
    weight: float = Field(1.0, ge=0)
    """Its weight in the sum."""


DEFAULT_VERIFIER_TIMEOUT = 30.0
"""Seconds a verifier call that samples nothing may take (``verifiers.timeout`` unset)."""
VERIFIER_TOKENS_PER_S = 4.0
"""Tokens per second a sampling verifier's call is allowed for (``verifiers.timeout``
unset): a CPU model's throughput shared by the calls in flight, with room to spare."""


def _sampled_tokens(verifier: Any) -> int:
    """Tokens a verifier may sample in one call (``tokens_per_call``; 0 for one that
    samples nothing)."""
    return int(getattr(verifier, "tokens_per_call", 0) or 0)


OutcomeField = Annotated[SerializeAsAny[Verifier] | None, BeforeValidator(_none_or_component)]
ProcessField = Annotated[SerializeAsAny[Verifier] | list[WeightedVerifier] | None, BeforeValidator(_process)]


#: Flat keys of the verifiers section before verifiers were components: key -> (verifier, its field).
_LEGACY: dict[str, tuple[str, str]] = {
    "regex": ("regex", "pattern"),
    "tiny_rule_hints": ("tiny_rule", "hints"),
    "prm_path": ("prm", "path"),
    "prm_batch_size": ("prm", "batch_size"),
    "mc_rollouts": ("mc_value", "rollouts"),
    "mc_temperature": ("mc_value", "temperature"),
    "mc_max_tokens": ("mc_value", "max_tokens"),
    "judge_outcome_template": ("judge", "outcome_template"),
    "judge_step_template": ("judge", "step_template"),
    "judge_samples": ("judge", "samples"),
    "judge_max_tokens": ("judge", "max_tokens"),
    "judge_policy": ("judge", "judge_policy"),
    "code_timeout": ("code", "timeout"),
    "code_memory_mb": ("code", "memory_mb"),
}


class VerifiersConfig(_Section):
    """The run's verifiers (``verifiers:``): outcome and process verifiers, answer
    extraction, the gate and reward shaping."""

    outcome: OutcomeField = Field(default_factory=ExactMatch)
    """Outcome verifier that sets the episode's reward: a name (exact, regex, math,
    reasoning_gym, judge, code, or a plug-in's), a mapping with ``name`` and its settings,
    ``module:Class``, or none."""
    process: ProcessField = None
    """Process (step) verifier (tiny_rule, prm, mc_value, judge, or a plug-in's), the same
    forms as outcome; a list of them, each with an optional ``weight``, is their
    weighted sum."""
    gate: bool = False
    """The outcome counts only if every step of the solution passes the process verifier."""
    gate_threshold: float = Field(1.0, ge=0, le=1)
    """Process score each step needs to pass the gate."""
    shaping_gamma: float | None = Field(None, ge=0, le=1)
    """Potential-based shaping r + gamma*Phi(s') - Phi(s), Phi the process verifier, per node (None: off)."""
    shaping_scope: Literal["tree", "path"] = "tree"
    """Shape every explored node, or only the chosen path."""
    answer_patterns: list[str] = Field(default_factory=lambda: ["boxed", "answer_line"])
    """Answer extraction, in order: boxed, answer_line, last_number, or a regex with one group."""
    final_answer_patterns: list[str] | None = None
    """Tried on a whole solution whose steps wrote no answer (its path ended without one),
    e.g. [last_number] for a chat model that ends on "... = 12": answer_patterns are read
    per step, where last_number would end a path at its first number (None: no fallback)."""
    timeout: float | None = Field(None, gt=0)
    """Seconds one verifier call may take. None: scaled to the verifiers' work, 30 s plus
    1 s per 4 tokens a verifier may sample in one call (mc_value: rollouts x max_tokens;
    the default mc_value gets 286 s), since a verifier that rolls out on a CPU model
    shares its tokens/s with every call in flight (SmolLM2-135M: ~37 tokens/s in all on
    two cores) and a flat 30 s failed its step scores."""

    def call_timeout(self) -> float:
        """``timeout``, or its default scaled to the verifiers' work (see the field)."""
        if self.timeout is not None:
            return self.timeout
        parts = [p.verifier for p in self.process] if isinstance(self.process, list) else [self.process]
        tokens = max(_sampled_tokens(self.outcome), sum(_sampled_tokens(v) for v in parts))
        return DEFAULT_VERIFIER_TIMEOUT + tokens / VERIFIER_TOKENS_PER_S

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """Configs written before verifiers were components kept their settings flat in
        this section (``regex``, ``tiny_rule_hints``, ``prm_path``, ``mc_rollouts``,
        ``judge_*``, ``code_*``, ``process_weights``); they are folded into the named
        verifier's own section, so those configs keep working."""
        if not isinstance(data, dict) or not (set(data) & {*_LEGACY, "process_weights"}):
            return data
        data = dict(data)
        weights = data.pop("process_weights", None) or {}
        named = {v for v in (data.get("outcome"), data.get("process"), *weights) if isinstance(v, str)}
        settings: dict[str, dict[str, Any]] = {}
        for key in [k for k in data if k in _LEGACY]:
            name, field = _LEGACY[key]
            if name not in named:
                raise ValueError(
                    f"verifiers.{key} is a setting of the {name!r} verifier, which this section does not use "
                    f"(write it in that verifier's own section: {{name: {name}, {field}: ...}})"
                )
            settings.setdefault(name, {})[field] = data.pop(key)

        def spec(value: Any) -> Any:
            return {"name": value, **settings.get(value, {})} if isinstance(value, str) else value

        if weights:
            data["process"] = [{**spec(name), "weight": w} for name, w in weights.items()]
        for role in ("outcome", "process"):
            if isinstance(data.get(role), str) and data[role] in settings:
                data[role] = spec(data[role])
        return data

    @field_validator("outcome")
    @classmethod
    def _scores_outcomes(cls, value: Verifier | None) -> Verifier | None:
        if value is not None and not isinstance(value, OutcomeVerifier):
            raise ValueError(f"{value.name!r} does not score solutions (it is a process verifier)")
        return value

    @field_validator("process")
    @classmethod
    def _scores_steps(cls, value: Any) -> Any:
        for v in value if isinstance(value, list) else [value]:
            v = v.verifier if isinstance(v, WeightedVerifier) else v
            if v is not None and not isinstance(v, ProcessVerifier):
                raise ValueError(f"{v.name!r} does not score steps (it is an outcome verifier)")
        return value

    @property
    def has_process(self) -> bool:
        return self.process is not None and self.process != []


class StoreConfig(_Section):
    """Where episodes are stored (``store:``)."""

    path: str = DEFAULT_STORE
    """SQLite file of the episode store."""


class ExportConfig(_Section):
    """Continuous export (``export:``): every finished episode, once stored, appended to
    a JSONL file as one line, for a trainer elsewhere (see runtime.scheduling.export)."""

    path: str
    """JSONL file the episodes are appended to (created with its folder); one episode's
    full JSON per line, as `searchlearn export` writes. On start, the stored episodes of
    the run it lacks (a killed run's last ones) are appended and a torn last line is cut,
    so it holds each stored episode once."""
    only: ExportFilter = "all"
    """Which episodes: all, ok (those that did not fail), or solved (reward >= 1)."""


class ClusterConfig(_Section):
    """Rollout workers on Ray (``cluster:``; ``pip install "searchlearn[ray]"``).

    Each worker is a Ray actor running a Runtime over its own copy of the run's policy;
    the driver (the process that reads this config) keeps the task stream, the store and
    the learner. Without this section nothing imports Ray."""

    kind: Literal["ray"] = "ray"
    """The cluster framework (Ray)."""
    address: str | None = None
    """Ray cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); null starts a
    local one inside this process, with loopback addresses only."""
    workers: int = Field(2, ge=1)
    """Rollout worker actors."""
    cpus_per_worker: float = Field(1.0, ge=0)
    """Ray CPUs each worker reserves (0 for workers that only wait on a server)."""
    gpus_per_worker: float = Field(0.0, ge=0)
    """Ray GPUs each worker reserves; a fraction shares one GPU among workers (0.5: two
    workers a GPU). Ray shows an actor the GPUs it reserved (CUDA_VISIBLE_DEVICES), and
    policy.device auto (or cuda) puts its engine there; with 0 a worker is started seeing
    no GPU, so its engine runs on the CPU whatever policy.device says. A vLLM engine sharing a GPU needs
    policy.vllm.gpu_memory_utilization at most gpus_per_worker. A local cluster that has
    fewer GPUs than the workers reserve is refused before Ray starts."""
    concurrency: int | None = Field(None, ge=1)
    """Episodes running at once on each worker; null: ``scheduler.concurrency``."""
    in_flight: int | None = Field(None, ge=1)
    """Episodes handed to one worker and not yet back, at most (the backpressure bound);
    null: twice the worker's concurrency."""
    chunk: int = Field(16, ge=1)
    """Tasks sent to a worker in one call; finished episodes come back in batches as
    they finish."""
    batch_wait: float = Field(0.02, ge=0)
    """Seconds a worker waits for more episodes to finish before it sends a batch back
    (one message per batch: at thousands of episodes/s a message per episode costs the
    driver more than storing it)."""
    replace_dead: bool = True
    """Start a new worker in place of one that died (its unfinished tasks are reissued
    either way)."""
    max_replacements: int = Field(8, ge=0)
    """Workers started in place of dead ones, at most, over the run."""
    local_cpus: int | None = Field(None, ge=1)
    """CPUs of the local cluster started when ``address`` is null; null: the CPUs this
    process may use."""

    @field_validator("gpus_per_worker")
    @classmethod
    def _placeable(cls, value: float) -> float:
        """Ray places a fraction of one GPU, or whole GPUs, never 1.5 of them."""
        if value > 1 and not float(value).is_integer():
            raise ValueError("a worker reserves a fraction of one GPU (at most 1) or a whole number of GPUs")
        return value


class RunConfig(_Section):
    """A whole run: what ``searchlearn run CONFIG`` reads."""

    run_id: str = Field("default", min_length=1)
    """Name of the run; rerunning the same id resumes it."""
    policy: SerializeAsAny[PolicyBackend] = Field(default_factory=OpenAIBackend)
    """The model that samples the run's episodes: ``kind`` (openai, local, vllm, scripted,
    or a plug-in's) and that backend's settings."""

    @field_validator("policy", mode="before")
    @classmethod
    def _policy(cls, value: Any, info: ValidationInfo) -> Any:
        """The named backend, validated with this config's context (a config a user wrote
        is refused removed keys; one read back from the store is not)."""
        return validate_backend(value, info.context)

    tasks: ComponentField("tasks", TaskSource) = Field(default_factory=TinyTasks)  # type: ignore[valid-type]
    """Where tasks come from: ``source`` (tiny, reasoning_gym, jsonl, jsonl_dir, stdin, or a
    plug-in's) and its settings."""
    strategy: ComponentField("strategies", BaseStrategy) = Field(default_factory=ChainOfThought)  # type: ignore[valid-type]
    """The search strategy: ``name`` and its settings."""
    sampling: Sampling = Field(default_factory=Sampling)
    """How the strategy samples."""
    verifiers: VerifiersConfig = Field(default_factory=VerifiersConfig)
    """Outcome and process verifiers, answer extraction, gate and shaping."""
    environment: Annotated[
        SerializeAsAny[BaseEnvironment] | None,
        BeforeValidator(lambda v: None if v in (None, "none") else validate_component("environments", v)),
    ] = None
    """Tools the policy may call inside its episodes: ``name`` (calculator, tools, or a
    plug-in's) and its settings (tools, format, fork, max_turns, max_calls); a step
    that is a tool call runs when the search expands it. null: no tools."""
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    """How many episodes run at once, their budgets and timeouts, shutdown."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Where episodes are stored."""
    export: ExportConfig | None = None
    """Append each stored episode to a JSONL file as the run goes; null: no export (the
    `searchlearn export` command writes one after the fact)."""
    cluster: ClusterConfig | None = None
    """Run the episodes on Ray rollout workers; null: in this process."""
    learner: Annotated[
        SerializeAsAny[LearnerSpec] | None,
        BeforeValidator(lambda v: None if v is None else validate_component("learners", v)),
    ] = None
    """Train on the episodes as they finish: ``kind`` (expert_iteration, distill, or a
    plug-in's) and its settings; null: only run."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line: ``invalid config SOURCE: field: what is allowed (got value); ...``.

    One line because the CLI prints it as its whole answer to a bad config; several
    errors are joined with ``; `` in pydantic's order.
    """
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        secret = any("key" in str(p) or "secret" in str(p) or "token" in str(p) for p in err["loc"])
        shown = "" if err["type"] == "missing" or secret else f" (got {got!r})"
        problems.append(f"{loc}: {err['msg']}{shown}")
    return redact(f"invalid config {source}: " + "; ".join(problems))


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
        try:
            target[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: the value is not valid YAML: {_yaml_problem(exc)}") from None
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
        config = RunConfig.model_validate(data, context=USER_CONFIG)
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
    """Checks that need more than one section, or the environment."""
    p = config.policy
    p.check(config.scheduler.episode_timeout)
    learner = config.learner
    if learner is not None and learner.trains_policy:
        lora = getattr(learner, "lora", None)
        if not p.takes_weights():
            raise ConfigError(
                f"learner.kind: {learner.kind} trains the policy it samples from, so policy.kind must be local "
                f"or vllm, or a vLLM server with policy.lora (got {p.kind!r}); use learner.kind: distill "
                f"to learn from a {p.kind} policy"
            )
        if getattr(p, "lora", None) is not None and (lora is None or lora.publish != "adapter"):
            raise ConfigError(
                f"learner.lora: policy.lora loads each version into the server as a LoRA adapter, so "
                f"{learner.kind} must train one and publish it: learner.lora: {{publish: adapter}}"
            )
    v, s = config.verifiers, config.strategy
    needs = s.needs()
    if "process" in needs and not v.has_process:
        raise ConfigError(
            f"verifiers.process: strategy {s.name!r} ({needs['process']}) needs a process verifier "
            "(e.g. tiny_rule, prm, mc_value, judge)"
        )
    if "outcome" in needs and v.outcome is None:
        raise ConfigError(f"verifiers.outcome: strategy {s.name!r} ({needs['outcome']}) needs an outcome verifier")
    if v.gate and (v.outcome is None or not v.has_process):
        raise ConfigError("verifiers.gate: a gate needs both a process and an outcome verifier")
    if v.shaping_gamma is not None and not v.has_process:
        raise ConfigError("verifiers.shaping_gamma: shaping takes its potential from the process verifier; none is set")
