"""A continuous-batching generation engine for local transformers causal LMs (CPU or GPU).

One worker thread owns the model. Requests from any number of concurrent episodes
queue up; between two decode steps the worker admits new requests into the running
batch and retires finished ones, so requests join and leave a shared forward pass
(continuous batching, as in Orca / vLLM), without a paged kernel.

Design decisions:
- The running batch is one left-padded KV cache (``DynamicCache``) with a 2-D
  attention mask and per-row position ids. Joining rows are prefilled on their own,
  then merged by re-padding; finished rows are dropped when a quarter of the batch is
  done or at the next join, so the copy cost is amortised over many decode steps.
- Each layer of the running batch's cache is a buffer with room to grow (a
  ``DynamicLayer`` subclass): a decode step writes its one new position in place. transformers'
  ``DynamicLayer`` concatenates, i.e. copies the whole batch's KV every step, which
  at 64 rows of ~150 positions is ~80 MB of copying per step for a 4-layer model.
- Prefix KV cache (``prefix_cache``): the KV of every prompt prefilled and of every row
  that ended on a stop string (a step or a tool call, which the caller continues) is
  kept, LRU within a byte budget. A new prompt reuses the longest prefix any cached path
  shares, to the exact token, and prefills only the rest, so tree-search branches that
  share a path reuse it and a step's continuation prefills only the last sampled token
  and what the caller appended. ``n > 1`` prefills once and copies the KV n times.
  Prompts admitted together share one prefill pass whatever each reuses (the cached past
  left-padded to the longest reuse). Verify-and-backtrack's step requests reuse different
  lengths: one pass per length took 3.2 passes an admission, one shared pass 1.4 (300
  episodes from ``bundled-weak``); the prefill's time stayed the same, so it is compute,
  not calls.
- Sampling rows without a seed draw their tokens in one batched call per decode step;
  stop strings are looked for in a row's last tokens, not its whole decoded text.
- A row that ends on a stop string keeps the tokens that spelled it (only its text is
  cut before it): the ids are the record a step-level search continues and a learner
  trains on, and dropping them made each next call re-encode the delimiter, which a
  BPE may merge otherwise than the model sampled it. The EOS token is not kept.
- Hot weight swap with partial rollouts (as AReaL's and verl's): ``swap_weights`` only
  enqueues; between two decode steps the worker loads the new weights in place and
  goes on. Rows in flight keep their KV and continue under the new weights, admission
  never stops, and every token records the version it was sampled under
  (``Sequence.token_versions``; a result's ``version`` is its first, i.e. oldest,
  token's). The prefix cache is cleared (its KV belongs to the old weights). Draining
  the batch instead cost the loop a stalled engine at every publish: with a learner
  that steps every two seconds, most of its time.
- Why not transformers' own continuous batching (``init_continuous_batching``,
  transformers 5.23): it has paged attention, block (prefix) sharing, logprobs and
  per-request temperature / top-p, but ``num_return_sequences`` is fixed per manager
  (not per request), there are no stop strings and no per-request seeds, and nothing
  swaps weights between steps or tags results with a version; a full input queue
  drops requests with a warning. Each of these is what tree search and the online
  loop need per request, so the engine is ours; its speed is compared with
  ``transformers serve --continuous-batching`` (which uses that manager) in
  ``tests/bench/local_engine.py``.
- Logprobs are of the raw model distribution (before temperature), as vLLM reports;
  ``sample_logprobs`` are of the distribution each token was drawn from (temperature and
  top-p applied), the behaviour log-probs a policy-gradient learner corrects against.
- Threads: torch runs on the worker thread with ``threads`` OpenMP threads. Any other
  live thread of the process that has run torch ops keeps its own OpenMP (libgomp)
  team; once the teams hold more threads than there are cores, libgomp stops spinning
  at barriers and each small op pays futex wake-ups. On 2 cores this made the engine
  ~1.4x slower at concurrency 32 after ``generate`` had run on the main thread
  (``tests/bench/local_engine.py`` runs its baseline on a thread that ends for this
  reason). Where torch must run elsewhere in the process, compare ``threads=1``.
"""

from __future__ import annotations

