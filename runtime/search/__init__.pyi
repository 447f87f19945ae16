"""Type stub: the package's public names, listed once (read by type checkers, and by
:func:`runtime.core.lazy.stub_exports` to import each on first use)."""

from runtime.search.context import (
    Aggregate as Aggregate,
)
from runtime.search.context import (
    Context as Context,
)
from runtime.search.context import (
    Ledger as Ledger,
)
from runtime.search.context import (
    Sampling as Sampling,
)
from runtime.search.context import (
    Verifiers as Verifiers,
)
from runtime.search.context import (
    aggregate_scores as aggregate_scores,
)
from runtime.search.context import (
    gather as gather,
)
from runtime.search.strategy import (
    BaseStrategy as BaseStrategy,
)
from runtime.search.strategy import (
    Strategy as Strategy,
)
