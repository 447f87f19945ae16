"""Builds the online loop of a config with a ``learner:`` section.

- ``expert_iteration``: the run's policy is a local checkpoint served by the engine;
  the learner trains its own copy of the same checkpoint and publishes every new
  version back into that engine.
- ``distill``: the run's policy is the teacher (any backend; typically a hosted model
  or a server on loopback); the learner trains the student, which never samples
  training episodes; only the evaluator serves it.
Either way the evaluator is a separate engine over the learner's architecture.

Before the run starts its outputs are checked (before any model is loaded): the learner
checkpoint must be a file path and the final policy export a folder path, both writable
(a StoreError naming the path, as a bad store path is); then ``learner.max_length`` must
leave room after the chat template's own tokens and the tools the environment's call
format puts into the prompt (a ConfigError).

Placement: the learner on ``learner.device`` (its precision ``learner.dtype``), the
evaluator's engine on ``learner.eval.device`` in ``learner.eval.dtype``; a GPU named where
torch sees none is refused before any model loads, in one line naming the field. A GPU
learner publishes to a GPU engine of this process device to device (docs/gpu.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from learners.base import Learner
from learners.evaluate import Evaluator
from learners.loop import OnlineLoop
from learners.precision import placement
from learners.trackers import require_trackers
from runtime.app.build import build_runtime, build_strategy, build_verifiers, torch_consumers
from runtime.app.config import RunConfig
from runtime.core.errors import ConfigError, TaskError
from runtime.core.threads import CoreShare, thread_share
from runtime.core.types import Task
from runtime.policy.base import WeightedPolicy
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.prompts import chat_prompt
from runtime.scheduling.files import check_output
from runtime.tools.base import task_prompt

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

    learner = config.learner
    assert learner is not None
    source, field = learner.start_checkpoint(config.policy.weights_path)
    try:
        directory = resolve_checkpoint(source)
    except FileNotFoundError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    tokenizer = AutoTokenizer.from_pretrained(directory)
    init = getattr(learner, "student_init", "pretrained")
    if init == "pretrained":
        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), tokenizer
    model_config = AutoConfig.from_pretrained(directory)
    if init == "scratch_small":
        # Half the layers, the same width: roughly half the parameters and the compute,
        # while the width that stores facts (times tables, sums) stays.
        model_config.num_hidden_layers = max(1, model_config.num_hidden_layers // 2)
        if getattr(model_config, "layer_types", None):
            model_config.layer_types = model_config.layer_types[: model_config.num_hidden_layers]
    torch.manual_seed(getattr(config.tasks, "seed", 0))
    return AutoModelForCausalLM.from_config(model_config, dtype=torch.float32), tokenizer  # type: ignore[no-untyped-call]


def _eval_tasks(config: RunConfig) -> list[Task]:
    assert config.learner is not None and config.learner.eval is not None
    source = config.learner.eval.tasks
    if not getattr(source, "bounded", True):
        raise ConfigError("learner.eval.tasks: held-out tasks must be a fixed set; this source follows its input")
    try:
        if source.system is None and config.tasks.system is not None:  # held out under the run's own format
            source = source.model_copy(update={"system": config.tasks.system})
        return list(source.tasks())
    except TaskError as exc:
        field = config.learner.eval.tasks.input_field
        raise ConfigError(f"learner.eval.tasks{'.' + field if field else ''}: {exc}") from None


def build_learner(config: RunConfig) -> Learner:
    """The learner of ``config``: its model fresh or loaded, untrained by this run."""
    if config.learner is None:
        raise ConfigError("learner: this config has no learner section")
    spec = config.learner
    device = getattr(spec, "device", None)
    if device is not None:  # a GPU named where there is none: refused before any model loads
        placement(device, "learner")
    model, tokenizer = _student(config)
    if getattr(spec, "threads", 1) is None:  # a share of the cores, beside the engine and evaluator
        spec = spec.model_copy(update={"threads": thread_share(torch_consumers(config))})
    return spec.build_learner(model, tokenizer, config.sampling)


def _check_max_length(config: RunConfig, learner: Learner) -> None:
    """Refuse a ``learner.max_length`` that the prompt every example starts with fills: the
    chat template with the run's system prompt and, under an environment whose call format
    puts the tools into the prompt, the tools too (the system message describing them, or
    the schemas the template renders), counted through the helpers the engine renders a
    request with (:func:`~runtime.tools.base.task_prompt`,
    :func:`~runtime.policy.prompts.chat_prompt`): no example could keep a completion
    token to train on."""
    limit = getattr(config.learner, "max_length", None)
    if limit is None:
        return
    messages = [{"role": "system", "content": config.tasks.system}] if config.tasks.system else []
    messages.append({"role": "user", "content": ""})
    tokenizer = learner.tokenizer
    overhead = _prompt_tokens(tokenizer, messages, None)
    if limit <= overhead:
        raise ConfigError(
            f"learner.max_length: {limit} tokens leave nothing to train on: the chat template alone takes "
            f"{overhead} tokens of every example, before the task's prompt and the completion; raise it"
        )
    if config.environment is None:
        return
    offered, tools = task_prompt(Task(id="max_length", messages=messages), config.environment)
    with_tools = _prompt_tokens(tokenizer, offered, tools)
    if limit <= with_tools:
        fmt = getattr(config.environment.format, "name", "?")
        raise ConfigError(
            f"learner.max_length: {limit} tokens leave nothing to train on: the chat template and the tools that "
            f"environment.format {fmt} puts into the prompt take {with_tools} tokens of every example "
            f"({with_tools - overhead} of them the tools), before the task's prompt and the completion; raise it"
        )


def _prompt_tokens(tokenizer: Any, messages: list[dict[str, str]], tools: list[dict[str, Any]] | None) -> int:
    """How many tokens ``messages`` and ``tools`` take under the chat template."""
    return len(tokenizer(chat_prompt(tokenizer, messages, tools), add_special_tokens=False)["input_ids"])


def _share_cores(config: RunConfig, runtime: Any, learner: Learner, evaluator: Evaluator | None) -> None:
    """Hand the cores between this process's engine, learner and evaluator: the engine
    takes what the other two are not computing on (unless policy.threads fixes its count)."""
    engine = getattr(runtime.policy, "engine", None)
    if engine is None or not hasattr(engine, "share") or getattr(config.policy, "threads", None) is not None:
        return
    share = CoreShare()
    engine.share = share
    if hasattr(learner, "share"):
        learner.share = share
    if evaluator is not None:
        evaluator.share = share


def build_loop(config: RunConfig, *, handle_signals: bool = False) -> OnlineLoop:
    """The runtime, learner, evaluator and loop of ``config`` (which has a learner)."""
    from transformers import AutoModelForCausalLM

    from runtime.policy.local import LocalPolicy

    spec = config.learner
    if spec is None:
        raise ConfigError("learner: this config has no learner section")
    check_output(checkpoint_path(config), "learner checkpoint")
    check_output(export_path(config), "policy export", folder=True)
    require_trackers(spec.report_to)  # a tracker's missing package, before any model loads
    eval_place = placement(spec.eval.device, "learner.eval") if spec.eval is not None else None
    learner = build_learner(config)
    _check_max_length(config, learner)
    runtime = build_runtime(config, handle_signals=handle_signals)
    evaluator = None
    if spec.eval is not None:
        kind = torch.bfloat16 if spec.eval.dtype == "bfloat16" else torch.float32
        eval_model = AutoModelForCausalLM.from_config(learner.policy_config(), dtype=kind)  # type: ignore[no-untyped-call]
        eval_model = eval_model.to(eval_place)
        evaluator = Evaluator(
            LocalPolicy(eval_model, learner.tokenizer, name="eval", threads=thread_share(torch_consumers(config))),
            _eval_tasks(config),
            build_verifiers(config),
            config.sampling,
            build_strategy(config) if spec.eval.strategy else None,
        )
    _share_cores(config, runtime, learner, evaluator)
    publish = runtime.policy if spec.trains_policy else None
    if publish is not None and not isinstance(publish, WeightedPolicy):
        raise ConfigError(
            f"learner.kind: {spec.kind} publishes weights to the run's policy, which cannot take them "
            "(policy.kind local or vllm takes weights, a vLLM server with policy.lora takes LoRA adapters)"
        )
    return OnlineLoop(
        runtime,
        learner,
        spec.build_converter(config.sampling.step_delimiter),
        publish=publish,
        evaluator=evaluator,
        checkpoint=checkpoint_path(config),
        settings=spec,
    )
