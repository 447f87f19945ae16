"""The parent's half of the ``code`` verifier (:mod:`runtime.rewards.code_exec`):
split each assertion into what the parent evaluates itself and the *holes* the sandbox
must evaluate, read the sandbox's records back as plain data, and judge each assertion
here, so that a hostile candidate cannot forge the verdict.

Design decisions:
- The parent parses each assertion with :mod:`ast` and splits it into what it can
  evaluate itself (literals, comparisons, ``and``/``or``/``not`` and a few pure
  builtins: ``sorted``, ``set``, ``len``, ``math.isclose``...) and the holes: the
  sub-expressions that need the candidate's code (``add(1, 2)``). Only the holes go to
  the sandbox (as jobs), never the expected values; the harness there writes
  ``index<TAB>V<TAB>repr(value)`` to fd 3 for each.
- Those records are read back as plain data only: :func:`ast.parse` of the text, then
  literals alone (numbers, strings, bytes, None, booleans, and lists, tuples, sets,
  dicts of them, ``inf``, ``nan``, ``set()``, ``frozenset({...})``); never ``eval``. A
  custom class, such as one whose ``__eq__`` is always True, comes back as a failure. A
  record reported twice (only a candidate writing to the channel itself does that) is
  a failure too.
- A bare ``assert f(x)`` needs the value to be exactly ``True``, ``assert not f(x)``
  exactly ``False``.
- An assertion with the candidate's code on both sides of a comparison (``assert f(x)
  == g(y)``), a pure builtin applied to two of its values, or a test that is not a
  single ``assert`` cannot be judged this way: :func:`prepare` refuses it (a
  :class:`VerifierError` naming the test) or, with ``unchecked_tests: run``, makes it a
  statement job judged inside the sandbox.
- A failure names what the candidate's code returned, never the expected value (it
  may be shown to a model, which could then answer the test by heart), and every text
  from the candidate is clipped (:func:`clip`).
"""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from runtime.core.errors import VerifierError

__all__ = ["Check", "Outcome", "clip", "prepare", "read_outcomes"]

_CLIP = 200

