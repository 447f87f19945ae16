"""Search strategies. Each is a short module on the context's primitives.

Solution level: :class:`ChainOfThought`, :class:`BestOfN` (best-of-N, self-consistency,
weighted majority). Step level: :class:`BeamSearch`, :class:`DVTS`, :class:`MCTS`,
:class:`TreeOfThought` (BFS / DFS), :class:`VerifyAndBacktrack`. Sequential:
:class:`SelfRefine`, :class:`LeastToMost`. Allocation: :class:`ComputeOptimal`.

Each is a :class:`~runtime.search.strategy.BaseStrategy`: its fields are its settings and
its ``name`` is what configs call it; a new module here registers itself by existing.
"""

from __future__ import annotations

from runtime.search.strategy import BaseStrategy, Strategy
from strategies.beam_search import BeamSearch
from strategies.best_of_n import BestOfN
from strategies.chain_of_thought import ChainOfThought
from strategies.compute_optimal import ComputeOptimal
from strategies.dvts import DVTS
from strategies.least_to_most import LeastToMost
from strategies.mcts import MCTS
from strategies.self_refine import SelfRefine
from strategies.tree_of_thought import TreeOfThought
from strategies.verify_backtrack import VerifyAndBacktrack

__all__ = [
    "DVTS",
    "MCTS",
    "BaseStrategy",
    "BeamSearch",
    "BestOfN",
    "ChainOfThought",
    "ComputeOptimal",
    "LeastToMost",
    "SelfRefine",
    "Strategy",
    "TreeOfThought",
    "VerifyAndBacktrack",
]
