"""The prepared device check's measurements (``tests/gpu/check.sh`` runs it after the GPU tests).

    python tests/gpu/check.py OUT [--dry]

Writes ``OUT/check.md`` (the tables, each headed by the configuration it ran) and
``OUT/check.json`` (the same rows), and prints the tables:

1. **Learner kinds**: every learner kind (``tests/gpu/kinds.py``), built as its config
   builds it, takes 4 optimizer steps on the device in bf16 (autocast over float32 master
   weights), with LoRA and with gradient checkpointing as extra rows of expert
   iteration; each row says whether the kind's own loss fell, the dtype a linear layer
   computed in, the weights' and AdamW state's dtypes, seconds a step and peak memory.
2. **Hand-off**: a learner's weights published to an engine in the same process, both
   on the device: where the published tensors live (no copy through the CPU when both
   are on the GPU), how long publishing and loading took, and whether the engine then
   holds the learner's weights (cast to its dtype).
3. **Engine against HF generate**: the continuous-batching engine
   (:class:`~runtime.policy.local.LocalEngine`) and ``model.generate`` on the same
   randomly initialised model of Qwen2.5-0.5B's architecture (its config written out
   below; nothing downloaded), greedy, every row generating exactly the same number of
   tokens (no EOS), at several batch sizes: tokens/s of each, their ratio, peak memory.
4. **Learner tokens/s**: expert iteration's learner on the same model, bf16 with and
   without gradient checkpointing and float32: input tokens a second through forward,
   backward and the optimizer step, and peak memory.
5. **The loop from its config**: ``build_loop`` on a config that puts the engine, the
   learner (bf16, gradient checkpointing) and the evaluator on the device; expert
   iteration on the bundled policy publishes two versions, each evaluated.

``--dry`` runs every part on the CPU at tiny sizes in seconds (the suite runs it, so the
script cannot rot); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import kinds  # noqa: E402

# Qwen2.5-0.5B's config.json (Qwen/Qwen2.5-0.5B-Instruct), written out: 494 M parameters.
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
    "tie_word_embeddings": True, "hidden_act": "silu", "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "sliding_window": None, "use_sliding_window": False, "max_window_layers": 21,
}  # fmt: skip
TINY = {**QWEN25_05B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "bos_token_id": 1,
        "eos_token_id": 2}  # fmt: skip


def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from runtime.tiny.policy_format import BUNDLED_POLICY

    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _model(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A randomly initialised model of ``config``, created on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    with device:
        return AutoModelForCausalLM.from_config(Qwen2Config(**config), dtype=dtype).eval()


# -- 1. every learner kind --------------------------------------------------------------------


def learner_kinds(device: str, dry: bool) -> dict[str, Any]:
    from learners.trainer import LoraSettings

    tok = _tokenizer()
    hidden, layers = (64, 2) if dry else (256, 4)

    def model(seed: int) -> Any:
        return kinds.tiny_model(tok, seed, hidden=hidden, layers=layers)

    extra: list[tuple[str, str, dict[str, Any]]] = [
        ("expert_iteration", "expert_iteration (lora)", {"lora": LoraSettings(r=8), "lr": 1e-2}),
        ("expert_iteration", "expert_iteration (checkpointing)", {"gradient_checkpointing": True}),
    ]
    rows = []
    for kind, label, settings in [*((k, k, {}) for k in kinds.KINDS), *extra]:
        run = kinds.run_kind(kind, tok, model=model, device=device, dtype="bfloat16", label=label, **settings)
        rows.append({**asdict(run), "improved": run.improved})
    return {"model": f"Qwen2, hidden {hidden}, {layers} layers (random init)", "rows": rows}


# -- 2. weights handed from a learner to an engine in this process ------------------------------


def handoff(device: str, dry: bool) -> dict[str, Any]:
    import anyio

    from learners.sft import SFTLearner
    from runtime.policy.local import LocalPolicy

    tok = _tokenizer()
    hidden, layers = (64, 2) if dry else (896, 24)
    learner = SFTLearner(kinds.tiny_model(tok, 0, hidden=hidden, layers=layers), tok, device=device, dtype="bfloat16")
    served = kinds.tiny_model(tok, 1, hidden=hidden, layers=layers).to(device=learner.device, dtype=torch.bfloat16)
    policy = LocalPolicy(served, tok, name="handoff")
    try:
        _sync(learner.device)
        started = time.perf_counter()
        weights = learner.weights()
        _sync(learner.device)
        published = time.perf_counter() - started
        started = time.perf_counter()
        anyio.run(policy.load_weights, weights, 1)
        _sync(learner.device)
        loaded = time.perf_counter() - started
        engine = policy.engine.model.state_dict()
        same = all(torch.equal(engine[k], v.to(engine[k].dtype)) for k, v in weights.items() if k in engine)
        return {
            "learner_device": str(learner.device),
            "engine_device": str(policy.engine.device),
            "published_on": sorted({str(v.device) for v in weights.values()}),
            "engine_dtype": str(next(served.parameters()).dtype).removeprefix("torch."),
            "parameters": sum(v.numel() for v in weights.values()),
            "publish_s": published,
            "load_s": loaded,
            "engine_holds_the_weights": same,
            "engine_version": policy.version,
        }
    finally:
        anyio.run(policy.aclose)


# -- 3. the engine against HF generate ---------------------------------------------------------


def _engine_run(engine: Any, prompts: list[list[int]], new: int) -> tuple[float, int]:
    """Submit every prompt at once (greedy, exactly ``new`` tokens each); seconds until
    the last finished, and the tokens generated."""
    from runtime.policy.local import EngineRequest

    left = [len(prompts)]
    done = threading.Event()
    lock = threading.Lock()
    tokens = [0]
    errors: list[BaseException] = []

    def finished(result: Any) -> None:
        with lock:
            if result.error is not None:
                errors.append(result.error)
            tokens[0] += sum(len(s.token_ids) for s in result.sequences)
            left[0] -= 1
            if left[0] == 0:
                done.set()

    started = time.perf_counter()
    for ids in prompts:
        engine.submit(EngineRequest(prompt_ids=ids, max_tokens=new, temperature=0.0, done=finished))
    done.wait()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return seconds, tokens[0]


def _generate_run(model: Any, prompts: list[list[int]], new: int) -> tuple[float, int]:
    ids = torch.tensor(prompts, device=model.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
    _sync(model.device)
    return time.perf_counter() - started, int(out.shape[0] * (out.shape[1] - ids.shape[1]))


def engine_vs_generate(device: str, dry: bool) -> dict[str, Any]:
    from runtime.policy.local import LocalEngine

    place = torch.device(device)
    config = TINY if dry else QWEN25_05B
    batches, prompt, new = ([1, 4], 16, 8) if dry else ([1, 16, 64], 128, 128)
    model = _model(config, place, torch.bfloat16)
    model.generation_config.eos_token_id = None  # every row generates exactly `new` tokens
    tok = _tokenizer()  # decodes the ids it knows; the benchmark reads ids only
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in batches:
        prompts = torch.randint(3, config["vocab_size"], (batch, prompt), generator=generator).tolist()
        # warm-up (kernels, allocator) on a prompt of its own: the engine's prefix cache
        # must not hold a timed prompt
        warm = torch.randint(3, config["vocab_size"], (1, prompt), generator=generator).tolist()
        _generate_run(model, warm, 4)
        _reset_peak(place)
        hf_s, hf_tokens = _generate_run(model, prompts, new)
        hf_peak = _peak_mib(place)
        engine = LocalEngine(model, tok, max_batch=max(batches))
        engine.eos = set()
        try:
            _engine_run(engine, warm, 4)
            _reset_peak(place)
            engine_s, engine_tokens = _engine_run(engine, prompts, new)
            engine_peak = _peak_mib(place)
        finally:
            engine.close()
        rows.append({
            "batch": batch, "prompt_tokens": prompt, "new_tokens": new,
            "engine_tok_s": engine_tokens / engine_s, "generate_tok_s": hf_tokens / hf_s,
            "ratio": (engine_tokens / engine_s) / (hf_tokens / hf_s),
            "engine_peak_mib": engine_peak, "generate_peak_mib": hf_peak,
            "engine_tokens": engine_tokens, "generate_tokens": hf_tokens,
        })  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return {"model": "Qwen2.5-0.5B (random init)" if not dry else "tiny Qwen2", "parameters": params,
            "dtype": "bfloat16", "device": str(place), "rows": rows}  # fmt: skip


# -- 4. learner tokens/s -----------------------------------------------------------------------


def learner_throughput(device: str, dry: bool) -> dict[str, Any]:
    from learners.examples import Example
    from learners.sft import SFTLearner

    place = torch.device(device)
    config = TINY if dry else QWEN25_05B
    tok = _tokenizer()
    examples_per_step, digits = (4, 30) if dry else (16, 500)
    examples = [
        Example([{"role": "user", "content": f"Repeat {i}"}], "".join(str((i + j) % 10) for j in range(digits)),
                ("gpu", f"t{i}", 0))
        for i in range(examples_per_step)
    ]  # fmt: skip
    rows = []
    variants = [("bfloat16", False), ("bfloat16", True), ("float32", False)]
    for dtype, checkpointing in variants:
        model = _model(config, place, torch.float32)
        learner = SFTLearner(
            model, tok, device=device, dtype=dtype, gradient_checkpointing=checkpointing,
            micro_batch=examples_per_step // 2, lr=1e-5, max_length=1024,
        )  # fmt: skip
        learner.step(examples)  # warm-up
        _reset_peak(place)
        started = time.perf_counter()
        steps, processed, losses = 3, 0.0, []
        for _ in range(steps):
            result = learner.step(examples)
            processed += result.metrics["processed"]
            losses.append(result.loss)
        _sync(place)
        seconds = time.perf_counter() - started
        rows.append({
            "dtype": dtype, "gradient_checkpointing": checkpointing, "steps": steps,
            "tokens_per_step": processed / steps, "tok_s": processed / seconds, "s_per_step": seconds / steps,
            "peak_mib": _peak_mib(place), "loss_first": losses[0], "loss_last": losses[-1],
        })  # fmt: skip
        del learner, model
        _reset_peak(place)
    return {"model": "Qwen2.5-0.5B (random init)" if not dry else "tiny Qwen2", "device": str(place),
            "micro_batch": examples_per_step // 2, "examples_per_step": examples_per_step, "rows": rows}  # fmt: skip


# -- 5. the online loop built from its config, everything on the device ------------------------


def loop_from_config(device: str, dry: bool) -> dict[str, Any]:
    """``searchlearn``'s own path: a config with the engine, the learner (bf16, gradient
    checkpointing) and the evaluator on ``device``, built by ``build_loop``, publishing
    two versions of the bundled policy's expert iteration."""
    import tempfile

    import anyio

    from runtime.app.config import load_config
    from runtime.app.learning import build_loop
    from runtime.scheduling.store import EpisodeStore

    with tempfile.TemporaryDirectory() as tmp:
        sets = [
            f"policy.device={device}", "policy.kind=local", "policy.dtype=bfloat16", f"store.path={tmp}/s.db",
            "tasks.size=64", "tasks.steps=[1, 2]", "sampling.temperature=1.0", "sampling.max_tokens=80",
            "learner.kind=expert_iteration", f"learner.device={device}", "learner.dtype=bfloat16",
            "learner.gradient_checkpointing=true", "learner.batch_examples=8", "learner.max_versions=2",
            "learner.micro_batch=8", "learner.lr=1e-5", f"learner.eval.device={device}", "learner.eval.dtype=bfloat16",
            "learner.eval.every=1", "learner.eval.tasks.size=8", "learner.eval.strategy=false",
            "scheduler.concurrency=16",
        ]  # fmt: skip
        config = load_config(None, sets)
        started = time.perf_counter()
        loop = build_loop(config)
        learner: Any = loop.learner
        engine: Any = getattr(loop.runtime.policy, "engine", None)
        evaluator: Any = loop.evaluator

        async def run() -> Any:
            async with loop:
                return await loop.run(config.tasks.build())

        stats = anyio.run(run)
        held = engine.model.state_dict()
        same = all(torch.equal(held[k], v.to(held[k].dtype)) for k, v in learner.weights().items() if k in held)
        with EpisodeStore(config.store.path) as store:
            curve = store.curve(config.run_id)
        return {
            "engine_device": str(engine.device),
            "learner_device": str(learner.device),
            "evaluator_device": str(evaluator.policy.engine.device),
            "versions": stats.version,
            "episodes": stats.episodes,
            "engine_holds_the_weights": same,
            "evaluations": [round(p["greedy_pass@1"], 3) for p in curve],
            "seconds": time.perf_counter() - started,
        }


