"""Experiment trackers: the online loop's metrics go to TensorBoard and Weights & Biases.

A learner config names them as TRL and transformers do (``report_to: [tensorboard,
wandb]``, default none); they write under ``logging_dir`` (default ``runs/<run_id>/tb``
beside the store). What is reported, from one place (:class:`Reporter`, which the loop
calls after every optimizer step and every evaluation):

- ``learner/*`` per optimizer step: loss, gradient norm, examples, tokens, seconds,
  learning rate, and whatever the learner measured (KL, entropy, mean ratio, clipped
  tokens and the clip fraction, value loss, label or pair accuracy);
- ``run/*`` at the same step: episodes and versions so far, the mean reward and the
  solved share of the episodes consumed since the previous step, their examples' mean
  staleness, stale examples dropped, episodes and examples per second, the learner's
  utilisation, model FLOP/s;
- ``eval/*`` per curve point (the in-loop evaluation of a version: greedy pass@1 and
  the strategy's accuracy), at the optimizer step that version was published at.

Design decisions:
- A registry by name (``register_tracker``), like every family: a tracker is a function
  that opens one (directory, run id, the run's settings) and names the package it needs.
  The heavy packages are optional (``searchlearn[track]``) and imported when a tracker
  opens; a config naming a tracker whose package is missing is refused before any model
  loads, with the ``pip install`` line that fixes it.
- wandb runs offline (``WANDB_MODE`` unset: ``offline``; set it to ``online`` to sync)
  and plots every metric against the optimizer step as a custom axis (``step``), so an
  evaluation that finishes after later steps still lands at its own version's step.
- A tracker that fails while the run trains is logged and closed, never the run's end:
  metrics are a view of the run, the store and the checkpoint are the record.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from learners.loop_stats import LoopStats
from runtime.core.errors import ConfigError
from runtime.core.log import get_logger

__all__ = ["Reporter", "Tracker", "open_trackers", "register_tracker", "require_trackers", "tracker_names"]

log = get_logger("searchlearn.trackers")


class Tracker(Protocol):
    """Where metrics go: scalars at an optimizer step, then closed once."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


Opener = Callable[[Path, str, Mapping[str, Any]], Tracker]
"""Opens a tracker writing under a directory, for a run id, with the run's settings."""

_TRACKERS: dict[str, tuple[str, Opener]] = {}


def register_tracker(name: str, *, package: str) -> Callable[[Opener], Opener]:
    """Registers an opener under ``name``; ``package`` is the import (and pip) name it needs."""

    def add(opener: Opener) -> Opener:
        if name in _TRACKERS and _TRACKERS[name][1] is not opener:
            raise ValueError(f"tracker {name!r} is registered twice")
        _TRACKERS[name] = (package, opener)
        return opener

    return add


def tracker_names() -> list[str]:
    return sorted(_TRACKERS)


def require_trackers(names: Sequence[str]) -> None:
    """Refuse a tracker whose package is not installed (before anything is loaded)."""
    for name in names:
        if name not in _TRACKERS:
            raise ConfigError(f"learner.report_to: unknown tracker {name!r}; known: {', '.join(tracker_names())}")
        package = _TRACKERS[name][0]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"learner.report_to: {name} needs the {package!r} package, which is not installed: "
                f"pip install {package} (or pip install 'searchlearn[track]')"
            )


def open_trackers(names: Sequence[str], directory: Path, run_id: str, settings: Mapping[str, Any]) -> list[Tracker]:
    require_trackers(names)
    directory.mkdir(parents=True, exist_ok=True)
    opened: list[Tracker] = []
    try:
        for name in names:
            opened.append(_TRACKERS[name][1](directory, run_id, settings))
    except BaseException:
        Reporter(opened).close()  # the ones already open do not outlive the failure
        raise
    return opened


# -- the built-in trackers --------------------------------------------------------------


class _TensorBoard:
    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, directory: Path, run_id: str, settings: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "searchlearn"),
            name=run_id,
            dir=str(directory),
            config=dict(settings),
            mode=cast(Any, os.environ.get("WANDB_MODE", "offline")),  # wandb types it as a Literal
            settings=wandb.Settings(console="off"),  # the run's own logging is not wandb's to capture
            reinit="create_new",
        )
        self.run.define_metric("*", step_metric="step")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({**metrics, "step": step})

    def close(self) -> None:
        self.run.finish()