import functools
import inspect
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.core.threads import CoreShare
from runtime.policy.local.prefix_cache import BLOCK, KV, PrefixCache, block_keys

__all__ = ["EngineRequest", "EngineResult", "EngineStats", "LocalEngine", "Sequence"]

PREFILL_POSITIONS = 4096  # at most this many (row, position) pairs in one batched prefill pass
PAST_POSITIONS = 16384  # at most this many (row, cached position) pairs stacked as its past
LOGITS_BUDGET = 1 << 24  # at most this many logits from one batched prefill pass


@dataclass(slots=True)
class Sequence:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str
    sample_logprobs: list[float] = field(default_factory=list)
    """Log-probability of each token under the distribution it was drawn from (temperature
    and top-p applied, renormalised; 0 for greedy rows): the behaviour policy of RL."""
    token_versions: list[int] = field(default_factory=list)
    """The policy version each token was sampled under (non-decreasing: a swap may land
    mid-sequence)."""
    stop_reason: str | None = None
    """The stop string the row ended on (its tokens are the last of ``token_ids``; the
    text is cut before it); None: it ended on EOS (not kept) or its token cap."""


@dataclass(slots=True)
class EngineResult:
    sequences: list[Sequence]
    prompt_tokens: int
    version: int
    error: BaseException | None = None


@dataclass(slots=True)
class EngineRequest:
    prompt_ids: list[int]
    n: int = 1
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = True
    done: Callable[[EngineResult], None] = lambda r: None
    cancelled: bool = False


@dataclass(slots=True)
class EngineStats:
    requests: int = 0
    generated_tokens: int = 0
    prefill_requested: int = 0
    prefill_computed: int = 0
    decode_steps: int = 0
    prefill_passes: int = 0
    swaps: int = 0
    peak_batch: int = 0

    @property
    def prefix_reuse(self) -> float:
        return 1.0 - self.prefill_computed / self.prefill_requested if self.prefill_requested else 0.0


ROOM = 64  # spare positions in a running-batch KV buffer; it grows by at least this much when full


