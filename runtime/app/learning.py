"""Builds the online loop of a config with a ``learner:`` section.

- ``expert_iteration``: the run's policy is a local checkpoint served by the engine;
  the learner trains its own copy of the same checkpoint and publishes every new
  version back into that engine.
- ``distill``: the run's policy is the teacher (any backend; typically a hosted model
  or a server on loopback); the learner trains the student, which never samples
  training episodes; only the evaluator serves it.
Either way the evaluator is a separate engine over the learner's architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learners.evaluate import Evaluator
from learners.examples import VerifiedPaths
from learners.loop import LoopSettings, OnlineLoop
from learners.sft import LoraSettings, SFTLearner
from runtime.app.build import build_runtime, build_strategy, build_tasks, build_verifiers
from runtime.app.config import RunConfig
from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.search.context import Sampling

__all__ = ["build_learner", "build_loop", "checkpoint_path", "export_path"]


def checkpoint_path(config: RunConfig) -> Path:
    assert config.learner is not None
    if config.learner.checkpoint:
        return Path(config.learner.checkpoint)
    return Path(config.store.path).parent / config.run_id / "learner.pt"


def export_path(config: RunConfig) -> Path:
    """Where the final policy is saved as a servable checkpoint directory."""
    return checkpoint_path(config).parent / "policy"


def _student(config: RunConfig) -> tuple[Any, Any]:
    """The learner's model and tokenizer, fresh or from a checkpoint directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from runtime.policy.local import resolve_checkpoint

    learner = config.learner
    assert learner is not None
    source = config.policy.path if learner.kind == "expert_iteration" else learner.student
    try:
        directory = resolve_checkpoint(source or "")
    except FileNotFoundError as exc:
        field = "policy.path" if learner.kind == "expert_iteration" else "learner.student"
        raise ConfigError(f"{field}: {exc}") from None
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if learner.kind == "expert_iteration" or learner.student_init == "pretrained":
        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), tokenizer
    model_config = AutoConfig.from_pretrained(directory)
    if learner.student_init == "scratch_small":
        # Half the layers, the same width: roughly half the parameters and the compute,
        # while the width that stores facts (times tables, sums) stays.
        model_config.num_hidden_layers = max(1, model_config.num_hidden_layers // 2)
        if getattr(model_config, "layer_types", None):
            model_config.layer_types = model_config.layer_types[: model_config.num_hidden_layers]
    torch.manual_seed(config.tasks.seed)
    return AutoModelForCausalLM.from_config(model_config, dtype=torch.float32), tokenizer


def _eval_tasks(config: RunConfig) -> list[Task]:
    assert config.learner is not None and config.learner.eval is not None
    held_out = config.model_copy(update={"tasks": config.learner.eval.tasks})
    try:
        return list(build_tasks(held_out))
    except ConfigError as exc:
        raise ConfigError(f"learner.eval.{exc}") from None


def build_learner(config: RunConfig) -> SFTLearner:
    """The learner of ``config``: its model fresh or loaded, untrained by this run."""
    learner_config = config.learner
    if learner_config is None:
        raise ConfigError("learner: this config has no learner section")
    model, tokenizer = _student(config)
    lora = learner_config.lora
    return SFTLearner(
        model,
        tokenizer,
        lr=learner_config.lr,
        warmup_steps=learner_config.warmup_steps,
        decay_steps=learner_config.decay_steps,
        min_lr_ratio=learner_config.min_lr_ratio,
        weight_decay=learner_config.weight_decay,
        micro_batch=learner_config.micro_batch,
        lora=LoraSettings(lora.r, lora.alpha, lora.dropout) if lora else None,
        threads=learner_config.threads,
    )


def build_loop(config: RunConfig, *, handle_signals: bool = False) -> OnlineLoop:
    """The runtime, learner, evaluator and loop of ``config`` (which has a learner)."""
    from runtime.policy.local import LocalPolicy

    learner = build_learner(config)
    learner_config = config.learner
    assert learner_config is not None
    model, tokenizer = learner.model, learner.tokenizer
    runtime = build_runtime(config, handle_signals=handle_signals)
    evaluator = None
    if learner_config.eval is not None:
        from transformers import AutoModelForCausalLM

        shape = learner.model.get_base_model().config if learner.lora else model.config
        eval_policy = LocalPolicy(AutoModelForCausalLM.from_config(shape, dtype=torch.float32), tokenizer, name="eval")  # type: ignore[no-untyped-call]
        evaluator = Evaluator(
            eval_policy,
            _eval_tasks(config),
            build_verifiers(config),
            Sampling(**config.sampling.model_dump()),
            build_strategy(config) if learner_config.eval.strategy else None,
        )
    settings = LoopSettings(
        mode=learner_config.mode,
        batch_examples=learner_config.batch_examples,
        passes=learner_config.passes,
        steps_per_version=learner_config.steps_per_version,
        max_staleness=learner_config.max_staleness,
        stale=learner_config.stale,
        stale_decay=learner_config.stale_decay,
        buffer_episodes=learner_config.buffer_episodes,
        sync_episodes=learner_config.sync_episodes,
        eval_every=learner_config.eval.every if learner_config.eval else 1,
        checkpoint_every=learner_config.checkpoint_every,
        max_seconds=learner_config.max_minutes * 60 if learner_config.max_minutes else None,
        max_versions=learner_config.max_versions,
    )
    return OnlineLoop(
        runtime,
        learner,
        VerifiedPaths(
            learner_config.keep,
            learner_config.min_reward,
            learner_config.dedupe,
            delimiter=config.sampling.step_delimiter,
            min_step_score=learner_config.min_step_score,
            weighting=learner_config.weighting,
        ),
        publish=runtime.policy.base if learner_config.kind == "expert_iteration" else None,
        evaluator=evaluator,
        checkpoint=checkpoint_path(config),
        settings=settings,
    )
