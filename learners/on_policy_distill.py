"""On-policy distillation: the run's own student samples, a frozen teacher grades every
token it sampled, and the student is pulled towards the teacher where it actually goes.

Follows the on-policy distillation of tinker-cookbook (Thinking Machines, "On-Policy
Distillation", 2025) and TRL's GKD trainer (Agarwal et al. 2024, "On-Policy Distillation
of Language Models: Learning from Self-Generated Mistakes") with ``lmbda=1`` (only the
student's own samples) and ``beta=1`` (the reverse KL). Unlike :mod:`learners.distill`,
which behaviour-clones a teacher's sampled text into a student that never samples, here
the student is the run's local policy: the teacher never generates, it only scores.

Design decisions:
- The loss is the per-token reverse KL ``KL(p_student || p_teacher)`` at every
  completion position, computed exactly over the full vocabulary from both models'
  logits (``sum_v p_s(v) (log p_s(v) - log p_t(v))``), not the one-sample estimate
  tinker feeds to its policy gradient: with a teacher in process, the exact KL costs one
  more forward pass and has no sampling variance. Reverse KL is mode-seeking: the
  student is pushed off the tokens the teacher finds unlikely, including its own
  mistakes, and is never asked to cover all of the teacher's distribution.
- Both distributions are the raw ones (temperature 1), whatever temperature the run
  samples at: the samples only choose the states; the target is the teacher's model.
- Each example is weighted (the loop may down-weight stale ones) and the sum over
  tokens is divided by the completion-token count of the whole batch, not the weighted
  count: a down-weighted example really takes a smaller step.
- Every sampled path of a finished episode is an example, right answer or wrong: the
  teacher's grade is the signal, not the verifier's (a wrong sample is where the
  student has the most to learn). Paths of a tree that share a prefix each carry it.
  No deduplication: the student's own samples are wanted as often as it makes them.
- The completion is tokenised by :meth:`SFTLearner.encode` (the prompt the episode's
  calls were sent, :func:`~runtime.tools.base.task_prompt`, under the chat template,
  completion, end of turn), so the end-of-turn token is distilled too.
- The teacher is frozen: loaded once at build time in eval mode, ``requires_grad``
  off, used only under ``torch.no_grad``, never in the optimizer, never checkpointed
  (it is reloaded from ``learner.teacher``). Its forward pass runs in the learner's
  worker thread, under the learner's ``threads``. It must share the student's
  tokenizer (the same vocabulary, the same ids), which is checked when it loads.
- New student versions are published into the engine that samples the next episodes,
  as expert iteration does.
- A teacher on a server (``teacher_server``: vLLM, whose completions endpoint takes the
  token ids and returns their ``prompt_logprobs``, :mod:`learners.served_teacher`)
  gives the log-probability of each sampled token only, not its whole distribution, so
  the KL is estimated from the sampled tokens as tinker-cookbook does: each token's
  ``log p_teacher - log p_student`` is its advantage in a policy-gradient loss (the
  gradient of the reverse KL on the student's own samples). The run should then sample
  at temperature 1 (at another temperature the samples are not the student's raw
  distribution and the estimate is biased; the summary's ``reverse_kl`` is the same
  one-sample estimate). An example the teacher could not score is dropped and counted
  (``teacher_failed``); a teacher that is down never ends the run, its steps train
  nothing and are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

import torch
from pydantic import model_validator

from learners.base import LearnerSpec, UpdateResult
from learners.examples import Example, oldest_version, path_nodes
from learners.served_teacher import ServedTeacher, ServedTeacherSettings, TeacherError
from learners.sft import SFTLearner, SFTSettings
from runtime.core.errors import ConfigError
from runtime.core.log import get_logger
from runtime.core.types import Episode
from runtime.search.context import Sampling, Verifiers
from runtime.tools.base import task_prompt

__all__ = ["OnPolicyDistill", "OnPolicyDistillLearner", "OnPolicySamples", "load_teacher"]

log = get_logger("searchlearn.learner")


def load_teacher(path: str, tokenizer: Any | None = None) -> Any:
    """The frozen teacher model at ``path`` (a checkpoint directory or a name such as
    'bundled'), in eval mode; a missing checkpoint, or a vocabulary other than
    ``tokenizer``'s, is a one-line ConfigError naming ``learner.teacher``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.policy.checkpoints import resolve_checkpoint

    try:
        directory = resolve_checkpoint(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"learner.teacher: {exc}") from None
    if tokenizer is not None and AutoTokenizer.from_pretrained(directory).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"learner.teacher: {path!r} has another tokenizer than the student; "
            "on-policy distillation compares the two models token by token, so they must share one"
        )
    teacher: Any = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    teacher.requires_grad_(False)
    return teacher.eval()


