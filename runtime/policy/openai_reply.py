"""Reading an OpenAI-compatible server's reply: completions, token ids, logprobs and
usage as reported (the response half of :mod:`runtime.policy.openai_compatible`; the
admission layer, :mod:`runtime.policy.admission`, checks and prices the usage).

Design decisions:
- Nothing in a 2xx body is trusted: a body without choices, or a choice without text,
  is :class:`~runtime.policy.admission.Malformed` (retried by the admission layer).
- Token ids come from the choice's ``token_ids`` (vLLM's ``return_token_ids``) or from
  logprobs' tokens of the form ``token_id:N`` (``return_tokens_as_token_ids``); they
  are kept only where they are the record of what the server conditioned on
  (:class:`Sent`), and dropped wherever the text was cut client-side.
- A chat reply's ``tool_calls`` become the completion's text in the form the ``openai``
  call format reads (:mod:`runtime.policy.openai_tools`), never cut at a stop string.
- The stop string a server was asked to keep (vLLM's ``include_stop_str_in_output``)
  leaves the text but not the ids: a step's text is the step, its ids every token the
  policy sampled for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.policy.admission import Malformed, Reply
from runtime.policy.base import Completion, GenerationRequest, Mode
from runtime.policy.continuation import first_new_step
from runtime.policy.openai_tools import reply_call

__all__ = ["Sent", "excerpt", "parse_reply"]

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
    stop_in_text: bool = False
    """The server writes the stop string it stopped on into the text by itself
    (``transformers serve``), so a reply that ends with none ended on the end of turn."""
    stop_included: bool = False
    """The server was asked to keep the stop string in the text (vLLM)."""
    end_token_kept: bool = False
    """The server's ids end with the end-of-sequence (or stop) token a completion ended
    on (vLLM, whose ``stop_reason`` is then not a string): it is dropped, as the local
    engines never keep it."""


def parse_reply(data: Any, request: GenerationRequest, sent: Sent, *, mode: Mode) -> Reply:
    """A completion body as JSON gave it (dicts and lists, nothing validated yet)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise Malformed("unreadable response", f"no choices in {excerpt(data)}")
    completions = []
    for choice in sorted(choices, key=_index):
        if not isinstance(choice, dict):
            raise Malformed("unreadable response", f"choice without text: {excerpt(choice)}")
        lp = choice.get("logprobs")
        logprobs: list[float] | None = None
        tokens: Any = None
        called: str | None = None  # a chat reply's tool call, as text
        if mode == "completion":
            text = choice.get("text")
            values = lp.get("token_logprobs") if isinstance(lp, dict) else None
            logprobs = list(values) if isinstance(values, list) and values else None
            tokens = lp.get("tokens") if isinstance(lp, dict) else None
        else:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            called = reply_call(message)
            if text is None and called is not None:
                text = ""  # a reply that only calls a tool has no content
            content = lp.get("content") if isinstance(lp, dict) else None
            if isinstance(content, list) and content and all(isinstance(t, dict) for t in content):
                logprobs = [t.get("logprob") for t in content]
                tokens = [t.get("token") for t in content]
        if not isinstance(text, str):
            raise Malformed("unreadable response", f"choice without text: {excerpt(choice)}")
        if not request.logprobs:
            logprobs = None  # asked for only to name the sampled ids (vLLM)
        token_ids = _token_ids(choice.get("token_ids"), tokens)
        finish = choice.get("finish_reason")
        stop_reason: str | None = None
        end_of_turn: bool | None = None
        if called is not None:  # a tool call, as text (its ids spelled the server's own form: dropped)
            text, token_ids, logprobs = called, None, None
        elif sent.shown_prefix is not None:  # the hosted-chat protocol: take the first new step
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
            if sent.end_token_kept and finish == "stop" and token_ids and _ended_on_a_token(choice):
                # ended on the end-of-sequence token (or a stop token id), which vLLM keeps, also
                # where it was asked to keep stop strings: left in, the next call's prompt would
                # hold the end of turn
                token_ids = token_ids[:-1]
                if logprobs is not None and len(logprobs) == len(token_ids) + 1:
                    logprobs = logprobs[:-1]
            text, cut = _cut_at_stop(text, request.stop)
            if sent.stop_in_text and request.stop:  # no stop string in the text: the model ended its turn
                end_of_turn = finish == "stop" and not cut
            if cut:  # the server ignored ``stop``: per-token data no longer lines up
                token_ids, logprobs, finish, stop_reason = None, None, "stop", None
        if not sent.ids_kept or token_ids is None:
            token_ids, stop_reason = None, None
        completions.append(
            Completion(
                text=text,
                token_ids=token_ids,
                logprobs=logprobs,
                finish_reason=finish,
                stop_reason=stop_reason,
                end_of_turn=end_of_turn,
            )
        )
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    model = data.get("model")
    return Reply(
        completions,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        model=model if isinstance(model, str) else "",
    )


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
