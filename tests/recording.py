"""The local engine on ``bundled-weak`` recording the prompts it is fed (token-exact tests)."""

from __future__ import annotations

from typing import Any


def recording_weak_policy(tokenizer: Any, max_batch: int) -> Any:
    """The local engine on ``bundled-weak`` with ``tokenizer``, its engine recording every
    prompt it is sent (``policy.sent``: the ids, as the engine was fed them)."""
    import torch
    from transformers import AutoModelForCausalLM

    from runtime.policy.local import LocalPolicy
    from runtime.tiny.policy_format import WEAK_POLICY

    model = AutoModelForCausalLM.from_pretrained(WEAK_POLICY, dtype=torch.float32)
    policy = LocalPolicy(model, tokenizer, max_batch=max_batch, threads=1)
    sent: list[list[int]] = []
    submit = policy.engine.submit

    def recording_submit(req: Any) -> None:
        sent.append(list(req.prompt_ids))
        submit(req)

    policy.engine.submit = recording_submit  # type: ignore[method-assign]
    policy.sent = sent  # type: ignore[attr-defined]
    return policy
