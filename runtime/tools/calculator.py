"""The calculator: a ``calc`` tool and the ``calculator`` environment built on it.

``calc(expression)`` evaluates integer and decimal arithmetic (``+ - * / // % **``,
unary signs, parentheses) and answers with the value: ``call: calc(12*7)`` is
answered ``= 84``.

Design decisions:
- Safe by construction: the expression is parsed with :mod:`ast` and only number
  literals and arithmetic operators are walked; names, calls, attributes and every
  other node are refused. Python's ``eval`` is never used.
- Bounded in size and time: at most :data:`MAX_EXPRESSION_CHARS` characters, and every
  intermediate value (a power estimated before it is computed) stays below
  :data:`MAX_MAGNITUDE`, so ``9**9**9`` is refused instead of computed. A call costs
  microseconds, so it runs in the event loop's thread through an async function.
- Deterministic and side-effect free: identical calls from one state share one
  execution, and any fork mode works (the environment has no state).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from runtime.core.registry import ComponentField
from runtime.tools.environment import BaseEnvironment
from runtime.tools.spec import BaseTool

__all__ = ["MAX_EXPRESSION_CHARS", "MAX_MAGNITUDE", "Calc", "CalculatorEnvironment", "calculate"]

MAX_EXPRESSION_CHARS = 256
MAX_MAGNITUDE = 10**60
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _bounded(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ValueError("number too large")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if abs(base) > 1 and abs(exponent) * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ValueError("number too large")
    if isinstance(exponent, int) and exponent < 0 and isinstance(base, int):
        return float(base) ** exponent
    return base**exponent


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right))
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise ValueError(f"not arithmetic: {ast.unparse(node)[:40]!r}")


def _render(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.12g}"
    return str(value)


async def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, for example 12*7+3.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression[:40]!r}") from None
    try:
        return _render(_eval(tree))
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("number too large") from None


class Calc(BaseTool):
    """Arithmetic on numbers (``calc(12*7)`` is 84)."""

    name: Literal["calc"] = "calc"
    timeout: float = Field(1.0, gt=0, le=3600)
    """Seconds one evaluation may take (it takes microseconds)."""

    def function(self) -> Callable[..., Any]:
        return calculate


class CalculatorEnvironment(BaseEnvironment):
    """The calculator: the ``calc`` tool, stateless, in the compact call format."""

    name: Literal["calculator"] = "calculator"
    tools: list[ComponentField("tools", BaseTool)] = Field(default_factory=lambda: [Calc()])  # type: ignore[valid-type]
    """The tools a model may call (default: calc)."""
