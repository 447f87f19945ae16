"""Training datasets from a stored run, in the layouts TRL's trainers and ``datasets``
load: what ``searchlearn export --format sft|preference|prm|rollouts`` writes.

The rows are what the learners themselves compute from the episode trees, not a second
reading of them: :class:`~learners.examples.VerifiedPaths` (sft),
:class:`~learners.pairs.Pairs` (preference), :class:`~learners.reward_models.StepLabels`
(prm) and :class:`~learners.rollouts.Rollouts` with ``critic=True`` (rollouts: every
finished solution with its reward and step scores, no group baseline).

Layouts (one row per line of JSONL, or per row of Parquet):

- ``sft``: ``{"messages": [...task messages, {"role": "assistant", "content": path}]}``,
  TRL's conversational language-modeling layout (``SFTTrainer``). A verified prefix of
  an unsolved episode (``prefixes: true``) is left out: in this layout an end of turn
  would be trained after it. An agent episode's path is split at its observations, as
  TRL's tool-calling layout writes a conversation: each stretch the policy wrote is an
  ``assistant`` message (its tool call as the text the model wrote, in the
  environment's call format), each observation a ``tool`` message (``name``: the tool
  called), so a trainer feeds the environment's text as context and never trains it
  as assistant text.
- ``preference``: ``{"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected":
  [...]}``, TRL's conversational preference layout with an explicit prompt
  (``DPOTrainer``). A step pair's shared prefix (the path to the parent node) leads both
  completions: TRL cannot continue an assistant turn and then append another, and the
  prefix's log-probabilities are the same in both, so they cancel in the DPO margin.
  ``level`` (solutions / steps) and ``prefix`` let a reader split them apart. An agent
  episode's side (and prefix) is split at its observations as in ``sft``.
- ``prm``: ``{"prompt": str, "completions": [steps], "labels": [bool]}``, TRL's stepwise
  supervision layout (the one its ``PRMTrainer`` loaded; TRL 1.x no longer ships that
  trainer). A label is true at ``LABEL_THRESHOLD``; ``label_values`` keeps the soft label.
  The prompt is the task's messages' text (that layout has no chat messages).
- ``rollouts``: ``{"prompt": [...], "completion": str, "reward", "step_scores",
  "token_ids", "logprobs"}``: the token ids and behaviour log-probs the engine sampled,
  as the rollout converter keeps them (``Rollout.token_ids`` / ``behaviour``); null
  where the path holds text the policy did not sample as ids.

Every row also carries ``task_id``, ``sample`` and ``policy_version``.

A row's prompt is the one the episode's calls were sent
(:func:`~runtime.tools.base.task_prompt`): under a call format that describes the tools in
a system message, that message leads it; under one that passes the schemas to the chat
template or the OpenAI ``tools`` field (``chat_template`` with a template that renders
them, ``openai``), an sft, preference or rollouts row carries them in a ``tools`` column,
as TRL's tool-calling datasets do: the schemas as JSON text, which TRL's SFT, DPO, KTO and
reward trainers decode and pass to ``apply_chat_template(tools=...)``. JSON text keeps one
column type whatever parameters the tools take (a list of structs would merge different
tools' schemas into one, with nulls). Rows of a run whose prompt offered no schemas have no
``tools`` column. A ``prm`` row has none either: its prompt is text, and the reward models
are trained on the task's messages alone.

Design decisions:
- Settings are the run's own when its ``learner:`` section is of the matching kind (a
  DPO run's ``levels`` and ``max_pairs``), else the converters' defaults; the PRM labels
  are the run learner's ``label``, else the process verifier's scores (node values when
  the run had no process verifier).
- Steps and leaves the strategy left unscored are scored the way the learners score
  them: with the run's verifiers, rebuilt from its stored config. They never generate
  (a Monte-Carlo value or a judge that would need the run's policy counts as not
  scored), so an export costs no model calls of the run's policy; a config that cannot
  be rebuilt (a plug-in no longer installed) leaves only the scores the tree holds.
  ``--no-rescore`` keeps to those everywhere (a judge with a hosted model of its own is
  not called): the same verifiers by name, reading the scores stored under it.
- Written whole (a temporary file renamed over the target) and streamed: one episode's
  rows at a time, Parquet in row groups under a fixed schema (so a column that is null
  in the first rows keeps its type).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

from runtime.core.errors import ConfigError, PolicyError, VerifierError
from runtime.core.log import get_logger
from runtime.core.types import Episode, Task
from runtime.policy.base import GenerationRequest, GenerationResult
from runtime.rewards.base import Score
from runtime.scheduling.files import written_whole
from runtime.scheduling.store import EpisodeStore
from runtime.search.context import Verifiers
from runtime.tools.base import task_prompt

__all__ = ["EMPTY", "FORMATS", "LABEL_THRESHOLD", "DatasetFormat", "dataset_rows", "export_dataset", "file_kind"]

log = get_logger("searchlearn.dataset_export")

DatasetFormat = Literal["sft", "preference", "prm", "rollouts"]
FORMATS: tuple[str, ...] = get_args(DatasetFormat)
LABEL_THRESHOLD = 0.5
"""A PRM step label at or above this is a good step (``labels``: true)."""
EMPTY = {
    "sft": "no episode has a verified path (an outcome reaching min_reward, every step accepted)",
    "preference": "no task has an accepted and a rejected solution, and no node an accepted and a rejected child",
    "prm": "no step has a label (the run has no process verifier scores, Monte-Carlo values or node values)",
    "rollouts": "no finished solution has an outcome score",
}
"""Why a format can come out empty, for the one line the CLI prints then."""
PARQUET_ROWS = 1024
"""Rows per Parquet row group."""

Row = dict[str, Any]


class _NoGeneration:
    """The policy the rebuilt verifiers are bound to: an export scores what it can
    without the run's model, and a verifier that would sample counts as not scored."""

    version = None

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        raise PolicyError("an export does not generate: this step is left as the run scored it")

    async def aclose(self) -> None:
        return None


