"""PNG plot of a learning run's evaluation curve (matplotlib, no display needed), written
whole (a folder that is missing is created; a path that cannot be written is one line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.scheduling.files import written_whole

__all__ = ["plot_curve"]


def plot_curve(curve: list[dict[str, Any]], path: str | Path, title: str = "held-out accuracy") -> None:
    """Accuracy metrics against policy version (left) and wall time in minutes (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in curve[0] if k not in ("version", "episodes", "wall_time")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for metric in metrics:
        points = [p for p in curve if p.get(metric) is not None]
        axes[0].plot([p["version"] for p in points], [100 * p[metric] for p in points], marker="o", label=metric)
        axes[1].plot([p["wall_time"] / 60 for p in points], [100 * p[metric] for p in points], marker="o", label=metric)
    axes[0].set_xlabel("policy version")
    axes[1].set_xlabel("wall time (min)")
    axes[0].set_ylabel("accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with written_whole(path, "plot", also=(ValueError,)) as tmp:  # ValueError: an unknown format
            fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
