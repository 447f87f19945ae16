"""``policy.device``: the local engine on a GPU when one is present, a clear error when one
is asked for and absent. The GPU test skips, saying why, on a machine without one."""

from __future__ import annotations

import anyio
import pytest
import torch

from runtime.app.build import build_policy
from runtime.app.config import RunConfig
from runtime.core.errors import ConfigError
from runtime.policy.base import GenerationRequest
from runtime.policy.local import LocalPolicy
from runtime.policy.local.policy import resolve_device

GPU = torch.cuda.is_available()


def config(device: str) -> RunConfig:
    return RunConfig.model_validate({"policy": {"kind": "local", "path": "bundled", "device": device}})


def test_auto_is_the_cpu_without_a_gpu_and_names_are_checked() -> None:
    assert resolve_device("auto") == ("cuda" if GPU else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(Exception, match="policy.device"):
        config("gpu0")


@pytest.mark.skipif(GPU, reason="this machine has a GPU: the missing-GPU error cannot happen here")
def test_a_gpu_asked_for_where_there_is_none_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"policy.device: device 'cuda'.*no CUDA GPU"):
        build_policy(config("cuda"))


async def _greedy(policy: LocalPolicy, prompts: list[str]) -> list[str]:
    out = []
    for prompt in prompts:
        result = await policy.generate(GenerationRequest(prompt=prompt, max_tokens=24, temperature=0.0))
        out.append(result.completions[0].text)
    return out


@pytest.mark.skipif(not GPU, reason="no CUDA GPU visible to torch: the GPU engine is not exercised here")
def test_the_engine_on_a_gpu_matches_the_cpu_and_takes_weights() -> None:
    prompts = ["<|im_start|>user\n3+4*2=?<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\n9-5=?<|im_end|>\n"]
    cpu = LocalPolicy.from_path("bundled", device="cpu")
    gpu = LocalPolicy.from_path("bundled", device="cuda")
    try:
        assert next(gpu.engine.model.parameters()).is_cuda
        assert anyio.run(_greedy, gpu, prompts) == anyio.run(_greedy, cpu, prompts)
        zeroed = {k: torch.zeros_like(v).cpu() for k, v in cpu.engine.model.state_dict().items()}
        anyio.run(gpu.load_weights, zeroed, 1)
        assert gpu.version == 1
    finally:
        anyio.run(cpu.aclose)
        anyio.run(gpu.aclose)
