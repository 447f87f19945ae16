"""The local continuous-batching engine against plain transformers on a small model built here."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from runtime.core.errors import PolicyRequestError
from runtime.policy.base import GenerationRequest
from runtime.policy.local import LocalPolicy
from runtime.tiny.policy_format import BUNDLED_POLICY

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def make_model(tokenizer: Any, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # sharpen the random logits so greedy ties are unlikely
        model.lm_head.weight.mul_(4.0) if not config.tie_word_embeddings else model.model.embed_tokens.weight.mul_(4.0)
    return model


@pytest.fixture
def model(tokenizer: Any) -> Qwen2ForCausalLM:
    return make_model(tokenizer)


@pytest.fixture
def policy(model: Any, tokenizer: Any) -> Iterator[LocalPolicy]:
    p = LocalPolicy(model, tokenizer, max_batch=8, threads=1)
    yield p
    p.engine.close()


def prompts(n: int, seed: int = 0, shared: str = "") -> list[str]:
    rng = random.Random(seed)
    return [
        shared + f"Evaluate: {rng.randint(1, 99)}+{rng.randint(1, 99)}*{rng.randint(2, 9)}" * rng.randint(1, 3)
        for _ in range(n)
    ]


def reference(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    tokens = out[0, ids["input_ids"].shape[1] :].tolist()
    return tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens


async def generate_all(policy: LocalPolicy, texts: list[str], **kwargs: Any) -> list[Any]:
    results: list[Any] = [None] * len(texts)

    async def one(i: int) -> None:
        results[i] = await policy.generate(GenerationRequest(prompt=texts[i], **kwargs))

    async with anyio.create_task_group() as tg:
        for i in range(len(texts)):
            tg.start_soon(one, i)
    return results


async def test_greedy_batched_matches_generate(policy: LocalPolicy, model: Any, tokenizer: Any) -> None:
    texts = prompts(20)  # more than max_batch: requests join and leave mid-flight
    results = await generate_all(policy, texts, max_tokens=24, temperature=0.0)
    for text, result in zip(texts, results, strict=True):
        assert result.completions[0].token_ids == reference(model, tokenizer, text, 24)
    assert policy.engine.stats.peak_batch == 8
    assert policy.engine.stats.decode_steps < sum(len(r.completions[0].token_ids) for r in results)


@pytest.fixture(scope="module")
def trained() -> Any:
    """The bundled trained policy. The random test model's greedy picks barely depend on
    its KV (its sharpened tied embeddings dominate), so only a real model notices lost or
    misplaced KV."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(BUNDLED_POLICY, dtype=torch.float32).eval()


def tiny_questions(n: int, seed: int) -> list[str]:
    from runtime.tiny.domain import generate_problem
    from runtime.tiny.policy_format import assistant_prefix

    rng = random.Random(seed)
    return [assistant_prefix(generate_problem(rng, 3).question) for _ in range(n)]