class OnPolicySamples:
    """Turns every sampled path of a finished episode into an example, whatever its
    reward (the ExampleSource of on-policy distillation; see module doc)."""

    def __init__(self, *, delimiter: str = "\n") -> None:
        self.delimiter = delimiter
        self.rejected_by_process = 0  # always 0: no sampled path is filtered out

    async def examples(self, episode: Episode, verifiers: Verifiers | None = None) -> list[Example]:
        """An example per leaf of ``episode`` with text (none if the episode failed)."""
        if episode.status != "ok":
            return []
        chosen = (episode.chosen_path or [-1])[-1]
        messages, tools = task_prompt(episode.task, verifiers.environment if verifiers is not None else None)
        out = []
        for leaf in episode.leaves:
            path = path_nodes(episode, leaf)
            text = self.delimiter.join(n.text for n in path if n.text)
            if not text:
                continue
            outcome = [v for k, v in leaf.scores.items() if k.startswith("outcome:")]
            reward = episode.reward if leaf.id == chosen else (max(outcome) if outcome else None)
            out.append(
                Example(
                    messages=list(messages),
                    tools=tools,
                    completion=text,
                    key=episode.key,
                    policy_version=oldest_version(path),
                    meta={"reward": reward, "leaf": leaf.id},
                )
            )
        return out

    def state(self) -> list[bytes]:
        return []  # nothing is remembered across episodes

    def load_state(self, seen: Sequence[bytes]) -> None:
        return None


