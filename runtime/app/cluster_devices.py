"""Rollout workers on GPUs (``cluster.gpus_per_worker``): what Ray could never place is
refused before it starts, a version leaves a GPU learner through host memory, and a
worker says where its engine computes. :mod:`runtime.app.cluster` uses these; its module
doc says how GPUs reach the workers.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from runtime.app.config import RunConfig
from runtime.core.errors import ConfigError
from runtime.policy.backends import VllmBackend

__all__ = ["check_gpus", "on_host", "placement"]


def _local_gpus() -> tuple[float, str]:
    """GPUs a local Ray cluster would have, and where that figure comes from: the running
    instance's, else those torch sees (Ray finds the same ones: CUDA_VISIBLE_DEVICES,
    else the driver's)."""
    running = sys.modules.get("ray")
    if running is not None and running.is_initialized():
        return float(running.cluster_resources().get("GPU", 0)), "the Ray instance this process runs"
    try:
        import torch
    except ImportError:
        return 0.0, "torch is not installed to count them"
    return float(torch.cuda.device_count()), "the GPUs torch sees on this machine"


def check_gpus(config: RunConfig) -> None:
    """Refuse what Ray could never place, before it starts (it would wait forever): a
    local cluster with fewer GPUs than the workers reserve, and a vLLM engine that would
    take more of a shared GPU's memory than its share. ConfigError naming the fields."""
    cluster = config.cluster
    assert cluster is not None
    share = cluster.gpus_per_worker
    if share <= 0:
        return
    policy = config.policy
    if isinstance(policy, VllmBackend) and share < 1 and policy.vllm.gpu_memory_utilization > share + 1e-9:
        raise ConfigError(
            f"policy.vllm.gpu_memory_utilization: {policy.vllm.gpu_memory_utilization:g} of a GPU's memory, but each "
            f"worker has {share:g} of a GPU (cluster.gpus_per_worker) and the workers sharing it would each take "
            f"that much; set it to at most {share:g}"
        )
    if cluster.address is not None:
        return
    have, where = _local_gpus()
    placeable = int(have + 1e-9) * int(1 / share + 1e-9) if share <= 1 else int((have + 1e-9) // share)
    if cluster.workers > placeable:
        raise ConfigError(
            f"cluster.gpus_per_worker: {cluster.workers} workers x {share:g} GPU need more GPUs than the local Ray "
            f"cluster has ({have:g}: {where}); lower cluster.workers or cluster.gpus_per_worker (0: workers on "
            "the CPU), or join a cluster with GPUs (cluster.address)"
        )


def on_host(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every GPU tensor copied to host memory (the form a version leaves
    the process in: Ray's object store holds host memory, and a worker's GPU is its
    own); the same mapping, untouched, when nothing is on a GPU."""
    if not any(getattr(getattr(v, "device", None), "type", "cpu") != "cpu" for v in state.values()):
        return state
    moved = {k: v.cpu() if hasattr(v, "cpu") else v for k, v in state.items()}
    adapter = getattr(state, "adapter", None)
    if adapter is None:
        return moved
    from runtime.policy.adapters import AdapterWeights

    host = {k: v.cpu() if hasattr(v, "cpu") else v for k, v in adapter.items()}
    return AdapterWeights(moved, adapter=host, config=getattr(state, "config", {}))


def placement(policy: Any) -> dict[str, Any]:
    """Where a worker's engine computes: the GPUs Ray gave the actor (``gpu_ids``: none
    unless it reserved some), the CUDA_VISIBLE_DEVICES Ray set for it, and its engine's
    torch device (None for an engine that does not say, such as a server's client)."""
    ray = sys.modules.get("ray")
    gpu_ids: list[Any] = []
    if ray is not None and ray.is_initialized():
        try:
            gpu_ids = list(ray.get_gpu_ids())
        except Exception:  # not inside a Ray worker (the in-process tests' workers)
            gpu_ids = []
    device = getattr(getattr(policy, "engine", None), "device", None)
    return {
        "gpu_ids": gpu_ids,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": None if device is None else str(device),
    }
