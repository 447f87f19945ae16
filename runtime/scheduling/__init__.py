"""Scheduling: the scheduler (:class:`Runtime`), the SQLite episode store, its continuous
JSONL export and task sources (bounded or streaming)."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "EpisodeExport": ".export",
    "EpisodeStore": ".store",
    "JsonlDirTasks": ".tasks",
    "JsonlTasks": ".tasks",
    "ReasoningGymTasks": ".tasks",
    "RunStats": ".scheduler",
    "RunSummary": ".store",
    "Runtime": ".scheduler",
    "SchedulerSettings": ".scheduler",
    "StdinTasks": ".tasks",
    "TaskSource": ".tasks",
    "TaskStream": ".streams",
    "iterate_tasks": ".tasks",
    "jsonl_dir_stream": ".tasks",
    "jsonl_stream": ".tasks",
    "jsonl_tasks": ".tasks",
    "reasoning_gym_tasks": ".tasks",
    "stdin_stream": ".tasks",
    "task_count": ".streams",
    "to_task": ".tasks",
}

__all__ = [
    "EpisodeExport",
    "EpisodeStore",
    "JsonlDirTasks",
    "JsonlTasks",
    "ReasoningGymTasks",
    "RunStats",
    "RunSummary",
    "Runtime",
    "SchedulerSettings",
    "StdinTasks",
    "TaskSource",
    "TaskStream",
    "iterate_tasks",
    "jsonl_dir_stream",
    "jsonl_stream",
    "jsonl_tasks",
    "reasoning_gym_tasks",
    "stdin_stream",
    "task_count",
    "to_task",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
