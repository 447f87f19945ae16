"""Train the bundled tiny reasoning policy from scratch: tokenizer, then a small Qwen2 LM.

    python examples/train_tiny_policy.py --out runtime/tiny/policy            # shipped policy
    python examples/train_tiny_policy.py --out /tmp/weak --max-problem-steps 2 --steps 600
    python examples/train_tiny_policy.py --out runtime/tiny/tool --init bundled-weak --tools \
        --steps 480 --lr 1e-3 --wide-share 0.4                                 # bundled-tool

Seeded and reproducible on CPU (fp32). Data is generated on the fly by
``runtime.tiny.domain``; the loss covers the assistant's lines only, and not the
deliberately wrong steps of reflection traces (the policy learns to correct, not to
err). At the end it reports greedy pass@1 by number of steps to ``training_report.json``.

``--tools`` trains on tool traces (``runtime.tiny.domain.tool_trace``): a calculator
call before every operation, answered by the calculator environment's ``= value`` line,
which is fed but never trained. Such a policy is evaluated through the runtime itself,
the calculator environment answering its calls (``configs/agentic_calculator.yaml``).
``--init`` continues from a checkpoint (its tokenizer kept) instead of starting anew.
"""

# ruff: noqa: T201  (a training script: it prints its progress)
from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from runtime.policy.checkpoints import resolve_checkpoint
from runtime.tiny.domain import generate_problem, mixed_operands, tool_trace, training_trace
from runtime.tiny.policy_format import CHAT_TEMPLATE, SPECIAL_TOKENS, assistant_prefix, evaluate_greedy

ROOT = Path(__file__).resolve().parents[1]


