"""Step-level search strategies: the trees they explore, checked node by node.

Most tests use the scripted policy and table-driven step verifiers, so every tree is
known in advance; the last tests run one strategy unchanged on the local engine and
on ``transformers serve`` over loopback.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_openai_server import MODEL_DIR, hf_server  # noqa: F401  (a fixture)

from runtime.core.errors import VerifierError
from runtime.core.types import Episode, Node, Task
from runtime.policy.base import GenerationRequest, GenerationResult
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import AnswerExtractor, Score
from runtime.rewards.outcome import ExactMatch, TableVerifier
from runtime.scheduling.scheduler import Runtime
from runtime.search.context import Context, Sampling, Verifiers, aggregate_scores
from runtime.tiny.tasks import tiny_tasks
from runtime.tiny.verifier import TinyStepVerifier
from strategies import (
    DVTS,
    MCTS,
    BeamSearch,
    ComputeOptimal,
    LeastToMost,
    SelfRefine,
    Strategy,
    TreeOfThought,
    VerifyAndBacktrack,
)

pytestmark = pytest.mark.anyio

TASK = Task(id="t", prompt="?", answer="42")


def context(policy: Any, *, process: Any = None, outcome: Any = None, **sampling: Any) -> Context:
    verifiers = Verifiers(outcome=outcome, process=process, extractor=AnswerExtractor(), timeout=5.0)
    return Context(Episode(run_id="r", task=TASK), policy, verifiers, Sampling(**sampling))


def steps_of(request: GenerationRequest) -> list[str]:
    return [s for s in request.assistant_prefix.split("\n") if s]


class StepScores:
    """Process verifier: a step's score is ``fn(step)``; counts its calls."""

    def __init__(self, fn: Callable[[str], float], name: str = "steps", explain: str | None = None) -> None:
        self.fn = fn
        self.name = name
        self.explain = explain
        self.calls: list[tuple[list[str], str]] = []

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        self.calls.append((list(previous), step))
        return Score(self.fn(step), self.explain)


def pseudo(step: str) -> float:
    """A fixed pseudo-random score per step text."""
    return round(random.Random(step).random(), 6)


def tree_script(depth: int) -> Callable[[GenerationRequest, int], str]:
    """Child i of the path ``p`` is named ``p/i``; at ``depth`` it answers."""

    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        name = (path[-1] if path else "s") + f"/{i}"
        return f"{name} \\boxed{{42}}" if len(path) + 1 == depth else name

    return script


def children(ep: Episode, node: Node) -> list[Node]:
    return [ep.nodes[i] for i in node.children]


# -- beam search --------------------------------------------------------------------------


async def test_beam_keeps_exactly_the_top_k_by_score_at_each_depth() -> None:
    policy = ScriptedPolicy(tree_script(depth=4))
    verifier = StepScores(pseudo)
    ep = await BeamSearch(width=3, expansions=4).run(context(policy, process=verifier))

    kept = [ep.nodes[0]]
    for depth in range(1, 5):
        candidates = [c for b in kept for c in children(ep, b)]
        assert len(candidates) == 4 * len(kept)  # every kept beam expanded, M children each
        assert all(c.depth == depth for c in candidates)
        path_score = {c.id: min(pseudo(n.text) for n in _path(ep, c)) for c in candidates}
        assert all(c.value == pytest.approx(path_score[c.id]) for c in candidates)
        expected = sorted(candidates, key=lambda c: -path_score[c.id])[:3]
        assert [c.id for c in candidates if c.meta.get("beam") == depth] == sorted(c.id for c in expected)
        # Only the kept beams were expanded further.
        assert all(not c.children for c in candidates if c not in expected)
        kept = expected
    assert all(n.terminal for n in kept)
    best = max(kept, key=lambda n: n.value or 0.0)
    assert ep.chosen_path == [n.id for n in _path(ep, best)]
    assert ep.final_answer == "42"
    # One call per beam per depth, n = expansions, cut at the delimiter.
    assert policy.calls == 1 + 3 + 3 + 3
    assert len(verifier.calls) == len({(tuple(p), s) for p, s in verifier.calls})  # each step scored once