@register_tracker("tensorboard", package="tensorboard")
def _open_tensorboard(directory: Path, run_id: str, settings: Mapping[str, Any]) -> Tracker:
    return _TensorBoard(directory)


@register_tracker("wandb", package="wandb")
def _open_wandb(directory: Path, run_id: str, settings: Mapping[str, Any]) -> Tracker:
    return _Wandb(directory, run_id, settings)


# -- what the loop reports ----------------------------------------------------------------


class _Step(Protocol):
    """What one learner update reports (:class:`learners.base.UpdateResult`, which this
    module cannot import: the learner base's settings import the tracker names)."""

    loss: float
    examples: int
    tokens: int
    seconds: float
    grad_norm: float
    metrics: dict[str, float]


class Reporter:
    """Turns the loop's steps, episodes and curve points into tracker metrics (module doc)."""

    def __init__(self, trackers: Sequence[Tracker], staleness: Mapping[int, int] | None = None) -> None:
        """``staleness``: the histogram already counted (a resumed run's), not reported again."""
        self.trackers = list(trackers)
        self._rewards: list[float] = []
        self._staleness: Counter[int] = Counter(staleness or {})
        self._stepped = 0  # examples in optimizer steps (reuse counted)

    def episode(self, reward: float | None) -> None:
        if reward is not None:
            self._rewards.append(float(reward))

    def step(self, result: _Step, stats: LoopStats, step: int, lr: float | None = None) -> None:
        self._stepped += result.examples
        metrics = {
            "learner/loss": result.loss,
            "learner/grad_norm": result.grad_norm,
            "learner/examples": result.examples,
            "learner/tokens": result.tokens,
            "learner/seconds": result.seconds,
            **{f"learner/{k}": v for k, v in result.metrics.items()},
        }
        if lr is not None:
            metrics["learner/lr"] = lr
        if "clipped_tokens" in result.metrics and result.tokens:
            metrics["learner/clip_fraction"] = result.metrics["clipped_tokens"] / result.tokens
        elapsed = stats.elapsed
        metrics |= {
            "run/episodes": stats.episodes,
            "run/version": stats.version,
            "run/dropped_stale": stats.dropped_stale,
            "run/learner_utilisation": stats.learner_seconds / elapsed if elapsed > 0 else 0.0,
            "run/episodes_per_second": stats.episodes / elapsed if elapsed > 0 else 0.0,
            "run/examples_per_second": self._stepped / elapsed if elapsed > 0 else 0.0,
        }
        if stats.parameters:
            metrics["run/model_gflops"] = stats.model_flops / 1e9
        if self._rewards:
            metrics["run/reward"] = sum(self._rewards) / len(self._rewards)
            metrics["run/solved"] = sum(r >= 1.0 for r in self._rewards) / len(self._rewards)
            self._rewards.clear()
        new = stats.staleness - self._staleness
        if new:
            metrics["run/staleness"] = sum(k * n for k, n in new.items()) / sum(new.values())
            self._staleness = Counter(stats.staleness)
        self._log(metrics, step)

    def curve_point(self, point: Mapping[str, Any], step: int) -> None:
        numeric = {k: float(v) for k, v in point.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self._log({f"eval/{k}": v for k, v in numeric.items()}, step)

    def _log(self, metrics: Mapping[str, float], step: int) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.log({k: float(v) for k, v in metrics.items()}, step)
            except Exception as exc:  # a view of the run, never its end (module doc)
                log.warning("tracker failed; closing it", tracker=type(tracker).__name__, error=str(exc))
                self.trackers.remove(tracker)
                self._close(tracker)

    def close(self) -> None:
        for tracker in self.trackers:
            self._close(tracker)
        self.trackers = []

    @staticmethod
    def _close(tracker: Tracker) -> None:
        try:
            tracker.close()
        except Exception as exc:
            log.warning("tracker failed to close", tracker=type(tracker).__name__, error=str(exc))
