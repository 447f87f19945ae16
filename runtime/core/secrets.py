"""Secrets are never stored or printed: every API key the runtime is handed is
registered here, and error messages, stored configs and log lines pass through
:func:`redact` on their way out.

Design decisions:
- Redaction by value, not by guesswork: a key a server echoes back inside an error
  body is the very string we sent, so replacing the registered values catches it
  wherever it appears (messages, explanations, logs). Values shorter than 8
  characters (``EMPTY``, test placeholders) are not registered: replacing them would
  mangle ordinary text and they protect nothing.
- A shape-based pass catches keys we were never handed (a key typed into a config
  field): ``sk-...``-like tokens and ``Bearer`` credentials.
"""

from __future__ import annotations

import re
import threading

__all__ = ["MASK", "looks_like_secret", "redact", "register_secret"]

MASK = "***"
_MIN_LENGTH = 8
_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_SHAPES = re.compile(r"(?:\b(?:sk|pk|rk|ak)-[A-Za-z0-9_\-]{12,}|\bBearer\s+[A-Za-z0-9._\-]{12,}|\bhf_[A-Za-z0-9]{20,})")


def register_secret(value: str | None) -> None:
    """Remember ``value`` so :func:`redact` masks it from now on."""
    global _pattern
    if not value or len(value) < _MIN_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def looks_like_secret(value: str) -> bool:
    """Whether ``value`` has the shape of an API key or bearer token."""
    return _SHAPES.search(value) is not None


def redact(text: str) -> str:
    """``text`` with every registered secret and key-shaped token replaced by ``***``."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _SHAPES.sub(MASK, text)