def _path(ep: Episode, node: Node) -> list[Node]:
    out = []
    while node.parent is not None:
        out.append(node)
        node = ep.nodes[node.parent]
    return out[::-1]


async def test_beam_finished_beams_keep_their_slot_and_duplicates_count_once() -> None:
    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        if not path:
            return ["early \\boxed{42}", "same", "same", "other"][i]
        return f"{path[-1]}+ \\boxed{{42}}" if len(path) == 1 else "unreachable"

    scores = {"early \\boxed{42}": 0.9, "same": 0.8, "other": 0.1, "same+ \\boxed{42}": 0.5, "other+ \\boxed{42}": 0.95}
    policy = ScriptedPolicy(script)
    ep = await BeamSearch(width=2, expansions=4).run(context(policy, process=StepScores(lambda s: scores[s])))
    first = children(ep, ep.nodes[0])
    assert [n.text for n in first] == ["early \\boxed{42}", "same", "same", "other"]
    assert first[2].meta["duplicate_of"] == first[1].id and first[2].value is None  # never scored
    assert [n.meta.get("beam") for n in first] == [1, 1, None, None]
    assert first[0].terminal and not first[0].children  # finished: kept, not expanded
    second, *copies = children(ep, first[1])
    assert second.value == pytest.approx(0.5)  # min(0.8, 0.5)
    assert len(copies) == 3 and all(c.meta["duplicate_of"] == second.id for c in copies)
    assert ep.steps == ["early \\boxed{42}"]  # 0.9 beats 0.5 in the last round


async def test_beam_lookahead_scores_the_end_of_a_greedy_rollout() -> None:
    requests: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        requests.append(request)
        return tree_script(depth=3)(request, i)

    verifier = StepScores(pseudo)
    ep = await BeamSearch(width=1, expansions=2, lookahead=1).run(context(ScriptedPolicy(script), process=verifier))
    ahead = [n for n in ep.nodes if n.meta.get("lookahead")]
    assert ahead and all(n.text.startswith(ep.nodes[n.parent].text + "/") for n in ahead if n.parent)
    for n in ahead:
        parent = ep.nodes[n.parent or 0]
        assert parent.value == pytest.approx(min(pseudo(x.text) for x in _path(ep, n)))
    assert {r.temperature for r in requests if r.n == 1} == {0.0}  # rollouts are greedy
    assert not any(ep.nodes[i].meta.get("lookahead") for i in ep.chosen_path)


# -- DVTS ---------------------------------------------------------------------------------


async def test_dvts_runs_independent_greedy_subtrees() -> None:
    counter = iter(range(10_000))

    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        k = next(counter)
        return f"n{k} \\boxed{{42}}" if len(path) == 2 else f"n{k}"

    ep = await DVTS(subtrees=3, expansions=2).run(context(ScriptedPolicy(script), process=StepScores(pseudo)))
    root_kids = children(ep, ep.nodes[0])
    assert len(root_kids) == 6 and sorted(n.meta["subtree"] for n in root_kids) == [0, 0, 1, 1, 2, 2]
    for i in range(3):
        nodes = [n for n in ep.nodes[1:] if n.meta.get("subtree") == i]
        assert len(nodes) == 6  # 3 levels x 2 expansions, width 1
        for depth in (1, 2):
            level = [n for n in nodes if n.depth == depth]
            expanded = [n for n in level if n.children]
            assert len(expanded) == 1 and expanded[0] is max(level, key=lambda n: n.value or 0.0)
            assert all(ep.nodes[c].meta["subtree"] == i for c in expanded[0].children)
    leaves = [n for n in ep.nodes if n.meta.get("beam") == 3]
    assert len(leaves) == 3
    assert ep.chosen_path[-1] == max(leaves, key=lambda n: n.value or 0.0).id


# -- MCTS ---------------------------------------------------------------------------------


class LogprobPolicy(ScriptedPolicy):
    """The scripted fake, plus a logprob per completion from ``logprob(text)``."""

    def __init__(self, script: Any, logprob: Callable[[str], float]) -> None:
        super().__init__(script)
        self.logprob = logprob

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await super().generate(request)
        for c in result.completions:
            c.logprobs = [self.logprob(c.text)]
        return result


