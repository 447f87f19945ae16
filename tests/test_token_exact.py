"""Token ids are the record: a step-level path made of several model calls is continued
and trained on as the ids the policy sampled, never as its text encoded again.

The local engine serves ``bundled-weak`` (its steps vary under sampling); a tokenizer
wrapper records every string the policy encodes, and the engine's ``submit`` every
prompt it is sent.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch
from recording import recording_weak_policy
from transformers import AutoModelForCausalLM, AutoTokenizer

from learners.examples import VerifiedPaths
from learners.policy_gradient import PolicyGradientLearner, token_logprobs
from learners.rollouts import Rollouts
from learners.sft import SFTLearner
from runtime.core.types import Episode, Node, Task, path_parts, path_pieces
from runtime.policy.local import LocalPolicy
from runtime.rewards.base import Score
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.policy_format import WEAK_POLICY
from runtime.tiny.tasks import tiny_tasks
from strategies.verify_backtrack import VerifyAndBacktrack

pytestmark = pytest.mark.anyio

TEMPERATURE = 0.8
PLAN = "Plan: 1 product first, then 2 sums left to right."


class RecordingTokenizer:
    """The tokenizer, recording every text it is asked to encode."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.encoded: list[str] = []

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        self.encoded.append(text)
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(WEAK_POLICY)


def weak_model() -> Any:
    return AutoModelForCausalLM.from_pretrained(WEAK_POLICY, dtype=torch.float32)


@pytest.fixture
async def policy(tokenizer: Any) -> AsyncIterator[LocalPolicy]:
    """The local engine on ``bundled-weak``, its tokenizer recording what it encodes and
    its engine every prompt it is sent (``policy.sent``)."""
    policy: LocalPolicy = recording_weak_policy(RecordingTokenizer(tokenizer), max_batch=8)
    async with policy:
        yield policy


def context(policy: LocalPolicy, seed: int = 0) -> Context:
    task = next(tiny_tasks(1, [3], seed=11))
    sampling = Sampling(temperature=TEMPERATURE, logprobs=True, seed=seed, step_max_tokens=48)
    return Context(Episode(run_id="r", task=task), policy, Verifiers(), sampling)


def template_ids(tokenizer: Any, task: Task) -> list[int]:
    text = tokenizer.apply_chat_template(task.as_messages(), tokenize=False, add_generation_prompt=True)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def spelled(tokenizer: Any, text: str) -> list[int]:
    """``text`` as one token per character: a tokenisation the BPE would merge."""
    return [i for ch in text for i in tokenizer(ch, add_special_tokens=False)["input_ids"]]


def learner_logprobs(learner: PolicyGradientLearner, encoded: Any) -> list[float]:
    """The learner's log-probs of the completion tokens of ``encoded`` (one forward pass
    over the whole sequence, at the sampling temperature)."""
    with torch.no_grad():
        logits = learner.model(input_ids=torch.tensor([encoded.ids])).logits[0, :-1].float()
        lp = token_logprobs(logits, torch.tensor(encoded.ids[1:]), TEMPERATURE, 1.0)
    out: list[float] = lp[encoded.prompt - 1 :].tolist()
    return out


async def steps(ctx: Context, node: Node, k: int) -> list[Node]:
    """``k`` steps below ``node``, one model call each (a step-level path)."""
    path = []
    for _ in range(k):
        (node,) = await ctx.expand(node)
        path.append(node)
    return path


# -- (a) each call continues the ids the earlier calls sampled ----------------------------


async def test_each_call_of_a_step_level_path_carries_the_ids_sampled_before(
    policy: LocalPolicy, tokenizer: Any
) -> None:
    ctx = context(policy)
    path = await steps(ctx, ctx.root, 3)
    assert all(n.stop_reason == "\n" and n.token_ids for n in path)  # each step ended on the delimiter
    assert all(tokenizer.decode(n.token_ids).endswith("\n") for n in path)  # whose tokens it kept
    prompt = template_ids(tokenizer, ctx.task)
    sent: list[list[int]] = policy.sent  # type: ignore[attr-defined]
    assert len(sent) == 3
    for k, ids in enumerate(sent):
        assert ids == prompt + [t for n in path[:k] for t in n.token_ids or []]
    rendered = tokenizer.apply_chat_template(ctx.task.as_messages(), tokenize=False, add_generation_prompt=True)
    recorded: list[str] = policy.tokenizer.encoded
    assert recorded == [rendered] * 3  # the prompt alone: no generated text was encoded