# -- tables ------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


Render = Callable[[Any], str]


def _section(results: dict[str, Any], name: str, heading: Render, body: Render) -> list[str]:
    """A part's heading and table; its error where it failed; nothing where it has not run."""
    part = results.get(name)
    if part is None:
        return []
    if "error" in part:
        return [f"## {name}: FAILED", "", f"    {part['error']}", ""]
    return [f"## {heading(part)}", "", body(part), ""]


KIND_COLUMNS = "kind device improved before after compute_dtype weight_dtype state_dtype seconds_per_step peak_mib"
ENGINE_COLUMNS = "batch prompt_tokens new_tokens engine_tok_s generate_tok_s ratio engine_peak_mib generate_peak_mib"
LEARNER_COLUMNS = "dtype gradient_checkpointing tokens_per_step tok_s s_per_step peak_mib loss_first loss_last"


def report(results: dict[str, Any]) -> str:
    env = results["environment"]
    run = "dry run (CPU, tiny sizes: the numbers mean nothing)" if env["dry"] else "full run"
    out = [
        "# Device check",
        "",
        f"{env['device_name']} · torch {env['torch']} · transformers {env['transformers']} · {run} · "
        f"{env['seconds']:.0f} s",
        "",
    ]
    out += _section(
        results,
        "kinds",
        lambda p: f"Every learner kind, bf16 (autocast over float32 master weights), 4 steps: {p['model']}",
        lambda p: _table(p["rows"], KIND_COLUMNS.split()),
    )
    out += _section(
        results,
        "handoff",
        lambda p: "A learner's weights handed to a bf16 engine in the same process",
        lambda p: _table([p], list(p)),
    )
    out += _section(
        results,
        "engine",
        lambda p: (
            f"Engine against HF generate: {p['model']}, {p['parameters'] / 1e6:.3g} M parameters, "
            f"{p['dtype']}, {p['device']}, greedy, no EOS"
        ),
        lambda p: _table(p["rows"], ENGINE_COLUMNS.split()),
    )
    out += _section(
        results,
        "learner",
        lambda p: (
            f"Learner tokens/s: expert iteration's learner, {p['model']}, {p['device']}, "
            f"{p['examples_per_step']} examples a step in micro-batches of {p['micro_batch']}"
        ),
        lambda p: _table(p["rows"], LEARNER_COLUMNS.split()),
    )
    out += _section(
        results,
        "loop",
        lambda p: (
            "The online loop built from its config (expert iteration on the bundled policy; engine, "
            "learner and evaluator on the device in bf16, gradient checkpointing)"
        ),
        lambda p: _table([p], list(p)),
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The device check's measurements (see tests/gpu/check.sh).")
    parser.add_argument("out", type=Path, help="folder the tables are written to")
    parser.add_argument("--dry", action="store_true", help="on the CPU at tiny sizes, in seconds")
    args = parser.parse_args(argv)
    import transformers

    if not args.dry and not torch.cuda.is_available():
        sys.stderr.write("no CUDA GPU visible to torch: run with --dry on a machine without one\n")
        return 2
    device = "cpu" if args.dry else "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    parts = [
        ("kinds", learner_kinds),
        ("handoff", handoff),
        ("engine", engine_vs_generate),
        ("learner", learner_throughput),
        ("loop", loop_from_config),  # last: its engines' threads must not share the timed parts' CPU
    ]
    failed: list[str] = []
    text = ""
    for name, part in parts:
        began = time.perf_counter()
        try:  # a part that fails is reported and the others still run (a GPU loan is short)
            results[name] = part(device, args.dry)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            failed.append(name)
            traceback.print_exc()
        sys.stderr.write(f"{name}: {time.perf_counter() - began:.1f} s\n")
        sys.stderr.flush()
        results["environment"] = {
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "CPU",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dry": args.dry,
            "seconds": time.perf_counter() - started,
        }
        text = report(results)  # written after every part: a run cut short keeps what it measured
        (args.out / "check.md").write_text(text + "\n", encoding="utf-8")
        (args.out / "check.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    failed += [r["kind"] for r in results["kinds"].get("rows", []) if not r["improved"]]
    for name in ("handoff", "loop"):
        if results.get(name, {}).get("engine_holds_the_weights") is False:
            failed.append(name)
    if results.get("loop", {}).get("versions", 2) != 2:
        failed.append("loop")
    if failed:
        sys.stderr.write(f"FAILED: {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