def _check_mcts_invariants(ep: Episode) -> None:
    for n in ep.nodes:
        kids = children(ep, n)
        assert n.visits == n.meta.get("evals", 0) + sum(c.visits for c in kids), n
    assert ep.nodes[0].visits == sum(n.meta.get("evals", 0) for n in ep.nodes)


async def test_mcts_backpropagates_to_every_ancestor() -> None:
    values = {"s/0": 0.2, "s/1": 0.9, "s/1/0": 0.6, "s/1/1": 0.3}
    policy = ScriptedPolicy(tree_script(depth=5))
    verifier = StepScores(lambda s: values.get(s, 0.5))
    ctx = context(policy, process=verifier)
    mcts = MCTS(simulations=1, expansions=2, aggregate="last")
    await mcts.run(ctx)
    ep = ctx.episode
    root, a, b = ep.nodes[0], *children(ep, ep.nodes[0])[:2]
    assert (root.visits, a.visits, b.visits) == (2, 1, 1)
    assert root.value == pytest.approx((0.2 + 0.9) / 2)
    assert a.meta["prior"] == b.meta["prior"] == 0.5  # no logprobs: uniform priors

    # A second simulation descends to the PUCT choice and expands it.
    ctx2 = context(ScriptedPolicy(tree_script(depth=5)), process=StepScores(lambda s: values.get(s, 0.5)))
    ep2 = await MCTS(simulations=2, expansions=2, aggregate="last").run(ctx2)
    root, a, b = ep2.nodes[0], *children(ep2, ep2.nodes[0])[:2]
    puct = [n.value + 1.5 * 0.5 * math.sqrt(2) / 2 for n in (a, b)]  # after simulation 1
    assert puct[1] > puct[0] and b.children and not a.children
    b0, b1 = children(ep2, b)
    assert (b.visits, b0.visits, b1.visits, root.visits) == (3, 1, 1, 4)
    assert b.value == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    assert root.value == pytest.approx((0.2 + 0.9 + 0.6 + 0.3) / 4)
    _check_mcts_invariants(ep2)


async def test_mcts_visit_counts_sum_over_a_longer_search() -> None:
    policy = ScriptedPolicy(tree_script(depth=3))
    ep = await MCTS(simulations=12, expansions=3, aggregate="min").run(context(policy, process=StepScores(pseudo)))
    _check_mcts_invariants(ep)
    assert sum(n.meta.get("evals", 0) for n in ep.nodes) >= 12
    finished = [n for n in ep.nodes if n.terminal and n.visits]
    assert finished and ep.chosen_path[-1] == max(finished, key=lambda n: (n.value or 0.0, n.visits)).id
    assert ep.final_answer == "42"


async def test_mcts_priors_from_logprobs_and_dirichlet_noise() -> None:
    logprob = {"s/0": -0.1, "s/1": -1.0, "s/2": -3.0}
    policy = LogprobPolicy(tree_script(depth=3), lambda t: logprob.get(t, -1.0))
    ep = await MCTS(simulations=1, expansions=3).run(context(policy, process=StepScores(pseudo)))
    priors = [n.meta["prior"] for n in children(ep, ep.nodes[0])]
    z = sum(math.exp(v) for v in logprob.values())
    assert priors == pytest.approx([math.exp(v) / z for v in logprob.values()])

    noisy = MCTS(simulations=1, expansions=3, dirichlet_weight=0.25, seed=7)
    runs = []
    for _ in range(2):
        policy = LogprobPolicy(tree_script(depth=3), lambda t: logprob.get(t, -1.0))
        ep = await noisy.run(context(policy, process=StepScores(pseudo)))
        runs.append([n.meta["prior"] for n in children(ep, ep.nodes[0])])
    assert runs[0] == runs[1]  # seeded
    assert sum(runs[0]) == pytest.approx(1.0) and runs[0] != pytest.approx(priors)


