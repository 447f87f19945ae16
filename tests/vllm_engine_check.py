"""Exercises :class:`~runtime.policy.vllm_engine.VllmPolicy` on the bundled tiny policy and
prints what it saw as one JSON line (``RESULT {...}``).

Run by ``tests/test_vllm_engine.py``: with vLLM's CPU build's interpreter as a script
(``python tests/vllm_engine_check.py``; vLLM pins its own torch, so it cannot be imported
into the test interpreter), or imported in process where vLLM and a GPU are present.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import anyio

from runtime.policy.base import GenerationRequest
from runtime.policy.vllm_engine import VllmPolicy, VllmSettings
from runtime.tiny.policy_format import BUNDLED_POLICY

MESSAGES = [{"role": "user", "content": "Evaluate: 3+4*5"}]


def _req(**kw: Any) -> GenerationRequest:
    return GenerationRequest(messages=MESSAGES, **({"max_tokens": 48, "logprobs": True} | kw))


def _completions(result: Any) -> list[dict[str, Any]]:
    return [
        {"text": c.text, "ids": c.token_ids, "logprobs": c.logprobs, "sample": c.sample_logprobs}
        for c in result.completions
    ]


async def exercise(policy: VllmPolicy) -> dict[str, Any]:
    """n > 1 with logprobs, greedy, two weight swaps (one while requests are in flight)."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    sampled = await policy.generate(_req(n=4, temperature=1.0, stop=["\n"]))
    out["sampled"] = {"version": sampled.policy_version, "completions": _completions(sampled)}
    nucleus = await policy.generate(_req(n=2, temperature=0.7, top_p=0.9))
    out["nucleus"] = _completions(nucleus)
    greedy = await policy.generate(_req(temperature=0.0))
    out["greedy"] = {"version": greedy.policy_version, **_completions(greedy)[0]}

    original = load_file(str(BUNDLED_POLICY / "model.safetensors"))
    # Knock out the attention and MLP outputs: what is left cannot do arithmetic.
    broken = {k: v * 0 if k.endswith(("o_proj.weight", "down_proj.weight")) else v for k, v in original.items()}
    started = time.monotonic()
    await policy.load_weights(broken, 1)
    out["swap_s"] = time.monotonic() - started
    after = await policy.generate(_req(temperature=0.0))
    out["broken"] = {"version": after.policy_version, **_completions(after)[0]}

    # Back to the original through the learner's path (sync swap_weights), with requests
    # in flight: they finish under version 1, the ones after the swap run under version 2.
    versions: dict[str, list[int | None]] = {"before": [], "after": []}

    async def one(key: str) -> None:
        r = await policy.generate(_req(temperature=1.0, max_tokens=32))
        versions[key].append(r.policy_version)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one, "before")
        await anyio.sleep(0.05)
        policy.swap_weights(original, 2)
        for _ in range(3):
            tg.start_soon(one, "after")
    restored = await policy.generate(_req(temperature=0.0))
    out["restored"] = {"version": restored.policy_version, **_completions(restored)[0]}
    out["in_flight_versions"] = versions
    out["policy_version"] = policy.version
    out["swaps"] = policy.swaps
    return out


async def local_reference() -> dict[str, Any]:
    """The local engine's greedy completion of the same prompt (raw logprobs to compare)."""
    from runtime.policy.local import LocalPolicy

    async with LocalPolicy.from_path(BUNDLED_POLICY, threads=1) as local:
        return _completions(await local.generate(_req(temperature=0.0)))[0]


async def main() -> None:
    settings = VllmSettings(dtype="float32", max_model_len=256, enforce_eager=True)
    started = time.monotonic()
    policy = VllmPolicy.from_path(BUNDLED_POLICY, settings, max_num_seqs=16)
    start_s = time.monotonic() - started
    try:
        result = await exercise(policy)
    finally:
        await policy.aclose()
    result["local"] = await local_reference()
    sys.stdout.write("RESULT " + json.dumps({"start_s": start_s, **result}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":  # vLLM's engine process is spawned: the guard is required
    asyncio.run(main())
    sys.exit(0)