#: Functions the parent applies itself to plain data in an assertion.
_PURE: dict[str, Callable[..., object]] = {
    "abs": abs,
    "bool": bool,
    "float": float,
    "frozenset": frozenset,
    "int": int,
    "len": len,
    "list": list,
    "math.isclose": math.isclose,
    "max": max,
    "min": min,
    "round": round,
    "set": set,
    "sorted": sorted,
    "str": str,
    "sum": sum,
    "tuple": tuple,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


class _Hole(ast.expr):
    """A sub-expression the sandbox evaluates; ``job`` indexes its value."""

    _fields = ("job",)
    job: int


class _Unchecked(Exception):
    """The parent cannot judge this test by itself."""


class _Failed(Exception):
    """A hole has no usable value."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the sandbox reported for one job: its plain value, or why it has none."""

    ok: bool
    value: object = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    """One test: the assertion with its holes, or (unchecked) the job that runs it."""

    source: str
    tree: ast.expr | None
    job: int = -1

    def judge(self, outcomes: Sequence[Outcome | None], jobs: Sequence[tuple[str, str]]) -> tuple[bool, str]:
        if self.tree is None:
            outcome = outcomes[self.job]
            if outcome is None:
                return False, "did not run"
            return outcome.ok, outcome.why
        try:
            result = _evaluate(self.tree, outcomes, jobs)
        except _Failed as failed:
            return False, str(failed)
        except Exception as error:  # e.g. comparing a str to an int with <
            return False, clip(f"{type(error).__name__}: {error}")
        exact = isinstance(self.tree, _Hole)  # a bare `assert f(x)`: f(x) must be exactly True
        if (result is True) if exact else bool(result):
            return True, ""
        holes = [node for node in ast.walk(self.tree) if isinstance(node, _Hole)]
        if not holes:
            return False, f"{clip(self.source)} is false"
        first = holes[0]
        return False, f"{clip(jobs[first.job][1], 80)} returned {clip(repr(_value(first, outcomes, jobs)), 80)}"


def prepare(tests: list[str], unchecked: Literal["refuse", "run"]) -> tuple[list[Check], list[tuple[str, str]]]:
    """Each test's check, and the jobs for the sandbox: ("expr" | "stmt", source)."""
    checks: list[Check] = []
    jobs: list[tuple[str, str]] = []
    for number, source in enumerate(tests, 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = ast.parse(source)
        except SyntaxError as error:
            raise VerifierError(f"test {number} does not parse: {error}") from None
        start = len(jobs)
        try:
            if len(module.body) != 1 or not isinstance(module.body[0], ast.Assert):
                raise _Unchecked("it is not a single assert statement")
            checks.append(Check(source, _split(module.body[0].test, jobs)))
        except _Unchecked as why:
            del jobs[start:]
            if unchecked == "refuse":
                raise VerifierError(
                    f"test {number} ({clip(source, 80)!r}) cannot be judged outside the sandbox: {why}; "
                    "set unchecked_tests: run to run it inside (a hostile candidate can forge its verdict)"
                ) from None
            jobs.append(("stmt", source))
            checks.append(Check(source, None, len(jobs) - 1))
    return checks, jobs


def _split(node: ast.expr, jobs: list[tuple[str, str]]) -> ast.expr:
    """``node`` with every sub-expression that needs the candidate replaced by a hole."""
    try:
        _data(node)
        return node
    except (ValueError, TypeError):
        pass
    if isinstance(node, ast.Compare):
        parts = [_split(part, jobs) for part in (node.left, *node.comparators)]
        for a, b in zip(parts, parts[1:], strict=False):
            if _has_hole(a) and _has_hole(b):
                raise _Unchecked("both sides of a comparison need the candidate's code")
        return ast.Compare(left=parts[0], ops=node.ops, comparators=parts[1:])
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(op=node.op, values=[_split(value, jobs) for value in node.values])
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return type(node)(elts=[_split(item, jobs) for item in node.elts])
    if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
        return ast.Dict(keys=[_split(k, jobs) for k in node.keys if k], values=[_split(v, jobs) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ast.UnaryOp(op=node.op, operand=_split(node.operand, jobs))
    if (
        isinstance(node, ast.Call)
        and _pure_name(node.func) in _PURE
        and not any(isinstance(arg, ast.Starred) for arg in node.args)
        and all(k.arg is not None and _is_data(k.value) for k in node.keywords)
    ):
        args = [_split(arg, jobs) for arg in node.args]
        if sum(map(_has_hole, args)) > 1:
            raise _Unchecked(f"{_pure_name(node.func)}() of two values from the candidate's code")
        return ast.Call(func=node.func, args=args, keywords=node.keywords)
    jobs.append(("expr", ast.unparse(node)))
    hole = _Hole()
    hole.job = len(jobs) - 1
    return hole


def _evaluate(node: ast.expr, outcomes: Sequence[Outcome | None], jobs: Sequence[tuple[str, str]]) -> object:
    """``node``'s value, here, over the holes' plain data."""
    if isinstance(node, _Hole):
        return _value(node, outcomes, jobs)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, outcomes, jobs)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, outcomes, jobs)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        result: object = None
        for value in node.values:
            result = _evaluate(value, outcomes, jobs)
            if isinstance(node.op, ast.And) != bool(result):  # and: stop at falsy; or: at truthy
                return result
        return result
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_evaluate(item, outcomes, jobs) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items if isinstance(node, ast.List) else set(items)
    if isinstance(node, ast.Dict):
        keys = [_evaluate(k, outcomes, jobs) for k in node.keys if k]
        return dict(zip(keys, [_evaluate(v, outcomes, jobs) for v in node.values], strict=True))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        if isinstance(node.operand, _Hole):  # not f(x): f(x) must be exactly False
            return _value(node.operand, outcomes, jobs) is False
        return not _evaluate(node.operand, outcomes, jobs)
    if isinstance(node, ast.Call):
        function = _PURE[_pure_name(node.func)]
        args = [_evaluate(arg, outcomes, jobs) for arg in node.args]
        return function(*args, **{str(k.arg): _data(k.value) for k in node.keywords})
    return _data(node)


def _value(hole: _Hole, outcomes: Sequence[Outcome | None], jobs: Sequence[tuple[str, str]]) -> object:
    outcome, source = outcomes[hole.job], clip(jobs[hole.job][1], 80)
    if outcome is None:
        raise _Failed(f"{source} was not evaluated (the program stopped before it)")
    if not outcome.ok:
        raise _Failed(f"{source} {outcome.why}")
    return outcome.value


def _has_hole(node: ast.expr) -> bool:
    return any(isinstance(child, _Hole) for child in ast.walk(node))


def _pure_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return ""


def _is_data(node: ast.expr) -> bool:
    try:
        _data(node)
    except (ValueError, TypeError):
        return False
    return True


def _data(node: ast.expr) -> object:
    """The plain data a literal stands for (what :func:`repr` writes for plain data,
    ``inf``, ``nan``, ``set()`` and ``frozenset({...})`` included); ValueError otherwise."""
    if isinstance(node, ast.Constant) and node.value is not Ellipsis:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _data(node.operand)
        if isinstance(operand, (int, float, complex)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        left, right = _data(node.left), _data(node.right)
        if isinstance(left, (int, float)) and not isinstance(left, bool) and isinstance(right, complex):
            return left + right if isinstance(node.op, ast.Add) else left - right
    if isinstance(node, ast.Tuple):
        return tuple(_data(item) for item in node.elts)
    if isinstance(node, ast.List):
        return [_data(item) for item in node.elts]
    if isinstance(node, ast.Set):
        return {_data(item) for item in node.elts}
    if isinstance(node, ast.Dict) and all(key is not None for key in node.keys):
        return {_data(key): _data(value) for key, value in zip(node.keys, node.values, strict=True) if key is not None}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset"):
        if not node.keywords and len(node.args) <= 1:
            items = _data(node.args[0]) if node.args else ()
            if isinstance(items, (list, tuple, set, frozenset, str, bytes, dict)):
                return set(items) if node.func.id == "set" else frozenset(items)
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    raise ValueError("not plain data")


def read_outcomes(channel: str, count: int) -> tuple[list[Outcome | None], str | None]:
    """The harness's records, as plain data; and the program's own failure, if any."""
    outcomes: list[Outcome | None] = [None] * count
    seen: set[int] = set()
    failure = None
    for line in channel.splitlines():
        index, _, rest = line.partition("\t")
        kind, _, payload = rest.partition("\t")
        if index == "-" and failure is None:
            failure = clip(_text(payload))
            continue
        if not (index.isascii() and index.isdigit()) or int(index) >= count:
            continue
        k = int(index)
        if k in seen:  # only a candidate writing to the channel itself does this
            outcomes[k] = Outcome(False, why="was reported twice")
            continue
        seen.add(k)
        if kind == "V":
            try:
                outcomes[k] = Outcome(True, _literal(payload))
            except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError...
                outcomes[k] = Outcome(False, why="returned something that is not plain data")
        elif kind == "P":
            outcomes[k] = Outcome(True)
        elif kind == "X":
            outcomes[k] = Outcome(False, why=f"returned a {clip(_text(payload), 60)}, not plain data")
        else:
            outcomes[k] = Outcome(False, why=f"raised {clip(_text(payload))}")
    return outcomes, failure


def _literal(text: str) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _data(ast.parse(text.strip(), mode="eval").body)


def _text(payload: str) -> str:
    try:
        value = _literal(payload)
    except Exception:
        return payload
    return value if isinstance(value, str) else payload


def clip(text: str, limit: int = _CLIP) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
