"""Task sources: JSONL files (errors name file:line), any (async) iterable of tasks,
dicts or strings, reasoning-gym datasets and the tiny domain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.core.errors import TaskError
from runtime.core.types import Task
from runtime.rewards.outcome import ReasoningGymVerifier
from runtime.scheduling.tasks import ReasoningGymTasks, iterate_tasks, jsonl_tasks, reasoning_gym_tasks, to_task
from runtime.tiny.domain import parse_expression
from runtime.tiny.tasks import tiny_tasks


async def collect(source: Any) -> list[Task]:
    return [t async for t in iterate_tasks(source)]


# -- JSONL ---------------------------------------------------------------------------


def test_jsonl_good_file(data_dir: Path) -> None:
    tasks = jsonl_tasks(data_dir / "tasks.jsonl")
    assert [t.id for t in tasks] == ["add", "chat", "tasks-4"]  # blank line 3 skipped; line 4 has no id
    add, chat, france = tasks
    assert (add.prompt, add.answer) == ("What is 2+2?", "4")
    assert chat.prompt is None and chat.messages == [{"role": "user", "content": "Name a prime."}]
    assert chat.metadata == {"level": 1}
    assert (france.prompt, france.answer) == ("Capital of France?", "Paris")


def test_jsonl_malformed_line_names_file_and_line(data_dir: Path) -> None:
    path = data_dir / "malformed.jsonl"
    with pytest.raises(TaskError) as info:
        jsonl_tasks(path)
    assert f"{path}:3:" in str(info.value)
    assert "not valid JSON" in str(info.value)


def test_jsonl_empty_file(data_dir: Path) -> None:
    with pytest.raises(TaskError, match="holds no tasks"):
        jsonl_tasks(data_dir / "empty.jsonl")


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="does not exist"):
        jsonl_tasks(tmp_path / "nope.jsonl")


def test_jsonl_duplicate_id(data_dir: Path) -> None:
    path = data_dir / "duplicate.jsonl"
    with pytest.raises(TaskError) as info:
        jsonl_tasks(path)
    assert f"{path}:3:" in str(info.value) and "'same'" in str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "answer": "1"}', "none of prompt, question or messages"),
        ('{"id": "x", "messages": [{"role": "user"}]}', "messages must be a list"),
        ("[1, 2]", "expected a JSON object or string, got list"),
        ("5", "expected a JSON object or string, got int"),
        ("null", "expected a JSON object or string, got NoneType"),
    ],
)
def test_jsonl_bad_task_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "prompt": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(TaskError, match=message) as info:
        jsonl_tasks(path)
    assert f"{path}:2:" in str(info.value)


def test_jsonl_plain_string_line_is_a_prompt(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('"just a prompt"\n', encoding="utf-8")
    (task,) = jsonl_tasks(path)
    assert (task.id, task.prompt) == ("s-1", "just a prompt")


# -- any iterable --------------------------------------------------------------------


@pytest.mark.anyio
async def test_iterate_list_of_tasks_dicts_and_strings() -> None:
    given = Task(id="given", prompt="p")
    out = await collect([given, {"id": 7, "question": "q", "answer": 3, "metadata": {"k": "v"}}, "plain"])
    assert out[0] is given
    assert (out[1].id, out[1].prompt, out[1].answer, out[1].metadata) == ("7", "q", "3", {"k": "v"})
    assert (out[2].id, out[2].prompt) == ("2", "plain")  # ids default to the position


@pytest.mark.anyio
async def test_iterate_generator_is_lazy() -> None:
    pulled: list[int] = []

    def gen() -> Iterator[str]:
        for i in range(3):
            pulled.append(i)
            yield f"q{i}"

    it = iterate_tasks(gen())
    first = await it.__anext__()
    assert first.prompt == "q0" and pulled == [0]
    rest = [t.prompt async for t in it]
    assert rest == ["q1", "q2"] and pulled == [0, 1, 2]


@pytest.mark.anyio
async def test_iterate_async_generator() -> None:
    async def agen() -> AsyncIterator[Any]:
        yield {"prompt": "a"}
        yield "b"
        yield Task(id="c", prompt="c")

    out = await collect(agen())
    assert [(t.id, t.prompt) for t in out] == [("0", "a"), ("1", "b"), ("c", "c")]


@pytest.mark.anyio
async def test_iterate_rejects_other_items() -> None:
    with pytest.raises(TaskError, match="task 1 is a int"):
        await collect(["fine", 5])


def test_to_task_messages_must_be_role_content_dicts() -> None:
    with pytest.raises(TaskError):
        to_task({"messages": "hello"}, 0)
    task = to_task({"messages": [{"role": "user", "content": "hi"}]}, 4)
    assert task.id == "4" and task.as_messages() == [{"role": "user", "content": "hi"}]


# -- generated sources ---------------------------------------------------------------


def test_reasoning_gym_tasks_are_deterministic_with_stable_ids() -> None:
    first = list(reasoning_gym_tasks("basic_arithmetic", size=3, seed=5))
    again = list(reasoning_gym_tasks("basic_arithmetic", size=3, seed=5))
    other = list(reasoning_gym_tasks("basic_arithmetic", size=3, seed=6))
    assert first == again
    assert [t.id for t in first] == ["basic_arithmetic-5-0", "basic_arithmetic-5-1", "basic_arithmetic-5-2"]
    assert [t.prompt for t in first] != [t.prompt for t in other]
    meta = first[2].metadata
    assert (meta["source"], meta["dataset"], meta["index"]) == ("reasoning_gym", "basic_arithmetic", 2)
    assert all(t.prompt and t.answer for t in first)


def test_reasoning_gym_unknown_dataset_fails_at_call_time() -> None:
    """The error comes when the source is made, before any task is drawn."""
    with pytest.raises(TaskError, match="basic_arithmetic"):  # suggests the close match
        reasoning_gym_tasks("basic_arithmetc", size=3)
    with pytest.raises(TaskError, match="no_such_dataset_xyz"):
        reasoning_gym_tasks("no_such_dataset_xyz")


def test_reasoning_gym_bad_config() -> None:
    with pytest.raises(TaskError, match="basic_arithmetic"):
        reasoning_gym_tasks("basic_arithmetic", size=2, config={"no_such_option": 1})


SMALL_SPACE = {
    "min_terms": 3,
    "max_terms": 3,
    "min_digits": 1,
    "max_digits": 1,
    "allow_parentheses": False,
    "operators": ["+", "-"],
}


@pytest.mark.anyio
async def test_reasoning_gym_held_out_tasks_are_distinct_never_trained_on_and_scored() -> None:
    """A held-out set and a train set of a ~5,000-question space share no question, whatever
    their seeds, and a held-out task is scored against its own reference answer."""
    held = list(ReasoningGymTasks(name="basic_arithmetic", size=300, seed=1000, config=SMALL_SPACE,
                                  split="heldout", unique=True).build())  # fmt: skip
    train = list(ReasoningGymTasks(name="basic_arithmetic", size=3000, seed=1000, config=SMALL_SPACE,
                                   split="train").build())  # fmt: skip
    mixed = list(reasoning_gym_tasks("basic_arithmetic", size=3000, seed=1000, config=SMALL_SPACE))
    assert len(held) == 300 and len({t.prompt for t in held}) == 300
    assert len(train) == 3000 and not {t.prompt for t in held} & {t.prompt for t in train}
    assert {t.prompt for t in held} & {t.prompt for t in mixed}  # without a split the sets would overlap
    verifier = ReasoningGymVerifier()
    for task in held[:5]:
        assert (await verifier.score(task, task.answer, task.answer)).value == 1.0
        assert (await verifier.score(task, "-12345", "-12345")).value == 0.0


def test_reasoning_gym_split_too_small_for_its_size_names_the_fields() -> None:
    source = ReasoningGymTasks(name="basic_arithmetic", size=900, config=SMALL_SPACE, split="heldout", unique=True)
    with pytest.raises(TaskError, match=r"only \d+ distinct heldout questions.*tasks\.size=900"):
        source.build()


def test_tiny_tasks() -> None:
    tasks = list(tiny_tasks(count=6, steps=(2, 3), seed=1))
    assert len({t.id for t in tasks}) == 6
    assert [t.metadata["steps"] for t in tasks] == [2, 3, 2, 3, 2, 3]
    for t in tasks:
        numbers, ops = parse_expression(t.metadata["expression"])
        assert len(ops) == t.metadata["steps"]
        assert t.prompt == f"Evaluate: {t.metadata['expression']}"
    assert tasks == list(tiny_tasks(count=6, steps=(2, 3), seed=1))