async def test_mcts_rollout_values_use_outcomes_and_rollouts_are_never_selected() -> None:
    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        if request.stop is None:  # a rollout to the end: right answer below "s/0" only
            return "go on\nAnswer: 42" if path and path[0] == "s/0" else "go on\nAnswer: 7"
        return tree_script(depth=3)(request, i)

    ctx = context(ScriptedPolicy(script), outcome=ExactMatch())
    ep = await MCTS(simulations=3, expansions=2, value="rollout_outcome", rollouts=2).run(ctx)
    a, b = children(ep, ep.nodes[0])[:2]
    assert a.meta["evals"] == 1 and a.visits >= 1
    rollouts = [n for n in ep.nodes if n.meta.get("rollout")]
    assert rollouts and all(not n.visits for n in rollouts)
    first_values = {a.id: 1.0, b.id: 0.0}
    assert a.visits > b.visits and first_values[a.id] == 1.0  # selection followed the good value
    assert not any(ep.nodes[i].meta.get("rollout") for i in ep.chosen_path)
    _check_mcts_invariants(ep)


# -- tree of thought ----------------------------------------------------------------------


async def test_tree_of_thought_dfs_prunes_and_backtracks() -> None:
    scores = {"s/0": 0.9, "s/1": 0.7, "s/2": 0.1, "s/0/0": 0.2, "s/0/1": 0.3, "s/1/0": 0.4, "s/1/1": 0.8}
    requests: list[list[str]] = []

    def script(request: GenerationRequest, i: int) -> str:
        if i == 0:
            requests.append(steps_of(request))
        return tree_script(depth=3)(request, i)

    def score(step: str) -> float:
        return 1.0 if "boxed" in step else scores.get(step, 0.0)

    tot = TreeOfThought(search="dfs", expansions=3, threshold=0.5)
    ep = await tot.run(context(ScriptedPolicy(script), process=StepScores(score)))
    # Root, then the best child s/0 (a dead end: all its children pruned), back up to s/1,
    # whose best child s/1/1 finishes.
    assert requests == [[], ["s/0"], ["s/1"], ["s/1", "s/1/1"]]
    assert sorted(n.text for n in ep.nodes if n.meta.get("pruned")) == ["s/0/0", "s/0/1", "s/0/2"]
    assert [n.value for n in ep.nodes if n.text.startswith("s/0/")] == [0.2, 0.3, 0.0]  # min over the path
    assert ep.steps == ["s/1", "s/1/1", "s/1/1/0 \\boxed{42}"] and ep.final_answer == "42"


async def test_tree_of_thought_bfs_is_a_level_wise_beam() -> None:
    ep = await TreeOfThought(search="bfs", breadth=2, expansions=2).run(
        context(ScriptedPolicy(tree_script(depth=3)), process=StepScores(pseudo))
    )
    for depth in (1, 2):
        level = [n for n in ep.nodes if n.depth == depth]
        assert len([n for n in level if n.meta.get("beam") == depth]) == 2
    assert ep.final_answer == "42"


# -- verify and backtrack -----------------------------------------------------------------


def proposals(table: dict[str, list[str]]) -> tuple[Callable[[GenerationRequest, int], str], list[list[str]]]:
    """Proposals per prefix (last step, or '' at the root), handed out in turn."""
    seen: list[list[str]] = []
    cursor: dict[str, int] = {}

    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        seen.append(path)
        key = path[-1] if path else ""
        k = cursor.get(key, 0)
        cursor[key] = k + 1
        options = table[key]
        return options[min(k, len(options) - 1)]

    return script, seen


async def test_backtracking_resamples_from_the_last_accepted_step() -> None:
    script, seen = proposals({"": ["good1"], "good1": ["bad1", "bad2", "good2"], "good2": ["Answer: 42"]})
    verifier = StepScores(lambda s: 0.0 if s.startswith("bad") else 1.0, explain="nope")
    ep = await VerifyAndBacktrack(step_retries=3).run(context(ScriptedPolicy(script), process=verifier))
    assert seen == [[], ["good1"], ["good1"], ["good1"], ["good1", "good2"]]  # every resample continues good1
    good1 = ep.nodes[ep.chosen_path[0]]
    assert [ep.nodes[i].text for i in good1.children] == ["bad1", "bad2", "good2"]
    assert [ep.nodes[i].meta.get("rejected", False) for i in good1.children] == [True, True, False]
    assert ep.steps == ["good1", "good2", "Answer: 42"] and ep.final_answer == "42"
    assert all(ep.nodes[i].meta.get("accepted") for i in ep.chosen_path)


