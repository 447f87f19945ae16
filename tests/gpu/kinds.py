"""One learner of every kind, built as its config builds it, taking steps on a device in a
precision, with the kind's own check that the steps went the right way.

Shared by ``tests/test_gpu_ready.py`` (bf16 on the CPU) and ``tests/gpu/check.py`` (bf16
on a GPU). The data are tiny-domain problems: each with its right solution and a wrong
one (the first step's result off by one, so the answer too). Each kind's measure is a
loss, lower is better, computed on the batch it trains on:

- expert_iteration, distill: the completion tokens' cross-entropy (``SFTLearner.loss``);
- on_policy_distill: the reverse KL to a frozen teacher (another model);
- grpo: ``-sum(A * log p(rollout))`` with A +1 for the right solution, -1 for the wrong
  one (the policy-gradient objective; the clipped surrogate itself does not move at a
  ratio of one);
- ppo: the same with the outcome reward (1 right, 0 wrong) centred at 0.5;
- dpo: the DPO loss of the pairs against the frozen reference;
- prm: the binary cross-entropy of the step labels (right: 1, wrong: 0);
- orm: the Bradley-Terry loss of the pairs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from learners.dpo import DPO
from learners.examples import Example
from learners.expert_iteration import ExpertIteration
from learners.grpo import GRPO
from learners.on_policy_distill import OnPolicyDistill, OnPolicyDistillLearner
from learners.pairs import Pair
from learners.ppo import PPO
from learners.reward_models import ORM, PRM, LabelledPath
from learners.rollouts import Rollout
from runtime.rewards.prm import encode_steps, pad_rows
from runtime.search.context import Sampling
from runtime.tiny.domain import ArithProblem, generate_problem, solution_steps

KINDS = ("expert_iteration", "distill", "on_policy_distill", "grpo", "ppo", "dpo", "prm", "orm")
"""Every learner kind the registry ships (distill trains with expert iteration's learner)."""

SAMPLING = Sampling(temperature=1.0, max_tokens=80, logprobs=True)

LR = {"prm": 1e-4}
"""Learning rates other than 3e-3: a PRM's fresh head (with dropout) over a 4-layer model
overshoots at 3e-4 and above (its loss rose from 0.675 to 0.81 in 4 steps)."""


def tiny_model(tokenizer: Any, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A freshly initialised Qwen2 model over ``tokenizer`` (grouped-query attention: 4
    heads, 2 key/value heads), float32 on the CPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(config)


@dataclass(slots=True)
class Problem:
    messages: list[dict[str, str]]
    right: list[str]
    wrong: list[str]


def problems(count: int, seed: int = 7) -> list[Problem]:
    """Two-step problems, each with its right solution lines and a wrong one."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        problem: ArithProblem = generate_problem(rng, 2)
        steps = solution_steps(problem)
        head, tail = steps[0].split("=", 1)
        value = tail.split(",", 1)[0]
        wrong_first = f"{head}={int(value) + 1}{tail[len(value) :]}"
        out.append(
            Problem(
                [{"role": "user", "content": problem.question}],
                [*steps, f"Answer: {problem.answer}"],
                [wrong_first, f"Answer: {problem.answer + 1}"],
            )
        )
    return out


def batch(kind: str, items: list[Problem]) -> list[Any]:
    """What a learner of ``kind`` steps on, made of ``items``."""
    key = ("gpu", "kinds", 0)
    if kind in ("expert_iteration", "distill", "on_policy_distill"):
        return [Example(p.messages, "\n".join(p.right), ("gpu", f"t{i}", 0)) for i, p in enumerate(items)]
    if kind in ("grpo", "ppo"):
        out = []
        for p in items:
            for lines, good in ((p.right, True), (p.wrong, False)):
                advantage = [1.0 if good else -1.0] if kind == "grpo" else [0.0]
                meta = {"reward": 1.0 if good else 0.0}
                out.append(Rollout(p.messages, "", "\n".join(lines), advantage, key, ends=True, meta=meta))
        return out
    if kind in ("dpo", "orm"):
        return [Pair(p.messages, "", "\n".join(p.right), "\n".join(p.wrong), key, "solutions") for p in items]
    if kind == "prm":
        out = []
        for p in items:
            out.append(LabelledPath(p.messages, p.right, [1.0] * len(p.right), key))
            out.append(LabelledPath(p.messages, p.wrong, [0.0] * len(p.wrong), key))
        return out
    raise ValueError(f"unknown learner kind {kind!r}")


def build(kind: str, model: Any, tokenizer: Any, teacher: Any = None, **settings: Any) -> Any:
    """The learner of ``kind`` over ``model``, as its config section builds it
    (``teacher``: on_policy_distill's frozen teacher model)."""
    if kind == "on_policy_distill":
        spec = OnPolicyDistill(teacher="unused", **settings)
        return OnPolicyDistillLearner(model, tokenizer, spec, teacher=teacher)
    specs: dict[str, Any] = {
        "expert_iteration": ExpertIteration, "distill": ExpertIteration, "grpo": GRPO, "ppo": PPO, "dpo": DPO,
        "prm": PRM, "orm": ORM,
    }  # fmt: skip
    return specs[kind](**settings).build_learner(model, tokenizer, SAMPLING)


@torch.no_grad()
def measure(kind: str, learner: Any, data: list[Any]) -> float:
    """The kind's loss on ``data`` (see module doc), in eval mode (a reward model's head
    has dropout): lower is better."""
    learner.model.eval()
    try:
        return _measure(kind, learner, data)
    finally:
        learner.model.train()


def _measure(kind: str, learner: Any, data: list[Any]) -> float:
    if kind in ("expert_iteration", "distill"):
        return float(learner.loss(data))
    if kind == "on_policy_distill":
        return float(learner.reverse_kl(data))
    if kind in ("grpo", "ppo"):
        encoded = [learner.encode(r) for r in data]
        logps = [sum(lp) for lp in learner._logprobs(encoded)]
        signs = [r.step_advantages[0] if kind == "grpo" else r.meta["reward"] - 0.5 for r in data]
        return -sum(a * lp for a, lp in zip(signs, logps, strict=True)) / len(data)
    if kind == "dpo":
        rows = [row for pair in data for row in learner._sequences(pair)[:2]]
        policy, _ = learner._logps(learner.model, rows)
        reference, _ = learner._logps(learner.reference, rows)
        delta = policy - reference
        margin = learner.settings.beta * (delta[0::2] - delta[1::2])
        return float(-torch.nn.functional.logsigmoid(margin).mean())
    if kind == "prm":
        encoded = [encode_steps(learner.tokenizer, learner.delimiter, e.messages, e.steps) for e in data]
        ids, mask = pad_rows([ids for ids, _ in encoded], learner.tokenizer.pad_token_id or 0)
        logits = learner.forward(learner.model, ids, mask).logits[..., 0].float().cpu()
        at = torch.cat([logits[i, positions] for i, (_, positions) in enumerate(encoded)])
        target = torch.tensor([v for e in data for v in e.labels])
        return float(torch.nn.functional.binary_cross_entropy_with_logits(at, target))
    if kind == "orm":
        r = learner.rewards([learner._ids(p, text) for p in data for text in (p.chosen, p.rejected)])
        return float(-torch.nn.functional.logsigmoid(r[0::2] - r[1::2]).mean())
    raise ValueError(f"unknown learner kind {kind!r}")


@dataclass(slots=True)
class KindRun:
    """What ``steps`` optimizer steps of one learner kind did."""

    kind: str
    device: str
    dtype: str
    steps: int
    before: float
    """The kind's measure before the steps (see module doc)."""
    after: float
    """The same after them."""
    compute_dtype: str
    """The dtype a linear layer's output had in the learner's forward pass."""
    weight_dtype: str
    """The trained weights' dtype after the steps (master weights: float32)."""
    state_dtype: str
    """AdamW's moment estimates' dtype."""
    seconds_per_step: float
    peak_mib: float | None = None
    """Peak GPU memory allocated during the steps (None on the CPU)."""
    losses: list[float] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        return self.after < self.before


def run_kind(
    kind: str,
    tokenizer: Any,
    *,
    model: Callable[[int], Any],
    device: str = "cpu",
    dtype: str = "bfloat16",
    steps: int = 4,
    count: int = 4,
    label: str | None = None,
    **settings: Any,
) -> KindRun:
    """Build ``kind``'s learner over ``model(seed)`` on ``device`` in ``dtype``, take
    ``steps`` steps on one batch of ``count`` problems, and measure it before and after."""
    settings = {"lr": LR.get(kind, 3e-3), "micro_batch": 8, **settings, "device": device, "dtype": dtype}
    teacher = model(1).to(torch.bfloat16) if kind == "on_policy_distill" else None
    learner = build(kind, model(0), tokenizer, teacher, **settings)
    data = batch(kind, problems(count))
    seen: list[torch.dtype] = []
    linear = next(m for m in learner.model.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    on_gpu = learner.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(learner.device)
    before = measure(kind, learner, data)
    started = time.perf_counter()
    losses = [learner.step(data).loss for _ in range(steps)]
    if on_gpu:
        torch.cuda.synchronize(learner.device)
    seconds = (time.perf_counter() - started) / steps
    after = measure(kind, learner, data)
    hook.remove()
    trained = next(p for p in learner.model.parameters() if p.requires_grad)
    state = learner.optimizer.state[trained]
    return KindRun(
        label or kind, str(learner.device), dtype, steps, before, after, str(seen[0]).removeprefix("torch."),
        str(trained.dtype).removeprefix("torch."), str(state["exp_avg"].dtype).removeprefix("torch."), seconds,
        torch.cuda.max_memory_allocated(learner.device) / 2**20 if on_gpu else None, losses,
    )  # fmt: skip