class OnPolicyDistillLearner(SFTLearner):
    """Minimises the reverse KL of the student to a frozen teacher on the student's own
    samples (see module doc). ``teacher`` is a causal LM over the same tokenizer, or a
    :class:`~learners.served_teacher.ServedTeacher` serving one."""

    name = "on_policy_distill"
    settings_class = SFTSettings

    def __init__(
        self, model: Any, tokenizer: Any, settings: SFTSettings | None = None, *, teacher: Any, **overrides: Any
    ) -> None:
        super().__init__(model, tokenizer, settings, **overrides)
        self.served = isinstance(teacher, ServedTeacher)
        if not self.served:  # frozen: on the learner's device, in bf16 with learner.dtype bfloat16
            teacher.requires_grad_(False)
            teacher = teacher.to(device=self.device, dtype=torch.bfloat16 if self.mixed else torch.float32).eval()
        self.teacher = teacher
        self.teacher_failed = 0
        """Examples a served teacher could not score (dropped)."""

    def _batch(
        self, micro: Sequence[tuple[list[int], list[int], float]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids, attention mask, labels and per-example weights."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(ids) for ids, _, _ in micro)
        ids = torch.full((len(micro), width), pad, dtype=torch.long)
        labels = torch.full((len(micro), width), -100, dtype=torch.long)
        mask = torch.zeros((len(micro), width), dtype=torch.long)
        for i, (x, y, _) in enumerate(micro):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        weights = torch.tensor([w for _, _, w in micro], dtype=torch.float32)
        return ids.to(self.device), mask.to(self.device), labels.to(self.device), weights.to(self.device)

    def _token_kl(
        self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reverse KL at each completion position (gradient through the student
        only), and the row each position belongs to."""
        where = labels[:, 1:] != -100  # position t predicts token t+1
        student = torch.log_softmax(self.forward(self.model, ids, mask).logits[:, :-1][where].float(), -1)
        with torch.no_grad():
            logits = self.forward(self.teacher, ids, mask).logits[:, :-1][where]
            teacher = torch.log_softmax(logits.float(), -1)
        kl = (student.exp() * (student - teacher)).sum(-1)
        return kl, where.nonzero()[:, 0]

    def _served_kl(
        self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, teacher: Sequence[Sequence[dict[int, float]]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At each completion position, the reverse KL to a served teacher's log-probs
        (over what it returned: the whole vocabulary, its top k with the rest of its mass
        spread evenly, or the sampled token alone: the one-sample estimate ``log p_s(x) -
        log p_t(x)``), the student's log-prob of the sampled token (with its gradient),
        and the row each position belongs to."""
        where = labels[:, 1:] != -100
        logits = self.forward(self.model, ids, mask).logits[:, :-1][where].float()
        student = torch.log_softmax(logits, -1)
        rows, cols = where.nonzero(as_tuple=True)
        targets = labels[:, 1:][where]
        sampled = student.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        given = [teacher[r][c + 1] for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
        if all(len(g) <= 1 for g in given):  # the sampled token's alone
            served = torch.tensor([g[int(x)] for g, x in zip(given, targets.tolist(), strict=True)], device=self.device)
            return (sampled - served).detach(), sampled, rows
        vocab = student.shape[-1]
        full = torch.empty_like(student)
        for i, g in enumerate(given):
            known = torch.tensor(list(g.values()), device=self.device)
            rest = max(1.0 - float(known.exp().sum()), 1e-12) / max(vocab - len(g), 1)
            full[i].fill_(float(torch.tensor(rest).log()))
            full[i, torch.tensor(list(g.keys()), device=self.device)] = known
        full = torch.log_softmax(full, -1)  # renormalised (the server's values are rounded)
        return (student.exp() * (student - full)).sum(-1), sampled, rows

    def _encoded(self, examples: Sequence[Example]) -> list[tuple[list[int], list[int], float]]:
        return sorted(((*self.encode(ex), ex.weight) for ex in examples if ex.weight > 0), key=lambda e: len(e[0]))

    def _scored(
        self, encoded: list[tuple[list[int], list[int], float]]
    ) -> tuple[list[tuple[list[int], list[int], float]], list[list[dict[int, float]]]]:
        """The examples a served teacher scored, and its log-probs of their tokens."""
        assert isinstance(self.teacher, ServedTeacher)
        kept, scores = [], []
        for example, scored in zip(encoded, self.teacher.score_all([ids for ids, _, _ in encoded]), strict=True):
            if isinstance(scored, TeacherError):
                self.teacher_failed += 1
                log.warning("the teacher could not score an example; dropped", error=str(scored))
                continue
            kept.append(example)
            scores.append(scored)
        return kept, scores

    def step(self, examples: Sequence[Example]) -> UpdateResult:
        if not examples:
            raise ValueError("a learner step needs at least one example")
        started = self.prepare()
        encoded = self._encoded(examples)
        teacher: list[list[dict[int, float]]] = []
        if self.served:
            encoded, teacher = self._scored(encoded)
        else:
            self.teacher.eval()
        count = sum(sum(t != -100 for t in y[1:]) for _, y, _ in encoded) or 1
        loss_sum, kl_sum, tokens = 0.0, 0.0, 0
        for start in range(0, len(encoded), self.settings.micro_batch):
            ids, mask, labels, weights = self._batch(encoded[start : start + self.settings.micro_batch])
            if self.served:
                kl, sampled, rows = self._served_kl(ids, mask, labels, teacher[start : start + len(ids)])
                # the one-sample estimate carries no gradient: its policy gradient does (see module doc)
                term = kl * sampled if not kl.requires_grad else kl
                loss = (term * weights[rows]).sum() / count
            else:
                kl, rows = self._token_kl(ids, mask, labels)
                loss = (kl * weights[rows]).sum() / count
            loss.backward()  # type: ignore[no-untyped-call]
            loss_sum += float(loss.detach())
            kl_sum += float(kl.detach().sum())
            tokens += int(kl.numel())
        result = self.apply(started, loss_sum, len(encoded), tokens)
        result.metrics["reverse_kl"] = kl_sum / max(tokens, 1)
        if self.served:
            result.metrics["teacher_failed"] = float(self.teacher_failed)
        return result

    @torch.no_grad()
    def reverse_kl(self, examples: Sequence[Example]) -> float:
        """Mean per-token reverse KL of the student to the teacher on ``examples``'
        completions (no update, weights ignored); for tests and logs. Exact with a local
        teacher; with a served one, the one-sample estimate on the sampled tokens."""
        self.model.eval()
        total, tokens = 0.0, 0
        try:
            encoded = [(ids, labels, 1.0) for ids, labels, _ in self._encoded(examples)]
            teacher: list[list[dict[int, float]]] = []
            if self.served:
                encoded, teacher = self._scored(encoded)
            for start in range(0, len(encoded), self.settings.micro_batch):
                ids, mask, labels, _ = self._batch(encoded[start : start + self.settings.micro_batch])
                if self.served:
                    kl, _, _ = self._served_kl(ids, mask, labels, teacher[start : start + len(ids)])
                else:
                    kl, _ = self._token_kl(ids, mask, labels)
                total += float(kl.sum())
                tokens += kl.numel()
        finally:
            self.model.train()
        return total / max(tokens, 1)


class OnPolicyDistill(LearnerSpec, SFTSettings):
    """The run's local policy (the student) samples; a frozen teacher scores its tokens;
    the student learns the teacher's distributions at its own states (policy.kind local)."""

    kind: Literal["on_policy_distill"] = "on_policy_distill"
    teacher: str | None = None
    """The frozen teacher: a local transformers checkpoint directory or a named one
    ('bundled'); it must use the student's tokenizer. Or ``teacher_server``."""
    teacher_server: ServedTeacherSettings | None = None
    """A teacher on a server instead (vLLM: token-id prompts, ``prompt_logprobs``), serving
    a model with the student's tokenizer; the KL is then estimated from the sampled
    tokens (sample at temperature 1)."""

    @model_validator(mode="after")
    def _one_teacher(self) -> Self:
        if (self.teacher is None) == (self.teacher_server is None):
            raise ValueError("set exactly one of learner.teacher (a local checkpoint) and learner.teacher_server")
        return self

    def build_learner(self, model: Any, tokenizer: Any, sampling: Sampling) -> OnPolicyDistillLearner:
        if self.teacher_server is not None:
            served = ServedTeacher(self.teacher_server)
            return OnPolicyDistillLearner(model, tokenizer, self, teacher=served)
        assert self.teacher is not None
        return OnPolicyDistillLearner(model, tokenizer, self, teacher=load_teacher(self.teacher, tokenizer))

    def build_converter(self, delimiter: str) -> OnPolicySamples:
        return OnPolicySamples(delimiter=delimiter)
