"""``searchlearn export --format sft|preference|prm|rollouts``: real episodes (a scripted
policy run through the scheduler into a SQLite store, under verify-and-backtrack with the
tiny domain's rule verifier) exported in each layout, loaded with ``datasets``, and one
step of the matching TRL trainer run on them with the bundled tiny model.

TRL 1.x no longer ships ``PRMTrainer`` (removed from ``trl.experimental`` in 2026), so
the stepwise-supervision layout is checked with ``datasets`` and trained one step by the
project's own PRM trainer (:func:`learners.prm.train_prm`)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from runtime.app.cli import app
from runtime.app.config import RunConfig
from runtime.app.dataset_export import dataset_rows
from runtime.app.parts import build_verifiers
from runtime.core.types import Episode, Node, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.scripted import ScriptedPolicy
from runtime.scheduling.scheduler import Runtime
from runtime.scheduling.store import EpisodeStore
from runtime.tiny.domain import ArithProblem, parse_expression, solution_steps
from runtime.tiny.tasks import tiny_tasks

RUN = "datasets"
HARD = "tiny-3-0"
"""The task the scripted policy never gets right (an unsolved episode, reward 0)."""


def _solution(task: Task) -> list[str]:
    numbers, ops = parse_expression(task.metadata["expression"])
    problem = ArithProblem(tuple(numbers), tuple(ops))
    return [*solution_steps(problem), f"Answer: {problem.answer}"]


def _wrong(line: str) -> str:
    """The line with its first result off by one (a step the rule verifier rejects)."""
    return re.sub(r"(=|Answer: )(-?\d+)", lambda m: f"{m[1]}{int(m[2]) + 1}", line, count=1)


def scripted_run(db: Path, *, tasks: int = 4, prompt_suffix: str = "", learner: dict[str, Any] | None = None) -> Path:
    """Store ``tasks`` tiny-domain episodes of a scripted policy under verify-and-backtrack:
    its first try at the first step and at the answer is wrong (rejected steps, a rejected
    solution), except on ``HARD``, which it never gets right."""
    problems = [
        Task(t.id, prompt=(t.prompt or "") + prompt_suffix, answer=t.answer, metadata=t.metadata)
        for t in tiny_tasks(tasks, steps=[2], seed=3)
    ]
    solutions = {t.id: _solution(t) for t in problems}
    tries: Counter[tuple[str, int, int]] = Counter()

    def script(request: GenerationRequest, i: int) -> str:
        task_id = request.metadata["task_id"]
        lines = solutions[task_id]
        at = min(len([s for s in request.assistant_prefix.split("\n") if s.strip()]), len(lines) - 1)
        tries[(task_id, request.metadata["sample"], at)] += 1
        first = tries[(task_id, request.metadata["sample"], at)] == 1
        if task_id == HARD or (first and at in (0, len(lines) - 1)):
            return _wrong(lines[at])
        return lines[at]

    config = RunConfig.model_validate(
        {
            "run_id": RUN,
            "policy": {"kind": "scripted"},
            "strategy": {"name": "verify_backtrack", "step_retries": 2, "episode_retries": 3, "backtrack": False},
            "verifiers": {"outcome": "exact", "process": "tiny_rule", "answer_patterns": ["answer_line"]},
            "store": {"path": str(db)},
            **({"learner": learner} if learner else {}),
        }
    )

    async def run() -> None:
        rt = Runtime(
            ScriptedPolicy(script),
            config.strategy,
            verifiers=build_verifiers(config),
            sampling=config.sampling,
            store=db,
            run_id=RUN,
            config=config.model_dump(mode="json"),
        )
        async with rt:
            await rt.run(problems)

    anyio.run(run)
    return db


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scripted_run(tmp_path_factory.mktemp("datasets") / "s.db")


def export(store: Path, fmt: str, out: Path) -> Path:
    result = CliRunner().invoke(app, ["export", RUN, "--store", str(store), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    return out


def load(path: Path) -> Any:
    from datasets import load_dataset

    kind = "parquet" if path.suffix == ".parquet" else "json"
    return load_dataset(kind, data_files=str(path), split="train")


def test_the_scripted_run_holds_what_each_format_needs(store_path: Path) -> None:
    with EpisodeStore(store_path) as st:
        episodes = list(st.episodes(RUN))
    assert len(episodes) == 4
    rewards = sorted(ep.reward for ep in episodes if ep.reward is not None)
    assert rewards[0] == 0.0 and rewards[-1] == 1.0
    assert all(any(n.meta.get("rejected") for n in ep.nodes) for ep in episodes)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_every_format_loads_with_datasets_in_the_layout_trl_reads(
    store_path: Path, tmp_path: Path, suffix: str
) -> None:
    sft = load(export(store_path, "sft", tmp_path / f"sft{suffix}"))
    assert len(sft) == 3  # the three solved episodes' chosen paths; the unsolved one gives none
    for row in sft:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"]
        assert row["messages"][1]["content"].splitlines()[-1].startswith("Answer: ")

    pref = load(export(store_path, "preference", tmp_path / f"pref{suffix}"))
    levels = Counter(pref["level"])
    assert levels["steps"] >= 3 and levels["solutions"] >= 3, levels
    for row in pref:
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        assert row["chosen"][0]["content"].startswith(row["prefix"])

    prm = load(export(store_path, "prm", tmp_path / f"prm{suffix}"))
    assert len(prm) >= 4 and isinstance(prm[0]["prompt"], str)
    for row in prm:
        assert len(row["completions"]) == len(row["labels"]) == len(row["label_values"])
        assert all(isinstance(label, bool) for label in row["labels"])
    flat = [label for row in prm for label in row["labels"]]
    assert True in flat and False in flat  # rejected steps are labelled bad

    rollouts = load(export(store_path, "rollouts", tmp_path / f"rollouts{suffix}"))
    rewards = rollouts["reward"]
    assert 0.0 in rewards and 1.0 in rewards
    assert all(
        len(scores) == len(row.splitlines())
        for scores, row in zip(rollouts["step_scores"], rollouts["completion"], strict=True)
    )


def test_rollouts_keep_the_sampled_token_ids_and_logprobs() -> None:
    task = Task("t", prompt="Evaluate: 1+2", answer="3")
    leaf = Node(
        id=1, parent=0, depth=1, text="Answer: 3", token_ids=[5, 6, 7], sample_logprobs=[-0.1, -0.2, -0.3],
        policy_version=2, terminal=True, answer="3", finish_reason="stop", scores={"outcome:exact": 1.0},
    )  # fmt: skip
    ep = Episode(run_id="r", task=task, nodes=[Node(id=0, parent=None, depth=0, children=[1]), leaf], chosen_path=[1])
    ep.reward = 1.0

    async def rows() -> list[dict[str, Any]]:
        return [row async for row in dataset_rows([ep], "rollouts")]

    (row,) = anyio.run(rows)
    assert row["token_ids"] == [5, 6, 7] and row["logprobs"] == [-0.1, -0.2, -0.3]
    assert row["reward"] == 1.0 and row["policy_version"] == 2 and row["finished"] is True


def test_export_refuses_an_unknown_format_and_suffix(store_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["export", RUN, "--store", str(store_path), "--format", "kto"])
    assert bad.exit_code == 2 and "kto" in bad.output
    csv = runner.invoke(app, ["export", RUN, "--store", str(store_path), "-f", "sft", "--out", str(tmp_path / "a.csv")])
    assert csv.exit_code == 2 and ".parquet" in csv.output
    episodes = runner.invoke(app, ["export", RUN, "--store", str(store_path), "--out", str(tmp_path / "e.jsonl")])
    assert episodes.exit_code == 0
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 4
    assert "nodes" in json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])


def test_the_run_learners_settings_shape_its_export(tmp_path: Path) -> None:
    """A DPO run that trains on step pairs only exports step pairs only."""
    db = scripted_run(tmp_path / "s.db", learner={"kind": "dpo", "levels": ["steps"], "max_pairs": 1})
    rows = [json.loads(line) for line in export(db, "preference", tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows and {r["level"] for r in rows} == {"steps"}


def test_an_empty_export_says_why(data_dir: Path, tmp_path: Path) -> None:
    """A chain-of-thought run with no process verifier has no step labels to export."""
    runner = CliRunner()
    store = tmp_path / "s.db"
    ran = runner.invoke(app, ["run", str(data_dir / "scripted.yaml"), "--set", f"store.path={store}"])
    assert ran.exit_code == 0, ran.output
    out = tmp_path / "prm.jsonl"
    result = runner.invoke(app, ["export", "cli-test", "--store", str(store), "-f", "prm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 0 prm rows" in result.output and "no step has a label" in result.output
    assert out.read_text() == ""


# -- one trainer step on each exported file ------------------------------------------------


def _tiny_model() -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.policy.checkpoints import resolve_checkpoint

    torch.manual_seed(0)
    directory = resolve_checkpoint("bundled")
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), AutoTokenizer.from_pretrained(
        directory
    )


def _step_ran(trainer: Any, model: Any) -> None:
    import torch

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(result.training_loss)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())]
    assert changed, "one optimizer step changed no parameter"


def _args(tmp_path: Path) -> dict[str, Any]:
    return {
        "output_dir": str(tmp_path / "out"), "max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
        "report_to": [], "save_strategy": "no", "use_cpu": True, "logging_steps": 1, "dataloader_num_workers": 0,
        "activation_checkpointing": False,
    }  # fmt: skip


def test_trl_sft_trainer_takes_a_step_on_the_sft_export(store_path: Path, tmp_path: Path) -> None:
    from trl import SFTConfig, SFTTrainer

    data = load(export(store_path, "sft", tmp_path / "sft.parquet"))
    model, tokenizer = _tiny_model()
    trainer = SFTTrainer(model=model, args=SFTConfig(**_args(tmp_path)), train_dataset=data, processing_class=tokenizer)
    _step_ran(trainer, model)


# TRL 1.16's DPOTrainer calls transformers' deprecated ``is_gradient_checkpointing`` itself.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_trl_dpo_trainer_takes_a_step_on_the_preference_export(store_path: Path, tmp_path: Path) -> None:
    from trl import DPOConfig, DPOTrainer

    data = load(export(store_path, "preference", tmp_path / "pref.jsonl"))
    model, tokenizer = _tiny_model()
    trainer = DPOTrainer(model=model, args=DPOConfig(**_args(tmp_path)), train_dataset=data, processing_class=tokenizer)
    _step_ran(trainer, model)


def test_the_prm_export_trains_a_process_reward_model_step(store_path: Path, tmp_path: Path) -> None:
    """No PRMTrainer in TRL 1.x: the stepwise layout trains the project's own PRM one step."""
    import trl

    from learners.prm import PRMExample, train_prm

    assert not hasattr(trl, "PRMTrainer")
    data = load(export(store_path, "prm", tmp_path / "prm.jsonl"))
    examples = [
        PRMExample([{"role": "user", "content": row["prompt"]}], row["completions"], [float(x) for x in row["labels"]])
        for row in data
    ]
    report = train_prm(examples, tmp_path / "prm", steps=1, batch_size=4, threads=1)
    assert report.steps == 1 and math.isfinite(report.first_loss)


