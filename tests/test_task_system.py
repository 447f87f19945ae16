"""``tasks.system``: a system message before every task, for every kind of source, kept
lazy, given to the held-out tasks too, and never over a task's own system message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.app.build import build_tasks
from runtime.app.config import load_config
from runtime.app.learning import _eval_tasks
from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.scheduling.streams import TaskStream
from runtime.scheduling.tasks import with_system

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "Write one short step per line."


def test_every_task_of_a_list_gets_the_system_message_first() -> None:
    tasks = [Task(id="a", prompt="2+2?"), Task(id="b", messages=[{"role": "user", "content": "3+3?"}])]
    out = with_system(tasks, SYSTEM)
    assert [t.id for t in out] == ["a", "b"]
    assert [t.as_messages()[0] for t in out] == [{"role": "system", "content": SYSTEM}] * 2
    assert out[0].as_messages()[1] == {"role": "user", "content": "2+2?"}
    assert tasks[0].messages is None, "the source's own tasks are not changed"


def test_a_task_with_its_own_system_message_keeps_it() -> None:
    own = Task(id="a", messages=[{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}])
    (out,) = with_system([own], SYSTEM)
    assert out.as_messages() == own.as_messages()


def test_no_system_leaves_the_tasks_as_they_are() -> None:
    tasks = [Task(id="a", prompt="q")]
    assert with_system(tasks, None) is tasks


def test_a_stream_stays_a_lazy_stream_with_its_size_and_skip_count(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"q{i}"}) + "\n" for i in range(3)))
    config = load_config(
        ROOT / "configs" / "quickstart.yaml", [f"tasks={{source: jsonl, path: {path}}}", f"tasks.system={SYSTEM}"]
    )
    tasks = build_tasks(config)
    assert isinstance(tasks, TaskStream)
    assert tasks.bounded and tasks.size == 3 and tasks.skipped == 0
    got = list(tasks)
    assert [t.id for t in got] == ["t0", "t1", "t2"]
    assert all(t.as_messages()[0]["content"] == SYSTEM for t in got)


@pytest.mark.anyio
async def test_an_async_iterable_is_mapped_as_it_is_drawn() -> None:
    drawn: list[str] = []

    async def source():  # type: ignore[no-untyped-def]
        for i in range(3):
            drawn.append(f"t{i}")
            yield Task(id=f"t{i}", prompt="q")

    stream = with_system(source(), SYSTEM)
    first = await stream.__anext__()
    assert first.as_messages()[0]["role"] == "system" and drawn == ["t0"]


def test_held_out_tasks_take_the_runs_system_unless_they_have_their_own() -> None:
    base = ROOT / "configs" / "expert_iteration.yaml"
    config = load_config(base, [f"tasks.system={SYSTEM}", "learner.eval.tasks.size=4"])
    assert all(t.as_messages()[0]["content"] == SYSTEM for t in _eval_tasks(config))
    config = load_config(base, [f"tasks.system={SYSTEM}", "learner.eval.tasks.size=4", "learner.eval.tasks.system=x"])
    assert all(t.as_messages()[0]["content"] == "x" for t in _eval_tasks(config))


def test_an_empty_system_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="tasks.system"):
        load_config(ROOT / "configs" / "quickstart.yaml", ["tasks.system=''"])
