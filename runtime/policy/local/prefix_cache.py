"""The local engine's prefix KV cache: any cached token path reused to the exact token.

What is cached: the KV of every prompt the engine prefilled, and of every row that ended
on a stop string (its prompt and the tokens it generated, up to the last one, whose KV
a decode step had not yet computed). A row that stops on a stop string is a step or a
tool call the caller will most likely continue (verify-and-backtrack's next step, an
agent's next turn after the observation), and its continuation's prompt starts with
exactly these ids (the engine keeps the ids of a stop string; module doc of ``engine``):
only the last sampled token and what the caller appends are prefilled again. Rows that
end on EOS or their token cap (whole solutions) are not cached.

Design decisions:
- Lookup is exact to the token: the longest prefix of a new prompt that some cached
  path shares, at most the prompt's length less one (the last position is computed for
  its logits). Paths are found through their ``BLOCK``-aligned prefixes (chained hashes
  of 16-token blocks, so keying a path costs its length, not its length squared), then
  compared token by token with each candidate; a hash collision only costs a compare.
  The 16-token index replaced a cache that reused whole blocks only, which prefilled
  the tail again (up to 15 tokens of every call).
- Each aligned prefix remembers its ``FANOUT`` most recent paths: a node's siblings share
  its prefix, and the one a continuation extends is almost always among the last few.
- LRU over paths, bounded in bytes of KV (``budget_bytes``), not in entries: SmolLM2's
  KV is ~46 KB a position, the tiny models' under 1 KB.
- Weights change the KV: the engine clears the cache at every swap, and never caches a
  row that began under an older version.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

__all__ = ["BLOCK", "FANOUT", "KV", "PrefixCache", "block_keys"]

BLOCK = 16
FANOUT = 8

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [1, heads, positions, head_dim]


def block_keys(ids: Sequence[int], upto: int) -> list[int]:
    """Keys of ``ids[:16]``, ``ids[:32]``, ... up to ``upto`` tokens (chained hashes of the
    16-token blocks: key ``i`` stands for the whole prefix of ``16 * (i + 1)`` tokens)."""
    keys: list[int] = []
    key = 0
    for end in range(BLOCK, upto + 1, BLOCK):
        key = hash((key, tuple(ids[end - BLOCK : end])))
        keys.append(key)
    return keys


def _shared(path: tuple[int, ...], ids: tuple[int, ...], aligned: int, limit: int) -> int:
    """How many leading tokens ``path`` and ``ids`` share, at most ``limit``; 0 when they
    differ within the first ``aligned`` tokens (a hash collision)."""
    if path[:aligned] != ids[:aligned]:
        return 0
    n, end = aligned, min(len(path), limit)
    while n < end and path[n] == ids[n]:
        n += 1
    return n


class PrefixCache:
    """Token paths and their KV, LRU, found by any prefix to the exact token (module doc)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self._paths: OrderedDict[int, tuple[tuple[int, ...], KV, list[int], int]] = OrderedDict()
        self._index: dict[int, list[int]] = {}  # block key -> path numbers, most recent last
        self._next = 0

    def __len__(self) -> int:
        return len(self._paths)

    def clear(self) -> None:
        self._paths.clear()
        self._index.clear()
        self.bytes = 0

    def add(self, ids: Sequence[int], kv: KV) -> None:
        """Cache ``kv``, the KV of the positions of ``ids`` (one per id)."""
        if len(ids) < BLOCK:
            return  # nothing to index it by
        path = tuple(ids)
        keys = block_keys(path, len(path))
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if size > self.budget_bytes:
            return
        number, self._next = self._next, self._next + 1
        self._paths[number] = (path, kv, keys, size)
        self.bytes += size
        for key in keys:
            bucket = self._index.setdefault(key, [])
            bucket.append(number)
            if len(bucket) > FANOUT:
                del bucket[0]
        while self.bytes > self.budget_bytes:
            self._evict()

    def lookup(self, ids: Sequence[int], keys: list[int] | None = None) -> tuple[KV | None, int]:
        """The KV of a cached path and how many leading tokens of ``ids`` it covers (the
        longest any cached path shares, at most ``len(ids) - 1``); ``(None, 0)``: none.
        ``keys``: ``block_keys(ids, len(ids))`` where the caller has them already."""
        limit = len(ids) - 1
        if limit < BLOCK or not self._paths:
            return None, 0
        wanted = tuple(ids)
        keys = (keys if keys is not None else block_keys(wanted, len(wanted)))[: limit // BLOCK]
        for level in range(len(keys) - 1, -1, -1):
            aligned = BLOCK * (level + 1)
            best, chosen = 0, -1
            for number in self._index.get(keys[level], ()):
                length = _shared(self._paths[number][0], wanted, aligned, limit)
                if length > best:
                    best, chosen = length, number
            if best >= aligned:
                self._paths.move_to_end(chosen)
                return self._paths[chosen][1], best
        return None, 0

    def _evict(self) -> None:
        number, (_, _, keys, size) = self._paths.popitem(last=False)
        self.bytes -= size
        for key in keys:
            bucket = self._index.get(key)
            if bucket is not None and number in bucket:
                bucket.remove(number)
                if not bucket:
                    del self._index[key]
