"""Verifiers for search: Monte-Carlo value, the PRM (and its training), the LLM judge,
code execution, composition, potential-based shaping, and their YAML wiring."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from learners.prm import PRMExample, mc_examples, train_prm
from runtime.app.build import build_strategy, build_verifiers
from runtime.app.config import load_config
from runtime.core.errors import ConfigError, VerifierError
from runtime.core.registry import components
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import AnswerExtractor, Score
from runtime.rewards.code_exec import CodeExecution, extract_code, run_tests
from runtime.rewards.composition import Gate, WeightedSum
from runtime.rewards.judge import TEMPLATES, UNPARSEABLE, LLMJudge, load_template, parse_judgement
from runtime.rewards.mc_value import MonteCarloValue
from runtime.rewards.outcome import ExactMatch, TableVerifier
from runtime.rewards.prm import ProcessRewardModel
from runtime.rewards.shaping import PotentialShaping
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.corruption import corrupt_tiny_step
from runtime.tiny.verifier import TinyStepVerifier
from strategies import BeamSearch, ChainOfThought, VerifyAndBacktrack

pytestmark = pytest.mark.anyio

TASK = Task(id="t", prompt="What is 6*7?", answer="42")


class StepTable:
    name = "steps"

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        return Score(self.table.get(step, 0.0), f"table says {self.table.get(step, 0.0)}")


# -- Monte-Carlo value --------------------------------------------------------------------


async def test_mc_value_is_the_share_of_rollouts_reaching_the_answer() -> None:
    requests: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        requests.append(request)
        return ["more\nAnswer: 42", "Answer: 41", "Answer: 42", "no answer"][i]

    mc = MonteCarloValue(ScriptedPolicy(script), rollouts=4, temperature=0.7, max_tokens=50)
    score = await mc.score_step(TASK, ["first"], "second")
    assert score.value == 0.5 and score.explanation == "2 of 4 rollouts reach a correct answer"
    assert score.calls == 1 and score.completion_tokens > 0
    r = requests[0]
    assert all(x is r for x in requests)  # one call, n = 4
    assert r.n == 4 and r.assistant_prefix == "first\nsecond\n" and r.temperature == 0.7 and r.max_tokens == 50
    assert (await MonteCarloValue(ScriptedPolicy(script), rollouts=4, hard=True).score_step(TASK, [], "x")).value == 1.0


async def test_mc_value_of_an_answer_step_needs_no_rollouts() -> None:
    policy = ScriptedPolicy(["unused"])
    mc = MonteCarloValue(policy, rollouts=8)
    assert (await mc.score_step(TASK, ["6*7=42"], "Answer: 42")).value == 1.0
    assert (await mc.score_step(TASK, ["6*7=41"], "Answer: 41")).value == 0.0
    assert policy.calls == 0


async def test_mc_value_labels_and_charges_the_episode() -> None:
    def script(request: GenerationRequest, i: int) -> str:
        return "Answer: 42" if "good" in request.assistant_prefix.split("\n")[-2] else "Answer: 1"

    mc = MonteCarloValue(ScriptedPolicy(script), rollouts=2)
    assert await mc.label_steps(TASK, ["good", "bad", "good again"]) == [1.0, 0.0, 1.0]

    ctx = Context(Episode(run_id="r", task=TASK), ScriptedPolicy(["good"]), Verifiers(process=mc), Sampling())
    (child,) = await ctx.expand(ctx.root, 1)
    calls, tokens = ctx.episode.usage.calls, ctx.episode.usage.completion_tokens
    assert await ctx.score(child) == 1.0
    assert ctx.episode.usage.calls == calls + 1 and ctx.episode.usage.completion_tokens == tokens + 4


async def test_mc_examples_with_tiny_corruptions(tiny_solution: Any) -> None:
    task, solution = tiny_solution(seed=3, steps=3)

    def script(request: GenerationRequest, i: int) -> str:
        if not request.assistant_prefix:
            return "\n".join(solution)
        prefix = request.assistant_prefix
        ok = all(TinyStepVerifier_ok(task, prefix))
        return f"Answer: {task.answer}" if ok else "Answer: 0"

    examples = await mc_examples(ScriptedPolicy(script), [task], samples=1, rollouts=2, corrupt=corrupt_tiny_step)
    assert len(examples) == 2
    clean, bad = examples
    assert clean.steps == solution and clean.labels == [1.0] * len(solution)
    assert bad.steps[:-1] == solution[: len(bad.steps) - 1] and bad.steps[-1] not in solution
    assert bad.labels[-1] == 0.0 and bad.labels[:-1] == [1.0] * (len(bad.steps) - 1)


def TinyStepVerifier_ok(task: Task, prefix: str) -> list[bool]:  # noqa: N802
    from runtime.tiny.domain import check_step, remaining_after

    expression = task.metadata["expression"]
    out = []
    for line in [s for s in prefix.split("\n") if s]:
        value, _ = check_step(expression, line)
        out.append(value == 1.0)
        expression = remaining_after(expression, line)
    return out


def test_corrupt_tiny_step_breaks_exactly_the_last_step(tiny_solution: Any) -> None:
    rng = random.Random(0)
    for seed in range(20):
        task, solution = tiny_solution(seed=seed, steps=4)
        bad = corrupt_tiny_step(task, solution, rng)
        assert bad is not None
        assert TinyStepVerifier_ok(task, "\n".join(bad)) == [True] * (len(bad) - 1) + [False]


# -- process reward model -----------------------------------------------------------------


def _toy_examples() -> list[PRMExample]:
    """Steps that restate a right product are good, wrong ones bad."""
    rng = random.Random(1)
    out = []
    for _ in range(48):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        good = rng.random() < 0.5
        c = a * b if good else a * b + rng.choice([-3, -1, 1, 3])
        out.append(PRMExample([{"role": "user", "content": f"Evaluate: {a}*{b}"}], [f"{a}*{b}={c}"], [float(good)]))
    return out


@pytest.fixture(scope="module")
def trained_prm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("prm")
    report = train_prm(_toy_examples(), out, steps=25, batch_size=16, lr=1e-3)
    return out, report


def test_train_prm_fits_a_value_head_and_saves_a_checkpoint(trained_prm: tuple[Path, Any]) -> None:
    import json

    from safetensors.torch import load_file

    out, report = trained_prm
    assert report.steps == 25 and report.examples == 48
    assert sum(report.losses[-5:]) / 5 < report.losses[0]  # the loss fell
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForTokenClassification"] and len(config["id2label"]) == 1
    from runtime.tiny.policy_format import BUNDLED_POLICY

    trained = load_file(out / "model.safetensors")
    base = load_file(BUNDLED_POLICY / "model.safetensors")
    key = next(k for k in base if k.endswith("layers.0.mlp.up_proj.weight"))
    assert not (trained[key] == base[key]).all()  # the backbone moved too
    assert "score.weight" in trained


async def test_prm_scores_every_step_in_one_batched_pass(trained_prm: tuple[Path, Any]) -> None:
    from runtime.search.context import gather

    prm = ProcessRewardModel(trained_prm[0], batch_size=8)
    assert prm.value_head
    tasks = [Task(id=str(i), prompt=f"Evaluate: {i}*3") for i in range(2, 8)]
    scores = await gather(prm.score_step(t, [], f"{i + 2}*3={(i + 2) * 3}") for i, t in enumerate(tasks))
    assert all(0.0 <= s.value <= 1.0 for s in scores)
    assert prm.forward_passes == 1  # six concurrent callers, one forward pass
    full = await prm.score_steps(tasks[0].as_messages(), ["2*3=6", "Answer: 6"])
    assert len(full) == 2 and full[0] == pytest.approx(scores[0].value, abs=1e-5)  # a prefix scores the same
    assert prm.forward_passes == 2
    await prm.score_steps(tasks[0].as_messages(), ["2*3=6", "Answer: 6"])
    assert prm.forward_passes == 2  # cached


async def test_prm_over_a_causal_lm_reads_good_and_bad_tokens() -> None:
    prm = ProcessRewardModel("bundled", good_token="+", bad_token="-")
    assert not prm.value_head
    score = await prm.score_step(TASK, ["Plan: 1 product first."], "6*7=42")
    assert 0.0 <= score.value <= 1.0
    with pytest.raises(ValueError, match="not single tokens"):
        ProcessRewardModel("bundled", good_token="<good>", bad_token="-")


# -- LLM judge ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The steps hold.\nScore: 8/10", 0.8),
        ("score: 0.25", 0.25),
        ("Score = 7", 0.7),
        ("**Score:** 90", 0.9),
        ("Score: 3/4 ... on reflection Score: 1/4", 0.25),  # the last one wins
        ("Verdict: correct", 1.0),
        ("verdict: FAIL", 0.0),
        ("Score: 12/10", 1.0),  # clamped
        ("I think it is fine.", None),
        ("Score: lots", None),
        ("Score: 250", None),
        ("", None),
        ("Score: 5/0", None),
    ],
)
def test_parse_judgement(text: str, value: float | None) -> None:
    assert parse_judgement(text) == (pytest.approx(value) if value is not None else None)


async def test_judge_outcome_renders_the_template_and_averages_samples() -> None:
    requests: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        requests.append(request)
        return ["Score: 10/10", "Score: 6/10", "gibberish"][i]

    judge = LLMJudge(ScriptedPolicy(script), outcome_template=load_template("outcome"), samples=3)
    score = await judge.score(TASK, "42", "6*7=42\nAnswer: 42")
    assert score.value == pytest.approx(0.8) and f"1 of 3 judgements {UNPARSEABLE}" in (score.explanation or "")
    assert score.calls == 1 and score.prompt_tokens > 0
    prompt = (requests[0].messages or [])[0]["content"]
    assert "What is 6*7?" in prompt and "<candidate>6*7=42\nAnswer: 42</candidate>" in prompt
    assert "Final answer given: <candidate>42</candidate>" in prompt
    assert requests[0].n == 3 and requests[0].temperature == 0.0


async def test_judge_malformed_output_is_an_explicit_unparseable_score_never_an_error() -> None:
    for junk in ["", "{not json", "Score: ???", "\x00\x01", "Verdict: maybe"]:
        judge = LLMJudge(ScriptedPolicy([junk]), unparseable_score=0.0)
        score = await judge.score_step(TASK, [], "6*7=42")
        assert score.value == 0.0 and (score.explanation or "").startswith(f"{UNPARSEABLE}:")


async def test_judge_step_template_and_unknown_braces_survive() -> None:
    requests: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        requests.append(request)
        return "Verdict: correct"

    judge = LLMJudge(ScriptedPolicy(script), step_template='{"q": {question}} after {previous} judge {step} {other}')
    assert (await judge.score_step(TASK, ["a", "b"], "c")).value == 1.0
    prompt = (requests[0].messages or [])[0]["content"]
    assert prompt == '{"q": What is 6*7?} after <candidate>a\nb</candidate> judge <candidate>c</candidate> {other}'


def test_shipped_judge_templates_have_their_fields() -> None:
    assert {p.name for p in TEMPLATES.glob("*.txt")} >= {"outcome.txt", "step.txt"}
    assert all(f in load_template("outcome") for f in ("{question}", "{solution}", "{answer}"))
    assert all(f in load_template("step") for f in ("{question}", "{previous}", "{step}"))
    with pytest.raises(FileNotFoundError, match="judge template"):
        load_template("no-such-template")


async def test_a_judge_whose_policy_fails_is_a_recorded_verifier_error() -> None:
    def boom(request: GenerationRequest) -> None:
        raise RuntimeError("judge down")

    ctx = Context(
        Episode(run_id="r", task=TASK),
        ScriptedPolicy(["6*7=42"]),
        Verifiers(process=LLMJudge(ScriptedPolicy(["x"], fail=boom))),
        Sampling(),
    )
    (child,) = await ctx.expand(ctx.root, 1)
    with pytest.raises(VerifierError, match="judge down"):
        await ctx.score(child)


# -- code execution -----------------------------------------------------------------------

CODE_TASK = Task(
    id="add", prompt="Write add(a, b).", metadata={"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
)


@pytest.mark.parametrize(
    ("code", "value", "why"),
    [
        ("def add(a, b):\n    return a + b\n", 1.0, "2 of 2 tests pass"),
        ("def add(a, b):\n    return 3\n", 0.5, "1 of 2 tests pass"),
        ("def add(a, b) return", 0.0, "SyntaxError"),
        ("import time\ntime.sleep(30)", 0.0, "timed out after 1.0s"),
        ("x = bytearray(2 * 1024 ** 3)", 0.0, "MemoryError"),
        ("raise SystemExit(0)", 0.0, "SystemExit"),
    ],
    ids=["pass", "partial", "syntax", "timeout", "memory", "exit"],
)
async def test_code_execution_in_a_limited_subprocess(code: str, value: float, why: str) -> None:
    verifier = CodeExecution(timeout=1.0, memory_mb=256)
    score = await verifier.score(CODE_TASK, None, f"Here you go:\n```python\n{code}\n```\n")
    assert score.value == value and why in (score.explanation or "")


async def test_code_execution_runs_outside_this_process() -> None:
    code = "import os\ndef add(a, b):\n    return a + b\nassert os.getpid() != PARENT"
    score = await run_tests(code.replace("PARENT", str(__import__("os").getpid())), ["assert add(2, 2) == 4"])
    assert score.value == 1.0


async def test_code_execution_needs_tests() -> None:
    with pytest.raises(VerifierError, match="no metadata.tests"):
        await CodeExecution().score(TASK, None, "print(1)")
    assert extract_code("no fence", "ans") == "ans" and extract_code("```\na\n```\n```py\nb\n```") == "b\n"


# -- composition and shaping --------------------------------------------------------------


async def test_weighted_sum_of_process_and_outcome_verifiers() -> None:
    mix = WeightedSum([(StepTable({"s": 1.0}), 3.0), (StepTable({"s": 0.0}), 1.0)])
    score = await mix.score_step(TASK, [], "s")
    assert score.value == pytest.approx(0.75) and "steps=1" in (score.explanation or "")
    outcome = WeightedSum([(ExactMatch(), 1.0), (TableVerifier({"42": 0.5}), 1.0)])
    assert (await outcome.score(TASK, "42", "")).value == pytest.approx(0.75)
    with pytest.raises(ValueError, match="non-negative"):
        WeightedSum([(ExactMatch(), -1.0)])


async def test_gate_counts_the_outcome_only_when_every_step_passes(tiny_solution: Any) -> None:
    task, solution = tiny_solution(seed=8, steps=2)
    gate = Gate(TinyStepVerifier(), ExactMatch(), threshold=1.0)
    right = await gate.score(task, task.answer, "\n".join(solution))
    assert right.value == 1.0
    sloppy = ["1+1=3", *solution[1:]]  # a wrong step, then the right answer anyway
    wrong = await gate.score(task, task.answer, "\n".join(sloppy))
    assert wrong.value == 0.0 and "step 1" in (wrong.explanation or "")
    by_outcome = Gate(TableVerifier({"42": 0.9}), ExactMatch(), threshold=0.95)
    assert (await by_outcome.score(TASK, "42", "")).value == 0.0
    step_gate = Gate(StepTable({"ok": 1.0}), StepTable({"ok": 0.6, "no": 0.9}))
    assert (await step_gate.score_step(TASK, [], "ok")).value == 0.6
    assert (await step_gate.score_step(TASK, [], "no")).value == 0.0


async def test_potential_shaping_is_recorded_on_every_node() -> None:
    potential = StepTable({"a": 0.5, "b": 0.8, "x": 0.1, "Answer: 42": 0.9})

    def script(request: GenerationRequest, i: int) -> str:
        steps = [s for s in request.assistant_prefix.split("\n") if s]
        return {0: ["a", "x"][i], 1: "b", 2: "Answer: 42"}[len(steps)]

    shaping = PotentialShaping(potential, gamma=0.9)
    verifiers = Verifiers(outcome=ExactMatch(), process=potential, shaping=shaping)
    ctx = Context(Episode(run_id="r", task=TASK), ScriptedPolicy(script), verifiers, Sampling())
    ep = await BeamSearch(width=1, expansions=2, aggregate="last").run(ctx)
    assert ep.steps == ["a", "b", "Answer: 42"] and ep.reward == 1.0
    by_text = {n.text: n for n in ep.nodes[1:]}
    assert by_text["a"].meta["shaped_reward"] == pytest.approx(0.9 * 0.5 - 0.0)
    assert by_text["x"].meta["shaped_reward"] == pytest.approx(0.9 * 0.1)  # explored, not chosen: shaped too
    assert by_text["b"].meta["shaped_reward"] == pytest.approx(0.9 * 0.8 - 0.5)
    # Terminal: r = the outcome, Phi(terminal) counts as 0.
    leaf = ep.nodes[ep.chosen_path[-1]]
    assert leaf.scores["outcome:exact"] == 1.0 and leaf.meta["shaped_reward"] == pytest.approx(1.0 - 0.8)
    assert all("potential" in n.meta for n in ep.nodes[1:])


# -- YAML wiring --------------------------------------------------------------------------


def _config(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"policy": {"kind": "scripted"}, "store": {"path": str(tmp_path / "s.db")}} | data))
    return load_config(path)


STRATEGIES = components("strategies")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_builds_from_yaml(name: str, tmp_path: Path) -> None:
    config = _config(tmp_path, {"strategy": {"name": name}, "verifiers": {"process": "tiny_rule"}})
    strategy = build_strategy(config)
    assert type(strategy) is STRATEGIES[name]
    assert strategy.config() == config.strategy.model_dump(exclude={"name"})


def test_strategy_config_ranges_and_requirements(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="strategy.width"):
        _config(tmp_path, {"strategy": {"name": "beam_search", "width": 0}})
    with pytest.raises(ConfigError, match="strategy.dirichlet_weight"):
        _config(tmp_path, {"strategy": {"name": "mcts", "dirichlet_weight": 2}})
    with pytest.raises(ConfigError, match="needs a process verifier"):
        build_strategy(_config(tmp_path, {"strategy": {"name": "verify_backtrack"}}))
    with pytest.raises(ConfigError, match="hard_agreement"):
        config = {"name": "compute_optimal", "hard_agreement": 0.9, "easy_agreement": 0.5}
        build_strategy(_config(tmp_path, {"strategy": config, "verifiers": {"process": "tiny_rule"}}))
    # Rollout-outcome MCTS needs no process verifier; best-of-N tiers need none.
    build_strategy(_config(tmp_path, {"strategy": {"name": "mcts", "value": "rollout_outcome"}}))
    assert isinstance(build_strategy(_config(tmp_path, {})), ChainOfThought)
    yaml_vb = {"name": "verify_backtrack", "reflect": True, "step_retries": 2}
    vb = build_strategy(_config(tmp_path, {"strategy": yaml_vb, "verifiers": {"process": "tiny_rule"}}))
    assert isinstance(vb, VerifyAndBacktrack) and vb.reflect and vb.step_retries == 2


def test_verifiers_build_from_yaml(tmp_path: Path, trained_prm: tuple[Path, Any]) -> None:
    policy = ScriptedPolicy(["Score: 1/1"])
    v = build_verifiers(_config(tmp_path, {"verifiers": {"process": "mc_value", "mc_rollouts": 3}}), policy)
    assert isinstance(v.process, MonteCarloValue) and v.process.rollouts == 3 and v.process.policy is policy
    v = build_verifiers(_config(tmp_path, {"verifiers": {"process": "prm", "prm_path": str(trained_prm[0])}}))
    assert isinstance(v.process, ProcessRewardModel)
    v = build_verifiers(_config(tmp_path, {"verifiers": {"outcome": "judge", "process": "judge"}}), policy)
    assert isinstance(v.outcome, LLMJudge) and v.outcome is v.process and v.outcome.policy is policy
    judge_policy = {"kind": "scripted", "script": ["Verdict: yes"]}
    v = build_verifiers(_config(tmp_path, {"verifiers": {"outcome": "judge", "judge_policy": judge_policy}}), policy)
    assert isinstance(v.outcome, LLMJudge) and v.outcome.policy is not policy
    v = build_verifiers(_config(tmp_path, {"verifiers": {"process": "tiny_rule", "tiny_rule_hints": True}}))
    assert isinstance(v.process, TinyStepVerifier) and v.process.hints
    v = build_verifiers(_config(tmp_path, {"verifiers": {"outcome": "code", "code_timeout": 2}}))
    assert isinstance(v.outcome, CodeExecution) and v.outcome.timeout == 2
    data = {"process_weights": {"tiny_rule": 0.7, "mc_value": 0.3}, "gate": True, "shaping_gamma": 0.9}
    v = build_verifiers(_config(tmp_path, {"verifiers": data}), policy)
    assert isinstance(v.process, WeightedSum)
    assert {p.name: w for p, w in v.process.parts} == {"tiny_rule": 0.7, "mc_value": 0.3}
    assert isinstance(v.outcome, Gate) and v.outcome.check is v.process and isinstance(v.outcome.then, ExactMatch)
    assert isinstance(v.shaping, PotentialShaping) and v.shaping.gamma == 0.9 and v.shaping.potential is v.process
    assert isinstance(v.extractor, AnswerExtractor)


@pytest.mark.parametrize(
    ("verifiers", "message"),
    [
        ({"process": "prm"}, "verifiers.process.path"),
        ({"process": "prm", "prm_path": "/no/such/dir"}, "verifiers.process.path"),
        ({"process": {"name": "prm", "path": "/no/such/dir"}}, "verifiers.process.path"),
        ({"outcome": "judge"}, "verifiers.outcome.policy"),
        (
            {"outcome": "judge", "judge_outcome_template": "nope", "judge_policy": {"kind": "scripted"}},
            "judge template",
        ),
        ({"gate": True}, "verifiers.gate"),
        ({"shaping_gamma": 0.5}, "verifiers.shaping_gamma"),
        ({"process": "mc_value"}, "needs the run's policy"),
    ],
)
def test_verifier_config_errors_name_the_field(tmp_path: Path, verifiers: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_verifiers(_config(tmp_path, {"verifiers": verifiers}))


def test_verifier_config_ranges(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="verifiers.mc_rollouts"):
        _config(tmp_path, {"verifiers": {"mc_rollouts": 0}})
    with pytest.raises(ConfigError, match="verifiers.process.rollouts"):
        _config(tmp_path, {"verifiers": {"process": {"name": "mc_value", "rollouts": 0}}})
    with pytest.raises(ConfigError, match="unknown verifiers component 'nonsense'"):
        _config(tmp_path, {"verifiers": {"process_weights": {"nonsense": 1}}})
    with pytest.raises(ConfigError, match="does not score steps"):
        _config(tmp_path, {"verifiers": {"process": "exact"}})


def test_example_search_configs_load_and_build() -> None:
    paths = sorted((Path(__file__).parents[1] / "configs").glob("search_*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        config = load_config(path)
        build_strategy(config)
        build_verifiers(config, ScriptedPolicy(["x"]))