def build_tokenizer(rng: random.Random, out: Path) -> PreTrainedTokenizerFast:
    samples = []
    for _ in range(20_000):
        p = generate_problem(rng, rng.randint(1, 4))
        samples.append(assistant_prefix(p.question) + "\n".join(t for t, _ in training_trace(p, rng)))
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(samples, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def encode_example(
    tok: PreTrainedTokenizerFast,
    rng: random.Random,
    max_problem_steps: int,
    step_weights: list[float],
    tools: bool = False,
    wide_share: float = 0.0,
    wide_max: int = 999,
) -> tuple[list[int], list[int]]:
    steps = rng.choices(range(1, max_problem_steps + 1), weights=step_weights[:max_problem_steps])[0]
    problem = generate_problem(rng, steps, max_operand=mixed_operands(rng, wide_share, wide_max))
    prefix = assistant_prefix(problem.question)
    text, spans = prefix, []
    trace = tool_trace(problem) if tools else training_trace(problem, rng)
    for k, (line, trained) in enumerate(trace):
        start = len(text)
        text += ("\n" if k else "") + line
        if trained:  # the line, the line break before it, and the one after it (it ends the line)
            spans.append((start, len(text) + (1 if k < len(trace) - 1 else 0)))
    spans.append((len(text), len(text) + len("<|im_end|>")))
    text += "<|im_end|>"
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    labels = [
        tid if any(s <= a < e for s, e in spans) else -100
        for tid, (a, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]
    return enc["input_ids"], labels


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runtime/tiny/policy"))
    parser.add_argument("--steps", type=int, default=1800, help="optimizer steps of the schedule")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this many steps, mid-schedule (an early checkpoint)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-problem-steps", type=int, default=4, help="train on 1..K-step problems")
    parser.add_argument(
        "--step-weights",
        default="3,3,2,2",
        help="relative frequency of 1,2,3,4-step problems in training (e.g. 3,3,0.2,0.2: mostly short ones)",
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", default=None, help="continue from this checkpoint (a name or a directory)")
    parser.add_argument("--tools", action="store_true", help="train on tool traces with calculator calls")
    parser.add_argument(
        "--wide-share",
        type=float,
        default=0.0,
        help="share of problems drawn with operands up to --wide-max (a tool policy learns to copy wide "
        "numbers into its calls; the arithmetic stays the calculator's)",
    )
    parser.add_argument("--wide-max", type=int, default=999, help="largest operand of the wide problems")
    parser.add_argument("--note", default=None, help="a line for the report")
    args = parser.parse_args()
    args.step_weights = [float(w) for w in args.step_weights.split(",")]
    if len(args.step_weights) < args.max_problem_steps or any(w < 0 for w in args.step_weights):
        parser.error("--step-weights needs a non-negative weight for each of 1..--max-problem-steps steps")
    return args


def new_model(tok: PreTrainedTokenizerFast, hidden: int, layers: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


def evaluate_with_calculator(checkpoint: Path, overrides: list[str] | None = None) -> dict[str, float]:
    """Greedy pass@1 by number of steps of a tool-using checkpoint, run by the runtime on
    ``configs/agentic_calculator.yaml`` (the calculator environment answers its calls);
    ``overrides`` change the config (``tasks.max_operand=999``)."""
    import anyio

    from runtime.app.build import build_runtime, build_tasks
    from runtime.app.config import load_config

    store = f"store.path={tempfile.mkdtemp()}/evaluation.db"  # a scratch store: nothing is kept
    config = load_config(
        ROOT / "configs" / "agentic_calculator.yaml", [f"policy.path={checkpoint}", store, *(overrides or [])]
    )

    async def run() -> list[Any]:
        async with build_runtime(config) as runtime:
            return [ep async for ep in runtime.stream(build_tasks(config))]

    by_steps: dict[str, list[bool]] = {}
    for ep in anyio.run(run):
        by_steps.setdefault(str(ep.task.metadata["steps"]), []).append((ep.reward or 0.0) >= 1.0)
    return {k: sum(v) / len(v) for k, v in sorted(by_steps.items())}


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.init is None:
        tok = build_tokenizer(rng, args.out)
        model = new_model(tok, args.hidden, args.layers)
    else:
        start = resolve_checkpoint(args.init)
        tok = PreTrainedTokenizerFast.from_pretrained(start)
        tok.save_pretrained(args.out)
        model = Qwen2ForCausalLM.from_pretrained(start)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    started = time.monotonic()
    stop = min(args.steps, args.stop_after or args.steps)
    for step in range(stop):
        examples = (
            encode_example(
                tok, rng, args.max_problem_steps, args.step_weights, args.tools, args.wide_share, args.wide_max
            )
            for _ in range(args.batch)
        )
        batch = sorted(examples, key=lambda b: len(b[0]))
        n_labels = sum(sum(t != -100 for t in y) for _, y in batch)
        total = 0.0
        for part in range(4):  # length-sorted micro-batches: little padding, same gradient
            micro = batch[part * len(batch) // 4 : (part + 1) * len(batch) // 4]
            width = max(len(ids) for ids, _ in micro)
            ids = torch.full((len(micro), width), tok.pad_token_id)
            labels = torch.full((len(micro), width), -100)
            mask = torch.zeros((len(micro), width), dtype=torch.long)
            for i, (x, y) in enumerate(micro):
                ids[i, : len(x)] = torch.tensor(x)
                labels[i, : len(y)] = torch.tensor(y)
                mask[i, : len(x)] = 1
            share = sum(sum(t != -100 for t in y) for _, y in micro) / n_labels
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * share
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == stop - 1:
            print(f"step {step:5d}  loss {total:.4f}  {time.monotonic() - started:7.1f}s", flush=True)

    train_seconds = round(time.monotonic() - started, 1)
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(args.out)
    report: dict[str, Any] = {
        "parameters": n_params,
        "init": args.init,
        "traces": "tool (a calculator call before every operation)" if args.tools else "plain",
        "optimizer_steps": stop,
        "schedule_steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "max_problem_steps": args.max_problem_steps,
        "step_weights": args.step_weights,
        "wide_share": args.wide_share,
        "wide_max": args.wide_max,
        "train_seconds": train_seconds,
    }
    if args.tools:
        report["greedy_pass_at_1_by_steps"] = evaluate_with_calculator(
            args.out, ["tasks.size=400", "tasks.steps=[1, 2, 3, 4]", "tasks.seed=12345", "tasks.split=all"]
        )
        report["greedy_pass_at_1_by_steps_operands_to_999"] = evaluate_with_calculator(
            args.out, ["tasks.size=400", "tasks.steps=[1, 2, 3, 4]", "tasks.seed=12345", "tasks.max_operand=999"]
        )
        report["evaluated_by"] = "the runtime on configs/agentic_calculator.yaml, 100 problems per length"
    else:
        report["greedy_pass_at_1_by_steps"] = evaluate_greedy(model, tok, per_steps=200, seed=12345)
    if args.note:
        report["note"] = args.note
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
