"""Text at the boundaries: what a model, a server or a task file hands the runtime is
made safe to store, log and print.

Design decisions:
- Lone surrogates (``\\ud800``; JSON can carry them as escapes, a decoder with
  ``surrogateescape`` produces them) cannot be encoded as UTF-8, so SQLite, JSON and
  the terminal all reject them. They are replaced with U+FFFD where text enters (a
  completion, a task), and once more as a last resort when an episode is serialised.
- The fast path costs one ``str.isascii`` or one encode: clean text is returned as is.
- Size caps cut text and say so (the caller counts it); a cut never splits a
  character, because Python strings are indexed by code point.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["clean_text", "clean_value", "cut_text"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (the same object if none)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def clean_value(value: Any) -> Any:
    """``clean_text`` applied to every string (keys included) inside JSON-like data."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(v) for v in value]
    return value


def cut_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters, and whether it was cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit], True