async def test_kv_buffers_that_grow_mid_batch_stay_exact(
    trained: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.policy.local.engine as engine_module

    monkeypatch.setattr(engine_module, "ROOM", 3)  # the running batch's buffers fill and grow many times
    texts = tiny_questions(12, seed=8)
    policy = LocalPolicy(trained, tokenizer, max_batch=8, threads=1)
    try:
        results = await generate_all(policy, texts, max_tokens=40, temperature=0.0)
    finally:
        policy.engine.close()
    for text, result in zip(texts, results, strict=True):
        assert result.completions[0].token_ids == reference(trained, tokenizer, text, 40)


async def test_requests_joining_finished_rows_places_stay_exact(trained: Any, tokenizer: Any) -> None:
    """Requests of different lengths finish at different steps; waiting ones take the
    places of finished rows in the running batch (and the batch is trimmed when it gets
    wide); every output is still that of ``generate``."""
    texts = tiny_questions(20, seed=12)
    budgets = [4 + (7 * i) % 37 for i in range(len(texts))]
    policy = LocalPolicy(trained, tokenizer, max_batch=6, threads=1)
    results: list[Any] = [None] * len(texts)

    async def one(i: int) -> None:
        request = GenerationRequest(prompt=texts[i], max_tokens=budgets[i], temperature=0.0)
        results[i] = await policy.generate(request)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(len(texts)):
                tg.start_soon(one, i)
    finally:
        policy.engine.close()
    for text, budget, result in zip(texts, budgets, results, strict=True):
        assert result.completions[0].token_ids == reference(trained, tokenizer, text, budget)


@pytest.mark.parametrize("warm", [True, False])
async def test_prefix_reuse_is_exact_on_a_trained_model(trained: Any, tokenizer: Any, warm: bool) -> None:
    """Branches of one prefix reuse its KV whether it was cached before (warm) or the
    branches all arrive together on a cold cache (the first is prefilled alone, the rest
    wait one step and reuse it), and generate exactly what ``generate`` does."""
    shared = tiny_questions(1, seed=9)[0] + "plan: first the products, then the sums\n"
    texts = [shared + f"check: {2 + i}*{3 + i}=" for i in range(6)]
    policy = LocalPolicy(trained, tokenizer, max_batch=8, threads=1)
    try:
        if warm:
            await generate_all(policy, [shared], max_tokens=4, temperature=0.0)
        stats = policy.engine.stats
        requested, computed = stats.prefill_requested, stats.prefill_computed
        results = await generate_all(policy, texts, max_tokens=24, temperature=0.0)
        reused = (stats.prefill_requested - requested) - (stats.prefill_computed - computed)
    finally:
        policy.engine.close()
    shared_blocks = len(tokenizer(shared, add_special_tokens=False)["input_ids"]) // 16 * 16
    assert reused >= (6 if warm else 5) * shared_blocks
    for text, result in zip(texts, results, strict=True):
        assert result.completions[0].token_ids == reference(trained, tokenizer, text, 24)


async def test_prompts_reusing_different_prefix_lengths_share_one_exact_prefill(trained: Any, tokenizer: Any) -> None:
    """Prompts that reuse 0, 1, 2 or 3 cached blocks are prefilled in one pass (the past
    left-padded to the longest reuse) and generate exactly what ``generate`` does."""
    question = tiny_questions(1, seed=21)[0]
    lines = ["plan: first the products, then the sums", "3*4=12 so far", "then 12+5=17 and more"]
    warm = question + "\n".join(lines) + "\n"
    policy = LocalPolicy(trained, tokenizer, max_batch=16, threads=1)
    try:
        await generate_all(policy, [warm], max_tokens=2, temperature=0.0)
        ids = tokenizer(warm, add_special_tokens=False)["input_ids"]
        cuts = [16, 32, 48, len(ids) // 16 * 16]
        texts = [tokenizer.decode(ids[:c]) + f" check {i}" for i, c in enumerate(cuts)]
        texts.append(tiny_questions(1, seed=22)[0])  # shares nothing cached
        stats = policy.engine.stats
        passes, requested, computed = stats.prefill_passes, stats.prefill_requested, stats.prefill_computed
        results = await generate_all(policy, texts, max_tokens=20, temperature=0.0)
        reused = (stats.prefill_requested - requested) - (stats.prefill_computed - computed)
        assert stats.prefill_passes - passes < len(texts)  # not one pass per reuse length
    finally:
        policy.engine.close()
    assert reused >= sum(cuts) - 16 * len(cuts)
    for text, result in zip(texts, results, strict=True):
        assert result.completions[0].token_ids == reference(trained, tokenizer, text, 20)


async def test_a_row_that_ends_on_eos_under_a_stop_string_keeps_its_text(trained: Any, tokenizer: Any) -> None:
    """Stop strings are looked for in a row's last tokens only; a row that ends on EOS
    before any stop string still delivers its whole text."""
    texts = tiny_questions(4, seed=23)
    policy = LocalPolicy(trained, tokenizer, max_batch=8, threads=1)
    try:
        free = await generate_all(policy, texts, max_tokens=120, temperature=0.0)
        stopped = await generate_all(policy, texts, max_tokens=120, temperature=0.0, stop=["@@never@@"])
    finally:
        policy.engine.close()
    assert all(a.completions[0].finish_reason == "stop" for a in free)  # each ended on EOS
    for a, b in zip(free, stopped, strict=True):
        assert b.completions[0].text and b.completions[0].text == a.completions[0].text
        assert b.completions[0].token_ids == a.completions[0].token_ids


async def test_a_bad_prompt_in_a_batched_prefill_fails_alone(policy: LocalPolicy, tokenizer: Any) -> None:
    from runtime.policy.local.engine import EngineRequest, EngineResult

    results: dict[int, EngineResult] = {}
    good = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts(4, seed=11)]
    bad = [5, 6, 10**6]  # a token id far outside the vocabulary

    def done(i: int) -> Any:
        return lambda result: results.__setitem__(i, result)

    for i, ids in enumerate([good[0], good[1], bad, good[2], good[3]]):
        policy.engine.submit(EngineRequest(prompt_ids=ids, max_tokens=4, temperature=0.0, done=done(i)))
    with anyio.fail_after(30):
        while len(results) < 5:  # noqa: ASYNC110 (the engine calls back from its thread)
            await anyio.sleep(0.01)
    assert results[2].error is not None and not results[2].sequences
    assert all(results[i].error is None and results[i].sequences for i in (0, 1, 3, 4))


async def test_prefix_reuse_is_exact_and_saves_prefill(policy: LocalPolicy, model: Any, tokenizer: Any) -> None:
    shared = "Plan: " + "3+4*5-6 " * 12
    texts = prompts(10, seed=1, shared=shared)
    first = await generate_all(policy, texts[:1], max_tokens=16, temperature=0.0)
    rest = await generate_all(policy, texts[1:], max_tokens=16, temperature=0.0)
    for text, result in zip(texts, first + rest, strict=True):
        assert result.completions[0].token_ids == reference(model, tokenizer, text, 16)
    stats = policy.engine.stats
    shared_len = len(tokenizer(shared, add_special_tokens=False)["input_ids"])
    assert stats.prefill_requested - stats.prefill_computed >= 9 * (shared_len // 16 * 16 - 16)


async def test_n_shares_prefill_and_seeds_repeat(policy: LocalPolicy) -> None:
    text = prompts(1, seed=2)[0]
    a = await policy.generate(GenerationRequest(prompt=text, n=4, max_tokens=12, temperature=1.0, seed=7))
    computed = policy.engine.stats.prefill_computed
    n_prompt = a.prompt_tokens
    assert computed == n_prompt  # one prefill for four samples
    b = await policy.generate(GenerationRequest(prompt=text, n=4, max_tokens=12, temperature=1.0, seed=7))
    assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    assert len({tuple(c.token_ids or []) for c in a.completions}) > 1


@pytest.mark.parametrize("temperature", [1.0, 0.0])
async def test_logprobs_match_a_forward_pass(
    policy: LocalPolicy, model: Any, tokenizer: Any, temperature: float
) -> None:
    text = prompts(1, seed=3)[0]
    result = await policy.generate(
        GenerationRequest(prompt=text, max_tokens=16, temperature=temperature, seed=1, logprobs=True)
    )
    c = result.completions[0]
    assert c.token_ids and c.logprobs and len(c.token_ids) == len(c.logprobs)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + c.token_ids])).logits[0]
    expected = torch.log_softmax(logits.float(), -1)[len(prompt_ids) - 1 : -1].gather(
        1, torch.tensor(c.token_ids)[:, None]
    )
    assert torch.allclose(torch.tensor(c.logprobs), expected[:, 0], atol=1e-4)


