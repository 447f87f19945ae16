"""A teacher on a server: the log-probabilities a served model gives each token of a
sequence it is shown, for on-policy distillation (:mod:`learners.on_policy_distill`).

The request is a completion whose prompt is the token ids to score, asking for the
prompt's log-probabilities (vLLM's ``prompt_logprobs``, an extension of the OpenAI
completions API) and one generated token, which is ignored::

    POST {base_url}/completions
    {"model": ..., "prompt": [ids...], "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}

and the reply's ``choices[0].prompt_logprobs`` holds, per prompt position, ``null``
(the first) or a mapping from token id to ``{"logprob": ...}`` that includes the id
at that position.

Design decisions:
- Token ids in, log-probs of those ids out: nothing is re-encoded, so the teacher must
  use the student's tokenizer (same vocabulary, same ids); a teacher with another
  tokenizer is distilled from its text instead (``learner.kind: distill``).
- Synchronous, on its own thread pool: a learner step runs in a worker thread, and its
  examples are scored concurrently (``concurrency`` requests in flight).
- Retries with jittered exponential backoff on 429, 5xx, connection errors and
  timeouts; every other failure, or a reply without the log-prob of every token, is a
  :class:`TeacherError` naming the server's own text (the learner drops that example
  and counts it: a teacher that fails never ends the run). The API key, where one is
  set, is registered with :mod:`runtime.core.secrets`, so an error that echoes it is
  masked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
from pydantic import BaseModel, ConfigDict, Field
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from runtime.core.secrets import mask_secrets, register_secret

__all__ = ["ServedTeacher", "ServedTeacherSettings", "TeacherError"]


class TeacherError(Exception):
    """The served teacher could not score a sequence."""


class _Retry(TeacherError):
    """A failure worth another attempt."""


class ServedTeacherSettings(BaseModel):
    """A teacher served over HTTP (``learner.teacher_server``): a server whose completions
    endpoint takes token-id prompts and returns prompt log-probs (vLLM's
    ``prompt_logprobs``), serving a model with the student's tokenizer."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    base_url: str
    """The server, e.g. http://127.0.0.1:8000/v1."""
    model: str
    """The model name the server serves the teacher under."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (the key "EMPTY" is sent if it is unset)."""
    timeout: float = Field(60.0, gt=0)
    """Seconds one scoring request may take."""
    retry_attempts: int = Field(4, ge=1)
    """Attempts per request on 429 / 5xx / timeouts / connection errors."""
    concurrency: int = Field(8, ge=1)
    """Scoring requests in flight at once."""
    top_logprobs: int = Field(-1, ge=-1)
    """Log-probs the server returns per position besides the sampled token's: -1 the
    whole vocabulary (the exact reverse KL, as with a local teacher; right for a small
    vocabulary; vLLM must be started with ``--max-logprobs -1``, its default allows 20),
    k > 0 the teacher's k likeliest (the KL over them, the rest of the teacher's mass
    spread evenly over the other tokens), 0 the sampled token's alone (the one-sample
    estimate; the lightest reply, the noisiest signal)."""


class ServedTeacher:
    """Scores token sequences on a served teacher (see module doc)."""

    def __init__(self, settings: ServedTeacherSettings, *, transport: httpx2.BaseTransport | None = None) -> None:
        self.settings = settings
        key = os.environ.get(settings.api_key_env) or "EMPTY"
        register_secret(key)
        self._client = httpx2.Client(
            base_url=settings.base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=settings.timeout,
            transport=transport,
        )
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="teacher")

    def logprobs(self, ids: Sequence[int]) -> list[dict[int, float]]:
        """Per position of ``ids``, the teacher's log-probabilities of the next token
        given the ones before: the sampled id's, and as many others as ``top_logprobs``
        asks (empty for the first position, which nothing conditions)."""
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.retry_attempts),
            wait=wait_random_exponential(multiplier=0.2, max=5.0),
            retry=retry_if_exception(lambda e: isinstance(e, _Retry)),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._score(list(ids))
        raise AssertionError("unreachable")  # pragma: no cover

    def score_all(self, sequences: Sequence[Sequence[int]]) -> list[list[dict[int, float]] | TeacherError]:
        """:meth:`logprobs` of each sequence, ``concurrency`` at a time; a sequence the
        teacher could not score gives its error instead."""

        def one(ids: Sequence[int]) -> list[dict[int, float]] | TeacherError:
            try:
                return self.logprobs(ids)
            except TeacherError as exc:
                return exc

        return list(self._pool.map(one, sequences))

    def _score(self, ids: list[int]) -> list[dict[int, float]]:
        body = {
            "model": self.settings.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": self.settings.top_logprobs,
        }
        try:
            response = self._client.post("/completions", json=body)
        except httpx2.TransportError as exc:
            raise _Retry(mask_secrets(f"teacher server: {type(exc).__name__}: {exc}")) from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retry(mask_secrets(f"teacher server: HTTP {response.status_code}: {response.text[:300]}"))
        if response.status_code != 200:
            raise TeacherError(mask_secrets(f"teacher server: HTTP {response.status_code}: {response.text[:300]}"))
        try:
            positions = response.json()["choices"][0]["prompt_logprobs"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TeacherError(
                f"teacher server: no prompt_logprobs in its reply (a vLLM server gives them): {response.text[:200]}"
            ) from exc
        return _of_ids(positions, ids)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def _of_ids(positions: Any, ids: list[int]) -> list[dict[int, float]]:
    """Each position's log-probs by token id, from vLLM's per-position mappings; the
    sampled id's must be among them."""
    if not isinstance(positions, list) or len(positions) != len(ids):
        raise TeacherError(
            f"teacher server: prompt_logprobs for {len(positions) if isinstance(positions, list) else 0} "
            f"positions, the prompt had {len(ids)} tokens (does it use the student's tokenizer?)"
        )
    out: list[dict[int, float]] = [{}]
    for t in range(1, len(ids)):
        entry = positions[t] if isinstance(positions[t], dict) else {}
        found: dict[int, float] = {}
        for key, value in entry.items():
            logprob = value.get("logprob") if isinstance(value, dict) else None
            if isinstance(logprob, int | float) and not isinstance(logprob, bool) and str(key).lstrip("-").isdigit():
                found[int(key)] = float(logprob)
        if ids[t] not in found:
            raise TeacherError(f"teacher server: no log-prob of token {ids[t]} at position {t}")
        out.append(found)
    return out
