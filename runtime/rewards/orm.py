"""A learned outcome reward model (ORM) over a local transformers checkpoint: the
Bradley-Terry model that ``learner.kind: orm`` trains (Ouyang et al. 2022; Cobbe et al.
2021 for verifiers that rerank sampled solutions), served as an outcome verifier.

Scoring: the task's messages (chat template, generation prompt) plus the whole solution
and the end-of-sequence token go through the model once; the scalar reward ``r`` is read
at the last token, exactly where the learner trained it (:func:`encode_solution` is the
one encoding both use). The verifier's score is ``sigmoid(r / temperature)``: the
Bradley-Terry probability that this solution beats one of reward 0, a number in (0, 1)
that ranks solutions as ``r`` does, so ``best_of_n`` with ``selection: outcome`` keeps the
solution the model prefers, and the episode's reward is that probability.

Design decisions:
- A checkpoint is a one-label ``*ForTokenClassification`` model (what
  ``learners.reward_models`` exports); anything else is refused when the run is built,
  naming ``verifiers.outcome.path``: a causal LM or a multi-label head has no scalar
  Bradley-Terry reward to read.
- Bradley-Terry rewards are only defined up to a constant, so the [0, 1] score is not a
  calibrated probability of being right; it is a monotone map of the reward, which is
  what reranking needs, and a bounded reward for learners. ``temperature`` spreads or
  sharpens it.
- Needs no reference answer (``needs_reference`` false): it scores any finished
  solution, so a run's tasks without answers still get a reward.
- Batched across callers like :class:`~runtime.rewards.prm.ProcessRewardModel`:
  concurrent ``score`` calls queue up and whoever holds the model lock runs what is
  queued (up to ``batch_size``) in one padded forward pass in a worker thread; results
  are cached per (messages, solution).
- Placement as the PRM's: ``device`` (auto: the first GPU torch sees, else the CPU) and
  ``dtype`` (bfloat16 halves the memory; the reward is read from float32 logits either
  way). A GPU named where torch sees none is a one-line ConfigError naming the field
  (``verifiers.outcome.device``), before the checkpoint loads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from runtime.core.errors import ConfigError
from runtime.core.types import Task
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.placement import DEVICE_PATTERN, DtypeName, resolve_device, resolve_dtype
from runtime.rewards.base import Score, Verifier, VerifierEnv
from runtime.rewards.batching import MicroBatcher
from runtime.rewards.prm import pad_rows

__all__ = ["DEFAULT_MAX_LENGTH", "OutcomeRewardModel", "encode_solution"]

DEFAULT_MAX_LENGTH = 512  # the learners' default max_length: what a trained ORM saw


def encode_solution(tokenizer: Any, messages: list[dict[str, str]], text: str, max_length: int) -> list[int]:
    """Token ids an outcome reward model reads ``text`` (a whole solution, or a prefix
    plus a continuation) with: the chat-rendered messages with the generation prompt,
    the text, the end-of-sequence token; cut to ``max_length``. The reward is read at
    the last id. The learner trains on these ids and the verifier scores them."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids: list[int] = tokenizer(prompt + text + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    return ids[:max_length]


class OutcomeRewardModel(Verifier):
    """Outcome verifier backed by a trained Bradley-Terry checkpoint: a finished solution
    scores sigmoid(reward / temperature) (see the module doc)."""

    name: Literal["orm"] = "orm"
    needs_reference: ClassVar[bool] = False
    path: str
    """Checkpoint directory of the ORM (a one-label value head, as ``learner.kind: orm`` exports)."""
    temperature: float = Field(1.0, gt=0)
    """The score is sigmoid(reward / temperature)."""
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=8)
    """Tokens of prompt and solution read, at most (set it to the learner's max_length)."""
    batch_size: int = Field(32, ge=1, le=1024)
    """Solutions scored in one forward pass."""
    threads: int | None = Field(None, ge=1)
    """torch threads of the forward passes (None: a share of the process's cores)."""
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    """Where the model scores: auto (the first GPU when torch sees one, else the CPU),
    cpu, cuda or cuda:N."""
    dtype: DtypeName = "float32"
    """The model's weights: float32, or bfloat16 (half the memory; rewards read in float32)."""
    _delimiter: str = PrivateAttr("\n")
    _tokenizer: Any = PrivateAttr(None)
    _model: Any = PrivateAttr(None)
    _device: Any = PrivateAttr(None)
    _batcher: Any = PrivateAttr(None)
    _forward_passes: int = PrivateAttr(0)

    def __init__(self, path: str | Path | None = None, /, *, delimiter: str = "\n", **settings: Any) -> None:
        """``OutcomeRewardModel(path, ...)`` loads the checkpoint; a config section (the
        settings alone, ``path`` among them) is only validated, and ``build`` loads it."""
        super().__init__(**({"path": str(path)} if path is not None else {}), **settings)
        self._delimiter = delimiter
        if path is not None:
            self._load()

    def _load(self) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

        directory = resolve_checkpoint(self.path)
        config = AutoConfig.from_pretrained(directory)
        architectures = config.architectures or []
        if not any(a.endswith("ForTokenClassification") for a in architectures) or config.num_labels != 1:
            raise ValueError(
                f"{directory} is not a Bradley-Terry outcome model (a one-label *ForTokenClassification "
                f"checkpoint, as learner.kind orm exports); it is {architectures or 'unknown'} with "
                f"{config.num_labels} labels"
            )
        self._tokenizer = AutoTokenizer.from_pretrained(directory)
        self._device = torch.device(resolve_device(self.device))
        loaded = AutoModelForTokenClassification.from_pretrained(directory, dtype=resolve_dtype(self.dtype))
        self._model = loaded.to(self._device).eval()
        self._batcher = MicroBatcher(self._forward, self.batch_size, "orm forward")

    def build(self, env: VerifierEnv) -> OutcomeRewardModel:
        try:
            resolve_device(self.device)
        except ValueError as exc:  # a GPU named where there is none
            raise ConfigError(f"{env.field}.device: {exc}") from None
        try:
            settings = self.model_dump(exclude={"name", "path"})
            settings["threads"] = self.threads or env.threads
            return OutcomeRewardModel(self.path, delimiter=env.delimiter, **settings)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise ConfigError(f"{env.field}.path: {exc}") from None

    @property
    def forward_passes(self) -> int:
        """Forward passes run so far (batching is visible in it)."""
        return self._forward_passes

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        reward = await self.reward(task.as_messages(), text)
        return Score(1.0 / (1.0 + math.exp(-reward / self.temperature)), f"bradley-terry reward {reward:.3f}")

    async def reward(self, messages: list[dict[str, str]], text: str) -> float:
        """The model's raw reward of one solution (batched with concurrent callers, cached).
        ``text`` as the context passes it (each step followed by the step delimiter) is
        read as the learner's pairs hold it: the steps joined by the delimiter."""
        d = self._delimiter
        if d and text.endswith(d):
            text = text[: -len(d)]
        key = json.dumps([messages, text])
        result: float = await self._batcher(key, (messages, text))
        return result

    def _forward(self, items: list[tuple[list[dict[str, str]], str]]) -> list[float]:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        rows = [encode_solution(self._tokenizer, m, t, self.max_length) for m, t in items]
        ids, mask = pad_rows(rows, self._tokenizer.pad_token_id or 0)
        with torch.no_grad():
            logits = self._model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device)).logits
        logits = logits[..., 0].float().cpu()
        self._forward_passes += 1
        last = torch.tensor([len(r) - 1 for r in rows])
        return [float(v) for v in logits[torch.arange(len(rows)), last]]

    async def aclose(self) -> None:
        return None
