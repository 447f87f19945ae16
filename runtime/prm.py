"""A process reward model (PRM) over any local transformers checkpoint, and a way to
train one for the tiny domain from Monte-Carlo step labels (Math-Shepherd, Wang et
al. 2024; Lightman et al. 2023 for step-level reward models).

Scoring: the task's messages (chat template) plus the steps, each followed by the step
delimiter, go through the model once; a step's score is read at the last token of its
delimiter, so one forward pass scores every step of a path. Two kinds of checkpoint:
- a ``*ForTokenClassification`` model (a value head): ``sigmoid(logit)`` with one label,
  ``softmax(logits)[1]`` with two;
- a causal LM (Math-Shepherd style): ``P(good) / (P(good) + P(bad))`` of the next token
  at that position, for configurable ``good_token`` / ``bad_token``.

Design decisions:
- Batched across callers: concurrent ``score_step`` calls queue up; whoever holds the
  model lock runs everything queued (up to ``batch_size``) in one padded forward pass in
  a worker thread, so a beam's candidates are scored together without any background
  task. Results are cached per (messages, prefix), so aggregating a path's step scores
  never recomputes a prefix.
- Training for the tiny domain (:func:`train_prm`) puts a one-label value head on the
  bundled policy's backbone (copied weights, fresh head) and fits it with binary
  cross-entropy to soft Monte-Carlo labels (:func:`mc_examples`) at the delimiter
  positions. A few hundred labelled steps and a minute of CPU make a useful tiny PRM;
  :func:`build_tiny_prm` runs the whole recipe (``python -m runtime.prm --out DIR``).
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from runtime.context import gather
from runtime.errors import VerifierError
from runtime.mc_value import MonteCarloValue
from runtime.policy import GenerationRequest, Policy
from runtime.types import Task
from runtime.verifiers import Score

__all__ = [
    "PRMExample",
    "ProcessRewardModel",
    "TrainReport",
    "build_tiny_prm",
    "corrupt_tiny_step",
    "main",
    "mc_examples",
    "train_prm",
]

log = structlog.get_logger("searchlearn.prm")

CACHE_SIZE = 4096


@dataclass(slots=True)
class PRMExample:
    """One labelled solution: the task's messages, its steps, a label in [0, 1] per step."""

    messages: list[dict[str, str]]
    steps: list[str]
    labels: list[float]


@dataclass(slots=True)
class _Entry:
    item: tuple[list[dict[str, str]], list[str]]
    result: list[float] | None = None
    error: BaseException | None = None
    done: bool = False


