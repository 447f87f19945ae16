"""The package's loggers: structlog's, quiet below warning until the application
configures structlog.

Design decisions:
- A library never configures logging (STYLE.md rule 8): the CLI and examples choose
  renderers and levels with ``structlog.configure``, and nothing here changes structlog's
  global state.
- But structlog's built-in defaults print every level to standard output, so a program
  that embeds the runtime and never configured structlog would get the scheduler's info
  lines in the middle of its own output. :func:`get_logger` is ``structlog.get_logger``
  with one difference: while structlog is unconfigured, lines below warning are dropped
  (the stdlib's own default for a library's loggers).
- The check is made at each use and each ``bind``, never at import: an application that
  configures structlog after importing the runtime (the CLI does) gets every level it
  asked for, and ``structlog.testing.capture_logs`` sees everything.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["get_logger"]

_QUIET = structlog.make_filtering_bound_logger(logging.WARNING)


class _QuietUntilConfigured:
    """A lazy logger that follows structlog's configuration once there is one and drops
    lines below warning until then."""

    __slots__ = ("_configured", "_quiet")

    def __init__(self, args: tuple[Any, ...], initial_values: dict[str, Any]) -> None:
        self._configured = structlog.get_logger(*args, **initial_values)
        self._quiet = structlog.wrap_logger(None, wrapper_class=_QUIET, logger_factory_args=args, **initial_values)

    def _logger(self) -> Any:
        return self._configured if structlog.is_configured() else self._quiet

    def bind(self, **new_values: Any) -> Any:
        return self._logger().bind(**new_values)

    def __getattr__(self, name: str) -> Any:  # info, warning, new, unbind, ...
        if name.startswith("_"):  # not a logging method (copy and pickle ask before __init__ ran)
            raise AttributeError(name)
        return getattr(self._logger(), name)


def get_logger(*args: Any, **initial_values: Any) -> Any:
    """A structlog logger (``structlog.get_logger(*args, **initial_values)``) that drops
    lines below warning while the application has not configured structlog."""
    return _QuietUntilConfigured(args, initial_values)
