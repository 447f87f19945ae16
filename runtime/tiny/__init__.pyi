"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.tiny.corruption import (
    corrupt_tiny_step as corrupt_tiny_step,
)
from runtime.tiny.domain import (
    ArithProblem as ArithProblem,
)
from runtime.tiny.domain import (
    check_step as check_step,
)
from runtime.tiny.domain import (
    generate_problem as generate_problem,
)
from runtime.tiny.domain import (
    parse_expression as parse_expression,
)
from runtime.tiny.domain import (
    solution_steps as solution_steps,
)
from runtime.tiny.domain import (
    tool_trace as tool_trace,
)
from runtime.tiny.domain import (
    training_trace as training_trace,
)
from runtime.tiny.policy_format import (
    BUNDLED as BUNDLED,
)
from runtime.tiny.policy_format import (
    BUNDLED_POLICY as BUNDLED_POLICY,
)
from runtime.tiny.policy_format import (
    CHAT_TEMPLATE as CHAT_TEMPLATE,
)
from runtime.tiny.policy_format import (
    SPECIAL_TOKENS as SPECIAL_TOKENS,
)
from runtime.tiny.policy_format import (
    STEP_DELIMITER as STEP_DELIMITER,
)
from runtime.tiny.policy_format import (
    TOOL_POLICY as TOOL_POLICY,
)
from runtime.tiny.policy_format import (
    WEAK_POLICY as WEAK_POLICY,
)
from runtime.tiny.policy_format import (
    assistant_prefix as assistant_prefix,
)
from runtime.tiny.policy_format import (
    evaluate_greedy as evaluate_greedy,
)
from runtime.tiny.tasks import (
    TinyTasks as TinyTasks,
)
from runtime.tiny.tasks import (
    tiny_tasks as tiny_tasks,
)
from runtime.tiny.verifier import (
    TinyStepVerifier as TinyStepVerifier,
)