class _StoredOnly:
    """A verifier under a run verifier's name that scores nothing: the context finds a
    score the tree holds under that name, and anything else counts as not scored."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        raise VerifierError(f"{self.name}: not scored during the run (export --no-rescore)")

    async def score_step(self, task: Task, previous: Sequence[str], step: str) -> Score:
        raise VerifierError(f"{self.name}: not scored during the run (export --no-rescore)")


def _stored_only(verifiers: Verifiers) -> Verifiers:
    """``verifiers`` under the same names, reading only the scores the trees hold."""
    outcome, process = verifiers.outcome, verifiers.process
    return replace(
        verifiers,
        outcome=None if outcome is None else _StoredOnly(outcome.name),
        process=None if process is None else _StoredOnly(process.name),
        shaping=None,
    )


def _run_parts(store: EpisodeStore, run_id: str, rescore: bool = True) -> tuple[Any, Verifiers, str]:
    """The run's learner section (or None), its verifiers, bound to no policy (with
    ``rescore`` false, reading only stored scores), and its step delimiter."""
    from runtime.app.config import RunConfig
    from runtime.app.parts import build_verifiers
    from runtime.policy.backends import STORED_CONFIG

    stored = store.run_config(run_id)
    if not stored:
        return None, Verifiers(), "\n"
    try:
        config = RunConfig.model_validate(stored, context=STORED_CONFIG)
        verifiers = build_verifiers(config, _NoGeneration())
    except (ConfigError, ValueError) as exc:
        log.warning("run config not rebuilt: only the scores stored in the trees count", run_id=run_id, error=str(exc))
        delimiter = (stored.get("sampling") or {}).get("step_delimiter", "\n")
        return None, Verifiers(), delimiter
    return config.learner, verifiers if rescore else _stored_only(verifiers), config.sampling.step_delimiter


def _converter(fmt: DatasetFormat, learner: Any, verifiers: Verifiers, delimiter: str) -> Any:
    """The learners' own converter for ``fmt``, with the run learner's settings where
    they are of that kind."""
    if fmt == "sft":
        from learners.examples import PathSettings, VerifiedPaths

        return VerifiedPaths(learner if isinstance(learner, PathSettings) else None, delimiter=delimiter)
    if fmt == "preference":
        from learners.pairs import Pairs, PairSettings

        return Pairs(learner if isinstance(learner, PairSettings) else None, delimiter=delimiter)
    if fmt == "prm":
        from learners.reward_models import PRM, StepLabels

        label = learner.label if isinstance(learner, PRM) else "process" if verifiers.process else "value"
        return StepLabels(label, delimiter)
    from learners.rollouts import Rollouts

    return Rollouts(delimiter=delimiter, critic=True)


def _ids(key: tuple[str, str, int], version: int | None) -> Row:
    return {"task_id": key[1], "sample": key[2], "policy_version": version}


def _messages(messages: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Chat messages as role and content only (one Parquet struct for every row)."""
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in messages]


