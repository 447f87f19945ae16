"""VllmPolicy (``policy.kind: vllm``): vLLM's in-process engine as a WeightedPolicy.

Three ways in: config and build checks that need no vLLM; in process where vLLM and a
CUDA GPU are present (``searchlearn[vllm]``; skipped, with the reason, elsewhere); and,
slow, on vLLM's CPU build, whose own torch keeps it out of this interpreter: a script
(``tests/vllm_engine_check.py``) runs under its interpreter with this checkout on the
path and reports what it saw.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from vllm_support import ROOT, in_this_interpreter, run_in_vllm

from runtime.app.config import RunConfig, check_config
from runtime.core.errors import ConfigError
from runtime.policy.backends import VllmBackend
from runtime.policy.base import GenerationRequest, WeightedPolicy
from runtime.policy.vllm_engine import VllmPolicy, VllmSettings


def check(result: dict[str, Any]) -> None:
    """What ``vllm_engine_check.exercise`` must have seen."""
    sampled = result["sampled"]
    assert sampled["version"] == 0 and len(sampled["completions"]) == 4
    for c in sampled["completions"]:
        assert c["ids"] and len(c["ids"]) == len(c["logprobs"]) == len(c["sample"])
        assert all(lp <= 0 for lp in c["logprobs"])
        assert c["logprobs"] == c["sample"]  # temperature 1, top-p 1: raw and behaviour agree
        assert "\n" not in c["text"]
    for c in result["nucleus"]:  # processed mode at temperature 0.7 / top-p 0.9: behaviour only
        assert c["logprobs"] is None and len(c["sample"]) == len(c["ids"])
    greedy, broken, restored = result["greedy"], result["broken"], result["restored"]
    assert greedy["version"] == 0 and set(greedy["sample"]) == {0.0}
    assert greedy["text"].endswith("Answer: 23")
    # the knocked-out weights serve version 1, and it shows
    assert broken["version"] == 1 and broken["text"] != greedy["text"]
    # back to the original weights in place (the learner's sync path): the same text and logprobs
    assert restored["version"] == 2 and restored["ids"] == greedy["ids"]
    assert max(abs(a - b) for a, b in zip(restored["logprobs"], greedy["logprobs"], strict=True)) < 1e-4
    # requests in flight at the swap finish under version 1; every later one runs under 2
    assert result["in_flight_versions"]["before"] == [1] * 6
    assert result["in_flight_versions"]["after"] == [2] * 3
    assert result["policy_version"] == 2 and result["swaps"] == 2


# -- no vLLM needed ---------------------------------------------------------------------


def test_config_accepts_kind_vllm_with_its_settings() -> None:
    p = VllmBackend.model_validate(
        {"kind": "vllm", "vllm": {"gpu_memory_utilization": 0.5, "max_model_len": 1024, "dtype": "bfloat16"}}
    )
    assert p.vllm.enable_prefix_caching is True and p.vllm.logprobs_mode == "processed"
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VllmBackend.model_validate({"kind": "vllm", "vllm": {"gpu_memory_utilization": 1.5}})
    with pytest.raises(ValueError, match="logprobs_mode"):
        VllmBackend.model_validate({"kind": "vllm", "vllm": {"logprobs_mode": "processed_logits"}})


def test_a_learner_may_train_the_vllm_engine() -> None:
    config = RunConfig.model_validate({"policy": {"kind": "vllm"}, "learner": {"kind": "expert_iteration"}})
    check_config(config)  # no error: kind vllm takes published weights
    openai = RunConfig.model_validate(
        {
            "policy": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1"},
            "learner": {"kind": "expert_iteration"},
        }
    )
    with pytest.raises(ConfigError, match="local or vllm"):
        check_config(openai)


def test_importing_it_loads_no_vllm() -> None:
    code = "import runtime.policy.vllm_engine, sys; print(sorted({'vllm', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _fake(tokenizer: Any, mode: str = "processed") -> VllmPolicy:
    return VllmPolicy(object(), tokenizer, logprobs_mode=mode)  # type: ignore[arg-type]


def _output(tokenizer: Any, text: str, *, stop_reason: Any = None, eos: bool = False, ids: Any = None) -> Any:
    if ids is None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    logprobs = [{t: SimpleNamespace(logprob=-0.1 * (i + 1))} for i, t in enumerate(ids)]
    completion = SimpleNamespace(
        index=0, text=text, token_ids=ids, logprobs=logprobs, finish_reason="stop", stop_reason=stop_reason,
        weight_versions=[SimpleNamespace(version="3", start=0, end=len(ids))],
    )  # fmt: skip
    return SimpleNamespace(outputs=[completion], prompt_token_ids=[1, 2, 3])


def test_ids_keep_the_stop_string_and_the_version_is_vllms() -> None:
    from transformers import AutoTokenizer

    from runtime.tiny.policy_format import BUNDLED_POLICY

    tok = AutoTokenizer.from_pretrained(BUNDLED_POLICY)
    policy = _fake(tok)
    # a stop string: vLLM cuts the text, its ids end with the token that spelled it, and
    # so do ours (token ids are the record a continuation sends on)
    full = tok("4*5=20\n", add_special_tokens=False)["input_ids"]
    out = _output(tok, "4*5=20", stop_reason="\n", ids=full)
    result = policy._result(GenerationRequest(prompt="x", temperature=1.0, logprobs=True), out)
    c = result.completions[0]
    assert c.text == "4*5=20" and c.token_ids == full and c.stop_reason == "\n"
    assert len(c.logprobs or []) == len(c.token_ids or [])
    assert c.logprobs == c.sample_logprobs and result.policy_version == 3 and result.prompt_tokens == 3
    # tokens decoded past the stop string in one step (speculative decoding) are not the step's
    out = _output(tok, "4*5=20", stop_reason="\n", ids=full + tok("7+1", add_special_tokens=False)["input_ids"])
    c = policy._result(GenerationRequest(prompt="x", temperature=1.0, logprobs=True), out).completions[0]
    assert c.token_ids == full and len(c.sample_logprobs or []) == len(full)
    # EOS is dropped too; greedy: behaviour log-probs are 0, the processed ones are raw
    out = _output(tok, "Answer: 23", eos=True)
    c = policy._result(GenerationRequest(prompt="x", temperature=0.0, logprobs=True), out).completions[0]
    assert tok.decode(c.token_ids) == "Answer: 23" and set(c.sample_logprobs or []) == {0.0}
    assert c.stop_reason is None
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids or [])
    # temperature 0.7: processed log-probs are the behaviour ones, the raw ones are unknown
    c = policy._result(GenerationRequest(prompt="x", temperature=0.7, logprobs=True), out).completions[0]
    assert c.logprobs is None and c.sample_logprobs is not None
    # raw mode: the other way round
    c = _fake(tok, "raw")._result(GenerationRequest(prompt="x", temperature=0.7, logprobs=True), out).completions[0]
    assert c.sample_logprobs is None and c.logprobs is not None
    assert isinstance(policy, WeightedPolicy)


def test_building_it_without_vllm_says_how_to_install() -> None:
    if in_this_interpreter() is None or _vllm_importable():
        pytest.skip("vLLM is importable here; nothing to refuse")
    with pytest.raises(ConfigError, match=r"searchlearn\[vllm\]"):
        VllmBackend().build()


def _vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


# -- in process, on a GPU ---------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.anyio
async def test_in_process_on_a_gpu() -> None:
    reason = in_this_interpreter()
    if reason is not None:
        pytest.skip(f"vLLM's engine cannot run in this interpreter: {reason}")
    from vllm_engine_check import exercise

    from runtime.tiny.policy_format import BUNDLED_POLICY

    policy = VllmPolicy.from_path(BUNDLED_POLICY, VllmSettings(dtype="float32", max_model_len=256))
    try:
        check(await exercise(policy))
    finally:
        await policy.aclose()


# -- vLLM's CPU build, in its own interpreter ------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_on_the_cpu_build() -> None:
    proc = run_in_vllm(ROOT / "tests" / "vllm_engine_check.py", timeout=540)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    check(result)
    # vLLM's greedy completion is the local engine's, token for token, logprob for logprob
    local, greedy = result["local"], result["greedy"]
    assert local["ids"] == greedy["ids"]
    assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(local["logprobs"], greedy["logprobs"], strict=True))
    assert result["swap_s"] < 30
