"""Builds a run's runtime from a RunConfig: in this process, or on Ray rollout workers
when the config has a ``cluster:`` section. The parts (policy, strategy, verifiers,
tasks) are built by :mod:`runtime.app.parts` and exported here too.
"""

from __future__ import annotations

from runtime.app.config import RunConfig
from runtime.app.parts import build_policy, build_strategy, build_tasks, build_verifiers, torch_consumers
from runtime.scheduling.scheduler import Runtime

__all__ = ["build_policy", "build_runtime", "build_strategy", "build_tasks", "build_verifiers", "torch_consumers"]


def build_runtime(config: RunConfig, *, handle_signals: bool = False) -> Runtime:
    """The run's Runtime; with a ``cluster:`` section, a ClusterRuntime of the same
    surface whose episodes run on Ray workers (:mod:`runtime.app.cluster`)."""
    if config.cluster is not None:
        from runtime.app.cluster import build_cluster_runtime

        return build_cluster_runtime(config, handle_signals=handle_signals)  # type: ignore[return-value]
    policy = build_policy(config)
    return Runtime(
        policy,
        build_strategy(config),
        verifiers=build_verifiers(config, policy),
        sampling=config.sampling,
        settings=config.scheduler.model_copy(),
        store=config.store.path,
        run_id=config.run_id,
        config=config.model_dump(mode="json"),
        handle_signals=handle_signals,
    )
