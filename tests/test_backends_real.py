"""Step continuation on real servers serving a real chat model (issue 23): SmolLM2-135M-
Instruct behind ``transformers serve`` and, where vLLM's CPU venv exists, vLLM's own
OpenAI server, each on loopback, run ``chain_of_thought`` on a few reasoning-gym
``chain_sum`` tasks with the config of ``configs/smollm2_steps.yaml`` (completion mode,
the model's own chat template from its checkpoint directory, greedy). Every step on a
chosen path is non-empty, most episodes reach an answer, and most paths end before
``max_steps``: the failures the issue measured were a continued step coming back empty,
and the model restarting and never answering.

Slow: the model is fetched once (``searchlearn fetch smollm2-135m``; skipped, saying so,
when it is not in the model cache), each server takes seconds (``transformers serve``)
to minutes (vLLM) to start, and SmolLM2 decodes ~15 tokens/s here. A server that cannot
start skips its test with the reason. The accuracy comparison on >= 100 tasks is
``tests/bench/backends.py``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_run import run_episodes, server_policy
from hf_serve import transformers_serve
from vllm_support import VLLM_PYTHON, vllm_server

from runtime.app.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parent.parent
TASKS = 5
MAX_STEPS = 12  # configs/smollm2_steps.yaml's sampling.max_steps


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from runtime.policy.checkpoints import resolve_checkpoint

    try:
        return resolve_checkpoint("smollm2-135m")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def run_chain_of_thought(policy: dict[str, Any], tmp_path: Path) -> list[Any]:
    data = yaml.safe_load((ROOT / "configs" / "smollm2_steps.yaml").read_text(encoding="utf-8"))
    data["run_id"] = "backends-real"
    data["policy"] = policy
    data["tasks"] |= {
        "name": "chain_sum",
        "config": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
        "size": TASKS,
        "seed": 7,
    }
    data["strategy"] = {"name": "chain_of_thought"}
    data["verifiers"].pop("process", None)
    data["sampling"]["temperature"] = 0.0  # greedy: the same steps on every run
    data["store"] = {"path": str(tmp_path / "runs.db")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return run_episodes(load_config(path))


def check(episodes: list[Any]) -> None:
    """Steps non-empty (before the empty step a path may end on), an answer reached in
    most episodes (an ``Answer:`` line, or the finished path read whole with the config's
    ``final_answer_patterns``: SmolLM2 rarely writes the line itself, on any backend), and
    most paths ended by the model before ``max_steps`` (the model's end is honoured)."""
    assert len(episodes) == TASKS
    assert all(ep.status == "ok" for ep in episodes), [(ep.status, ep.errors) for ep in episodes]
    answered = ended = 0
    for ep in episodes:
        nodes = {node.id: node for node in ep.nodes}
        steps = [nodes[i] for i in ep.chosen_path if nodes[i].parent is not None]
        assert steps and steps[0].text.strip(), f"no step: {ep.task.id}: {[n.text for n in ep.nodes]}"
        assert all(node.text.strip() for node in steps[:-1]), [node.text for node in steps]
        answered += ep.final_answer is not None
        ended += len(steps) < MAX_STEPS
    texts = [[node.text for node in ep.nodes] for ep in episodes]
    assert answered > TASKS // 2, texts
    assert ended > TASKS // 2, texts


def test_chain_of_thought_through_transformers_serve(smollm2: Path, tmp_path: Path) -> None:
    with transformers_serve(smollm2, tmp_path, on_failure="skip") as url:
        episodes = run_chain_of_thought(server_policy(url, str(smollm2), "transformers", smollm2), tmp_path)
    check(episodes)


def test_chain_of_thought_through_vllm_server(smollm2: Path, tmp_path: Path) -> None:
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM interpreter at {VLLM_PYTHON} (set SEARCHLEARN_VLLM_PYTHON; see .ci/run)")
    stack = ExitStack()
    try:
        server = stack.enter_context(vllm_server(smollm2, "smollm2", tmp_path, max_model_len=1024))
    except RuntimeError as exc:  # vLLM exited or did not come up (its log's tail is in the message)
        pytest.skip(f"vLLM server did not start: {str(exc)[-500:]}")
    with stack:
        episodes = run_chain_of_thought(server_policy(server.url, "smollm2", "vllm", smollm2), tmp_path)
    check(episodes)
    steps = [node for ep in episodes for node in ep.nodes if node.parent is not None]
    assert all(node.token_ids for node in steps)  # ids sent and returned: the record
