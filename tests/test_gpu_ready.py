"""Ready for the GPU, checked on the CPU: bf16 runs of the engine and of every learner
kind, the reason for mixed precision (autocast over float32 master weights), gradient
checkpointing, weights published into a bf16 engine, a GPU named where there is none
failing in one line naming the field, Ray workers that reserve GPUs, and the device
check script's dry mode. What needs a GPU itself is ``tests/gpu/check.sh``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch
from gpu import kinds
from transformers import AutoTokenizer
from typer.testing import CliRunner

from learners.sft import SFTLearner
from runtime.app.cli import app
from runtime.app.config import RunConfig
from runtime.core.errors import ConfigError
from runtime.policy.base import GenerationRequest
from runtime.policy.local import LocalPolicy
from runtime.scheduling.store import EpisodeStore
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.tasks import tiny_tasks

GPU = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


# -- the engine in bf16 ------------------------------------------------------------------------


async def _greedy(dtype: str, prompts: list[list[dict[str, str]]]) -> tuple[list[str], torch.dtype]:
    async with LocalPolicy.from_path("bundled", device="cpu", dtype=dtype, threads=1) as policy:
        held = next(policy.engine.model.parameters()).dtype

        async def one(messages: list[dict[str, str]]) -> str:
            request = GenerationRequest(messages=messages, max_tokens=96, temperature=0.0)
            return (await policy.generate(request)).completions[0].text

        out = [""] * len(prompts)

        async def fill(i: int) -> None:
            out[i] = await one(prompts[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(prompts)):
                tg.start_soon(fill, i)
    return out, held


def test_the_engine_in_bf16_writes_the_float32_greedy_text() -> None:
    """policy.dtype: bfloat16 holds the weights (and the KV cache) in bf16; on the bundled
    policy its greedy solutions are float32's, token for token (100 of 100 tasks measured;
    24 here), batched together as a run batches them."""
    prompts = [t.as_messages() for t in tiny_tasks(24, steps=(1, 2, 3), seed=5)]
    full, full_dtype = anyio.run(_greedy, "float32", prompts)
    half, half_dtype = anyio.run(_greedy, "bfloat16", prompts)
    assert (full_dtype, half_dtype) == (torch.float32, torch.bfloat16)
    assert sum("Answer:" in text for text in full) >= 20  # the texts are solutions, not noise
    assert half == full


def test_published_float32_weights_load_into_a_bf16_engine(tokenizer: Any) -> None:
    """A learner's float32 master weights, published to a bf16 engine, are served cast to
    bf16 (the engine's load copies and casts; on a GPU, device to device)."""
    learner = SFTLearner(kinds.tiny_model(tokenizer, 0), tokenizer, device="cpu", dtype="bfloat16")
    served = kinds.tiny_model(tokenizer, 1).to(torch.bfloat16)
    policy = LocalPolicy(served, tokenizer, name="bf16")
    before = served.model.embed_tokens.weight.detach().clone()
    try:
        weights = learner.weights()
        assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
        anyio.run(policy.load_weights, weights, 3)
        held = policy.engine.model.state_dict()
        assert policy.version == 3
        assert all(torch.equal(held[k], v.to(torch.bfloat16)) for k, v in weights.items() if k in held)
        assert not torch.equal(held["model.embed_tokens.weight"], before)  # the learner's, not its own
    finally:
        anyio.run(policy.aclose)


# -- every learner kind in bf16 ----------------------------------------------------------------


@pytest.mark.parametrize("kind", kinds.KINDS)
def test_every_learner_kind_steps_the_right_way_in_bf16(tokenizer: Any, kind: str) -> None:
    """learner.dtype: bfloat16 on the CPU: the forward pass computes in bf16 (a linear
    layer's output), the weights and AdamW's moments stay float32, and four steps lower
    the kind's own loss on the batch (tests/gpu/kinds.py says what each measures)."""
    run = kinds.run_kind(kind, tokenizer, model=lambda seed: kinds.tiny_model(tokenizer, seed), dtype="bfloat16")
    assert (run.compute_dtype, run.weight_dtype, run.state_dtype) == ("bfloat16", "float32", "float32")
    assert run.after < run.before, (run.before, run.after, run.losses)


def test_float32_is_unchanged_and_computes_in_float32(tokenizer: Any) -> None:
    run = kinds.run_kind("dpo", tokenizer, model=lambda seed: kinds.tiny_model(tokenizer, seed), dtype="float32")
    assert (run.compute_dtype, run.weight_dtype, run.state_dtype) == ("float32", "float32", "float32")
    assert run.after < run.before


def test_bf16_weights_would_round_away_the_updates_master_weights_keep() -> None:
    """Why autocast over float32 master weights and not bf16 weights: an Adam step (about
    lr in size) at lr 1e-5 on weights drawn from N(0, 0.02) is below half a bf16 unit in
    the last place of most of them, so stored in bf16 84 % of the weights do not move at
    all (float32: none is lost)."""
    torch.manual_seed(0)
    weights = torch.randn(100_000) * 0.02
    step = 1e-5 * torch.sign(torch.randn(100_000))  # one Adam step at lr 1e-5
    moved_bf16 = (weights.bfloat16() + step.bfloat16() != weights.bfloat16()).float().mean()
    moved_fp32 = (weights + step != weights).float().mean()
    assert moved_fp32 == 1.0 and moved_bf16 < 0.2


def test_gradient_checkpointing_takes_the_same_step(tokenizer: Any) -> None:
    """learner.gradient_checkpointing recomputes activations in the backward pass: the
    same loss and the same updated weights as without it."""
    data = kinds.batch("expert_iteration", kinds.problems(4))
    plain = SFTLearner(kinds.tiny_model(tokenizer, 0), tokenizer, lr=1e-2)
    checkpointed = SFTLearner(kinds.tiny_model(tokenizer, 0), tokenizer, lr=1e-2, gradient_checkpointing=True)
    flag = (
        "is_activation_checkpointing"
        if hasattr(plain.model, "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert getattr(checkpointed.model, flag) and not getattr(plain.model, flag)
    assert plain.step(data).loss == pytest.approx(checkpointed.step(data).loss, rel=1e-6)
    for (name, a), b in zip(plain.model.named_parameters(), checkpointed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.anyio
@pytest.mark.timeout(240)
async def test_a_bf16_run_from_its_config_trains_publishes_and_evaluates(tmp_path: Path) -> None:
    """The keys as a config sets them reach every part: a bf16 engine, a bf16 learner with
    gradient checkpointing and a bf16 evaluator; the loop publishes two versions into the
    engine and evaluates them."""
    from runtime.app.config import load_config
    from runtime.app.learning import build_loop

    sets = [
        "policy.kind=local", "policy.dtype=bfloat16", "policy.device=cpu", "store.path=" + str(tmp_path / "s.db"),
        "tasks.size=64", "tasks.steps=[1, 2]", "sampling.temperature=1.0", "sampling.max_tokens=80",
        "learner.kind=expert_iteration", "learner.dtype=bfloat16", "learner.device=cpu",
        "learner.gradient_checkpointing=true", "learner.batch_examples=8", "learner.max_versions=2",
        "learner.micro_batch=8", "learner.lr=1e-5", "learner.eval.dtype=bfloat16", "learner.eval.every=1",
        "learner.eval.tasks.size=4", "learner.eval.strategy=false", "scheduler.concurrency=8",
    ]  # fmt: skip
    config = load_config(None, sets)
    loop = build_loop(config)
    learner: Any = loop.learner
    engine = loop.runtime.policy.engine  # type: ignore[attr-defined]
    assert learner.mixed and next(learner.model.parameters()).dtype == torch.float32
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    assert loop.evaluator is not None
    assert next(loop.evaluator.policy.engine.model.parameters()).dtype == torch.bfloat16  # type: ignore[attr-defined]
    async with loop:
        stats = await loop.run(config.tasks.build())
    assert stats.version == 2 and engine.version == 2
    held = engine.model.state_dict()
    assert all(torch.equal(held[k], v.to(torch.bfloat16)) for k, v in learner.weights().items() if k in held)
    with EpisodeStore(config.store.path) as store:
        assert [p["version"] for p in store.curve(config.run_id)] == [0, 1, 2]


# -- a GPU named where there is none -----------------------------------------------------------


NO_GPU = pytest.mark.skipif(GPU, reason="this machine has a GPU: the missing-GPU error cannot happen here")


@NO_GPU
@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("learner: {kind: expert_iteration, device: cuda}\n", "learner.device"),
        ("learner: {kind: grpo, device: 'cuda:1'}\nsampling: {temperature: 1.0, logprobs: true}\n", "learner.device"),
        ("learner: {kind: expert_iteration, eval: {device: cuda}}\n", "learner.eval.device"),
        ("verifiers: {process: {name: prm, path: bundled, device: cuda}}\n", "verifiers.process.device"),
        ("verifiers: {outcome: {name: orm, path: bundled, device: cuda}}\n", "verifiers.outcome.device"),
    ],
)
def test_a_gpu_named_where_there_is_none_fails_in_one_line_naming_the_field(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    store = tmp_path / "store.db"
    path = tmp_path / "gpu.yaml"
    # the learners train the run's local policy; a PRM or an ORM alone needs no model but its own
    policy = "{kind: local, path: bundled, device: cpu}" if "learner" in yaml_text else "{kind: scripted}"
    path.write_text(f"policy: {policy}\n" + yaml_text, encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(path), "--set", f"store.path={store}"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {field}: device ") and "no CUDA GPU" in lines[0], lines[0]


def test_device_and_dtype_names_are_checked_when_the_config_is_read() -> None:
    for section in (
        {"policy": {"kind": "local", "dtype": "float16"}},
        {"learner": {"kind": "expert_iteration", "device": "gpu"}},
        {"learner": {"kind": "expert_iteration", "dtype": "fp8"}},
        {"cluster": {"gpus_per_worker": 1.5}},
        {"cluster": {"gpus_per_worker": -1}},
        {"verifiers": {"outcome": {"name": "orm", "path": "bundled", "device": "gpu"}}},
        {"verifiers": {"outcome": {"name": "orm", "path": "bundled", "dtype": "float16"}}},
    ):
        with pytest.raises(ValueError):
            RunConfig.model_validate(section)
    config = RunConfig.model_validate(
        {"policy": {"kind": "local", "dtype": "bfloat16"}, "cluster": {"gpus_per_worker": 2}}
    )
    assert config.cluster is not None and config.cluster.gpus_per_worker == 2


def test_an_orm_verifier_placed_from_its_config_scores_in_bf16_as_in_float32(tokenizer: Any, tmp_path: Path) -> None:
    """verifiers.outcome: {name: orm, device, dtype}: the keys reach the model (bf16
    weights on the named device), and its rewards, read in float32, are float32's to
    within bf16's rounding."""
    from learners.reward_models import OutcomeRMLearner
    from runtime.app.parts import build_verifiers
    from runtime.rewards.orm import OutcomeRewardModel

    path = tmp_path / "orm"
    OutcomeRMLearner(kinds.tiny_model(tokenizer, 0), tokenizer).export(path)
    solutions = [f"2+{i}={2 + i}\nAnswer: {2 + i}" for i in range(6)]
    messages = [{"role": "user", "content": "What is 2+3?"}]
    rewards: dict[str, list[float]] = {}
    for dtype in ("float32", "bfloat16"):
        outcome = {"name": "orm", "path": str(path), "device": "cpu", "dtype": dtype, "threads": 1}
        orm = build_verifiers(RunConfig.model_validate({"verifiers": {"outcome": outcome}})).outcome
        assert isinstance(orm, OutcomeRewardModel)
        held = next(orm._model.parameters())
        assert (str(held.dtype), held.device.type) == (f"torch.{dtype}", "cpu")

        async def score(orm: OutcomeRewardModel = orm) -> list[float]:
            return [await orm.reward(messages, text) for text in solutions]

        rewards[dtype] = anyio.run(score)
    assert len(set(rewards["float32"])) == len(solutions)  # the solutions are told apart
    spread = max(rewards["float32"]) - min(rewards["float32"])  # about 0.07 on this untrained head
    assert rewards["bfloat16"] == pytest.approx(rewards["float32"], abs=spread / 10)


# -- Ray workers that reserve GPUs -------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_with_a_gpu() -> Iterator[Any]:
    """A local Ray instance that has one GPU as a resource (Ray counts it whether or not
    the hardware is there: placement and assignment are Ray's, not CUDA's)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'searchlearn[ray]')")
    from runtime.app.cluster import _loopback_only

    if ray.is_initialized():
        ray.shutdown()
    with _loopback_only():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def _cluster_config(tmp_path: Path, **cluster: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "run_id": "gpus",
            "policy": {"kind": "scripted", "script": ["2+2=4\nAnswer: 4"]},
            "tasks": {"source": "tiny", "size": 8, "steps": [1], "seed": 3},
            "store": {"path": str(tmp_path / "store.db")},
            "cluster": {"workers": 2, "cpus_per_worker": 0, **cluster},
        }
    )


async def _start(config: RunConfig) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    from runtime.app.cluster import ClusterRuntime

    runtime = ClusterRuntime(config)
    async with runtime:
        episodes = [e async for e in runtime.stream(config.tasks.build())]
    return runtime.worker_options(), runtime.started_workers, len(episodes)


@pytest.mark.timeout(240)
def test_a_worker_with_gpus_per_worker_asks_ray_for_its_gpu(ray_with_a_gpu: Any, tmp_path: Path) -> None:
    """cluster.gpus_per_worker is the actors' num_gpus: two workers at 0.5 share the one
    GPU Ray has, and Ray assigns it to each (its id, which Ray also puts in the actor's
    CUDA_VISIBLE_DEVICES); workers that reserve none are given none and see none."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    options, started, episodes = anyio.run(_start, _cluster_config(tmp_path / "a", gpus_per_worker=0.5))
    assert options["num_gpus"] == 0.5 and options["num_cpus"] == 0
    assert [[str(g) for g in w["gpu_ids"]] for w in started] == [["0"], ["0"]] and episodes == 8
    assert [w["cuda_visible_devices"] for w in started] == ["0", "0"]
    options, started, episodes = anyio.run(_start, _cluster_config(tmp_path / "b"))
    assert options["num_gpus"] == 0
    assert [w["gpu_ids"] for w in started] == [[], []] and episodes == 8
    assert [w["cuda_visible_devices"] for w in started] == ["", ""]  # Ray 2.60 would leave the driver's


def test_workers_that_ray_could_never_place_on_gpus_are_refused(ray_with_a_gpu: Any, tmp_path: Path) -> None:
    from runtime.app.cluster import ClusterRuntime

    with pytest.raises(ConfigError, match=r"^cluster.gpus_per_worker: 3 workers x 0.5 GPU .* has \(1"):
        ClusterRuntime(_cluster_config(tmp_path, workers=3, gpus_per_worker=0.5))
    vllm = _cluster_config(tmp_path, gpus_per_worker=0.5).model_copy(
        update={"policy": RunConfig.model_validate({"policy": {"kind": "vllm"}}).policy}
    )
    with pytest.raises(ConfigError, match=r"^policy.vllm.gpu_memory_utilization: 0.9 .* at most 0.5"):
        ClusterRuntime(vllm)


# -- the device check script -------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_the_device_check_runs_in_dry_mode(tmp_path: Path) -> None:
    """tests/gpu/check.sh --dry: the GPU tests are collected (not run), every part of
    tests/gpu/check.py runs on the CPU at tiny sizes, and the tables are written."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "tests/gpu/check.sh"), str(tmp_path), "--dry"],
        capture_output=True, text=True, env=env, timeout=200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 tests collected" in (tmp_path / "pytest.txt").read_text()
    table = (tmp_path / "check.md").read_text()
    headings = ("Every learner kind", "handed to a bf16 engine", "Engine against HF generate", "Learner tokens/s",
                "The online loop built from its config")  # fmt: skip
    for heading in headings:
        assert heading in table
    assert "FAILED" not in table
    for kind in kinds.KINDS:
        assert f"| {kind} | cpu | True |" in table
    assert (tmp_path / "check.json").is_file()
