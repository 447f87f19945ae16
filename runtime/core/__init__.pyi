"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.core.concurrency import (
    gather as gather,
)
from runtime.core.errors import (
    BudgetExhausted as BudgetExhausted,
)
from runtime.core.errors import (
    ConfigError as ConfigError,
)
from runtime.core.errors import (
    EpisodeBudgetError as EpisodeBudgetError,
)
from runtime.core.errors import (
    EpisodeTimeout as EpisodeTimeout,
)
from runtime.core.errors import (
    LearnerError as LearnerError,
)
from runtime.core.errors import (
    PolicyError as PolicyError,
)
from runtime.core.errors import (
    PolicyRequestError as PolicyRequestError,
)
from runtime.core.errors import (
    PolicyResponseError as PolicyResponseError,
)
from runtime.core.errors import (
    PolicyUnavailable as PolicyUnavailable,
)
from runtime.core.errors import (
    SearchlearnError as SearchlearnError,
)
from runtime.core.errors import (
    StoreError as StoreError,
)
from runtime.core.errors import (
    StrategyError as StrategyError,
)
from runtime.core.errors import (
    TaskError as TaskError,
)
from runtime.core.errors import (
    TokenBudgetExceeded as TokenBudgetExceeded,
)
from runtime.core.errors import (
    VerifierError as VerifierError,
)
from runtime.core.errors import (
    boundary_of as boundary_of,
)
from runtime.core.registry import (
    Component as Component,
)
from runtime.core.registry import (
    ComponentField as ComponentField,
)
from runtime.core.registry import (
    component_name as component_name,
)
from runtime.core.registry import (
    components as components,
)
from runtime.core.registry import (
    lookup as lookup,
)
from runtime.core.registry import (
    register_builtins as register_builtins,
)
from runtime.core.registry import (
    validate_component as validate_component,
)
from runtime.core.registry import (
    with_overrides as with_overrides,
)
from runtime.core.types import (
    Episode as Episode,
)
from runtime.core.types import (
    ErrorInfo as ErrorInfo,
)
from runtime.core.types import (
    Node as Node,
)
from runtime.core.types import (
    Task as Task,
)
from runtime.core.types import (
    Usage as Usage,
)
from runtime.core.types import (
    episode_from_json as episode_from_json,
)
from runtime.core.types import (
    episode_to_json as episode_to_json,
)
