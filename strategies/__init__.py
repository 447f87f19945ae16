"""Search strategies. Each is a short module on the context's primitives."""

from __future__ import annotations

from strategies.base import Strategy
from strategies.best_of_n import BestOfN
from strategies.chain_of_thought import ChainOfThought

__all__ = ["STRATEGIES", "BestOfN", "ChainOfThought", "Strategy"]

#: Strategies by the name configs use.
STRATEGIES: dict[str, type] = {
    ChainOfThought.name: ChainOfThought,
    BestOfN.name: BestOfN,
}