# -- (b) a tokenisation the text would not give back is trained as sampled ---------------


async def test_a_non_canonical_tokenisation_is_continued_and_trained_as_sampled(
    policy: LocalPolicy, tokenizer: Any
) -> None:
    ctx = context(policy, seed=1)
    canonical = tokenizer(PLAN + "\n", add_special_tokens=False)["input_ids"]
    by_hand = spelled(tokenizer, PLAN + "\n")
    assert by_hand != canonical and tokenizer.decode(by_hand) == PLAN + "\n"  # BPE merges these
    first = ctx.fork(ctx.root, PLAN)  # a step whose ids were set by hand, as if sampled so
    first.token_ids, first.stop_reason, first.finish_reason = by_hand, "\n", "stop"
    path = [first, *await steps(ctx, first, 2)]
    prompt = template_ids(tokenizer, ctx.task)
    sent: list[list[int]] = policy.sent  # type: ignore[attr-defined]
    assert sent[0] == prompt + by_hand and sent[1] == prompt + by_hand + (path[1].token_ids or [])
    sampled = [t for n in path for t in n.token_ids or []]

    # policy gradient: the leaf's rollout trains on exactly these ids
    leaf = path[-1]
    leaf.terminal, leaf.scores["outcome:t"] = True, 1.0
    other = (await steps(ctx, first, 1))[0]
    other.terminal, other.scores["outcome:t"] = True, 0.0
    rollouts = Rollouts(groups="leaves").examples
    (good, _) = await rollouts(ctx.episode, Verifiers())
    assert good.token_ids == sampled and good.parts is None
    learner = PolicyGradientLearner(weak_model(), tokenizer, temperature=TEMPERATURE)
    encoded = learner.encode(good)
    assert encoded.ids[: encoded.prompt] == prompt and encoded.ids[encoded.prompt :][: len(sampled)] == sampled
    assert encoded.reencoded == 0

    # behaviour cloning of the verified path: the same ids, then the end of turn
    ctx.episode.chosen_path, ctx.episode.reward = [n.id for n in path], 1.0
    (example,) = await VerifiedPaths().examples(ctx.episode)
    sft = SFTLearner(weak_model(), tokenizer)
    ids, labels = sft.encode(example)
    assert ids == prompt + sampled + [tokenizer.eos_token_id]
    assert labels[len(prompt) :] == sampled + [tokenizer.eos_token_id]
    assert sft.step([example]).metrics["reencoded_tokens"] == 0


# -- (c) the first GRPO step's importance ratio is 1 on every token ----------------------


async def test_the_first_grpo_step_has_ratio_one_on_every_token_of_a_multi_call_path(
    policy: LocalPolicy, tokenizer: Any
) -> None:
    ctx = context(policy, seed=2)
    first = await ctx.expand(ctx.root, 2)
    leaves = []
    for node in first:
        path = [node, *await steps(ctx, node, 2)]
        leaves.append(path[-1])
    for leaf, reward in zip(leaves, (1.0, 0.0), strict=True):
        leaf.terminal, leaf.scores["outcome:t"] = True, reward
    rollouts = await Rollouts(groups="leaves").examples(ctx.episode, Verifiers())
    assert len(rollouts) == 2
    learner = PolicyGradientLearner(weak_model(), tokenizer, temperature=TEMPERATURE, lr=1e-6)
    for r, leaf in zip(rollouts, leaves, strict=True):
        path = ctx.path(leaf)
        assert len(path) == 3 and r.token_ids == [t for n in path for t in n.token_ids or []]
        assert r.behaviour is not None and len(r.behaviour) == len(r.token_ids)
        encoded = learner.encode(r)
        n = len(r.token_ids)  # an end of turn the learner adds after them has no behaviour
        behaviour = torch.tensor(encoded.behaviour[:n])
        assert encoded.ids[encoded.prompt :][:n] == r.token_ids
        assert not bool(behaviour.isnan().any())  # every sampled token has its recorded behaviour
        ratio = (torch.tensor(learner_logprobs(learner, encoded)[:n]) - behaviour).exp()
        assert float((ratio - 1).abs().max()) < 1e-4, ratio
    result = learner.step(rollouts)
    assert result.metrics["behaviour_ratio_max_dev"] < 1e-4
    assert result.metrics["reencoded_tokens"] == 0


