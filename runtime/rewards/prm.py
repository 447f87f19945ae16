"""A process reward model (PRM) over any local transformers checkpoint (Math-Shepherd,
Wang et al. 2024; Lightman et al. 2023 for step-level reward models).

Scoring: the task's messages (chat template) plus the steps, each followed by the step
delimiter, go through the model once; a step's score is read at the last token of its
delimiter, so one forward pass scores every step of a path. Two kinds of checkpoint:
- a ``*ForTokenClassification`` model (a value head): ``sigmoid(logit)`` with one label,
  ``softmax(logits)[1]`` with two;
- a causal LM (Math-Shepherd style): ``P(good) / (P(good) + P(bad))`` of the next token
  at that position, for configurable ``good_token`` / ``bad_token``.

Design decisions:
- Batched across callers: concurrent ``score_step`` calls queue up; whoever holds the
  model lock runs everything queued (up to ``batch_size``) in one padded forward pass in
  a worker thread, so a beam's candidates are scored together without any background
  task. Results are cached per (messages, prefix), so aggregating a path's step scores
  never recomputes a prefix.
- Training one lives with the learners (``learners.prm``): this module only scores.
- Placement: ``device`` (auto: the first GPU torch sees) and ``dtype`` (bfloat16 halves
  the memory; the scores are read from float32 logits either way). A GPU named where
  torch sees none is a one-line ConfigError naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr

from runtime.core.errors import ConfigError
from runtime.core.log import get_logger
from runtime.core.types import Task
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.placement import DEVICE_PATTERN, DtypeName, resolve_device, resolve_dtype
from runtime.rewards.base import Score, Verifier, VerifierEnv
from runtime.rewards.batching import MicroBatcher

__all__ = ["ProcessRewardModel", "encode_steps", "pad_rows"]

log = get_logger("searchlearn.prm")


class ProcessRewardModel(Verifier):
    """Process verifier backed by a local checkpoint (see module doc)."""

    name: Literal["prm"] = "prm"
    path: str
    """Checkpoint directory of the PRM (a value-head or a causal-LM checkpoint)."""
    batch_size: int = Field(32, ge=1, le=1024)
    """Paths scored in one forward pass."""
    good_token: str = "+"
    """Causal-LM PRMs: the token that means a good step."""
    bad_token: str = "-"
    """Causal-LM PRMs: the token that means a bad step."""
    threads: int | None = Field(None, ge=1)
    """torch threads of the forward passes (None: a share of the process's cores)."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """Where the model scores: auto (the first GPU when torch sees one, else the CPU),
    cpu, cuda or cuda:N."""
    dtype: DtypeName = "float32"
    """The model's weights: float32, or bfloat16 (half the memory; scores read in float32)."""
    _delimiter: str = PrivateAttr("\n")
    _tokenizer: Any = PrivateAttr(None)
    _model: Any = PrivateAttr(None)
    _device: Any = PrivateAttr(None)
    _value_head: bool = PrivateAttr(False)
    _good_bad: list[int] = PrivateAttr(default_factory=list)
    _batcher: Any = PrivateAttr(None)
    _forward_passes: int = PrivateAttr(0)

    def __init__(self, path: str | Path | None = None, /, *, delimiter: str = "\n", **settings: Any) -> None:
        """``ProcessRewardModel(path, ...)`` loads the checkpoint; a config section (the
        settings alone, ``path`` among them) is only validated, and ``build`` loads it."""
        super().__init__(**({"path": str(path)} if path is not None else {}), **settings)
        self._delimiter = delimiter
        if path is not None:
            self._load()

    def _load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

        directory = resolve_checkpoint(self.path)
        self._tokenizer = AutoTokenizer.from_pretrained(directory)
        config = AutoConfig.from_pretrained(directory)
        self._value_head = any(a.endswith("ForTokenClassification") for a in config.architectures or [])
        loader = AutoModelForTokenClassification if self._value_head else AutoModelForCausalLM
        self._device = torch.device(resolve_device(self.device))
        self._model = loader.from_pretrained(directory, dtype=resolve_dtype(self.dtype)).to(self._device).eval()
        if not self._value_head:
            ids = [self._tokenizer.convert_tokens_to_ids(t) for t in (self.good_token, self.bad_token)]
            if any(i is None or i == self._tokenizer.unk_token_id for i in ids):
                raise ValueError(
                    f"good/bad tokens {self.good_token!r}/{self.bad_token!r} are not single tokens of {directory}"
                )
            self._good_bad = ids
        self._batcher = MicroBatcher(self._forward, self.batch_size, "prm forward")

    def build(self, env: VerifierEnv) -> ProcessRewardModel:
        try:
            resolve_device(self.device)
        except ValueError as exc:  # a GPU named where there is none
            raise ConfigError(f"{env.field}.device: {exc}") from None
        try:
            settings = self.model_dump(exclude={"name", "path"})
            settings["threads"] = self.threads or env.threads
            return ProcessRewardModel(self.path, delimiter=env.delimiter, **settings)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise ConfigError(f"{env.field}.path: {exc}") from None

    @property
    def value_head(self) -> bool:
        """Whether the checkpoint is a value head (else a causal LM read at good/bad tokens)."""
        return self._value_head

    @property
    def forward_passes(self) -> int:
        """Forward passes run so far (batching is visible in it)."""
        return self._forward_passes

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        scores = await self.score_steps(task.as_messages(), [*previous, step])
        return Score(scores[-1])

    async def score_steps(self, messages: list[dict[str, str]], steps: Sequence[str]) -> list[float]:
        """Scores of every step of one path (batched with concurrent callers, cached)."""
        key = json.dumps([messages, list(steps)])
        result: list[float] = await self._batcher(key, (messages, list(steps)))
        return result

    def encode(self, messages: list[dict[str, str]], steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of a path and the index of the token that scores each step."""
        return encode_steps(self._tokenizer, self._delimiter, messages, steps)

    def _forward(self, items: list[tuple[list[dict[str, str]], list[str]]]) -> list[list[float]]:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        encoded = [self.encode(m, s) for m, s in items]
        ids, mask = pad_rows([e[0] for e in encoded], self._tokenizer.pad_token_id or 0)
        with torch.no_grad():
            logits = self._model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device)).logits.float()
        self._forward_passes += 1
        out = []
        for row, (_, positions) in enumerate(encoded):
            at = logits[row, positions]
            if self._value_head:
                probs = torch.sigmoid(at[:, 0]) if at.shape[-1] == 1 else torch.softmax(at, -1)[:, 1]
            else:
                pair = at[:, self._good_bad]
                probs = torch.softmax(pair, -1)[:, 0]
            out.append([float(p) for p in probs])
        return out

    async def aclose(self) -> None:
        return None


def encode_steps(
    tokenizer: Any, delimiter: str, messages: list[dict[str, str]], steps: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Token ids of the chat-rendered messages plus the steps (each followed by the
    delimiter), and for each step the index of the last token of its delimiter."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ends = []
    for s in steps:
        text += s + delimiter
        ends.append(len(text))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in enc["offset_mapping"]]
    positions = [max(i for i, start in enumerate(starts) if start < end) for end in ends]
    return list(enc["input_ids"]), positions


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded ids and attention mask (scores are read at real positions only)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask
