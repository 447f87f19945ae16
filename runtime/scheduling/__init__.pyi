"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.scheduling.export import (
    EpisodeExport as EpisodeExport,
)
from runtime.scheduling.scheduler import (
    RunStats as RunStats,
)
from runtime.scheduling.scheduler import (
    Runtime as Runtime,
)
from runtime.scheduling.scheduler import (
    SchedulerSettings as SchedulerSettings,
)
from runtime.scheduling.store import (
    EpisodeStore as EpisodeStore,
)
from runtime.scheduling.store import (
    RunSummary as RunSummary,
)
from runtime.scheduling.streams import (
    TaskStream as TaskStream,
)
from runtime.scheduling.streams import (
    task_count as task_count,
)
from runtime.scheduling.tasks import (
    JsonlDirTasks as JsonlDirTasks,
)
from runtime.scheduling.tasks import (
    JsonlTasks as JsonlTasks,
)
from runtime.scheduling.tasks import (
    ReasoningGymTasks as ReasoningGymTasks,
)
from runtime.scheduling.tasks import (
    StdinTasks as StdinTasks,
)
from runtime.scheduling.tasks import (
    TaskSource as TaskSource,
)
from runtime.scheduling.tasks import (
    iterate_tasks as iterate_tasks,
)
from runtime.scheduling.tasks import (
    jsonl_dir_stream as jsonl_dir_stream,
)
from runtime.scheduling.tasks import (
    jsonl_stream as jsonl_stream,
)
from runtime.scheduling.tasks import (
    jsonl_tasks as jsonl_tasks,
)
from runtime.scheduling.tasks import (
    reasoning_gym_tasks as reasoning_gym_tasks,
)
from runtime.scheduling.tasks import (
    stdin_stream as stdin_stream,
)
from runtime.scheduling.tasks import (
    to_task as to_task,
)
from runtime.scheduling.verifiers_tasks import (
    VerifiersTasks as VerifiersTasks,
)
