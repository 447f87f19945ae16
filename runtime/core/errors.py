"""One exception tree; every error is attributed to the boundary it crossed.

::

    SearchlearnError
    ├── ConfigError               bad config file, option or input (CLI: one line, no traceback)
    ├── TaskError                 a task source or a single task is malformed
    ├── PolicyError               a model call failed (after retries, where retried)
    │   ├── PolicyRequestError    the server refused the request (4xx other than 429)
    │   ├── PolicyResponseError   the server answered with a body we cannot read
    │   ├── PolicyUnavailable     429 / 5xx / timeout / connection error, retries exhausted
    │   └── BudgetExhausted       the endpoint's cost budget is spent; no call was made
    ├── VerifierError             a verifier raised or timed out
    ├── StrategyError             a strategy broke its contract
    ├── StoreError                the episode store, a learner checkpoint or an output file cannot
    │                             be read or written: locked, disk full, corrupt, unwritable path,
    │                             or the run is already running elsewhere (CLI: one line, no traceback)
    ├── LearnerError              the learner cannot go on: its loss, gradients or weights are
    │                             not finite, step after step (a learner setting is the likely
    │                             cause; CLI: one line naming it)
    └── EpisodeBudgetError        an episode ran out of its own budget
        ├── EpisodeTimeout
        └── TokenBudgetExceeded

Inside a run these never escape an episode: the scheduler records them on a failed
:class:`~runtime.core.types.Episode` (error class, message, boundary) and carries on.
The exceptions are :class:`ConfigError` (raised before a run starts),
:class:`StoreError`: an episode that cannot be stored is not data, so a store fault
ends the run, with a one-line message naming the file and what happened, and
:class:`LearnerError`: a learner that diverged ends the run before it publishes or
saves anything non-finite.
"""

from __future__ import annotations

__all__ = [
    "BudgetExhausted",
    "ConfigError",
    "EpisodeBudgetError",
    "EpisodeTimeout",
    "LearnerError",
    "PolicyError",
    "PolicyRequestError",
    "PolicyResponseError",
    "PolicyUnavailable",
    "SearchlearnError",
    "StoreError",
    "StrategyError",
    "TaskError",
    "TokenBudgetExceeded",
    "VerifierError",
    "boundary_of",
]


class SearchlearnError(Exception):
    """Base of every error searchlearn raises on purpose."""

    boundary = "runtime"


class ConfigError(SearchlearnError):
    boundary = "config"


class TaskError(SearchlearnError):
    boundary = "task"


class PolicyError(SearchlearnError):
    boundary = "policy"


class PolicyRequestError(PolicyError):
    pass


class PolicyResponseError(PolicyError):
    pass


class PolicyUnavailable(PolicyError):
    pass


class BudgetExhausted(PolicyError):
    pass


class VerifierError(SearchlearnError):
    boundary = "verifier"


class StrategyError(SearchlearnError):
    boundary = "strategy"


class StoreError(SearchlearnError):
    """The durable state of a run (episode store, learner checkpoint) failed; the
    message is one line naming the file, what happened and what to do."""

    boundary = "store"


class LearnerError(SearchlearnError):
    """A learner diverged (non-finite loss, gradients or weights); the message names the
    settings that likely caused it."""

    boundary = "learner"


class EpisodeBudgetError(SearchlearnError):
    boundary = "budget"


class EpisodeTimeout(EpisodeBudgetError):
    pass


class TokenBudgetExceeded(EpisodeBudgetError):
    pass


def boundary_of(exc: BaseException) -> str:
    """Where an exception came from: its declared boundary, else ``strategy``.

    An exception that is not ours escaped from user code inside the episode (a
    strategy, a custom verifier or policy); the innermost searchlearn wrapper has
    already attributed the ones that crossed a known boundary.
    """
    return getattr(exc, "boundary", "strategy")
