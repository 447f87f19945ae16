"""OpenAIPolicy against a real server on loopback: ``transformers serve`` over the
bundled tiny policy (no hub download). It ignores ``n`` and ``logprobs``, so this also
exercises the n > 1 fallback; the vLLM server test is in test_vllm_server.py (slow)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hf_serve import transformers_serve

from runtime.policy.base import GenerationRequest
from runtime.policy.openai_compatible import OpenAIPolicy
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime
from runtime.search.context import Sampling, Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY, assistant_prefix
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier
from strategies import BestOfN, ChainOfThought

MODEL_DIR = Path(os.environ.get("SEARCHLEARN_TEST_POLICY", BUNDLED_POLICY))


@contextmanager
def serve(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> Iterator[str]:
    """``transformers serve MODEL_DIR`` on a free loopback port (with ``extra`` flags); its base URL."""
    with transformers_serve(MODEL_DIR, tmp_path_factory.mktemp("serve"), *extra) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory) as base_url:
        yield base_url


def tiny_policy(base_url: str, mode: str = "completion") -> OpenAIPolicy:
    return OpenAIPolicy(str(MODEL_DIR), base_url=base_url, mode=mode, server="transformers", timeout=60)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_greedy_step_matches_local_generate(hf_server: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = next(iter(tiny_tasks(1, steps=[2], seed=3)))
    prompt = assistant_prefix(task.prompt or "")
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).split("\n")[0]

    async with tiny_policy(hf_server) as p:
        result = await p.generate(GenerationRequest(prompt=prompt, max_tokens=40, temperature=0.0, stop=["\n"]))
    assert result.completions[0].text.strip() == expected.strip()
    assert result.prompt_tokens > 0 and result.completion_tokens > 0


@pytest.mark.anyio
async def test_a_continued_step_matches_local_generate_from_the_same_prefix(hf_server: str) -> None:
    """Completion mode renders the model's own chat template (from the model directory,
    which transformers serve names the model by) and continues the accepted step: the
    server's greedy next step is the local model's greedy next line after that prefix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = next(iter(tiny_tasks(1, steps=[3], seed=5)))
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    ids = tok(assistant_prefix(task.prompt or ""), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=80, do_sample=False, pad_token_id=tok.pad_token_id)
    lines = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).split("\n")
    assert len(lines) >= 2, lines

    async with tiny_policy(hf_server) as p:
        assert p.template is not None  # the model name is its directory: its template is used
        result = await p.generate(
            GenerationRequest(
                messages=task.as_messages(),
                assistant_prefix=lines[0] + "\n",
                max_tokens=40,
                temperature=0.0,
                stop=["\n"],
            )
        )
    assert result.completions[0].text.strip() == lines[1].strip()
    assert result.completions[0].token_ids is None  # the prefix went as text: text-only


@pytest.mark.anyio
async def test_chat_mode_and_n_fallback(hf_server: str) -> None:
    async with tiny_policy(hf_server, mode="chat") as p:
        result = await p.generate(
            GenerationRequest(
                messages=[{"role": "user", "content": "Evaluate: 3+4"}], n=3, max_tokens=24, temperature=1.0
            )
        )
    assert len(result.completions) == 3  # the server ignores n: three single calls
    assert all(isinstance(c.text, str) and c.text for c in result.completions)
    assert p.supports_n is False


@pytest.mark.anyio
async def test_runtime_runs_strategies_over_http(hf_server: str, tmp_path: Path) -> None:
    tasks = list(tiny_tasks(6, steps=[1, 2], seed=11))
    async with tiny_policy(hf_server) as p:
        for strategy, verifiers in [
            (ChainOfThought(), Verifiers(outcome=ExactMatch())),
            (BestOfN(n=3, selection="process"), Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())),
        ]:
            async with Runtime(
                p,
                strategy,
                verifiers=verifiers,
                sampling=Sampling(temperature=0.7, max_tokens=96),
                store=str(tmp_path / "s.db"),
                run_id=strategy.name,
            ) as rt:
                episodes = [ep async for ep in rt.stream(tasks)]
            assert len(episodes) == len(tasks)
            assert all(ep.status == "ok" for ep in episodes), [ep.errors for ep in episodes]
            assert all(ep.reward is not None and ep.usage.calls >= 1 for ep in episodes)
            assert all(len(ep.chosen_path) >= 2 for ep in episodes)  # at least a step and an answer line
    assert rt.store is not None
