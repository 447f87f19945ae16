"""Strategies: what they explore (the tree), not only what comes back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import runtime.app.config  # noqa: F401  (registers the built-in packages)
import strategies
from runtime.core.errors import VerifierError
from runtime.core.registry import components, lookup
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import AnswerExtractor, Score
from runtime.rewards.outcome import ExactMatch, TableVerifier
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.verifier import TinyStepVerifier
from strategies import BestOfN, ChainOfThought, Strategy

pytestmark = pytest.mark.anyio

TinySolution = Callable[..., tuple[Task, list[str]]]


def context(
    task: Task,
    policy: Any,
    *,
    outcome: Any = None,
    process: Any = None,
    sampling: Sampling | None = None,
    extractor: AnswerExtractor | None = None,
) -> Context:
    verifiers = Verifiers(outcome=outcome, process=process, extractor=extractor or AnswerExtractor())
    return Context(Episode(run_id="r", task=task), policy, verifiers, sampling or Sampling())


def test_registry_and_protocol() -> None:
    strategies_dir = Path(strategies.__file__).parent
    modules = {p.stem for p in strategies_dir.glob("*.py") if not p.stem.startswith("_")}
    registered = components("strategies")
    assert {cls.__module__.removeprefix("strategies.") for cls in registered.values()} >= modules
    assert registered["chain_of_thought"] is ChainOfThought and registered["best_of_n"] is BestOfN
    assert lookup("strategies", "strategies.best_of_n:BestOfN") is BestOfN
    for cls in registered.values():
        assert isinstance(cls(), Strategy)
    assert BestOfN(n=3, selection="outcome").config() == {"n": 3, "selection": "outcome", "aggregate": "min"}
    assert ChainOfThought().config() == {}


# -- chain of thought ------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", ["\n", " ||| "])
async def test_chain_of_thought_one_step_per_call(delimiter: str) -> None:
    steps = ["Read the question.", "Two plus two is four.", "Double-check: yes.", "Answer: 4"]
    requests: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        requests.append(request)
        k = request.assistant_prefix.count(delimiter)
        # The whole rest of the solution: the stop sequence must cut it to one step.
        return delimiter.join(steps[k:])

    policy = ScriptedPolicy(script)
    task = Task(id="t", prompt="What is 2+2?", answer="4")
    ctx = context(task, policy, outcome=ExactMatch(), sampling=Sampling(step_delimiter=delimiter))
    ep = await ChainOfThought().run(ctx)

    assert policy.calls == len(steps) == len(requests)
    assert all(r.stop == [delimiter] and r.n == 1 for r in requests)
    assert all(r.max_tokens == ctx.sampling.step_max_tokens for r in requests)
    assert [r.assistant_prefix for r in requests] == [delimiter.join(steps[:k]) + delimiter * (k > 0) for k in range(4)]
    assert all(r.messages == [{"role": "user", "content": "What is 2+2?"}] for r in requests)

    nodes = ep.nodes
    assert [n.text for n in nodes[1:]] == steps
    assert [(n.id, n.parent, n.depth) for n in nodes] == [(0, None, 0), (1, 0, 1), (2, 1, 2), (3, 2, 3), (4, 3, 4)]
    assert [n.children for n in nodes] == [[1], [2], [3], [4], []]
    assert [n.terminal for n in nodes[1:]] == [False, False, False, True]
    assert ep.chosen_path == [1, 2, 3, 4] and ep.steps == steps
    assert ep.final_answer == "4" and ep.reward == 1.0
    assert nodes[4].scores == {"outcome:exact": 1.0}
    assert ep.usage.calls == 4 and ep.finished_at is not None
    assert ep.policy_versions == [0, 0]


async def test_chain_of_thought_stops_at_max_steps() -> None:
    policy = ScriptedPolicy(["Still thinking."])
    ctx = context(Task(id="t", prompt="?", answer="1"), policy, outcome=ExactMatch(), sampling=Sampling(max_steps=5))
    ep = await ChainOfThought().run(ctx)
    assert policy.calls == 5 and len(ep.nodes) == 6
    assert ep.nodes[-1].depth == 5 and ep.nodes[-1].terminal
    assert ep.final_answer is None and ep.reward == 0.0


async def test_chain_of_thought_stops_on_an_empty_step() -> None:
    policy = ScriptedPolicy(["First.", "   "])
    ep = await ChainOfThought().run(context(Task(id="t", prompt="?"), policy))
    assert policy.calls == 2 and ep.chosen_path == [1, 2] and ep.nodes[2].text == ""
    assert ep.reward is None  # no outcome verifier, no reference


async def test_a_path_ending_without_an_answer_line_is_read_whole_by_the_final_patterns() -> None:
    """A chat model that ends on "6 + 2 + 3 = 11" and then stops: no step wrote an answer
    line, so without ``final`` there is no answer; with it the whole path is read."""
    task = Task(id="t", prompt="Calculate 6 + 2 + 3.", answer="11")
    script = ["6 + 2 = 8", "8 + 3 = 11", ""]
    plain = await ChainOfThought().run(context(task, ScriptedPolicy(script), outcome=ExactMatch()))
    assert plain.final_answer is None and plain.reward == 0.0
    ctx = context(task, ScriptedPolicy(script), outcome=ExactMatch())
    ctx.verifiers.final = AnswerExtractor(["answer_line", "last_number"])
    ep = await ChainOfThought().run(ctx)
    assert len(ep.chosen_path) == 3, "steps holding numbers do not end the path: only final reads last_number"
    assert ep.final_answer == "11" and ep.reward == 1.0
    ctx = context(task, ScriptedPolicy(["6 + 2 = 8", "Answer: 8"]), outcome=ExactMatch())
    ctx.verifiers.final = AnswerExtractor(["last_number"])
    assert (await ChainOfThought().run(ctx)).final_answer == "8", "an answer a step wrote wins"


async def test_each_node_records_the_policy_version_that_wrote_it() -> None:
    """A policy that picks up new weights mid-episode: the episode keeps the span."""
    policy = ScriptedPolicy(["One.", "Two.", "Answer: 3"], version=4)

    class Bumping:
        async def generate(self, request: GenerationRequest) -> Any:
            result = await policy.generate(request)
            policy.version += 1
            return result

        async def aclose(self) -> None:
            return None

    ep = await ChainOfThought().run(context(Task(id="t", prompt="?"), Bumping()))
    assert [n.policy_version for n in ep.nodes[1:]] == [4, 5, 6]
    assert ep.policy_versions == [4, 6]


# -- best of n ---------------------------------------------------------------------------


async def test_best_of_n_majority_picks_the_most_common_answer() -> None:
    answers = ["3", "5", "5", "7", "5", "3"]
    requests: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        requests.append(request)
        return f"Let me see.\nI get {answers[i]}.\nAnswer: {answers[i]}"

    policy = ScriptedPolicy(script)
    ep = await BestOfN(n=6).run(context(Task(id="t", prompt="?", answer="5"), policy, outcome=ExactMatch()))

    assert policy.calls == 1 and requests[0].n == 6 and requests[0].stop is None  # one call, full solutions
    root = ep.nodes[0]
    assert len(root.children) == 6
    assert len(ep.leaves) == 6 and all(leaf.terminal for leaf in ep.leaves)
    assert all(leaf.depth == 3 for leaf in ep.leaves)  # each solution split into its three steps
    assert len(ep.nodes) == 1 + 6 * 3
    assert [leaf.value for leaf in ep.leaves] == [2.0, 3.0, 3.0, 1.0, 3.0, 2.0]  # votes of each leaf's answer
    assert ep.final_answer == "5" and ep.reward == 1.0
    assert ep.chosen_path[0] == root.children[1]  # ties go to the earliest sample
    first_steps = [ep.nodes[c] for c in root.children]
    assert all(n.meta == {"covers": 3} for n in first_steps)


async def test_best_of_n_majority_ignores_solutions_without_answer() -> None:
    texts = ["no idea", "no idea either", "Answer: 9"]
    policy = ScriptedPolicy(lambda request, i: texts[i])
    ep = await BestOfN(n=3).run(context(Task(id="t", prompt="?", answer="9"), policy, outcome=ExactMatch()))
    assert [leaf.value for leaf in ep.leaves] == [0.0, 0.0, 1.0]
    assert ep.final_answer == "9" and ep.reward == 1.0


async def test_best_of_n_process_selection_prefers_the_fully_correct_solution(tiny_solution: TinySolution) -> None:
    task, correct = tiny_solution(seed=4, steps=3)
    wrong = list(correct)
    fact, sep, rest = wrong[1].partition(",")
    lhs, _, value = fact.partition("=")
    wrong[1] = f"{lhs}={int(value) + 3}{sep}{rest}"  # one bad step in the middle
    solutions = ["\n".join(wrong), "\n".join(correct), "\n".join(wrong[:2])]

    policy = ScriptedPolicy(lambda request, i: solutions[i])
    ctx = context(task, policy, outcome=ExactMatch(), process=TinyStepVerifier())
    ep = await BestOfN(n=3, selection="process").run(ctx)

    assert ep.steps == correct
    assert ep.final_answer == task.answer and ep.reward == 1.0
    assert [leaf.value for leaf in ep.leaves] == [0.0, 1.0, 0.0]
    # Every explored step was scored, with an explanation where it failed.
    steps = ep.nodes[1:]
    assert all("tiny_rule" in n.scores for n in steps)
    bad = [n for n in steps if n.scores["tiny_rule"] == 0.0]
    assert bad and all(n.explanations.get("tiny_rule") for n in bad)
    assert {n.text for n in bad} >= {wrong[1]}


class StepTable:
    """A process verifier scoring each step text from a table."""

    name = "steps"

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.calls: list[tuple[list[str], str]] = []

    async def score_step(self, task: Task, previous: Any, step: str) -> Score:
        self.calls.append((list(previous), step))
        return Score(self.table[step])


#: Step scores of four two-step solutions, chosen so each aggregate has its own winner.
STEP_SCORES = {
    "b1": 0.5, "b2": 0.5,  # min 0.5 (best), mean 0.5, product 0.25, last 0.5
    "c1": 0.1, "c2": 1.0,  # min 0.1, mean 0.55, product 0.1, last 1.0 (best)
    "m1": 1.0, "m2": 0.3,  # min 0.3, mean 0.65 (best), product 0.3, last 0.3
    "p1": 0.7, "p2": 0.45,  # min 0.45, mean 0.575, product 0.315 (best), last 0.45
}  # fmt: skip


@pytest.mark.parametrize(("aggregate", "winner"), [("min", "b"), ("last", "c"), ("mean", "m"), ("product", "p")])
async def test_best_of_n_process_aggregates(aggregate: str, winner: str) -> None:
    solutions = [f"{k}1\n{k}2" for k in "bcmp"]
    policy = ScriptedPolicy(lambda request, i: solutions[i])
    verifier = StepTable(STEP_SCORES)
    ctx = context(Task(id="t", prompt="?"), policy, process=verifier)
    ep = await BestOfN(n=4, selection="process", aggregate=aggregate).run(ctx)  # type: ignore[arg-type]
    assert ep.steps == [f"{winner}1", f"{winner}2"]
    # Each step was scored once, given the steps before it.
    assert sorted(verifier.calls, key=lambda c: c[1]) == sorted(
        [([], f"{k}1") for k in "bcmp"] + [([f"{k}1"], f"{k}2") for k in "bcmp"], key=lambda c: c[1]
    )


async def test_best_of_n_outcome_selection() -> None:
    texts = ["Answer: close", "Answer: right", "Answer: wrong", "Answer: right"]
    policy = ScriptedPolicy(lambda request, i: texts[i])
    verifier = TableVerifier({"close": 0.6, "right": 0.9, "wrong": 0.1})
    ep = await BestOfN(n=4, selection="outcome").run(
        context(Task(id="t", prompt="?", answer="right"), policy, outcome=verifier)
    )
    assert [leaf.value for leaf in ep.leaves] == [0.6, 0.9, 0.1, 0.9]
    assert ep.chosen_path == [ep.leaves[1].id]  # the earliest of the best
    assert ep.final_answer == "right" and ep.reward == 0.9
    assert all(leaf.scores == {"outcome:table": leaf.value} for leaf in ep.leaves)


async def test_best_of_n_weighted_majority(tiny_solution: TinySolution) -> None:
    """Two sloppy solutions agreeing on a wrong answer lose to one correct solution
    under weighted majority (their steps score 0), but win a plain majority vote."""
    task, correct = tiny_solution(seed=21, steps=2)
    wrong_answer = str(int(task.answer or 0) + 5)
    sloppy = "\n".join(["1+1=3", f"Answer: {wrong_answer}"])
    solutions = [sloppy, "\n".join(correct), sloppy]

    def run(selection: str) -> Any:
        policy = ScriptedPolicy(lambda request, i: solutions[i])
        ctx = context(task, policy, outcome=ExactMatch(), process=TinyStepVerifier())
        return BestOfN(n=3, selection=selection).run(ctx)  # type: ignore[arg-type]

    plain = await run("majority")
    assert plain.final_answer == wrong_answer and plain.reward == 0.0
    weighted = await run("weighted_majority")
    assert weighted.final_answer == task.answer and weighted.reward == 1.0
    assert [leaf.value for leaf in weighted.leaves] == [0.0, 1.0, 0.0]


async def test_best_of_n_process_selection_needs_a_process_verifier() -> None:
    policy = ScriptedPolicy(["Answer: 1"])
    with pytest.raises(VerifierError, match="process verifier"):
        await BestOfN(n=2, selection="process").run(context(Task(id="t", prompt="?"), policy))