def test_no_rescore_keeps_to_the_scores_the_run_stored(store_path: Path, tmp_path: Path) -> None:
    """Verify-and-backtrack never judges a rejected answer step as a solution: rescoring
    judges it (a solution pair), --no-rescore leaves it out; the step pairs, scored
    during the run, are the same."""
    rescored = load(export(store_path, "preference", tmp_path / "a.jsonl"))
    runner = CliRunner()
    args = ["export", RUN, "--store", str(store_path), "-f", "preference", "--no-rescore"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b.jsonl")]).exit_code == 0
    stored = load(tmp_path / "b.jsonl")
    assert Counter(stored["level"])["steps"] == Counter(rescored["level"])["steps"] > 0
    assert Counter(stored["level"])["solutions"] < Counter(rescored["level"])["solutions"]


# -- tool episodes: the schemas the prompt offered ------------------------------------------

QWEN_STYLE = Path(__file__).parent / "data" / "qwen_style_tools.jinja"
TOOL_TASK = Task("t", prompt="What is 6*7?", answer="42")


def tool_run(db: Path, fmt: dict[str, Any]) -> Path:
    """Best-of-2 calculator episodes of one task in call format ``fmt``: one path calls
    calc(6*7) and answers 42, the other calc(6+7) and answers 13."""
    env: Any = None

    def script(request: GenerationRequest, i: int) -> str:
        if not request.assistant_prefix:
            expression = ["6*7", "6+7"][i]
            if fmt["name"] == "compact":
                return f"call: calc({expression})"
            return str(env.format.call_text("calc", {"expression": expression}))
        return f"Answer: {re.findall(r'-?[0-9]+', request.assistant_prefix)[-1]}"

    config = RunConfig.model_validate(
        {
            "run_id": RUN, "policy": {"kind": "scripted"}, "strategy": {"name": "best_of_n", "n": 2},
            "verifiers": {"outcome": "exact", "answer_patterns": ["answer_line"]},
            "environment": {"name": "calculator", "format": fmt}, "store": {"path": str(db)},
        }
    )  # fmt: skip
    env = config.environment

    async def run() -> None:
        rt = Runtime(
            ScriptedPolicy(script), config.strategy, verifiers=build_verifiers(config), sampling=config.sampling,
            store=db, run_id=RUN, config=config.model_dump(mode="json"),
        )  # fmt: skip
        async with rt:
            await rt.run([TOOL_TASK])

    anyio.run(run)
    return db


def qwen_style_tokenizer(directory: Path) -> Any:
    """bundled's tokenizer under a template that renders ``tools`` (saved to ``directory``)."""
    from transformers import AutoTokenizer

    from runtime.policy.checkpoints import resolve_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint("bundled"))
    tokenizer.chat_template = QWEN_STYLE.read_text(encoding="utf-8")
    tokenizer.save_pretrained(directory)
    return tokenizer


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_of_tool_episodes_carry_the_schemas_the_template_rendered(tmp_path: Path, suffix: str) -> None:
    """Under a template that renders the tools, the sft, preference and rollouts rows
    carry them as TRL reads a ``tools`` column (JSON text); rendered with them, a row's
    prompt is the prompt the episode's calls were sent."""
    from runtime.policy.prompts import chat_prompt
    from runtime.tools import task_prompt

    tokenizer = qwen_style_tokenizer(tmp_path / "tok")
    db = tool_run(tmp_path / "s.db", {"name": "chat_template", "tokenizer": str(tmp_path / "tok")})
    with EpisodeStore(db) as st:
        config = RunConfig.model_validate(st.run_config(RUN))
    messages, tools = task_prompt(TOOL_TASK, config.environment)
    assert tools and tools[0]["function"]["name"] == "calc"
    sent = chat_prompt(tokenizer, messages, tools)
    for fmt, prompt in (("sft", "messages"), ("preference", "prompt"), ("rollouts", "prompt")):
        rows = load(export(db, fmt, tmp_path / f"{fmt}{suffix}"))
        assert len(rows) == {"sft": 1, "preference": 1, "rollouts": 2}[fmt], fmt
        for row in rows:
            assert json.loads(row["tools"]) == tools
            shown = row[prompt][: len(messages)]  # sft: the task's messages lead the conversation
            assert chat_prompt(tokenizer, shown, json.loads(row["tools"])) == sent