class CachedScores:
    """A process verifier whose scores the test wrote on the nodes (never called)."""

    name = "cached"

    async def score_step(self, task: Task, previous: list[str], step: str) -> Any:
        raise AssertionError("every step is scored already")


async def test_a_sibling_group_is_trained_after_the_prefix_its_request_sent(
    policy: LocalPolicy, tokenizer: Any
) -> None:
    ctx = context(policy, seed=4)
    first = ctx.fork(ctx.root, PLAN)  # ids a re-encoding of the prefix's text would not give
    first.token_ids, first.stop_reason, first.finish_reason = spelled(tokenizer, PLAN + "\n"), "\n", "stop"
    path = [first, *await steps(ctx, first, 1)]
    siblings = await ctx.expand(path[-1], 2)
    for node, score in zip(siblings, (1.0, 0.0), strict=True):
        node.scores["cached"] = score
    verifiers = Verifiers(process=CachedScores())  # type: ignore[arg-type]
    rollouts = await Rollouts(groups="siblings").examples(ctx.episode, verifiers)
    assert len(rollouts) == 2
    sent: list[list[int]] = policy.sent  # type: ignore[attr-defined]
    learner = PolicyGradientLearner(weak_model(), tokenizer, temperature=TEMPERATURE, lr=1e-6)
    for r, node in zip(rollouts, siblings, strict=True):
        assert r.prefix_parts == [n.token_ids for n in path] and r.token_ids == node.token_ids
        encoded = learner.encode(r)
        assert encoded.ids[: encoded.prompt] == sent[1]  # the prompt the siblings were sampled after
        n = len(r.token_ids or [])
        ratio = (torch.tensor(learner_logprobs(learner, encoded)[:n]) - torch.tensor(encoded.behaviour[:n])).exp()
        assert float((ratio - 1).abs().max()) < 1e-4, ratio


async def test_a_verified_prefix_is_trained_on_its_ids_with_the_delimiter_it_sampled(
    policy: LocalPolicy, tokenizer: Any
) -> None:
    """An unsolved episode's verified prefix ends open: the line break the next step
    starts after is the one its last step sampled, not a second one."""
    ctx = context(policy, seed=5)
    path = await steps(ctx, ctx.root, 2)
    for node in path:
        node.scores["cached"] = 1.0
    assert path[-1].stop_reason == "\n" and not path[-1].terminal
    paths = VerifiedPaths(prefixes=True)
    (example,) = await paths.examples(ctx.episode, Verifiers(process=CachedScores()))  # type: ignore[arg-type]
    assert not example.ends and example.meta.get("prefix") and paths.reencoded_paths == 0
    ids, labels = SFTLearner(weak_model(), tokenizer).encode(example)
    sampled = [t for n in path for t in n.token_ids or []]
    assert ids == template_ids(tokenizer, ctx.task) + sampled and labels[-len(sampled) :] == sampled


class RejectAfter:
    """A process verifier that accepts the first ``accept`` steps it sees, then none."""

    name = "reject_after"

    def __init__(self, accept: int) -> None:
        self.accept = accept

    async def score_step(self, task: Task, previous: Any, step: str) -> Score:
        self.accept -= 1
        return Score(1.0 if self.accept >= 0 else 0.0)


