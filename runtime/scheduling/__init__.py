"""Scheduling: the scheduler (:class:`Runtime`), the SQLite episode store and task
sources."""

from __future__ import annotations

from runtime.core.lazy import lazy_exports as _lazy_exports

_EXPORTS = {
    "EpisodeStore": ".store",
    "JsonlTasks": ".tasks",
    "ReasoningGymTasks": ".tasks",
    "RunStats": ".scheduler",
    "RunSummary": ".store",
    "Runtime": ".scheduler",
    "SchedulerSettings": ".scheduler",
    "TaskSource": ".tasks",
    "iterate_tasks": ".tasks",
    "jsonl_tasks": ".tasks",
    "reasoning_gym_tasks": ".tasks",
    "to_task": ".tasks",
}

__all__ = [
    "EpisodeStore",
    "JsonlTasks",
    "ReasoningGymTasks",
    "RunStats",
    "RunSummary",
    "Runtime",
    "SchedulerSettings",
    "TaskSource",
    "iterate_tasks",
    "jsonl_tasks",
    "reasoning_gym_tasks",
    "to_task",
]

__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