def test_trl_sft_trainer_renders_the_tools_column(tmp_path: Path) -> None:
    """TRL's SFTTrainer reads the ``tools`` column: its ids start with the prompt the
    episode's calls were sent, schemas included."""
    from trl import SFTConfig, SFTTrainer

    from runtime.policy.prompts import chat_prompt
    from runtime.tools import task_prompt

    tokenizer = qwen_style_tokenizer(tmp_path / "tok")
    db = tool_run(tmp_path / "s.db", {"name": "chat_template", "tokenizer": str(tmp_path / "tok")})
    data = load(export(db, "sft", tmp_path / "sft.parquet"))
    with EpisodeStore(db) as st:
        config = RunConfig.model_validate(st.run_config(RUN))
    sent = tokenizer(chat_prompt(tokenizer, *task_prompt(TOOL_TASK, config.environment)), add_special_tokens=False)
    model, _ = _tiny_model()
    args = SFTConfig(**{**_args(tmp_path), "per_device_train_batch_size": 1})
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    ids = trainer.train_dataset[0]["input_ids"]
    assert ids[: len(sent["input_ids"])] == sent["input_ids"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_whose_prompt_offered_no_schemas_have_no_tools_column(tmp_path: Path, suffix: str) -> None:
    """compact keeps the task's messages; chat_template on a template that shows no tools
    describes them in a system message, which leads the prompt instead."""
    for fmt in ({"name": "compact"}, {"name": "chat_template", "tokenizer": "bundled"}):
        db = tool_run(tmp_path / f"{fmt['name']}.db", fmt)
        for kind in ("sft", "preference", "rollouts"):
            out = export(db, kind, tmp_path / f"{fmt['name']}-{kind}{suffix}")
            rows = load(out)
            assert len(rows) >= 1 and "tools" not in rows.column_names, (fmt, kind)
            prompt = rows[0]["messages" if kind == "sft" else "prompt"]
            assert (prompt[0]["role"] == "system") == (fmt["name"] == "chat_template")