async def test_a_verify_and_backtrack_path_that_ran_out_of_retries_is_held_wholly_as_ids(
    policy: LocalPolicy, tokenizer: Any
) -> None:
    """Its retries spent, verify-and-backtrack completes the path unverified in one call:
    the lines of that call have no ids of their own (the chain's first node holds them,
    ``meta['covers']``), and the chosen path is still continued and trained as sampled."""
    ctx = context(policy, seed=2)
    ctx.verifiers = Verifiers(process=RejectAfter(1))  # type: ignore[arg-type]
    episode = await VerifyAndBacktrack(episode_retries=1, step_retries=1).run(ctx)
    nodes = {n.id: n for n in episode.nodes}
    path = [nodes[i] for i in episode.chosen_path if nodes[i].parent is not None]
    chain = [n for n in path if n.meta.get("unverified")]
    assert path[0].meta.get("accepted") and chain and chain[0].meta["covers"] == len(chain)
    assert len(chain) > 1 and all(n.token_ids is None for n in chain[1:])  # lines without ids of their own
    pieces = path_pieces(path, "\n", closed=False)
    held = [n for p in pieces if p.ids is not None for n in p.nodes]
    assert held == path and all(p.ids is not None for p in pieces)  # every step, as ids
    sampled = [t for n in path for t in n.token_ids or []]
    prompt = template_ids(tokenizer, ctx.task)
    sent: list[list[int]] = policy.sent  # type: ignore[attr-defined]
    assert sent[-1] == prompt + (path[0].token_ids or [])  # the unverified call continued the accepted ids
    lines = [ln.strip() for ln in tokenizer.decode(sampled, skip_special_tokens=True).split("\n") if ln.strip()]
    assert lines == [n.text for n in path]


# -- (d) text the policy did not sample is encoded, and counted ---------------------------


async def test_a_forked_text_node_falls_back_to_its_text_and_is_counted(policy: LocalPolicy, tokenizer: Any) -> None:
    ctx = context(policy, seed=3)
    (step,) = await steps(ctx, ctx.root, 1)
    note = "check: 5*4=20"
    fork = ctx.fork(step, note, reflection=True)
    leaves = [(await steps(ctx, fork, 1))[0] for _ in range(2)]
    note_ids = tokenizer(note + "\n", add_special_tokens=False)["input_ids"]
    prompt = template_ids(tokenizer, ctx.task)
    sent: list[list[int]] = policy.sent  # type: ignore[attr-defined]
    assert sent[1] == prompt + (step.token_ids or []) + note_ids  # the fork's text, encoded on its own
    rendered = tokenizer.apply_chat_template(ctx.task.as_messages(), tokenize=False, add_generation_prompt=True)
    assert policy.tokenizer.encoded[1:] == [rendered, note + "\n"] * 2

    for leaf, reward in zip(leaves, (1.0, 0.0), strict=True):
        leaf.terminal, leaf.scores["outcome:t"] = True, reward
    converter = Rollouts(groups="leaves")
    rollouts = await converter.examples(ctx.episode, Verifiers())
    assert len(rollouts) == 2 and converter.reencoded_paths == 2
    learner = PolicyGradientLearner(weak_model(), tokenizer, temperature=TEMPERATURE, lr=1e-6)
    r, leaf = rollouts[0], leaves[0]
    assert r.token_ids is None and r.parts == [step.token_ids, note + "\n", leaf.token_ids]
    encoded = learner.encode(r)
    completion = encoded.ids[encoded.prompt :]
    sampled_before, sampled_after = step.token_ids or [], leaf.token_ids or []
    assert completion[: len(completion) - int(r.ends)] == sampled_before + note_ids + sampled_after
    assert encoded.reencoded == len(note_ids)
    nan = [math.isnan(b) for b in encoded.behaviour[: len(completion) - int(r.ends)]]
    assert nan == [False] * len(sampled_before) + [True] * len(note_ids) + [False] * len(sampled_after)
    now = learner_logprobs(learner, encoded)  # the sampled tokens still have ratio 1
    known = [(a, b) for a, b in zip(now, encoded.behaviour, strict=False) if not math.isnan(b)]
    assert max(abs(math.exp(a - b) - 1) for a, b in known) < 1e-4
    assert learner.step(rollouts).metrics["reencoded_tokens"] == 2 * len(note_ids)

    ctx.episode.chosen_path, ctx.episode.reward = [n.id for n in ctx.path(leaf)], 1.0
    paths = VerifiedPaths()
    (example,) = await paths.examples(ctx.episode)
    assert paths.reencoded_paths == 1 and example.parts is not None
    assert [piece for piece, _ in example.parts] == [step.token_ids, note + "\n", leaf.token_ids]
    sft = SFTLearner(weak_model(), tokenizer)
    ids, _ = sft.encode(example)
    assert ids == prompt + sampled_before + note_ids + sampled_after + [tokenizer.eos_token_id]
    assert sft.step([example]).metrics["reencoded_tokens"] == len(note_ids)


