"""Training a process reward model (PRM) from Monte-Carlo step labels (Math-Shepherd,
Wang et al. 2024): label each step of sampled solutions with the share of rollouts
from its prefix that reach the right answer, then fit a value head on a policy's
backbone with binary cross-entropy at the step delimiters. The scorer that serves the
result is :class:`runtime.rewards.prm.ProcessRewardModel`.

Design decisions:
- :func:`train_prm` puts a one-label value head on ``base``'s backbone (copied weights,
  fresh head) and fits soft labels, so a few hundred labelled steps and a minute of CPU
  make a useful tiny PRM.
- A strong policy rarely errs, so :func:`mc_examples` can add a corrupted prefix of each
  sampled solution (for the tiny domain, :func:`runtime.tiny.corrupt_tiny_step`).
- :func:`build_tiny_prm` runs the whole recipe on the tiny domain
  (``python -m learners.prm --out DIR``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from runtime.core.concurrency import gather
from runtime.core.log import get_logger
from runtime.core.types import Task
from runtime.policy.base import GenerationRequest, Policy
from runtime.rewards.mc_value import MonteCarloValue
from runtime.rewards.prm import encode_steps, pad_rows
from runtime.tiny.corruption import corrupt_tiny_step
from runtime.tiny.tasks import tiny_tasks

__all__ = ["PRMExample", "TrainReport", "build_tiny_prm", "main", "mc_examples", "train_prm", "value_head_model"]

log = get_logger("searchlearn.prm")


@dataclass(slots=True)
class PRMExample:
    """One labelled solution: the task's messages, its steps, a label in [0, 1] per step."""

    messages: list[dict[str, str]]
    steps: list[str]
    labels: list[float]


Corrupt = Callable[[Task, list[str], random.Random], list[str] | None]


async def mc_examples(
    policy: Policy,
    tasks: Sequence[Task],
    *,
    samples: int = 1,
    rollouts: int = 4,
    temperature: float = 1.0,
    max_tokens: int = 192,
    delimiter: str = "\n",
    corrupt: Corrupt | None = None,
    seed: int = 0,
) -> list[PRMExample]:
    """Sample ``samples`` solutions per task and label each step with its Monte-Carlo
    value (``rollouts`` completions from the step's prefix).

    A strong policy rarely errs, so the labels are mostly 1; ``corrupt(task, steps,
    rng)`` may return a corrupted prefix of a sampled solution (its last step wrong),
    added as another example whose last step is Monte-Carlo labelled like any other.
    """
    value = MonteCarloValue(
        policy, rollouts=rollouts, temperature=temperature, max_tokens=max_tokens, delimiter=delimiter
    )
    rng = random.Random(seed)

    async def one(task: Task, rng: random.Random) -> list[PRMExample]:
        request = GenerationRequest(
            messages=task.as_messages(), n=samples, max_tokens=max_tokens, temperature=temperature
        )
        result = await policy.generate(request)
        out = []
        for c in result.completions:
            steps = [s.strip() for s in c.text.split(delimiter) if s.strip()]
            if not steps:
                continue
            labels = await value.label_steps(task, steps)
            out.append(PRMExample(task.as_messages(), steps, labels))
            bad = corrupt(task, steps, rng) if corrupt is not None else None
            if bad:
                last = await value.value(task, bad)
                out.append(PRMExample(task.as_messages(), bad, [*labels[: len(bad) - 1], last.value]))
        return out

    groups = await gather(one(t, random.Random(rng.random())) for t in tasks)
    return [e for group in groups for e in group]


def value_head_model(policy: Any) -> Any:
    """A one-label ``*ForTokenClassification`` model on ``policy``'s backbone (copied
    weights, a fresh head)."""
    from transformers import AutoModelForTokenClassification

    config = _value_head_config(policy.config)
    model = AutoModelForTokenClassification.from_config(config)  # type: ignore[no-untyped-call]
    getattr(model, model.base_model_prefix).load_state_dict(getattr(policy, policy.base_model_prefix).state_dict())
    return model


def _value_head_config(config: Any) -> Any:
    out = type(config).from_dict(config.to_dict())
    out.num_labels = 1
    out.architectures = [a.replace("ForCausalLM", "ForTokenClassification") for a in (config.architectures or [])]
    return out


@dataclass
class TrainReport:
    """What :func:`train_prm` did: data size, optimizer steps, the loss curve."""

    examples: int
    steps: int
    first_loss: float
    last_loss: float
    positive_share: float
    losses: list[float] = field(default_factory=list)


def train_prm(
    examples: Sequence[PRMExample],
    out: str | Path,
    *,
    base: str | Path = "bundled",
    steps: int = 150,
    batch_size: int = 16,
    lr: float = 3e-4,
    seed: int = 0,
    threads: int = 2,
    delimiter: str = "\n",
    progress: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Fit a one-label value head on ``base``'s backbone to the examples' step labels
    (BCE at each step's delimiter token); save the checkpoint to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.policy.checkpoints import resolve_checkpoint

    if not examples:
        raise ValueError("no PRM examples to train on")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    directory = resolve_checkpoint(base)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = value_head_model(AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)).train()

    encoded = [(*encode_steps(tokenizer, delimiter, e.messages, e.steps), e.labels) for e in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(seed)
    losses = []
    for step in range(steps):
        batch = rng.sample(encoded, min(batch_size, len(encoded)))
        ids, mask = pad_rows([b[0] for b in batch], tokenizer.pad_token_id or 0)
        logits = model(input_ids=ids, attention_mask=mask).logits[..., 0]
        rows = torch.tensor([i for i, b in enumerate(batch) for _ in b[1]])
        cols = torch.tensor([p for b in batch for p in b[1]])
        target = torch.tensor([label for b in batch for label in b[2]], dtype=torch.float32)
        loss = loss_fn(logits[rows, cols], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    out = Path(out)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    labels = [label for e in examples for label in e.labels]
    report = TrainReport(
        len(examples), steps, losses[0], losses[-1], sum(x >= 0.5 for x in labels) / len(labels), losses
    )
    (out / "prm_report.json").write_text(json.dumps(asdict(report), indent=2))
    return report


async def build_tiny_prm(
    out: str | Path,
    *,
    tasks: int = 96,
    samples: int = 1,
    rollouts: int = 4,
    steps: int = 150,
    seed: int = 1234,
) -> TrainReport:
    """The whole recipe on the tiny domain: sample solutions of 2-4-step problems with
    the bundled policy, add a corrupted prefix of each (:func:`corrupt_tiny_step`),
    label every step by Monte-Carlo rollouts, train the value head."""
    from runtime.policy.local import LocalPolicy

    problems = list(tiny_tasks(tasks, steps=(2, 3, 4), seed=seed))
    async with LocalPolicy.from_path("bundled") as policy:
        examples = await mc_examples(
            policy, problems, samples=samples, rollouts=rollouts, corrupt=corrupt_tiny_step, seed=seed
        )
    log.info("prm examples labelled", examples=len(examples))
    return await anyio.to_thread.run_sync(lambda: train_prm(examples, out, steps=steps, seed=seed))


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Train a tiny-domain PRM from Monte-Carlo labels.")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--tasks", type=int, default=96)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    report = anyio.run(
        lambda: build_tiny_prm(
            args.out, tasks=args.tasks, samples=args.samples, rollouts=args.rollouts, steps=args.steps
        )
    )
    log.info("prm trained", out=args.out, first_loss=report.first_loss, last_loss=report.last_loss)


if __name__ == "__main__":
    main()
