"""A worked searchlearn plug-in: :class:`EarlyConsensus` (a strategy) and
:class:`NumericTolerance` (an outcome verifier), registered through entry points."""

from searchlearn_plugin_example.early_consensus import EarlyConsensus
from searchlearn_plugin_example.numeric_tolerance import NumericTolerance

__all__ = ["EarlyConsensus", "NumericTolerance"]