async def test_backtracking_with_reflection_forks_the_explanation() -> None:
    script, seen = proposals({"": ["good1"], "good1": ["bad1"], "check: bad1 was wrong": ["Answer: 42"]})
    verifier = StepScores(lambda s: 0.0 if s.startswith("bad") else 1.0, explain="was wrong")
    strategy = VerifyAndBacktrack(reflect=True, reflection="check: {step} {explanation}")
    ep = await strategy.run(context(ScriptedPolicy(script), process=verifier))
    assert seen == [[], ["good1"], ["good1", "check: bad1 was wrong"]]
    good1 = ep.nodes[ep.chosen_path[0]]
    bad, note = (ep.nodes[i] for i in good1.children)
    assert bad.meta["rejected"] and note.meta["reflection"] and note.text == "check: bad1 was wrong"
    assert ep.steps == ["good1", "check: bad1 was wrong", "Answer: 42"]


async def test_backtracking_goes_up_a_level_after_step_retries() -> None:
    script, seen = proposals({"": ["a1", "a2"], "a1": ["bad"], "a2": ["Answer: 42"]})
    verifier = StepScores(lambda s: 0.0 if s == "bad" else 1.0)
    ep = await VerifyAndBacktrack(step_retries=1).run(context(ScriptedPolicy(script), process=verifier))
    assert seen == [[], ["a1"], ["a1"], [], ["a2"]]  # two rejections under a1, then back to the root
    a1 = next(n for n in ep.nodes if n.text == "a1")
    assert a1.meta["abandoned"] and len(a1.children) == 2
    assert ep.steps == ["a2", "Answer: 42"]


async def test_without_backtracking_an_accepted_step_is_never_abandoned() -> None:
    """backtrack: false (an exact verifier): the failing position is retried from the
    same accepted step until it passes, however many step_retries it takes."""
    script, seen = proposals({"": ["a1", "a2"], "a1": ["bad", "bad", "bad", "good"], "good": ["Answer: 42"]})
    verifier = StepScores(lambda s: 0.0 if s == "bad" else 1.0)
    strategy = VerifyAndBacktrack(step_retries=1, backtrack=False)
    ep = await strategy.run(context(ScriptedPolicy(script), process=verifier))
    assert seen == [[], ["a1"], ["a1"], ["a1"], ["a1"], ["a1", "good"]]  # never back to the root
    assert not any(n.meta.get("abandoned") for n in ep.nodes)
    assert ep.steps == ["a1", "good", "Answer: 42"] and ep.final_answer == "42"


async def test_candidates_after_a_rejection_come_in_one_request_and_every_accepted_one_is_marked() -> None:
    requests: list[tuple[int, float]] = []

    def script(request: GenerationRequest, i: int) -> str:
        if steps_of(request):
            return "Answer: 42"
        if i == 0:
            requests.append((request.n, request.temperature))
        return "bad" if request.n == 1 else ["bad", "good", "fine", "bad"][i]

    verifier = StepScores(lambda s: 0.0 if s == "bad" else 1.0)
    strategy = VerifyAndBacktrack(candidates=4, retry_temperature=1.2)
    ep = await strategy.run(context(ScriptedPolicy(script), process=verifier, temperature=0.7))
    assert requests == [(1, 0.7), (4, 1.2)]  # one try, then 4 candidates in one hotter request
    root = ep.nodes[0]
    texts = [(ep.nodes[i].text, ep.nodes[i].meta.get("accepted", False)) for i in root.children]
    assert ("good", True) in texts and ("fine", True) in texts and ("bad", False) in texts
    assert ep.steps == ["good", "Answer: 42"]  # the first accepted candidate is kept


