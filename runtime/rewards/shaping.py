"""Potential-based reward shaping (Ng, Harada & Russell 1999): a dense step reward
``r' = r + gamma * Phi(s') - Phi(s)`` that leaves the optimal policy unchanged, with the
potential ``Phi`` of a state from a value or a process reward model.

Applied to an episode's tree when the episode finishes (``Verifiers.shaping``), every
node (a step s -> s') gets ``meta['potential']`` (``Phi(s')``) and
``meta['shaped_reward']``.

Design decisions:
- ``Phi(s')`` of a node is its potential verifier's step score given its prefix (the
  same call and cache as ``ctx.score``, so shaping with the search's own process
  verifier costs nothing more); ``Phi(root) = 0``.
- The environment reward ``r`` of a step is 0, except for a terminal node, whose ``r``
  is its outcome score where one was computed (the chosen leaf always has one when an
  outcome verifier is configured). A terminal state's potential counts as 0 in
  ``gamma * Phi(s')`` (episodic shaping keeps the optimal policy only if the terminal
  potential is constant), so along a path the shaped returns telescope to
  ``r - Phi(root)``.
- ``scope='path'`` shapes only the chosen path (cheaper with an expensive potential
  such as Monte-Carlo rollouts); ``'tree'`` shapes every node the search explored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from runtime.core.concurrency import gather
from runtime.core.types import Episode, Node
from runtime.rewards.base import ProcessVerifier

__all__ = ["PotentialShaping"]


class PotentialShaping:
    """Records ``r + gamma * Phi(s') - Phi(s)`` on every node (see module doc)."""

    def __init__(
        self, potential: ProcessVerifier, *, gamma: float = 1.0, scope: Literal["tree", "path"] = "tree"
    ) -> None:
        self.potential = potential
        self.gamma = gamma
        self.scope = scope

    async def apply(self, ep: Episode, score: Callable[[Node, ProcessVerifier], Awaitable[float]]) -> None:
        """Shape ``ep``'s nodes; ``score(node, verifier)`` is the step score of a node given
        its prefix (the episode context's ``score``, with its cache and timeout)."""
        nodes = [ep.nodes[i] for i in ep.chosen_path] if self.scope == "path" else ep.nodes[1:]
        potentials = await gather(score(n, self.potential) for n in nodes)
        phi = {0: 0.0} | {n.id: p for n, p in zip(nodes, potentials, strict=True)}
        for n in nodes:
            assert n.parent is not None
            before = phi[n.parent]  # the parent is shaped too: both scopes are closed under parents
            reward = next((v for k, v in n.scores.items() if k.startswith("outcome:")), 0.0) if n.terminal else 0.0
            after = 0.0 if n.terminal else phi[n.id]
            n.meta["potential"] = phi[n.id]
            n.meta["shaped_reward"] = reward + self.gamma * after - before
