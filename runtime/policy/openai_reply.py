"""Reading an OpenAI-compatible server's reply: completions, token ids, logprobs and
checked usage (the response half of :mod:`runtime.policy.openai_compatible`).

Design decisions:
- Nothing in a 2xx body is trusted: a body without choices, or a choice without text,
  is :class:`Malformed` (retried by the caller); reported usage that is negative,
  non-numeric or absurd is replaced by an estimate from the text, so a broken server
  cannot undercut the cost budget.
- Token ids come from the choice's ``token_ids`` (vLLM's ``return_token_ids``) or from
  logprobs' tokens of the form ``token_id:N`` (``return_tokens_as_token_ids``); they
  are kept only where they are the record of what the server conditioned on
  (:class:`Sent`), and dropped wherever the text was cut client-side.
- The stop string a server was asked to keep (vLLM's ``include_stop_str_in_output``)
  leaves the text but not the ids: a step's text is the step, its ids every token the
  policy sampled for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.core.log import get_logger
from runtime.policy.base import Completion, GenerationRequest, GenerationResult, Mode
from runtime.policy.continuation import first_new_step
from runtime.policy.limits import Price

__all__ = ["Malformed", "Sent", "excerpt", "parse_reply"]

log = get_logger("searchlearn.openai")

_TOKEN_ID = "token_id:"


@dataclass(frozen=True, slots=True)
class Sent:
    """How a request was sent, which decides how its reply is read."""

    ids_kept: bool = True
    """The completions' token ids are the record: the server conditioned on ids we hold
    (no prefix, or the prefix sent as ids). False: the prefix went as text."""
    shown_prefix: str | None = None
    """The hosted-chat protocol showed this accepted text in the user message: stop
    strings were not sent, and the first new step of the reply is taken here."""
    stop_included: bool = False
    """The server was asked to keep the stop string in the text (vLLM)."""
    end_token_kept: bool = False
    """The server's ids end with the end-of-sequence (or stop) token a completion ended
    on (vLLM, whose ``stop_reason`` is then not a string): it is dropped, as the local
    engines never keep it."""


class Malformed(Exception):
    """A 2xx response whose body is not a completion (retried, then PolicyResponseError)."""


def parse_reply(
    data: Any, request: GenerationRequest, sent: Sent, *, mode: Mode, model: str, price: Price | None, version: int
) -> GenerationResult:
    """A completion body as JSON gave it (dicts and lists, nothing validated yet)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise Malformed(f"no choices in {excerpt(data)}")
    completions = []
    for choice in sorted(choices, key=_index):
        if not isinstance(choice, dict):
            raise Malformed(f"choice without text: {excerpt(choice)}")
        lp = choice.get("logprobs")
        logprobs: list[float] | None = None
        tokens: Any = None
        if mode == "completion":
            text = choice.get("text")
            values = lp.get("token_logprobs") if isinstance(lp, dict) else None
            logprobs = list(values) if isinstance(values, list) and values else None
            tokens = lp.get("tokens") if isinstance(lp, dict) else None
        else:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            content = lp.get("content") if isinstance(lp, dict) else None
            if isinstance(content, list) and content and all(isinstance(t, dict) for t in content):
                logprobs = [t.get("logprob") for t in content]
                tokens = [t.get("token") for t in content]
        if not isinstance(text, str):
            raise Malformed(f"choice without text: {excerpt(choice)}")
        if not request.logprobs:
            logprobs = None  # asked for only to name the sampled ids (vLLM)
        token_ids = _token_ids(choice.get("token_ids"), tokens)
        finish = choice.get("finish_reason")
        stop_reason: str | None = None
        if sent.shown_prefix is not None:  # the hosted-chat protocol: take the first new step
            step, cut = first_new_step(text, sent.shown_prefix, request.stop)
            if step != text:
                text, token_ids, logprobs = step, None, None
            finish = "stop" if cut else finish
        else:
            if sent.stop_included and finish == "stop":
                text, stop_reason = _without_final_stop(text, request.stop)  # its ids stay: they were sampled
                reported = choice.get("stop_reason")  # vLLM keeps a stop string's ids even in text without it
                if stop_reason is None and isinstance(reported, str) and reported in (request.stop or []):
                    stop_reason = reported
            elif sent.end_token_kept and finish == "stop" and token_ids and _ended_on_a_token(choice):
                # ended on the end-of-sequence token (or a stop token id), which vLLM keeps
                token_ids = token_ids[:-1]
                if logprobs is not None and len(logprobs) == len(token_ids) + 1:
                    logprobs = logprobs[:-1]
            text, cut = _cut_at_stop(text, request.stop)
            if cut:  # the server ignored ``stop``: per-token data no longer lines up
                token_ids, logprobs, finish, stop_reason = None, None, "stop", None
        if not sent.ids_kept or token_ids is None:
            token_ids, stop_reason = None, None
        completions.append(
            Completion(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish, stop_reason=stop_reason)
        )
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt_tokens = _count(usage.get("prompt_tokens"), priced=price is not None)
    completion_tokens = _count(usage.get("completion_tokens"), priced=price is not None)
    if prompt_tokens is None or completion_tokens is None:
        # Negative or absurd usage (or none, on a priced model) must not undercut the
        # budget: estimate from the text (4 characters a token), as the limiter does.
        log.warning("unusable usage in a response; estimating it from the text", model=model, usage=repr(usage)[:200])
        prompt_tokens = len(request.prompt or "") // 4 + sum(len(m["content"]) for m in request.messages or []) // 4
        prompt_tokens += len(request.assistant_prefix) // 4
        completion_tokens = sum(len(c.text) for c in completions) // 4 + len(completions)
    cost = price.cost(prompt_tokens, completion_tokens) if price else 0.0
    return GenerationResult(
        completions=completions,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        policy_version=version,
        model=str(data.get("model") or model),
    )


_MAX_USAGE = 100_000_000  # tokens one response may report; more is a broken server


def _count(value: Any, priced: bool) -> int | None:
    """A token count a server reported, or None if it is not a plausible one (or is
    missing where it sets a price)."""
    if value is None:
        return None if priced else 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(value) if 0 <= value <= _MAX_USAGE else None


def _index(choice: Any) -> int:
    index = choice.get("index") if isinstance(choice, dict) else None
    return index if isinstance(index, int) else 0


def _token_ids(ids: Any, tokens: Any) -> list[int] | None:
    """The sampled ids: a choice's ``token_ids`` (vLLM's ``return_token_ids``), else its
    logprobs' tokens when they are ``token_id:N`` (``return_tokens_as_token_ids``)."""
    if isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return ids
    if isinstance(tokens, list) and tokens and all(isinstance(t, str) and t.startswith(_TOKEN_ID) for t in tokens):
        try:
            return [int(t[len(_TOKEN_ID) :]) for t in tokens]
        except ValueError:
            return None
    return None


def _ended_on_a_token(choice: dict[str, Any]) -> bool:
    """vLLM's ``stop_reason`` is null (the end-of-sequence token) or a stop token id when
    a choice stopped on a token, a string when on a stop string; absent elsewhere."""
    return "stop_reason" in choice and not isinstance(choice["stop_reason"], str)


def _without_final_stop(text: str, stop: list[str] | None) -> tuple[str, str | None]:
    """``text`` without the stop string the server was asked to keep at its end, and
    that string (None: it ended otherwise, e.g. on the end-of-sequence token)."""
    for s in stop or []:
        if s and text.endswith(s):
            return text[: -len(s)], s
    return text, None


def _cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    if not stop:
        return text, False
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def excerpt(value: object, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