async def test_backtracking_episode_retries_end_in_one_unverified_completion() -> None:
    def script(request: GenerationRequest, i: int) -> str:
        return "bad\nAnswer: 1" if request.stop is None else "bad"

    policy = ScriptedPolicy(script)
    ep = await VerifyAndBacktrack(step_retries=10, episode_retries=3).run(
        context(policy, process=StepScores(lambda s: 0.0))
    )
    rejected = [n for n in ep.nodes if n.meta.get("rejected")]
    assert len(rejected) == 4 and policy.calls == 5  # 3 retries + the one that used them up, + completion
    assert all(ep.nodes[i].meta.get("unverified") for i in ep.chosen_path)
    assert ep.final_answer == "1"


# -- sequential revision ------------------------------------------------------------------


async def test_self_refine_process_feedback_revises_after_the_first_wrong_step() -> None:
    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        return "s2 fixed\nAnswer: 42" if path and path[-1].startswith("check:") else "s1\ns2 wrong\ns3\nAnswer: 9"

    verifier = StepScores(lambda s: 0.0 if "wrong" in s else 1.0, explain="s2 is wrong")
    policy = ScriptedPolicy(script)
    ep = await SelfRefine(rounds=3).run(context(policy, process=verifier))
    assert policy.calls == 2
    assert ep.steps == ["s1", "s2 wrong", "check: s2 is wrong", "s2 fixed", "Answer: 42"]
    note = ep.nodes[ep.chosen_path[2]]
    assert note.meta == {"revision": 1}
    wrong = ep.nodes[ep.chosen_path[1]]
    assert [ep.nodes[i].text for i in wrong.children] == ["s3", "check: s2 is wrong"]  # the old attempt stays
    assert ep.final_answer == "42"


async def test_self_refine_outcome_feedback_stops_when_right() -> None:
    answers = iter(["Answer: 1", "Answer: 2", "Answer: 42", "Answer: 5"])
    policy = ScriptedPolicy(lambda request, i: next(answers))
    outcome = TableVerifier({"42": 1.0})
    ep = await SelfRefine(rounds=5, feedback="outcome").run(context(policy, outcome=outcome))
    assert policy.calls == 3 and ep.final_answer == "42" and ep.reward == 1.0
    notes = [n.text for n in ep.nodes if "revision" in n.meta]
    assert notes == ["check: the answer 1 is wrong", "check: the answer 2 is wrong"]


async def test_self_refine_critique_by_the_policy() -> None:
    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        if path and path[-1].startswith("Review"):
            return "CORRECT" if "Answer: 42" in path else "INCORRECT: the sum is off"
        return "Answer: 42" if any("INCORRECT" in p for p in path) else "Answer: 3"

    ep = await SelfRefine(rounds=3, feedback="critique").run(context(ScriptedPolicy(script)))
    critiques = [n.text for n in ep.nodes if n.meta.get("critique") and not n.text.startswith("Review")]
    assert critiques == ["INCORRECT: the sum is off", "CORRECT"]
    assert ep.final_answer == "42" and ep.chosen_path[-1] == next(n.id for n in ep.nodes if n.text == "Answer: 42")


# -- decomposition ------------------------------------------------------------------------


async def test_least_to_most_solves_subquestions_in_order() -> None:
    seen: list[list[str]] = []

    def script(request: GenerationRequest, i: int) -> str:
        path = steps_of(request)
        seen.append(path)
        last = path[-1]
        if last.startswith("To solve"):
            return "What is 6*7?\nWhat is 42/1?"
        if last.startswith("Sub-question: What is 6*7"):
            return "6*7=42\nAnswer: 42"
        if last.startswith("Sub-question"):
            return "Answer: 42"
        return "Using the above\nAnswer: 42"

    ep = await LeastToMost().run(context(ScriptedPolicy(script)))
    stages = [n.meta.get("stage") for n in (ep.nodes[i] for i in ep.chosen_path) if "stage" in n.meta]
    assert stages == ["decompose", "subquestion 1", "subquestion 2", "final"]
    assert [n.text for n in ep.nodes if n.meta.get("subquestion")] == ["What is 6*7?", "What is 42/1?"]
    # The second sub-question's call sees the first one's answer; the final call sees both.
    assert "Answer: 42" in seen[2] and seen[2][-1] == "Sub-question: What is 42/1?"
    assert seen[3][-1] == "Now the original question: ?" and seen[3].count("Answer: 42") == 2
    assert len(ep.chosen_path) == len(ep.nodes) - 1  # one path, no branches


