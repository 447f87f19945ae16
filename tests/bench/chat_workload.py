"""The chat workload of ``local_engine.py --real`` and its batched ``model.generate`` row.

A helper of ``tests/bench/local_engine.py`` (section 5: a real pretrained chat model,
such as SmolLM2-135M-Instruct, at concurrency 32 with outputs of >= 128 tokens).

Design decisions:
- Prompts are generic instructions that ask for long answers (an essay, a step-by-step
  explanation, a blog post, a bulleted overview) about one of 50 everyday topics, so
  greedy outputs of a small instruct model run to the token cap instead of stopping
  after a sentence. Each is rendered with the tokenizer's chat template (its default
  system prompt included) and the generation prompt, and sent to every system as the
  same raw text.
- The 200 (topic, instruction) pairs are shuffled once with a fixed seed and cut into
  disjoint sets, so the warm-up set and every timed set hold different prompts (no
  system's prefix cache holds a timed prompt) and every system sees the same sets.
- The batched baseline is the plain way to batch with transformers: the prompts of a
  batch left-padded into one ``model.generate`` call (attention mask, greedy, KV cache),
  ``batch`` prompts per call. A row's output ends at its first EOS (the pad token is
  the EOS token here, so the padding after it is cut with it).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["INSTRUCTIONS", "THREADS", "TOPICS", "generate_batched", "in_own_thread", "prompt_sets"]

THREADS = 2
"""torch threads of a baseline run on its own thread."""

TOPICS = [
    "how a bicycle works",
    "volcanoes",
    "the printing press",
    "photosynthesis",
    "honeybees",
    "the water cycle",
    "how bread is baked",
    "the history of the violin",
    "coral reefs",
    "how a refrigerator keeps food cold",
    "the Roman aqueducts",
    "learning a second language",
    "the phases of the moon",
    "how vaccines train the immune system",
    "the invention of the telephone",
    "composting at home",
    "how airplanes stay in the air",
    "the life of a star",
    "chess openings for beginners",
    "the Silk Road",
    "how rainbows form",
    "keeping a vegetable garden",
    "the steam engine",
    "octopuses",
    "how a library is organised",
    "the causes of earthquakes",
    "making pottery on a wheel",
    "the human heart",
    "how maps are made",
    "the Great Barrier Reef",
    "planning a long hike",
    "the history of coffee",
    "how solar panels make electricity",
    "wolves and their packs",
    "the Olympic Games",
    "how a bill becomes a law",
    "desert plants",
    "the first moon landing",
    "writing a good short story",
    "how glass is made",
    "migratory birds",
    "the history of chocolate",
    "how a compass works",
    "rain forests",
    "the invention of paper",
    "running a small bakery",
    "how tides work",
    "the piano",
    "recycling plastic",
    "the ancient Egyptian pyramids",
]

INSTRUCTIONS = [
    "Write a detailed, multi-paragraph essay about {topic}. Cover its history, how it works and why it matters.",
    "Explain {topic} to a curious high-school student, step by step, in at least five paragraphs.",
    "Write a long blog post titled 'Everything you should know about {topic}'.",
    "Give a thorough overview of {topic}: at least ten bullet points, each explained in two or three sentences.",
]


def prompt_sets(tok: Any, size: int, sets: int, seed: int = 0) -> list[list[str]]:
    """``sets`` disjoint lists of ``size`` chat-rendered prompts (set 0: the warm-up)."""
    pairs = [(t, i) for t in TOPICS for i in INSTRUCTIONS]
    if size * sets > len(pairs):
        raise ValueError(f"{sets} sets of {size} prompts need {size * sets} > {len(pairs)} distinct prompts")
    random.Random(seed).shuffle(pairs)
    rendered = [
        tok.apply_chat_template(
            [{"role": "user", "content": instruction.format(topic=topic)}], tokenize=False, add_generation_prompt=True
        )
        for topic, instruction in pairs[: size * sets]
    ]
    return [rendered[k * size : (k + 1) * size] for k in range(sets)]


def generate_batched(
    model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch: int
) -> tuple[list[str], int, list[float], float]:
    """``batch`` prompts at a time, left-padded into one ``model.generate`` call (greedy,
    KV cache). Returns the texts, the generated ids counted (EOS excluded), each
    request's latency (its batch's end since the start) and the wall time."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    side = tok.padding_side
    tok.padding_side = "left"
    texts: list[str] = []
    latencies: list[float] = []
    reported = 0
    start = time.perf_counter()
    try:
        for k in range(0, len(prompts), batch):
            chunk = prompts[k : k + batch]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                new = row[: row.index(eos)] if eos in row else row
                new = [t for t in new if t != pad]
                reported += len(new)
                texts.append(tok.decode(new, skip_special_tokens=True))
            latencies += [time.perf_counter() - start] * len(chunk)
    finally:
        tok.padding_side = side
    return texts, reported, latencies, time.perf_counter() - start


def in_own_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a thread that ends when it returns, with THREADS torch threads
    (a thread that ran torch ops keeps an OpenMP team, which would slow an engine's
    thread started later)."""
    box: list[Any] = []

    def run() -> None:
        torch.set_num_threads(THREADS)
        try:
            box.append(fn(*args))
        except BaseException as exc:  # re-raised on the calling thread
            box.append(exc)

    thread = threading.Thread(target=run, name="baseline")
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]
