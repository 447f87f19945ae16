"""Prompt format of the bundled tiny policy (ChatML) and its greedy evaluation.

The policy is a plain transformers checkpoint directory; the format lives here so the
training script, the engine and the tests agree on it. Steps are separated by a newline
and the assistant turn ends with ``<|im_end|>``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLED",
    "BUNDLED_POLICY",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "STEP_DELIMITER",
    "TOOL_POLICY",
    "WEAK_POLICY",
    "assistant_prefix",
    "evaluate_greedy",
]

BUNDLED_POLICY = Path(__file__).parent / "policy"
WEAK_POLICY = Path(__file__).parent / "weak"
TOOL_POLICY = Path(__file__).parent / "tool"
#: Checkpoints that ship with the package, by the name configs use for them
#: (entry points of the group ``searchlearn.checkpoints``).
BUNDLED = {"bundled": BUNDLED_POLICY, "bundled-weak": WEAK_POLICY, "bundled-tool": TOOL_POLICY}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
STEP_DELIMITER = "\n"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def assistant_prefix(question: str) -> str:
    """The raw prompt a completion-mode call sends: the chat template, rendered."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def evaluate_greedy(
    model: Any,
    tok: Any,
    per_steps: int = 200,
    seed: int = 12345,
    max_steps: int = 4,
    split: str = "all",
    min_steps: int = 1,
) -> dict[str, float]:
    """Greedy pass@1 of ``model`` on fresh problems of ``split``, keyed by number of steps."""
    import torch

    from runtime.tiny.domain import generate_problem

    rng = random.Random(seed)
    tok.padding_side = "left"
    result: dict[str, float] = {}
    for steps in range(min_steps, max_steps + 1):
        problems = [generate_problem(rng, steps, split) for _ in range(per_steps)]  # type: ignore[arg-type]
        correct = 0
        for start in range(0, per_steps, 100):
            chunk = problems[start : start + 100]
            enc = tok([assistant_prefix(p.question) for p in chunk], return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=160,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for p, text in zip(chunk, texts, strict=True):
                last = [ln for ln in text.splitlines() if ln.startswith("Answer:")]
                correct += bool(last) and last[-1].removeprefix("Answer:").strip() == str(p.answer)
        result[str(steps)] = correct / per_steps
    return result
