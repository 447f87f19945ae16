"""From episodes to training examples: the verified-correct paths of a search tree.

Expert iteration / rejection-sampling fine-tuning (STaR, Zelikman et al. 2022; ReST-EM,
Singh et al. 2023) keeps what the verifier accepted and behaviour-clones it.

Design decisions:
- ``keep="chosen"`` takes the path the strategy picked when the episode's outcome
  reward reaches ``min_reward``; ``keep="all_correct"`` takes every terminal leaf whose
  outcome score reaches it (a leaf the strategy never judged is judged here with the
  run's outcome verifier), so one best-of-8 episode may give up to eight examples.
- A path whose final answer is right but one of whose steps the run's process verifier
  rejects (``min_step_score``) is not kept: two arithmetic slips can cancel out, and
  such a path teaches the slips. Its wrong steps have the highest loss in the batch,
  so a few of them dominate the gradient of a batch of already likely correct paths.
  Steps the strategy never scored are scored here; rejected paths are counted.
- ``weighting="pass_rate"`` weighs an episode's examples by the share of its samples
  that failed (1 - pass rate): a problem every sample already solves teaches nothing
  and gives no example, one solved by a single sample of eight weighs 7/8. This is
  filtered behaviour cloning with a per-problem baseline, the positive half of a
  policy gradient with the mean reward as baseline; it spends the learner's steps at
  the frontier of what the policy can do.
- Deduplicated by (task, completion text) over the whole stream, so a policy that has
  converged on one solution does not train on it eight times per episode.
- An example carries the policy version its text was sampled under (the oldest in its
  path) and a weight; the loop lowers the weight of, or drops, stale examples.
- Failed episodes and episodes without a reward give nothing; they are counted by the
  loop, not silently lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.context import Verifiers
from runtime.types import Episode, Node

__all__ = ["Example", "VerifiedPaths", "path_text"]

Keep = Literal["chosen", "all_correct"]
Weighting = Literal["uniform", "pass_rate"]


@dataclass(slots=True)
class Example:
    """One behaviour-cloning example: the task's messages and the assistant text to learn."""

    messages: list[dict[str, str]]
    completion: str
    key: tuple[str, str, int]
    policy_version: int | None = None
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


def _path(episode: Episode, leaf: Node) -> list[Node]:
    out = []
    node = leaf
    while node.parent is not None:
        out.append(node)
        node = episode.nodes[node.parent]
    out.reverse()
    return out


def path_text(episode: Episode, leaf: Node, delimiter: str = "\n") -> str:
    """The assistant text of the path ending at ``leaf``: its steps joined by ``delimiter``."""
    return delimiter.join(n.text for n in _path(episode, leaf) if n.text)


def _version(path: Sequence[Node]) -> int | None:
    versions = [n.policy_version for n in path if n.policy_version is not None]
    return min(versions) if versions else None


class VerifiedPaths:
    """Turns episodes into examples of their verified-correct paths (see module doc)."""

    def __init__(
        self,
        keep: Keep = "chosen",
        min_reward: float = 1.0,
        dedupe: bool = True,
        delimiter: str = "\n",
        min_step_score: float | None = 0.5,
        weighting: Weighting = "uniform",
    ) -> None:
        self.weighting = weighting
        self.keep = keep
        self.min_reward = min_reward
        self.min_step_score = min_step_score
        self.rejected_by_process = 0
        self.dedupe = dedupe
        self.delimiter = delimiter
        self._seen: set[bytes] = set()

    def _fresh(self, task_id: str, text: str) -> bool:
        if not self.dedupe:
            return True
        digest = hashlib.blake2b(f"{task_id}\0{text}".encode(), digest_size=12).digest()
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> list[Example]:
        """The examples ``episode`` gives (possibly none)."""
        if episode.status != "ok":
            return []
        if self.keep == "chosen":
            if episode.reward is None or episode.reward < self.min_reward or not episode.chosen_path:
                return []
            leaves = [episode.nodes[episode.chosen_path[-1]]]
        else:
            leaves = [leaf for leaf in episode.leaves if await self._correct(episode, leaf, verifiers)]
        weight = 1.0
        if self.weighting == "pass_rate" and leaves:
            terminal = [leaf for leaf in episode.leaves if leaf.terminal] or leaves
            passed = 0
            for leaf in terminal:
                if await self._correct(episode, leaf, verifiers):
                    passed += await self._steps_pass(episode, _path(episode, leaf), verifiers)
            weight = 1.0 - passed / len(terminal)
            if weight <= 0.0:  # every sample solved it: nothing left to learn here
                return []
        out = []
        for leaf in leaves:
            path = _path(episode, leaf)
            if not await self._steps_pass(episode, path, verifiers):
                self.rejected_by_process += 1
                continue
            text = self.delimiter.join(n.text for n in path if n.text)
            if not text or not self._fresh(episode.task.id, text):
                continue
            out.append(
                Example(
                    messages=episode.task.as_messages(),
                    completion=text,
                    key=episode.key,
                    policy_version=_version(path),
                    weight=weight,
                    meta={"reward": episode.reward if leaf.id == (episode.chosen_path or [-1])[-1] else 1.0},
                )
            )
        return out

    async def _correct(self, episode: Episode, leaf: Node, verifiers: Verifiers | None) -> bool:
        if not leaf.terminal:
            return False
        cached = [v for k, v in leaf.scores.items() if k.startswith("outcome:")]
        if cached:
            return max(cached) >= self.min_reward
        if verifiers is None or verifiers.outcome is None or episode.task.answer is None:
            return False
        answer = next((n.answer for n in reversed(_path(episode, leaf)) if n.answer is not None), None)
        text = path_text(episode, leaf, self.delimiter)
        score = await verifiers.outcome.score(episode.task, answer, text)
        leaf.scores["outcome:" + verifiers.outcome.name] = score.value
        return score.value >= self.min_reward

    async def _steps_pass(self, episode: Episode, path: Sequence[Node], verifiers: Verifiers | None) -> bool:
        """Whether every step of ``path`` reaches ``min_step_score`` under the process verifier."""
        process = verifiers.process if verifiers is not None else None
        if process is None or self.min_step_score is None:
            return True
        previous: list[str] = []
        for node in path:
            if process.name not in node.scores:
                try:
                    score = await process.score_step(episode.task, previous, node.text)
                except Exception:  # a verifier that cannot judge the step does not accept it
                    return False
                node.scores[process.name] = score.value
            if node.scores[process.name] < self.min_step_score:
                return False
            previous.append(node.text)
        return True

    def state(self) -> list[bytes]:
        return sorted(self._seen)

    def load_state(self, seen: Sequence[bytes]) -> None:
        self._seen = set(seen)