async def test_stop_sequences_cut_the_text_and_keep_the_tokens(policy: LocalPolicy, tokenizer: Any) -> None:
    """The text ends before the stop string; the ids keep every sampled token, the stop
    string's included (token ids are the record a continuation sends on)."""
    texts = prompts(6, seed=4)
    free = await generate_all(policy, texts, max_tokens=30, temperature=0.0, logprobs=True)
    ids = free[0].completions[0].token_ids
    stop = tokenizer.decode(ids[3:4])  # a string the model writes
    cut = await generate_all(policy, texts[:1], max_tokens=30, temperature=0.0, stop=[stop], logprobs=True)
    c = cut[0].completions[0]
    assert stop not in c.text and c.finish_reason == "stop" and c.stop_reason == stop
    assert c.token_ids == ids[: len(c.token_ids or [])] and stop in tokenizer.decode(c.token_ids)
    assert tokenizer.decode(c.token_ids).startswith(c.text) and stop not in tokenizer.decode((c.token_ids or [])[:-1])
    assert len(c.logprobs or []) == len(c.sample_logprobs or []) == len(c.token_ids or [])
    assert free[0].completions[0].stop_reason is None


async def test_weight_swap_under_load_loses_nothing(policy: LocalPolicy, model: Any, tokenizer: Any) -> None:
    """Partial rollouts: a swap lands between decode steps, rows in flight continue under
    the new weights, every token records its version, and nothing is dropped."""
    new_model = make_model(tokenizer, seed=1)
    texts = prompts(24, seed=5)
    results: list[Any] = [None] * len(texts)

    async def one(i: int, max_tokens: int) -> None:
        request = GenerationRequest(prompt=texts[i], max_tokens=max_tokens, temperature=0.0, logprobs=True)
        results[i] = await policy.generate(request)

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(one, i, 40)
        while policy.engine.stats.generated_tokens < 24:  # noqa: ASYNC110  (the engine's thread counts; no event to wait on)
            await anyio.sleep(0.005)
        swaps = policy.engine.stats.swaps
        policy.swap_weights({k: v.clone() for k, v in new_model.state_dict().items()}, version=1)
        for i in range(12, 24):
            tg.start_soon(one, i, 20)
    assert all(r is not None for r in results) and policy.engine.stats.swaps == swaps + 1
    mixed = 0
    for text, r in zip(texts, results, strict=True):
        c = r.completions[0]
        versions = c.token_versions or [r.policy_version] * len(c.token_ids)
        assert versions == sorted(versions) and set(versions) <= {0, 1}
        assert r.policy_version == versions[0]  # the oldest token's: a staleness bound on it bounds all
        if c.token_versions is None:  # sampled wholly under one version: exactly that model's greedy text
            owner = model if r.policy_version == 0 else new_model
            assert c.token_ids == reference(owner, tokenizer, text, len(c.token_ids))
        else:  # continued after the swap: the part before it is the old model's
            mixed += 1
            before = versions.index(1)
            assert c.token_ids[:before] == reference(model, tokenizer, text, before)
    assert mixed >= 1  # the swap did not wait for the running batch to drain
    assert [r.policy_version for r in results[12:]] == [1] * 12