class ProcessRewardModel:
    """Process verifier backed by a local checkpoint (see module doc)."""

    name = "prm"

    def __init__(
        self,
        path: str | Path,
        *,
        delimiter: str = "\n",
        batch_size: int = 32,
        good_token: str = "+",
        bad_token: str = "-",
        threads: int | None = None,
        name: str = "prm",
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

        from runtime.local import resolve_checkpoint

        directory = resolve_checkpoint(path)
        self.name = name
        self.delimiter = delimiter
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        config = AutoConfig.from_pretrained(directory)
        self.value_head = any(a.endswith("ForTokenClassification") for a in config.architectures or [])
        loader = AutoModelForTokenClassification if self.value_head else AutoModelForCausalLM
        self.model = loader.from_pretrained(directory, dtype=torch.float32).eval()
        if not self.value_head:
            ids = [self.tokenizer.convert_tokens_to_ids(t) for t in (good_token, bad_token)]
            if any(i is None or i == self.tokenizer.unk_token_id for i in ids):
                raise ValueError(f"good/bad tokens {good_token!r}/{bad_token!r} are not single tokens of {directory}")
            self._good_bad = ids
        self.threads = threads
        self._queue: list[_Entry] = []
        self._lock = anyio.Lock()
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self.forward_passes = 0

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        scores = await self.score_steps(task.as_messages(), [*previous, step])
        return Score(scores[-1])

    async def score_steps(self, messages: list[dict[str, str]], steps: Sequence[str]) -> list[float]:
        """Scores of every step of one path (batched with concurrent callers, cached)."""
        key = json.dumps([messages, list(steps)])
        if (hit := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return hit
        entry = _Entry((messages, list(steps)))
        self._queue.append(entry)
        await anyio.lowlevel.checkpoint()  # let callers of the same moment join the batch
        async with self._lock:
            while not entry.done:
                batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
                try:
                    results = await anyio.to_thread.run_sync(self._forward, [e.item for e in batch])
                except Exception as exc:  # every caller of the batch sees the failure
                    for e in batch:
                        e.error, e.done = exc, True
                    break
                for e, r in zip(batch, results, strict=True):
                    e.result, e.done = r, True
        if entry.error is not None:
            raise VerifierError(f"prm forward failed: {entry.error!r}") from entry.error
        assert entry.result is not None
        self._cache[key] = entry.result
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry.result

    def encode(self, messages: list[dict[str, str]], steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of a path and the index of the token that scores each step."""
        return _encode(self.tokenizer, self.delimiter, messages, steps)

    def _forward(self, items: list[tuple[list[dict[str, str]], list[str]]]) -> list[list[float]]:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        encoded = [self.encode(m, s) for m, s in items]
        ids, mask = _pad([e[0] for e in encoded], self.tokenizer.pad_token_id or 0)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        self.forward_passes += 1
        out = []
        for row, (_, positions) in enumerate(encoded):
            at = logits[row, positions]
            if self.value_head:
                probs = torch.sigmoid(at[:, 0]) if at.shape[-1] == 1 else torch.softmax(at, -1)[:, 1]
            else:
                pair = at[:, self._good_bad]
                probs = torch.softmax(pair, -1)[:, 0]
            out.append([float(p) for p in probs])
        return out

    async def aclose(self) -> None:
        return None


def _encode(
    tokenizer: Any, delimiter: str, messages: list[dict[str, str]], steps: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Token ids of the chat-rendered messages plus the steps (each followed by the
    delimiter), and for each step the index of the last token of its delimiter."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ends = []
    for s in steps:
        text += s + delimiter
        ends.append(len(text))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in enc["offset_mapping"]]
    positions = [max(i for i, start in enumerate(starts) if start < end) for end in ends]
    return list(enc["input_ids"]), positions


def _pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded ids and attention mask (scores are read at real positions only)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


# -- building one for the tiny domain ----------------------------------------------------


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


def corrupt_tiny_step(task: Task, steps: list[str], rng: random.Random) -> list[str] | None:
    """A prefix of a tiny-domain solution whose last step has a wrong result, carried
    consistently into the restated remainder (the error a policy actually makes)."""
    from runtime.tiny.domain import check_step, next_reduction, parse_expression, remaining_after, render

    expression = task.metadata.get("expression")
    if expression is None:
        return None
    states = []
    for k, line in enumerate(steps):
        if check_step(expression, line)[0] == 1.0 and "=" in line:
            states.append((k, expression))
        expression = remaining_after(expression, line) if check_step(expression, line)[0] == 1.0 else expression
    if not states:
        return None
    k, before = rng.choice(states)
    numbers, ops = parse_expression(before)
    i = next_reduction(ops)
    a, op, b = numbers[i], ops[i], numbers[i + 1]
    wrong = (a + b if op == "+" else a - b if op == "-" else a * b) + rng.choice([-10, -2, -1, 1, 2, 10])
    numbers[i : i + 2] = [wrong]
    del ops[i]
    line = f"{a}{op}{b}={wrong}" + (f", leaving {render(numbers, ops)}" if ops else "")
    return [*steps[:k], line]


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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from runtime.local import resolve_checkpoint

    if not examples:
        raise ValueError("no PRM examples to train on")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    directory = resolve_checkpoint(base)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = AutoConfig.from_pretrained(directory, num_labels=1)
    config.architectures = [config.architectures[0].replace("ForCausalLM", "ForTokenClassification")]
    model = AutoModelForTokenClassification.from_config(config)  # type: ignore[no-untyped-call]
    lm = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    backbone = getattr(lm, lm.base_model_prefix)
    getattr(model, model.base_model_prefix).load_state_dict(backbone.state_dict())
    model.train()

    encoded = [(*_encode(tokenizer, delimiter, e.messages, e.steps), e.labels) for e in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(seed)
    losses = []
    for step in range(steps):
        batch = rng.sample(encoded, min(batch_size, len(encoded)))
        ids, mask = _pad([b[0] for b in batch], tokenizer.pad_token_id or 0)
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
    from runtime.local import LocalPolicy
    from runtime.tasks import tiny_tasks

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