# -- compute-optimal allocation -----------------------------------------------------------


async def test_compute_optimal_easy_task_stops_after_the_probes() -> None:
    policy = ScriptedPolicy(["Answer: 42"])
    strategy = ComputeOptimal(probes=4)
    ep = await strategy.run(context(policy, process=StepScores(lambda s: 1.0)))
    assert policy.calls == 1 and ep.final_answer == "42"
    assert ep.nodes[0].meta["allocation"] == {"difficulty": 0.0, "tier": "easy", "strategy": None, "budget": 0}


async def test_compute_optimal_hard_task_gets_beam_search_within_the_global_budget() -> None:
    def script(request: GenerationRequest, i: int) -> str:
        if request.stop is None:  # probes disagree
            return f"try {i}\nAnswer: {i}"
        return tree_script(depth=2)(request, i)

    strategy = ComputeOptimal(probes=4, hard_budget=8, global_token_budget=10_000)
    ep = await strategy.run(context(ScriptedPolicy(script), process=StepScores(pseudo)))
    alloc = ep.nodes[0].meta["allocation"]
    assert alloc["tier"] == "hard" and alloc["strategy"] == "beam_search" and alloc["budget"] == 8
    assert any(n.meta.get("beam") for n in ep.nodes) and ep.final_answer == "42"
    assert strategy.pool.spent == ep.usage.completion_tokens  # reservations settled to what was used

    poor = ComputeOptimal(probes=4, hard_budget=8, global_token_budget=10)  # spent by the probes alone
    ep = await poor.run(context(ScriptedPolicy(script), process=StepScores(pseudo)))
    assert ep.nodes[0].meta["allocation"]["strategy"] is None and ep.final_answer == "0"


# -- failures are recorded, never raised ---------------------------------------------------


class Flaky:
    """Process verifier that raises on one step text and hangs on another."""

    name = "flaky"

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        if "boom" in step:
            raise RuntimeError("verifier exploded")
        if "slow" in step:
            await anyio.sleep(10)
        return Score(1.0)


@pytest.mark.parametrize(
    "strategy",
    [
        BeamSearch(width=2, expansions=2),
        DVTS(subtrees=2, expansions=2),
        MCTS(simulations=3, expansions=2),
        VerifyAndBacktrack(),
        TreeOfThought(search="dfs"),
    ],  # fmt: skip
    ids=lambda s: s.name,
)
async def test_a_verifier_that_raises_or_hangs_fails_its_episode_only(strategy: Strategy, tmp_path: Path) -> None:
    tasks = [Task(id=name, prompt=name, answer="42") for name in ("ok", "boom", "slow")]

    def script(request: GenerationRequest, i: int) -> str:
        task = (request.messages or [{}])[0]["content"]
        return f"{task} step \\boxed{{42}}"

    async with Runtime(
        ScriptedPolicy(script),
        strategy,
        verifiers=Verifiers(outcome=ExactMatch(), process=Flaky(), timeout=0.2),
        store=str(tmp_path / "s.db"),
    ) as rt:
        episodes = {ep.task.id: ep async for ep in rt.stream(tasks)}
    assert episodes["ok"].status == "ok" and episodes["ok"].reward == 1.0
    for name, message in (("boom", "RuntimeError: verifier exploded"), ("slow", "timed out after 0.2s")):
        ep = episodes[name]
        assert ep.status == "failed" and len(ep.errors) == 1
        assert ep.errors[0].type == "VerifierError" and ep.errors[0].boundary == "verifier"
        assert message in ep.errors[0].message
        assert len(ep.nodes) > 1  # the tree explored before the failure is kept


async def test_step_strategies_need_a_process_verifier() -> None:
    with pytest.raises(VerifierError, match="process verifier"):
        await BeamSearch().run(context(ScriptedPolicy(["x"])))