async def test_malformed_requests_get_clear_errors(policy: LocalPolicy) -> None:
    with pytest.raises(PolicyRequestError, match="empty prompt"):
        await policy.generate(GenerationRequest(prompt="", max_tokens=4))
    with pytest.raises(PolicyRequestError, match="max_tokens"):
        await policy.generate(GenerationRequest(prompt="1+1", max_tokens=0))
    with pytest.raises(PolicyRequestError, match="does not fit"):
        await policy.generate(GenerationRequest(prompt="1+1=2 " * 200, max_tokens=4))
    ok = await policy.generate(GenerationRequest(prompt="1+1", max_tokens=4, temperature=0.0))
    assert ok.completions  # the engine is still serving


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_policy_runs_under_either_anyio_backend(policy: LocalPolicy, model: Any, tokenizer: Any) -> None:
    texts = prompts(4, seed=7)
    results = await generate_all(policy, texts, max_tokens=6, temperature=0.0)
    for text, result in zip(texts, results, strict=True):
        assert result.completions[0].token_ids == reference(model, tokenizer, text, 6)


@pytest.mark.anyio
async def test_a_checkpoint_without_a_chat_template_gets_the_plain_prompt_fallback() -> None:
    from runtime.policy.base import GenerationRequest
    from runtime.policy.local import LocalPolicy

    policy = LocalPolicy.from_path("bundled", threads=1)
    try:
        policy.tokenizer.chat_template = None
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
        ids = policy.encode(GenerationRequest(messages=messages))
        assert policy.tokenizer.decode(ids) == "Be brief.\n\nWhat is 2 + 3?\n\n"
        result = await policy.generate(GenerationRequest(messages=messages, max_tokens=4, temperature=0))
        assert result.completions[0].finish_reason in ("stop", "length")
    finally:
        await policy.aclose()


def reference_ids(model: Any, ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos, eos_token_id=eos
        )
    tokens = out[0, len(ids) :].tolist()
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