def _buffers(like: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed key and value buffers shaped like ``like`` for ``batch`` rows of ``length``
    positions, plus ``ROOM``."""
    shape = (batch, like.shape[1], length + ROOM, like.shape[3])
    return like.new_zeros(shape), like.new_zeros(shape)


@functools.cache
def _slab_layer_class() -> Any:
    """A ``DynamicLayer`` whose KV lives in buffers with room to grow (module doc);
    built on first use because transformers is imported lazily here."""
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):  # type: ignore[no-untyped-call]
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self._k, self._v, self._n = keys, values, length
            self.keys, self.values = keys[:, :, :length], values[:, :, :length]
            self.device = keys.device
            self.is_initialized = True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            n, m = self._n, key_states.shape[-2]
            if n + m > self._k.shape[2]:
                k, v = _buffers(self._k, self._k.shape[0], n + max(n // 2, m))
                k[:, :, :n] = self._k[:, :, :n]
                v[:, :, :n] = self._v[:, :, :n]
                self._k, self._v = k, v
            self._k[:, :, n : n + m] = key_states
            self._v[:, :, n : n + m] = value_states
            self._n = n + m
            self.keys, self.values = self._k[:, :, : n + m], self._v[:, :, : n + m]
            return self.keys, self.values

    return SlabLayer


def _slab_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> Any:
    """A ``DynamicCache`` over per-layer (keys, values) buffers holding ``length`` positions."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = [_slab_layer_class()(k, v, length) for k, v in layers]
    cache.layer_class_to_replicate = None
    return cache


@dataclass(slots=True)
class _Row:
    req: EngineRequest
    index: int
    generator: torch.Generator | None
    length: int  # real tokens in the cache (prompt + generated so far, before the pending token)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finished: str | None = None
    text: str = ""
    version: int = 0  # the engine's version when the row was admitted
    stop: str | None = None  # the stop string it ended on


class _Group:
    """Results of the n rows of one request, delivered once all are finished."""

    def __init__(self, req: EngineRequest, prompt_tokens: int, version: int) -> None:
        self.req = req
        self.prompt_tokens = prompt_tokens
        self.version = version
        self.sequences: list[Sequence | None] = [None] * req.n
        self.left = req.n


class LocalEngine:
    """Continuous-batching engine over a loaded model and tokenizer (see module doc)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 64,
        prefix_cache_mb: int = 1024,
        version: int = 0,
        threads: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tok = tokenizer
        self.max_batch = max_batch
        self.context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos = _eos_ids(model, tokenizer)
        self._cache_arg = _cache_argument(model)
        self.version = version
        self.threads = threads
        self.share: CoreShare | None = None
        """Cores handed with a learner: the engine takes what the learner does not hold."""
        self._threads_now = 0
        self.stats = EngineStats()
        self._queue: queue.Queue[EngineRequest | tuple[str, Any]] = queue.Queue()
        self._waiting: list[EngineRequest] = []
        self._rows: list[_Row] = []
        self._groups: dict[int, _Group] = {}
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self._prefix = PrefixCache(prefix_cache_mb << 20)
        self._pending_swap: tuple[dict[str, torch.Tensor], int, Callable[[], None]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="searchlearn-engine", daemon=True)
        self._thread.start()

    # -- public, thread-safe ---------------------------------------------------------------

    def submit(self, req: EngineRequest) -> None:
        if not req.prompt_ids:
            raise ValueError("empty prompt")
        if req.max_tokens <= 0:
            raise ValueError(f"max_tokens must be ≥ 1, got {req.max_tokens}")
        if req.n < 1:
            raise ValueError(f"n must be ≥ 1, got {req.n}")
        if len(req.prompt_ids) >= self.context:
            raise ValueError(f"prompt of {len(req.prompt_ids)} tokens does not fit the {self.context}-token context")
        self._queue.put(req)

    def swap_weights(
        self, state_dict: dict[str, torch.Tensor], version: int, done: Callable[[], None] = lambda: None
    ) -> None:
        """Serve ``version`` from ``state_dict`` once the running batch has finished."""
        self._queue.put(("swap", (state_dict, version, done)))

    def close(self) -> None:
        self._stop.set()
        self._queue.put(("stop", None))
        self._thread.join(timeout=30)

    # -- worker thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while not self._stop.is_set():
                self._drain_queue(block=not self._rows and not self._waiting and self._pending_swap is None)
                if self.share is not None and (free := self.share.free()) != self._threads_now:
                    torch.set_num_threads(free)
                    self._threads_now = free
                try:
                    if self._pending_swap is not None:
                        self._apply_swap()
                    self._admit()
                    if self._rows:
                        self._step()
                except Exception as exc:  # never let one bad batch kill the engine
                    self._fail_all(exc)

    def _drain_queue(self, block: bool) -> None:
        try:
            item = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, EngineRequest):
                self._waiting.append(item)
            elif item[0] == "swap":
                self._pending_swap = item[1]
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _apply_swap(self) -> None:
        assert self._pending_swap is not None
        state, version, done = self._pending_swap
        self._pending_swap = None
        self.model.load_state_dict(state, strict=False)
        self._prefix.clear()
        self.version = version
        self.stats.swaps += 1
        done()

    def _admit(self) -> None:
        if not self._waiting:
            return
        chosen: list[tuple[EngineRequest, KV | None, int]] = []
        this_round: set[int] = set()  # block keys of the prompts chosen so far
        rows = 0
        live = sum(not r.finished for r in self._rows)
        while self._waiting:
            req = self._waiting[0]
            if live + rows + req.n > self.max_batch and (live or rows):
                break  # a request larger than max_batch still runs, alone
            if req.cancelled:
                self._waiting.pop(0)
                continue
            ids = req.prompt_ids
            keys = block_keys(ids, len(ids))
            hit, reused = self._prefix.lookup(ids, keys)
            if _longest_aligned(keys[: (len(ids) - 1) // BLOCK], this_round) > reused:
                break  # it shares more with a prompt prefilled now: next round, it reuses that one's KV
            self._waiting.pop(0)
            this_round.update(keys)
            chosen.append((req, hit, reused))
            rows += req.n
        new_rows: list[tuple[_Row, KV, int]] = []
        for (req, _, _), result in zip(chosen, self._prefill_many(chosen), strict=True):
            if isinstance(result, BaseException):
                req.done(EngineResult([], len(req.prompt_ids), self.version, result))
                continue
            kv, logits = result
            self._groups[id(req)] = _Group(req, len(req.prompt_ids), self.version)
            self.stats.requests += 1
            for i in range(req.n):
                gen = torch.Generator(self.device).manual_seed(req.seed + i) if req.seed is not None else None
                row = _Row(req, i, gen, len(req.prompt_ids), version=self.version)
                new_rows.append((row, kv, 0))
                self._choose(row, logits)
        if new_rows:
            self._merge(new_rows)

    def _prefill_many(
        self, chosen: list[tuple[EngineRequest, KV | None, int]]
    ) -> list[tuple[KV, torch.Tensor] | BaseException]:
        """Prefill the chosen prompts in as few forward passes as fit: prompts share one
        pass whatever each reuses from the prefix cache (sorted by what is left to
        compute, chunked to ``PREFILL_POSITIONS`` and a bounded share of padding); if a
        shared pass fails, its prompts are redone one by one, so a bad prompt fails only
        its own request."""
        results: list[tuple[KV, torch.Tensor] | BaseException | None] = [None] * len(chosen)
        for req, _, _ in chosen:
            self.stats.prefill_requested += len(req.prompt_ids)
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 0)
        rest = [len(req.prompt_ids) - reused for req, _, reused in chosen]
        order = sorted(range(len(chosen)), key=rest.__getitem__)
        for chunk in _chunks(order, [rest[i] for i in order], [chosen[i][2] for i in order], vocab):
            try:
                for i, out in zip(chunk, self._prefill_batch([chosen[i] for i in chunk]), strict=True):
                    results[i] = out
            except Exception as exc:
                for i in chunk:
                    try:
                        results[i] = self._prefill_batch([chosen[i]])[0] if len(chunk) > 1 else exc
                    except Exception as one:
                        results[i] = one
        return [r if r is not None else RuntimeError("prompt not prefilled") for r in results]

    def _prefill_batch(self, members: list[tuple[EngineRequest, KV | None, int]]) -> list[tuple[KV, torch.Tensor]]:
        """One forward pass over prompts that each reuse some cached positions (row j:
        ``r_j`` of them). The past is the rows' cached KV left-padded to the longest
        reuse R, the remaining tokens right-padded after it, each row at its own
        positions (the running batch's layout): a causal model never looks at the
        padding after a real token, and every padding position has real tokens to
        attend to. Returns each prompt's KV and its last position's logits."""
        from transformers import DynamicCache

        reuses = [reused for _, _, reused in members]
        past = max(reuses)
        rests = [req.prompt_ids[reused:] for req, _, reused in members]
        width = max(len(r) for r in rests)
        batch = len(rests)
        input_ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, past + width, dtype=torch.long)
        for j, (rest, reused) in enumerate(zip(rests, reuses, strict=True)):
            input_ids[j, : len(rest)] = torch.tensor(rest)
            mask[j, past - reused : past + len(rest)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = torch.tensor(reuses).unsqueeze(1) + torch.arange(width).unsqueeze(0)
        cache = DynamicCache()
        if past:
            like = next(hit for _, hit, _ in members if hit is not None)
            for layer in range(len(like)):
                shape = (batch, like[layer][0].shape[1], past, like[layer][0].shape[3])
                keys, values = like[layer][0].new_zeros(shape), like[layer][1].new_zeros(shape)
                for j, (_, hit, reused) in enumerate(members):
                    if hit is not None and reused:
                        keys[j, :, past - reused :] = hit[layer][0][0, :, :reused]
                        values[j, :, past - reused :] = hit[layer][1][0, :, :reused]
                cache.update(keys, values, layer)
        last = [len(rest) - 1 for rest in rests]
        keep = sorted(set(last))
        out = self.model(
            input_ids=input_ids,
            position_ids=positions.to(self.device),
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=torch.tensor(keep, device=self.device),
            **{self._cache_arg: cache},
        )
        self.stats.prefill_computed += sum(len(rest) for rest in rests)
        self.stats.prefill_passes += 1
        layers = _cache_of(out).layers
        results = []
        for j, (req, _, reused) in enumerate(members):
            start, end = past - reused, past + len(rests[j])
            kv = [
                (layer.keys[j : j + 1, :, start:end].clone(), layer.values[j : j + 1, :, start:end].clone())
                for layer in layers
            ]
            self._prefix.add(req.prompt_ids, kv)
            results.append((kv, out.logits[j, keep.index(last[j])].float()))
        return results

    def _merge(self, new_rows: list[tuple[_Row, KV, int]]) -> None:
        """Put the new rows into the running batch: into the places of finished rows when
        there are enough and every new row fits the batch's width (no copy of the running
        rows); otherwise left-pad the running batch and the new rows to one length and
        stack them into new buffers."""
        if self._fill_holes(new_rows):
            return
        self._compact(force=True)
        old_len = self._mask.shape[1] if self._mask is not None else 0
        width = max([old_len] + [kv[0][0].shape[2] for _, kv, _ in new_rows])
        layers = len(new_rows[0][1])
        total = len(self._rows) + len(new_rows)
        slabs = []
        mask = torch.zeros(total, width, dtype=torch.long, device=self.device)
        for layer in range(layers):
            keys, values = _buffers(new_rows[0][1][layer][0], total, width)
            if self._rows:
                old = self._cache.layers[layer]
                keys[: len(self._rows), :, width - old_len : width] = old.keys
                values[: len(self._rows), :, width - old_len : width] = old.values
            for j, (_, kv, _) in enumerate(new_rows):
                k, v = kv[layer]
                keys[len(self._rows) + j, :, width - k.shape[2] : width] = k[0]
                values[len(self._rows) + j, :, width - v.shape[2] : width] = v[0]
            slabs.append((keys, values))
        cache = _slab_cache(slabs, width)
        if self._rows and self._mask is not None:
            mask[: len(self._rows), width - old_len :] = self._mask
        for j, (_, kv, _) in enumerate(new_rows):
            mask[len(self._rows) + j, width - kv[0][0].shape[2] :] = 1
        self._rows.extend(row for row, _, _ in new_rows)
        self._cache, self._mask = cache, mask
        self.stats.peak_batch = max(self.stats.peak_batch, len(self._rows))

    def _fill_holes(self, new_rows: list[tuple[_Row, KV, int]]) -> bool:
        holes = [i for i, r in enumerate(self._rows) if r.finished]
        if self._mask is None or len(new_rows) > len(holes):
            return False
        width = self._mask.shape[1]
        if any(kv[0][0].shape[2] > width for _, kv, _ in new_rows):
            return False
        for (row, kv, _), i in zip(new_rows, holes, strict=False):
            length = kv[0][0].shape[2]
            for layer, (k, v) in zip(self._cache.layers, kv, strict=True):
                layer.keys[i, :, width - length :] = k[0]  # a view of the layer's buffer: written in place
                layer.values[i, :, width - length :] = v[0]
            self._mask[i] = 0
            self._mask[i, width - length :] = 1
            self._rows[i] = row
        return True

    def _compact(self, force: bool = False) -> None:
        """Drop finished rows (and columns that are padding in every row left).

        Unforced, only when it pays: a quarter of the rows are finished and no request
        waits to take their places, or half the columns are padding for every live row
        (rows that join into finished rows' places keep the batch as wide as it was)."""
        if not self._rows:
            return
        done = [i for i, r in enumerate(self._rows) if r.finished]
        if force:
            if not done:
                return
        else:
            assert self._mask is not None
            live = [r.length for r in self._rows if not r.finished]
            idle = bool(done) and len(done) * 4 >= len(self._rows) and not self._waiting and self._queue.empty()
            wide = bool(live) and 2 * max(live) + ROOM <= self._mask.shape[1]
            if not (idle or wide):
                return
        keep = [i for i, r in enumerate(self._rows) if not r.finished]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        assert self._mask is not None
        mask = self._mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0]) if mask.any() else 0
        self._mask = mask[:, start:]
        width = self._mask.shape[1]
        slabs = []
        for layer in self._cache.layers:
            keys, values = _buffers(layer.keys, len(keep), width)
            keys[:, :, :width] = layer.keys[index, :, start:]
            values[:, :, :width] = layer.values[index, :, start:]
            slabs.append((keys, values))
        self._cache = _slab_cache(slabs, width)

    def _step(self) -> None:
        """One decode step for every unfinished row."""
        assert self._mask is not None
        live = [r for r in self._rows if not r.finished]
        if not live:
            self._compact(force=True)
            return
        tokens = torch.tensor([[r.tokens[-1] if r.tokens else 0] for r in self._rows], device=self.device)
        positions = torch.tensor([[r.length] for r in self._rows], device=self.device)
        ones = torch.ones(len(self._rows), 1, dtype=torch.long, device=self.device)
        mask = torch.cat([self._mask, ones], dim=1)
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            **{self._cache_arg: self._cache},
        )
        self._cache, self._mask = _cache_of(out), mask
        self.stats.decode_steps += 1
        logits = out.logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        picks = logits.argmax(dim=-1, keepdim=True)
        greedy, greedy_logprobs = picks[:, 0].tolist(), logprobs.gather(1, picks)[:, 0].tolist()
        sampled = self._sample_rows(logits, logprobs)
        for i, row in enumerate(self._rows):
            if row.finished:
                continue
            if row.req.cancelled:
                row.finished = "cancelled"
                continue
            row.length += 1
            if row.req.temperature <= 0:  # greedy rows need no per-row tensor work
                self._accept(row, greedy[i], greedy_logprobs[i], 0.0)
            elif i in sampled:
                self._accept(row, *sampled[i])
            else:  # a seeded row draws from its own generator
                self._choose(row, logits[i], logprobs[i])
            if row.stop is not None and row.version == self.version:
                self._keep_path(i, row)
        self._compact()

    def _keep_path(self, i: int, row: _Row) -> None:
        """Cache the KV of row ``i``, which has just ended on a stop string: its prompt and
        the tokens whose KV the batch holds (all but the last sampled one). Its positions
        are the last ``row.length`` columns of the running batch."""
        width = self._cache.layers[0].keys.shape[2]
        kv = [
            (
                layer.keys[i : i + 1, :, width - row.length :].clone(),
                layer.values[i : i + 1, :, width - row.length :].clone(),
            )
            for layer in self._cache.layers
        ]
        self._prefix.add((row.req.prompt_ids + row.tokens)[: row.length], kv)

    def _sample_rows(self, logits: torch.Tensor, logprobs: torch.Tensor) -> dict[int, tuple[int, float, float]]:
        """Sample the next token of every live unseeded sampling row in one batched draw
        (temperature and top-p per row, as ``_choose`` does one row at a time): row index
        -> (token, raw log-prob, log-prob under the distribution it was drawn from)."""
        rows = [
            i
            for i, r in enumerate(self._rows)
            if not r.finished and r.req.temperature > 0 and r.generator is None and not r.req.cancelled
        ]
        if not rows:
            return {}
        index = torch.tensor(rows, device=logits.device)
        temperature = torch.tensor([self._rows[i].req.temperature for i in rows], device=logits.device)
        probs = torch.softmax(logits[index] / temperature.unsqueeze(1), dim=-1)
        top_p = [self._rows[i].req.top_p for i in rows]
        if min(top_p) < 1.0:
            sorted_p, order = torch.sort(probs, descending=True, dim=-1)
            keep = torch.cumsum(sorted_p, -1) - sorted_p < torch.tensor(top_p, device=logits.device).unsqueeze(1)
            probs = torch.zeros_like(probs).scatter(1, order, sorted_p * keep)
        tokens = torch.multinomial(probs, 1)
        sampled = torch.log(probs.gather(1, tokens)[:, 0] / probs.sum(-1))
        raw = logprobs[index].gather(1, tokens)[:, 0]
        return dict(zip(rows, zip(tokens[:, 0].tolist(), raw.tolist(), sampled.tolist(), strict=True), strict=True))

    def _choose(self, row: _Row, logits: torch.Tensor, logprobs: torch.Tensor | None = None) -> None:
        """Sample the next token of ``row`` and check whether it is done."""
        req = row.req
        if logprobs is None:
            logprobs = torch.log_softmax(logits, dim=-1)
        if req.temperature <= 0:
            token, sampled = int(torch.argmax(logits)), 0.0
        else:
            probs = torch.softmax(logits / req.temperature, dim=-1)
            if req.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, 0) - sorted_p < req.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            token = int(torch.multinomial(probs, 1, generator=row.generator))
            sampled = float(torch.log(probs[token] / probs.sum()))
        self._accept(row, token, float(logprobs[token]), sampled)

    def _accept(self, row: _Row, token: int, logprob: float, sampled: float) -> None:
        """Append ``token`` to ``row`` and check whether the row is done."""
        req = row.req
        self.stats.generated_tokens += 1
        if token in self.eos:
            self._finish(row, "stop")
            return
        row.tokens.append(token)
        row.logprobs.append(logprob)
        row.sample_logprobs.append(sampled)
        row.versions.append(self.version)
        if req.stop:
            # Decode only a tail long enough to hold any stop string (a character is at
            # most 4 tokens of a byte-level vocabulary); the whole text only on a hit.
            window = 4 * max(len(s) for s in req.stop) + 8
            tail = self.tok.decode(row.tokens[-window:], skip_special_tokens=True)
            if any(s in tail for s in req.stop):
                row.text = self.tok.decode(row.tokens, skip_special_tokens=True)
                found = [(i, s) for s in req.stop if (i := row.text.find(s)) >= 0]
                if found:
                    cut, stop = min(found)
                    self._finish(row, "stop", cut=row.text[:cut], stop=stop)
                    return
        if len(row.tokens) >= req.max_tokens or row.length + 1 >= self.context:
            self._finish(row, "length")

    def _finish(self, row: _Row, reason: str, cut: str | None = None, stop: str | None = None) -> None:
        """Deliver ``row``; ``cut``: its text up to the stop string ``stop`` it ended on.
        The tokens that spelled the stop string stay in its ids (token ids are the record:
        a continuation sends them on, a learner trains on them); only the text is cut."""
        row.finished, row.stop = reason, stop
        req = row.req
        row.text = cut if cut is not None else self.tok.decode(row.tokens, skip_special_tokens=True)
        group = self._groups[id(req)]
        group.sequences[row.index] = Sequence(
            row.tokens, row.logprobs, row.text, reason, row.sample_logprobs, row.versions, stop
        )
        group.left -= 1
        if group.left == 0:
            del self._groups[id(req)]
            if not req.cancelled:
                sequences = [s for s in group.sequences if s is not None]
                req.done(EngineResult(sequences, group.prompt_tokens, group.version))

    def _fail_all(self, exc: BaseException) -> None:
        for group in list(self._groups.values()):
            group.req.done(EngineResult([], group.prompt_tokens, group.version, exc))
        self._groups.clear()
        self._rows, self._cache, self._mask = [], None, None


