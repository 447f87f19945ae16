"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.tools.base import (
    Environment as Environment,
)
from runtime.tools.base import (
    ForkMode as ForkMode,
)
from runtime.tools.base import (
    ToolCall as ToolCall,
)
from runtime.tools.base import (
    ToolEnvironmentError as ToolEnvironmentError,
)
from runtime.tools.base import (
    ToolOutput as ToolOutput,
)
from runtime.tools.base import (
    Turn as Turn,
)
from runtime.tools.base import (
    task_prompt as task_prompt,
)
from runtime.tools.calculator import (
    Calc as Calc,
)
from runtime.tools.calculator import (
    CalculatorEnvironment as CalculatorEnvironment,
)
from runtime.tools.calculator import (
    calculate as calculate,
)
from runtime.tools.environment import (
    BaseEnvironment as BaseEnvironment,
)
from runtime.tools.environment import (
    ToolsEnvironment as ToolsEnvironment,
)
from runtime.tools.formats import (
    CallFormat as CallFormat,
)
from runtime.tools.formats import (
    CompactFormat as CompactFormat,
)
from runtime.tools.formats import (
    OpenAIFormat as OpenAIFormat,
)
from runtime.tools.sandbox import (
    Limits as Limits,
)
from runtime.tools.sandbox import (
    RunResult as RunResult,
)
from runtime.tools.sandbox import (
    SandboxMode as SandboxMode,
)
from runtime.tools.sandbox import (
    available_tiers as available_tiers,
)
from runtime.tools.sandbox import (
    run_python as run_python,
)
from runtime.tools.spec import (
    BaseTool as BaseTool,
)
from runtime.tools.spec import (
    ToolSpec as ToolSpec,
)
from runtime.tools.template_format import (
    ChatTemplateFormat as ChatTemplateFormat,
)
from runtime.tools.verifiers_env import (
    VerifiersEnvironment as VerifiersEnvironment,
)