def _tools(item: Any) -> Row:
    """The ``tools`` column of an item whose prompt offered tool schemas (JSON text, see
    the module doc); nothing where it offered none."""
    tools = getattr(item, "tools", None)
    return {"tools": json.dumps(tools, ensure_ascii=False)} if tools else {}


def _offers_schemas(fmt: DatasetFormat, verifiers: Verifiers) -> bool:
    """Whether ``fmt``'s rows of a run under ``verifiers`` carry ``tools``: the run's
    environment puts schemas into the prompt (a fixed Parquet schema needs it up front)."""
    return fmt != "prm" and task_prompt(Task(id="", prompt=""), verifiers.environment)[1] is not None


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _turns(segments: Sequence[tuple[str, int]], tools: Sequence[str], delimiter: str) -> list[dict[str, Any]]:
    """Assistant text and observations as messages: each stretch the policy wrote (mask
    1) an ``assistant`` message, each observation (mask 0) a ``tool`` message naming
    the tool whose call it answers."""
    out: list[dict[str, Any]] = []
    names = iter(tools)
    written: list[str] = []

    def flush() -> None:
        if "".join(written).strip():
            out.extend(_assistant("".join(written).strip(delimiter)))
        written.clear()

    for text, trained in segments:
        if trained:
            written.append(text)
            continue
        flush()
        out.append({"role": "tool", "name": next(names, ""), "content": text.strip(delimiter)})
    flush()
    return out


def _completion(item: Any, delimiter: str) -> list[dict[str, Any]]:
    """An sft example's completion: one assistant message, or split at its observations."""
    if item.mask is None or item.texts is None or all(item.mask):
        return _assistant(item.completion)
    return _turns(list(zip(item.texts, item.mask, strict=True)), item.meta.get("tools", []), delimiter)


def _side(item: Any, text: str, side: Any, delimiter: str) -> list[dict[str, Any]]:
    """A preference pair's side after its shared prefix (the prefix leads it, see module
    doc): one assistant message, or split at the observations of either."""
    prefix = item.prefix_pieces
    if all(p is None or all(p.mask) for p in (prefix, side)):
        return _assistant(item.prefix + text)
    segments: list[tuple[str, int]] = [(item.prefix, 1)] if prefix is None and item.prefix else []
    tools: list[str] = []
    for pieces in (prefix, side):
        if pieces is not None:
            segments += list(zip(pieces.texts, pieces.mask, strict=True))
            tools += pieces.tools
    if side is None:
        segments.append((text, 1))
    return _turns(segments, tools, delimiter)


def _row(fmt: DatasetFormat, item: Any, delimiter: str = "\n") -> Row | None:
    """One dataset row of a converter's item (None: the layout cannot hold it)."""
    if fmt == "sft":
        if not item.ends:
            return None
        return {
            "messages": [*_messages(item.messages), *_completion(item, delimiter)],
            **_tools(item),
            "weight": item.weight,
            "reward": item.meta.get("reward"),
            **_ids(item.key, item.policy_version),
        }
    if fmt == "preference":
        return {
            "prompt": _messages(item.messages),
            "chosen": _side(item, item.chosen, item.chosen_parts, delimiter),
            "rejected": _side(item, item.rejected, item.rejected_parts, delimiter),
            **_tools(item),
            "level": item.level,
            "prefix": item.prefix,
            **_ids(item.key, item.policy_version),
        }
    if fmt == "prm":
        return {
            "prompt": "\n\n".join(m.get("content", "") for m in item.messages),
            "completions": list(item.steps),
            "labels": [v >= LABEL_THRESHOLD for v in item.labels],
            "label_values": list(item.labels),
            **_ids(item.key, item.policy_version),
        }
    return {
        "prompt": _messages(item.messages),
        "completion": item.text,
        **_tools(item),
        "reward": item.meta.get("reward"),
        "step_scores": [float(s) for s in item.meta.get("step_scores", [])],
        "token_ids": item.token_ids,
        "logprobs": item.behaviour,
        "finished": item.ends,
        **_ids(item.key, item.policy_version),
    }


