"""Benchmark: where a decode step's time goes, LocalPolicy against batched ``model.generate``.

Run: ``python tests/bench/engine_profile.py [--model smollm2-135m] [--concurrency 32]
[--max-tokens 128]``. Prints a Markdown table, configuration first.

The workload of ``local_engine.py --real`` (section 5: chat prompts that ask for long
answers, greedy, every request in flight at once), one warm-up set and one timed set per
system, the same prompts for both. Timers wrap the model's forward pass (a forward hook
pair, the same in both systems) and the engine's own phases (admission and prefill,
the decode step, cache compaction), so the wall time of each system splits into:

- forward: time inside the model's forward calls (prefill and decode);
- the rest: everything else on the generating thread (``generate``'s logits
  processing and stopping checks; the engine's admission, sampling, bookkeeping,
  cache compaction, and the hand-off to asyncio).

Forward time per decode call is also shown: a slower forward in the engine (its cache
layout, attention mask or batch shape) is told apart from overhead around it.
"""

# ruff: noqa: T201  (a benchmark script: it prints its table)

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from chat_workload import THREADS, generate_batched, in_own_thread, prompt_sets  # noqa: E402  (tests/bench/, beside this file)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from runtime.policy.base import GenerationRequest  # noqa: E402
from runtime.policy.checkpoints import resolve_checkpoint  # noqa: E402
from runtime.policy.local import LocalPolicy  # noqa: E402
from runtime.policy.local.engine import LocalEngine  # noqa: E402

PHASES = ("_admit", "_step", "_compact", "_apply_swap")


class Timers:
    """Seconds and calls per name, summed over threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self._start = threading.local()

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.seconds[name] += seconds
            self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def hook_forward(self, model: Any) -> None:
        def before(module: Any, args: Any, kwargs: Any) -> None:
            self._start.t = time.perf_counter()

        def after(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            ids = kwargs.get("input_ids")
            name = "forward (decode)" if ids is not None and ids.shape[1] == 1 else "forward (prefill)"
            self.add(name, time.perf_counter() - self._start.t)

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after, with_kwargs=True)

    def wrap(self, cls: type, name: str) -> None:
        original: Callable[..., Any] = getattr(cls, name)
        timers = self

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                timers.add(f"engine {name}", time.perf_counter() - t)

        setattr(cls, name, timed)


async def local_run(policy: LocalPolicy, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(policy.generate(GenerationRequest(prompt=p, max_tokens=max_tokens, temperature=0.0)) for p in prompts)
    )
    return time.perf_counter() - start, sum(r.completion_tokens for r in results)


def report(label: str, wall: float, tokens: int, timers: Timers, engine: bool) -> None:
    fwd = timers.seconds["forward (decode)"] + timers.seconds["forward (prefill)"]
    decode_calls = max(1, timers.calls["forward (decode)"])
    print(
        f"| {label} | {wall:.2f} | {tokens / wall:.1f} | {fwd:.2f} ({100 * fwd / wall:.0f} %) "
        f"| {timers.seconds['forward (prefill)']:.2f} | {timers.calls['forward (decode)']} "
        f"| {1000 * timers.seconds['forward (decode)'] / decode_calls:.1f} "
        f"| {wall - fwd:.2f} ({100 * (wall - fwd) / wall:.0f} %) "
        f"| {1000 * (wall - fwd) / decode_calls:.1f} |"
    )
    if engine:
        parts = ", ".join(
            f"{name.removeprefix('engine ')} {timers.seconds[name]:.2f} s / {timers.calls[name]}"
            for name in sorted(timers.seconds)
            if name.startswith("engine")
        )
        step = timers.seconds["engine _step"] - timers.seconds["forward (decode)"]
        print(
            f"|  engine phases: {parts}; decode step outside forward {step:.2f} s "
            f"({1000 * step / decode_calls:.1f} ms a step) | | | | | | | | |"
        )


async def main(args: argparse.Namespace) -> None:
    model_dir = resolve_checkpoint(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    timers = Timers()
    timers.hook_forward(model)
    for phase in PHASES:
        timers.wrap(LocalEngine, phase)
    warm, timed = prompt_sets(tok, args.concurrency, 2, seed=args.seed)
    print(
        "| setting | value |\n|---|---|\n"
        f"| model | {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, fp32) |\n"
        f"| workload | {args.concurrency} chat prompts at once (tests/bench/chat_workload.py), greedy, "
        f"at most {args.max_tokens} tokens; one warm-up set, one timed set |\n"
        f"| threads | {THREADS} torch threads for each system, one system at a time |\n"
        f"| machine | {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, load average "
        f"at start {os.getloadavg()[0]:.2f}; nothing else of this benchmark running |\n",
        flush=True,
    )
    print(
        "| system | wall s | tokens/s | forward s (share) | of which prefill s | decode forwards "
        "| ms per decode forward | rest s (share) | rest ms per decode step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    in_own_thread(generate_batched, model, tok, warm, args.max_tokens, args.concurrency)
    timers.reset()
    _, tokens, _, wall = in_own_thread(generate_batched, model, tok, timed, args.max_tokens, args.concurrency)
    report(f"`model.generate`, batched ({args.concurrency})", wall, tokens, timers, engine=False)
    policy = LocalPolicy(model, tok, max_batch=args.max_batch, threads=THREADS, name=str(model_dir))
    try:
        await local_run(policy, warm, args.max_tokens)
        timers.reset()
        wall, tokens = await local_run(policy, timed, args.max_tokens)
        report(f"LocalPolicy (max_batch {args.max_batch})", wall, tokens, timers, engine=True)
    finally:
        await policy.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="checkpoint directory or a fetched model's name")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
