"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.policy.adapters import (
    AdapterWeights as AdapterWeights,
)
from runtime.policy.adapters import (
    LoraPublishing as LoraPublishing,
)
from runtime.policy.admission import (
    AdmittedPolicy as AdmittedPolicy,
)
from runtime.policy.admission import (
    Malformed as Malformed,
)
from runtime.policy.admission import (
    Refused as Refused,
)
from runtime.policy.admission import (
    Reply as Reply,
)
from runtime.policy.admission import (
    Transient as Transient,
)
from runtime.policy.backends import (
    HostedBackend as HostedBackend,
)
from runtime.policy.backends import (
    LocalBackend as LocalBackend,
)
from runtime.policy.backends import (
    OpenAIBackend as OpenAIBackend,
)
from runtime.policy.backends import (
    PolicyBackend as PolicyBackend,
)
from runtime.policy.backends import (
    PriceConfig as PriceConfig,
)
from runtime.policy.backends import (
    ScriptedBackend as ScriptedBackend,
)
from runtime.policy.backends import (
    VllmBackend as VllmBackend,
)
from runtime.policy.base import (
    Completion as Completion,
)
from runtime.policy.base import (
    GenerationRequest as GenerationRequest,
)
from runtime.policy.base import (
    GenerationResult as GenerationResult,
)
from runtime.policy.base import (
    Mode as Mode,
)
from runtime.policy.base import (
    Policy as Policy,
)
from runtime.policy.base import (
    Server as Server,
)
from runtime.policy.base import (
    WeightedPolicy as WeightedPolicy,
)
from runtime.policy.checkpoints import (
    named_checkpoints as named_checkpoints,
)
from runtime.policy.checkpoints import (
    resolve_checkpoint as resolve_checkpoint,
)
from runtime.policy.continuation import (
    ChatTemplate as ChatTemplate,
)
from runtime.policy.limits import (
    PRICES as PRICES,
)
from runtime.policy.limits import (
    EndpointLimiter as EndpointLimiter,
)
from runtime.policy.limits import (
    EndpointLimits as EndpointLimits,
)
from runtime.policy.limits import (
    Price as Price,
)
from runtime.policy.limits import (
    limiter_for as limiter_for,
)
from runtime.policy.local import (
    EngineRequest as EngineRequest,
)
from runtime.policy.local import (
    EngineResult as EngineResult,
)
from runtime.policy.local import (
    EngineStats as EngineStats,
)
from runtime.policy.local import (
    LocalEngine as LocalEngine,
)
from runtime.policy.local import (
    LocalPolicy as LocalPolicy,
)
from runtime.policy.lora_server import (
    LoraServerPolicy as LoraServerPolicy,
)
from runtime.policy.openai_compatible import (
    OpenAIPolicy as OpenAIPolicy,
)
from runtime.policy.scripted import (
    ScriptedPolicy as ScriptedPolicy,
)
from runtime.policy.vllm_engine import (
    VllmPolicy as VllmPolicy,
)
from runtime.policy.vllm_engine import (
    VllmSettings as VllmSettings,
)