async def dataset_rows(
    episodes: Iterable[Episode], fmt: DatasetFormat, *, learner: Any = None, verifiers: Verifiers | None = None,
    delimiter: str = "\n",
) -> AsyncIterator[Row]:  # fmt: skip
    """The rows of ``fmt`` that ``episodes`` give, episode by episode (see the module doc)."""
    verifiers = verifiers or Verifiers()
    converter = _converter(fmt, learner, verifiers, delimiter)
    for episode in episodes:
        for item in await converter.examples(episode, verifiers):
            row = _row(fmt, item, delimiter)
            if row is not None:
                yield row


def _schema(fmt: DatasetFormat, tools: bool = False) -> Any:
    """The Parquet schema of ``fmt`` (fixed, so a column null in the first rows keeps its
    type), with the ``tools`` column where ``tools``."""
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    turns = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())]))
    ids = [("task_id", pa.string()), ("sample", pa.int64()), ("policy_version", pa.int64())]
    fields: dict[str, list[tuple[str, Any]]] = {
        "sft": [("messages", turns), ("weight", pa.float64()), ("reward", pa.float64())],
        "preference": [
            ("prompt", messages), ("chosen", turns), ("rejected", turns), ("level", pa.string()),
            ("prefix", pa.string()),
        ],
        "prm": [
            ("prompt", pa.string()), ("completions", pa.list_(pa.string())), ("labels", pa.list_(pa.bool_())),
            ("label_values", pa.list_(pa.float64())),
        ],
        "rollouts": [
            ("prompt", messages), ("completion", pa.string()), ("reward", pa.float64()),
            ("step_scores", pa.list_(pa.float64())), ("token_ids", pa.list_(pa.int64())),
            ("logprobs", pa.list_(pa.float64())), ("finished", pa.bool_()),
        ],
    }  # fmt: skip
    return pa.schema(fields[fmt] + ([("tools", pa.string())] if tools else []) + ids)


def file_kind(path: str | Path) -> Literal["jsonl", "parquet"]:
    """JSONL or Parquet, by the file's suffix; anything else is a ConfigError."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise ConfigError(f"--out {path}: a dataset is written as .jsonl or .parquet (got {suffix or 'no suffix'!r})")


class _Writer:
    """Rows into an open JSONL or Parquet file (the temporary one of :func:`written_whole`)."""

    def __init__(self, path: Path, kind: str, fmt: DatasetFormat, tools: bool = False) -> None:
        self.kind = kind
        self.rows = 0
        self._batch: list[Row] = []
        if kind == "jsonl":
            self._file = path.open("w", encoding="utf-8")
        else:
            import pyarrow.parquet as pq

            self._schema = _schema(fmt, tools)
            self._parquet = pq.ParquetWriter(path, self._schema)

    def write(self, row: Row) -> None:
        self.rows += 1
        if self.kind == "jsonl":
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        self._batch.append(row)
        if len(self._batch) >= PARQUET_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._batch:
            self._parquet.write_table(pa.Table.from_pylist(self._batch, schema=self._schema))
            self._batch = []

    def close(self) -> None:
        if self.kind == "jsonl":
            self._file.close()
        else:
            self._flush()
            self._parquet.close()


def export_dataset(
    store: EpisodeStore, run_id: str, fmt: DatasetFormat, path: str | Path, *, rescore: bool = True
) -> int:
    """Write run ``run_id``'s ``fmt`` rows to ``path`` (.jsonl or .parquet, written whole);
    returns how many. ``rescore`` false: only the scores the trees hold count (no
    verifier runs). Blocking: it runs its own event loop for the converters."""
    import anyio

    kind = file_kind(path)
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("writing Parquet needs pyarrow: pip install pyarrow (or write .jsonl)") from None
    learner, verifiers, delimiter = _run_parts(store, run_id, rescore)
    tools = kind == "parquet" and _offers_schemas(fmt, verifiers)

    async def write(target: Path) -> int:
        writer = _Writer(target, kind, fmt, tools)
        try:
            rows = dataset_rows(store.episodes(run_id), fmt, learner=learner, verifiers=verifiers, delimiter=delimiter)
            async for row in rows:
                writer.write(row)
        finally:
            writer.close()
        return writer.rows

    also: tuple[type[Exception], ...] = ()
    if kind == "parquet":
        import pyarrow as pa

        also = (pa.ArrowException,)
    with written_whole(path, "export", also=also) as tmp:
        return anyio.run(write, tmp)
