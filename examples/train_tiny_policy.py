"""Train the bundled tiny reasoning policy from scratch: tokenizer, then a small Qwen2 LM.

    python examples/train_tiny_policy.py --out runtime/tiny/policy            # shipped policy
    python examples/train_tiny_policy.py --out /tmp/weak --max-problem-steps 2 --steps 600

Seeded and reproducible on CPU (fp32). Data is generated on the fly by
``runtime.tiny.domain``; the loss covers the assistant's lines only, and not the
deliberately wrong steps of reflection traces (the policy learns to correct, not to
err). At the end it reports greedy pass@1 by number of steps to ``training_report.json``.
"""

# ruff: noqa: T201  (a training script: it prints its progress)
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from runtime.tiny.domain import generate_problem, training_trace
from runtime.tiny.policy_format import CHAT_TEMPLATE, SPECIAL_TOKENS, assistant_prefix, evaluate_greedy


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
    tok: PreTrainedTokenizerFast, rng: random.Random, max_problem_steps: int, step_weights: list[float]
) -> tuple[list[int], list[int]]:
    steps = rng.choices(range(1, max_problem_steps + 1), weights=step_weights[:max_problem_steps])[0]
    problem = generate_problem(rng, steps)
    prefix = assistant_prefix(problem.question)
    text, spans = prefix, []
    for k, (line, trained) in enumerate(training_trace(problem, rng)):
        start = len(text)
        text += ("\n" if k else "") + line
        if trained:
            spans.append((start, len(text)))
    spans.append((len(text), len(text) + len("<|im_end|>")))
    text += "<|im_end|>"
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    labels = [
        tid if any(s <= a < e for s, e in spans) else -100
        for tid, (a, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]
    return enc["input_ids"], labels


def main() -> None:
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
    args = parser.parse_args()

    step_weights = [float(w) for w in args.step_weights.split(",")]
    if len(step_weights) < args.max_problem_steps or any(w < 0 for w in step_weights):
        parser.error("--step-weights needs a non-negative weight for each of 1..--max-problem-steps steps")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(rng, args.out)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
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
        examples = (encode_example(tok, rng, args.max_problem_steps, step_weights) for _ in range(args.batch))
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

    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(args.out)
    accuracy = evaluate_greedy(model, tok, per_steps=200, seed=12345)
    report = {
        "parameters": n_params,
        "optimizer_steps": stop,
        "schedule_steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "max_problem_steps": args.max_problem_steps,
        "step_weights": step_weights,
        "train_seconds": round(time.monotonic() - started, 1),
        "greedy_pass_at_1_by_steps": accuracy,
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