def test_aggregate_scores() -> None:
    assert aggregate_scores([0.5, 0.2, 1.0], "min") == 0.2
    assert aggregate_scores([0.5, 0.2, 1.0], "last") == 1.0
    assert aggregate_scores([0.5, 0.2, 1.0], "product") == pytest.approx(0.1)
    assert aggregate_scores([], "mean") == 0.0


# -- the same strategy on real backends ---------------------------------------------------


async def _run_on(policy: Any, strategy: Strategy, tmp_path: Path, run_id: str) -> list[Episode]:
    tasks = list(tiny_tasks(2, steps=[1, 2], seed=5))
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier(), extractor=AnswerExtractor(["answer_line"]))
    async with Runtime(
        policy,
        strategy,
        verifiers=verifiers,
        sampling=Sampling(temperature=0.8, max_tokens=96, step_max_tokens=40),
        store=str(tmp_path / "s.db"),
        run_id=run_id,
    ) as rt:
        return [ep async for ep in rt.stream(tasks)]


def _check_verified_tree(episodes: list[Episode]) -> None:
    """Every chosen step was checked by the rule verifier; a path it passes throughout is
    right (the rule checks the answer line too). Sampling decides the rest, so a test
    asks only that most episodes end right."""
    assert len(episodes) == 2
    assert all(ep.status == "ok" for ep in episodes), [ep.errors for ep in episodes]
    for ep in episodes:
        path = [ep.nodes[i] for i in ep.chosen_path]
        assert path and ep.usage.calls >= 1
        checked = [n for n in path if not n.meta.get("unverified")]
        assert all("tiny_rule" in n.scores for n in checked)
        if all(n.scores["tiny_rule"] == 1.0 for n in checked) and len(checked) == len(path):
            assert ep.reward == 1.0
        if ep.strategy == "verify_backtrack":
            assert all(n.meta.get("accepted") for n in checked)
    assert any(ep.reward == 1.0 for ep in episodes)


STEP_STRATEGIES = [VerifyAndBacktrack(step_retries=2, episode_retries=6), BeamSearch(width=2, expansions=2)]


@pytest.fixture(scope="module")
def local_policy() -> Iterator[Any]:
    from runtime.policy.local import LocalPolicy

    policy = LocalPolicy.from_path(MODEL_DIR, threads=2)
    yield policy
    policy.engine.close()


@pytest.mark.parametrize("strategy", STEP_STRATEGIES, ids=lambda s: s.name)
async def test_step_strategy_unchanged_on_the_local_engine(
    strategy: Strategy, local_policy: Any, tmp_path: Path
) -> None:
    before = local_policy.engine.stats.prefill_requested - local_policy.engine.stats.prefill_computed
    episodes = await _run_on(local_policy, strategy, tmp_path, "local")
    saved = local_policy.engine.stats.prefill_requested - local_policy.engine.stats.prefill_computed
    assert saved > before  # siblings and later steps reuse their prefix's KV
    _check_verified_tree(episodes)


@pytest.mark.parametrize("strategy", STEP_STRATEGIES, ids=lambda s: s.name)
async def test_step_strategy_unchanged_over_transformers_serve(
    strategy: Strategy,
    hf_server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from runtime.policy.openai_compatible import OpenAIPolicy

    async with OpenAIPolicy(
        str(MODEL_DIR), base_url=hf_server, mode="completion", server="transformers", timeout=60
    ) as policy:
        episodes = await _run_on(policy, strategy, tmp_path, "http")
    _check_verified_tree(episodes)


async def test_search_trees_round_trip_through_json() -> None:
    from runtime.core.types import episode_from_json, episode_to_json

    policy = LogprobPolicy(tree_script(depth=3), lambda t: -0.5)
    ep = await MCTS(simulations=6, expansions=2, dirichlet_weight=0.25, seed=1).run(
        context(policy, process=StepScores(pseudo))
    )
    again = episode_from_json(episode_to_json(ep))
    assert again == ep
    assert any("prior" in n.meta and "evals" in n.meta for n in again.nodes)
