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
- A key has places as well as shapes: a URL's query parameter or a field sent to a
  server (``extra_body``, ``extra_headers``, ...) whose name says key, token, secret,
  password or auth (``?api_key=``, ``?key=``, ``X-Api-Key``, ``access_token``; not
  ``max_tokens`` nor ``api_key_env``: the *last word* of the name decides), and a URL's
  password. :func:`mask_secrets` masks those by place in a config (the stored run config
  goes through it), whatever their shape, and :func:`find_secrets` names them so a
  config can register them for :func:`redact`. By-name masking is kept to what is sent
  to a server: elsewhere a field such as a reward model's ``good_token`` is no secret.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import unquote

__all__ = ["MASK", "find_secrets", "looks_like_secret", "mask_secrets", "redact", "register_secret", "secret_name"]

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


_SECRET_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth", "authorization", "credential",
     "credentials", "signature", "sig"}
)  # fmt: skip
_WIRE_FIELDS = frozenset({"extra_body", "extra_headers", "extra_query", "default_headers", "default_query", "headers"})
"""Config fields whose contents are sent to a server as they are: their names matter."""
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;?\s]+)=([^&#;\s]*)")
_USERINFO = re.compile(r"(://[^/@:\s]*:)([^/@\s]+)(@)")


def secret_name(name: str) -> bool:
    """Whether a query parameter, header or request field called ``name`` holds a
    secret: its last word is key, token, secret, password, auth... (``api_key``,
    ``X-Api-Key``, ``accessToken``; not ``max_tokens``, ``api_key_env``)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    split = [w for w in re.split(r"[^a-z0-9]+", words) if w]
    return bool(split) and split[-1] in _SECRET_WORDS


def _walk(value: Any, wire: bool, found: list[str]) -> Any:
    if isinstance(value, dict):
        masked: dict[Any, Any] = {}
        for name, item in value.items():
            inside = wire or name in _WIRE_FIELDS
            if inside and isinstance(name, str) and secret_name(name) and isinstance(item, str | int) and item != "":
                found.append(str(item))
                masked[name] = MASK
            else:
                masked[name] = _walk(item, inside, found)
        return masked
    if isinstance(value, list | tuple):
        return [_walk(item, wire, found) for item in value]
    if isinstance(value, str) and "://" in value:
        return _mask_url(value, found)
    return value


def _mask_url(url: str, found: list[str]) -> str:
    def userinfo(m: re.Match[str]) -> str:
        found.append(m[2])
        return f"{m[1]}{MASK}{m[3]}"

    def param(m: re.Match[str]) -> str:
        if not m[3] or not secret_name(unquote(m[2])):
            return m[0]
        found.extend({m[3], unquote(m[3])})
        return f"{m[1]}{m[2]}={MASK}"

    return _QUERY_PARAM.sub(param, _USERINFO.sub(userinfo, url))


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` (a config as JSON-like data) with secrets masked by place:
    secret-named query parameters and passwords of every URL in it, and values under
    secret names inside the fields sent to a server (``extra_body``, ``extra_headers``,
    ...), at any depth."""
    return _walk(value, False, [])


def find_secrets(value: Any) -> list[str]:
    """The secrets :func:`mask_secrets` would mask in ``value``, to :func:`register_secret`."""
    found: list[str] = []
    _walk(value, False, found)
    return found