# -- the pieces of a path, without a model ------------------------------------------------


def _node(i: int, parent: int, text: str, ids: list[int] | None = None, **kw: Any) -> Node:
    return Node(id=i, parent=parent, depth=i, text=text, token_ids=ids, **kw)


def test_path_pieces_use_a_complete_chain_once_and_fall_back_where_ids_are_missing() -> None:
    chain = [_node(1, 0, "a", [1, 2, 3, 4], meta={"covers": 3}), _node(2, 1, "b"), _node(3, 2, "c")]
    # the whole chain on the path: its ids once; it ended on EOS, so the delimiter follows as text
    pieces = path_pieces(chain, "\n")
    assert [p.ids for p in pieces] == [[1, 2, 3, 4], None] and pieces[1].text == "\n"
    assert path_parts(pieces) == [[1, 2, 3, 4], "\n"]
    assert path_parts(path_pieces(chain, "\n", closed=False)) == [[1, 2, 3, 4]]
    # a path that leaves the chain midway (a backtrack to its second line): its lines are text
    assert path_parts(path_pieces(chain[:2], "\n")) is None
    assert [p.text for p in path_pieces(chain[:2], "\n")] == ["a\nb\n"]
    # a step that ended on the delimiter keeps it in its ids; one cut at its cap gets it as text;
    # adjacent text (a fork, then the delimiter of a cut step) is one piece
    steps = [
        _node(1, 0, "x", [5, 9], stop_reason="\n"),
        _node(2, 1, "y", [6], finish_reason="length"),
        _node(3, 2, "fork"),
        _node(4, 3, "z", [7, 9], stop_reason="\n"),
    ]
    assert path_parts(path_pieces(steps, "\n")) == [[5, 9], [6], "\nfork\n", [7, 9]]


def test_both_in_process_engines_send_the_template_then_the_parts(tokenizer: Any) -> None:
    """The local engine and vLLM's build one prompt: the rendered template encoded, then
    each text piece encoded on its own and each id piece as it is (no vLLM needed: the
    prompt is built before the engine is called)."""
    from runtime.policy.base import GenerationRequest
    from runtime.policy.prompts import PromptEncoder
    from runtime.policy.vllm_engine import VllmPolicy

    messages = [{"role": "user", "content": "Evaluate: 2+3*4"}]
    parts: list[str | list[int]] = [spelled(tokenizer, PLAN + "\n"), "check: 3*4=12\n", [21, 12, 22, 201]]
    request = GenerationRequest(
        messages=messages, assistant_prefix="ignored when parts are given", assistant_parts=parts
    )
    recording = RecordingTokenizer(tokenizer)
    vllm = VllmPolicy(object(), recording, name="fake")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = (
        tokenizer(rendered, add_special_tokens=False)["input_ids"]
        + spelled(tokenizer, PLAN + "\n")
        + tokenizer("check: 3*4=12\n", add_special_tokens=False)["input_ids"]
        + [21, 12, 22, 201]
    )
    assert vllm.encode(request) == PromptEncoder(tokenizer, "local")(request) == expected
    assert recording.encoded == [rendered, "check: 3*4=12\n"]
    # without parts (a text-only request), the prompt and prefix are one string, as before
    text_only = GenerationRequest(messages=messages, assistant_prefix=PLAN + "\n")
    assert vllm.encode(text_only) == tokenizer(rendered + PLAN + "\n", add_special_tokens=False)["input_ids"]
