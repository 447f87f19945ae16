"""The online loop killed with SIGKILL mid-run, then restarted: it resumes from the
learner's checkpoint, and every episode of the training stream is consumed exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_kill_resume import stored

from runtime.scheduling.store import EpisodeStore

TASKS = 96
CLI = [sys.executable, "-c", "from runtime.app.cli import main; main()", "run"]


def write_config(tmp_path: Path, kind: str = "expert_iteration") -> tuple[Path, Path, Path]:
    db = tmp_path / "store.db"
    checkpoint = tmp_path / "learner.pt"
    config: dict[str, Any] = {
        "run_id": "loop-kill",
        "policy": {"kind": "local", "path": "bundled", "max_concurrency": 16},
        "tasks": {"source": "tiny", "size": TASKS, "steps": [1, 2], "seed": 3},
        "strategy": {"name": "best_of_n", "n": 2, "selection": "process"},
        "sampling": {"temperature": 1.0, "max_tokens": 80},
        "verifiers": {"outcome": "exact", "process": "tiny_rule", "answer_patterns": ["answer_line"]},
        "scheduler": {"concurrency": 4},
        "learner": {
            "kind": "expert_iteration",
            "lr": 1e-6,
            "batch_examples": 8,
            "buffer_episodes": 4,
            "checkpoint": str(checkpoint),
            "eval": None,
        },
        "store": {"path": str(db)},
    }
    if kind == "grpo":  # groups of 4 from the weaker policy, so rewards differ within a group
        config["policy"]["path"] = "bundled-weak"
        config["tasks"]["steps"] = [2, 3]
        config["strategy"] = {"name": "best_of_n", "n": 4}
        config["sampling"]["logprobs"] = True
        config["learner"]["kind"] = "grpo"
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, db, checkpoint


@pytest.mark.parametrize("kind", ["expert_iteration", "grpo"])
def test_sigkill_then_restart_consumes_every_episode_once(tmp_path: Path, kind: str) -> None:
    config, db, checkpoint = write_config(tmp_path, kind)
    proc = subprocess.Popen([*CLI, str(config), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (checkpoint.is_file() and stored(db) >= 24):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = torch.load(checkpoint, weights_only=False)
    assert 0 < len(killed_at["extra"]["consumed"]) < TASKS  # really killed mid-run, after a checkpoint
    assert stored(db) < TASKS

    rerun = subprocess.run([*CLI, str(config), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    final = torch.load(checkpoint, weights_only=False)
    with EpisodeStore(db) as store:
        keys = {(ep.task.id, ep.sample) for ep in store.episodes("loop-kill")}
    assert len(keys) == TASKS
    # every stored episode consumed once: the set covers them all, and the count (carried
    # through the checkpoint, replays included) is exactly the number of episodes
    assert {tuple(k) for k in final["extra"]["consumed"]} == keys
    assert final["extra"]["stats"]["episodes"] == TASKS
    assert final["version"] > killed_at["version"] and final["steps"] > killed_at["steps"]
    assert "replayed after restart" in rerun.stdout