async def submit(policy: LocalPolicy, ids: list[int], **kwargs: Any) -> Any:
    """One request straight to the engine, by token ids; its result."""
    from runtime.policy.local.engine import EngineRequest

    results: list[Any] = []
    policy.engine.submit(EngineRequest(prompt_ids=ids, done=results.append, **kwargs))
    with anyio.fail_after(60):
        while not results:  # noqa: ASYNC110 (the engine calls back from its thread)
            await anyio.sleep(0.01)
    assert results[0].error is None
    return results[0]


async def test_prefill_computes_exactly_the_uncached_tail(trained: Any, tokenizer: Any) -> None:
    """A prompt that extends a cached one prefills only its new tokens, and one that
    stops inside a cached path only its last token (it needs that position's logits):
    reuse is exact to the token, not to 16-token blocks."""
    ids = tokenizer(tiny_questions(1, seed=31)[0] + "plan: first the products, then the sums\n3*4=12\n")["input_ids"]
    cut = 16 * (len(ids) // 16 - 1) + 5  # ends inside a block
    policy = LocalPolicy(trained, tokenizer, max_batch=4, threads=1)
    stats = policy.engine.stats
    try:
        await submit(policy, ids[:cut], max_tokens=1, temperature=0.0)
        outputs = []
        for prompt, uncached in ((ids[: cut + 7], 7), (ids[: cut - 3], 1)):
            computed = stats.prefill_computed
            result = await submit(policy, prompt, max_tokens=12, temperature=0.0)
            assert stats.prefill_computed - computed == uncached
            outputs.append((prompt, result.sequences[0].token_ids))
    finally:
        policy.engine.close()
    for prompt, tokens in outputs:
        assert tokens == reference_ids(trained, prompt, 12, tokenizer.eos_token_id)


async def test_a_step_that_ended_on_a_stop_string_is_continued_from_its_own_kv(trained: Any, tokenizer: Any) -> None:
    """A row that ends on a stop string leaves its KV in the prefix cache: the next call,
    whose prompt is the first's ids and the step's ids (as a step-level search sends
    them), prefills only the step's last token, and generates what ``generate`` does."""
    prompt = tokenizer(tiny_questions(1, seed=32)[0])["input_ids"]
    policy = LocalPolicy(trained, tokenizer, max_batch=4, threads=1)
    stats = policy.engine.stats
    try:
        step = (await submit(policy, prompt, max_tokens=40, temperature=0.0, stop=["\n"])).sequences[0]
        assert step.stop_reason == "\n" and len(step.token_ids) > 1
        follow = prompt + step.token_ids
        computed = stats.prefill_computed
        second = (await submit(policy, follow, max_tokens=40, temperature=0.0, stop=["\n"])).sequences[0]
        assert stats.prefill_computed - computed == 1
        again = prompt + step.token_ids + second.token_ids
        computed = stats.prefill_computed
        await submit(policy, again, max_tokens=1, temperature=0.0)
        assert stats.prefill_computed - computed == 1
    finally:
        policy.engine.close()
    assert second.token_ids == reference_ids(trained, follow, 40, tokenizer.eos_token_id)[: len(second.token_ids)]


def test_prefix_cache_finds_any_prefix_and_evicts_by_bytes() -> None:
    from runtime.policy.local.prefix_cache import PrefixCache

    def kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.full((1, 1, n, 2), float(n)), torch.zeros(1, 1, n, 2))]

    path_bytes = 2 * 40 * 2 * 4
    cache = PrefixCache(budget_bytes=2 * path_bytes + 10)
    a, b, c = list(range(40)), [*range(20), *[99] * 20], [7] * 40
    cache.add(a, kv(40))
    cache.add(b, kv(40))
    assert cache.lookup([*a[:30], 5])[1] == 30
    assert cache.lookup([*b[:25], 1])[1] == 25
    assert cache.lookup(a)[1] == 39  # at most all but the last token
    assert cache.lookup(list(range(100, 140))) == (None, 0)
    cache.add(c, kv(40))  # over budget: the least recently used path (b) goes
    assert len(cache) == 2 and cache.bytes <= cache.budget_bytes
    assert cache.lookup([*b[:25], 1])[1] == 20  # only the 20 tokens a shares with b are left
    assert cache.lookup([*c, 1])[0][0][0][0, 0, 0, 0] == 40.0
    cache.clear()
    assert cache.lookup(c) == (None, 0) and cache.bytes == 0
