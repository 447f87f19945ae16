"""Agent episodes through a real server (issue 26): the tool-using tiny policy
(``bundled-tool``) behind ``transformers serve`` and, where vLLM's CPU venv exists, vLLM's
own OpenAI server, each on loopback, runs ``configs/agentic_calculator.yaml`` (greedy,
the calculator environment, the compact one-call-per-line format) on the same held-out
tasks as the local engine.

The server only continues text: the runtime renders the path with the policy's own chat
template (``policy.tokenizer``), reads the call out of the step the server wrote, runs it
in the environment and puts the observation into the next prompt. So the served
episodes must hold call and observation nodes, calls that ran, and, being greedy, the
same paths and answers as the local engine's.
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
from runtime.core.types import Episode
from runtime.policy.checkpoints import resolve_checkpoint

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent
TASKS = 8
SERVED = {"timeout": 120, "max_concurrency": TASKS}  # a tiny model: a call takes well under a second


def run_calculator(policy: dict[str, Any], tmp_path: Path, tag: str) -> list[Episode]:
    data = yaml.safe_load((ROOT / "configs" / "agentic_calculator.yaml").read_text(encoding="utf-8"))
    data["run_id"] = f"agentic-server-{tag}"
    data["policy"] = policy
    data["tasks"]["size"] = TASKS
    data["scheduler"]["concurrency"] = TASKS
    data["store"] = {"path": str(tmp_path / f"{tag}.db")}
    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return sorted(run_episodes(load_config(path)), key=lambda ep: ep.task.id)


def chosen(ep: Episode) -> list[tuple[str, str]]:
    """The chosen path below the root, as (node kind, text)."""
    nodes = {node.id: node for node in ep.nodes}
    return [(nodes[i].kind, nodes[i].text) for i in ep.chosen_path if nodes[i].parent is not None]


def check(local: list[Episode], served: list[Episode]) -> None:
    assert len(served) == len(local) == TASKS
    assert all(ep.status == "ok" for ep in served), [(ep.status, ep.errors) for ep in served]
    for ep in served:
        kinds = [kind for kind, _ in chosen(ep)]
        assert "call" in kinds and "observation" in kinds, (ep.task.id, chosen(ep))
        observations = [text for kind, text in chosen(ep) if kind == "observation"]
        assert all(text.strip().startswith("=") for text in observations), observations  # the calculator ran
    same = sum(chosen(a) == chosen(b) for a, b in zip(local, served, strict=True))
    assert same >= TASKS - 1, [(chosen(a), chosen(b)) for a, b in zip(local, served, strict=True)]
    assert [ep.task.id for ep in served] == [ep.task.id for ep in local]
    solved = [sum(ep.reward == 1.0 for ep in eps) for eps in (local, served)]
    assert abs(solved[0] - solved[1]) <= 1, solved


@pytest.fixture(scope="module")
def tool_policy() -> Path:
    return resolve_checkpoint("bundled-tool")


@pytest.fixture(scope="module")
def local_episodes(tool_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Episode]:
    policy = {"kind": "local", "path": "bundled-tool", "max_concurrency": TASKS}
    return run_calculator(policy, tmp_path_factory.mktemp("local"), "local")


def test_calculator_episodes_through_transformers_serve(
    tool_policy: Path, local_episodes: list[Episode], tmp_path: Path
) -> None:
    with transformers_serve(tool_policy, tmp_path, on_failure="skip") as url:
        policy = server_policy(url, str(tool_policy), "transformers", tool_policy, **SERVED)
        served = run_calculator(policy, tmp_path, "hf")
    check(local_episodes, served)


@pytest.mark.slow
def test_calculator_episodes_through_vllm_server(
    tool_policy: Path, local_episodes: list[Episode], tmp_path: Path
) -> None:
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM interpreter at {VLLM_PYTHON} (set SEARCHLEARN_VLLM_PYTHON; see .ci/run)")
    stack = ExitStack()
    try:
        server = stack.enter_context(vllm_server(tool_policy, "bundled-tool", tmp_path))
    except RuntimeError as exc:  # vLLM exited or did not come up (its log's tail is in the message)
        pytest.skip(f"vLLM server did not start: {str(exc)[-500:]}")
    with stack:
        policy = server_policy(server.url, "bundled-tool", "vllm", tool_policy, **SERVED)
        served = run_calculator(policy, tmp_path, "vllm")
    check(local_episodes, served)
    sampled = [node for ep in served for node in ep.nodes if node.kind != "observation" and node.parent is not None]
    assert all(node.token_ids for node in sampled)  # vLLM takes and returns ids: the record stays token-exact