def _longest_aligned(keys: list[int], chosen: set[int]) -> int:
    """Length of the longest prefix among a prompt's ``BLOCK``-aligned proper prefixes
    (``keys``: their block keys) whose key is in ``chosen``."""
    for level in range(len(keys) - 1, -1, -1):
        if keys[level] in chosen:
            return BLOCK * (level + 1)
    return 0


def _chunks(members: list[int], lengths: list[int], reuses: list[int], vocab: int) -> list[list[int]]:
    """Consecutive runs of ``members`` (sorted by length) small enough for one prefill pass:
    at most ``PREFILL_POSITIONS`` padded new positions, ``PAST_POSITIONS`` padded cached
    ones (``reuses``: what each member reuses) and ``LOGITS_BUDGET`` logits, and at most
    half of the new positions padding (a long prompt does not pad many short ones)."""
    chunks: list[list[int]] = []
    real = past = 0
    for member, length, reused in zip(members, lengths, reuses, strict=True):
        if chunks:
            rows = len(chunks[-1]) + 1
            fits = rows * length <= PREFILL_POSITIONS and rows * min(rows, length) * vocab <= LOGITS_BUDGET
            fits = fits and rows * max(past, reused) <= PAST_POSITIONS and rows * length <= 2 * (real + length)
            if fits:
                chunks[-1].append(member)
                real, past = real + length, max(past, reused)
                continue
        chunks.append([member])
        real, past = length, reused
    return chunks


def _cache_argument(model: Any) -> str:
    """The forward keyword of the KV cache: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (still accepted there, with a FutureWarning)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, list) else [value])
    return ids
