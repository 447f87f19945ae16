"""The tiny reasoning domain: arithmetic with precedence, solved one step per line.

A problem is an expression over small integers with ``+``, ``-`` and ``*``
(``Evaluate: 3+4*5-6``). A solution reduces it one operation at a time, products
first, then sums from left to right, rewriting what is left after each step::

    Plan: 1 product first, then 2 sums left to right.
    4*5=20, leaving 3+20-6
    3+20=23, leaving 23-6
    23-6=17
    Answer: 17

Design decisions:
- Products only ever join two original operands (no ``a*b*c``), so every product
  step is a times-table fact and a few-million-parameter model can learn it.
- Every step line restates the remaining expression, so a step can be checked in
  isolation by :func:`check_step` (the rule-based process verifier) and a policy never
  has to track hidden state.
- Training traces carry the behaviours search exploits: a ``Plan:`` line for problems
  of three or more steps, and with some probability a wrong step followed by an
  explicit reflection (``check: 7*8=54 is wrong, 7*8=56, leaving ...``).
- The answer checker is exact integer comparison of the ``Answer:`` line.
- Tool traces (:func:`tool_trace`) are the same solutions with a calculator call before
  each operation, answered by the calculator environment's observation line, and the
  step copies the result::

      call: calc(4*5)
      = 20
      4*5=20, leaving 3+20-6

  The observation is the environment's text (never trained); the call and the step
  are the policy's. Only the operation due next is a call the rule verifier accepts.
- Held-out problems are a fixed part of the problem space, not a seed: a problem is
  held out when a hash of its question falls in one tenth of the range
  (:func:`split_of`). Training sets drawn with ``split="train"`` and evaluation sets
  drawn with ``split="heldout"`` can never share a problem, whatever their seeds and
  sizes (with seeds alone, 30,000 training tasks shared 9 of 600 held-out problems).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from runtime.core.splits import Split, split_of

__all__ = [
    "ArithProblem",
    "Split",
    "check_call",
    "check_step",
    "generate_problem",
    "mixed_operands",
    "parse_expression",
    "solution_steps",
    "split_of",
    "tool_trace",
    "training_trace",
]

_TOKEN = re.compile(r"-?\d+|[+\-*]")
_STEP = re.compile(
    r"^(?:check: (?P<wa>-?\d+)(?P<wop>[+\-*])(?P<wb>-?\d+)=(?P<wc>-?\d+) is wrong, )?"
    r"(?P<a>-?\d+)(?P<op>[+\-*])(?P<b>-?\d+)=(?P<c>-?\d+)(?:, leaving (?P<rest>[-+*\d]+))?$"
)


@dataclass(frozen=True)
class ArithProblem:
    """One problem: operands, operators and the value of the expression."""

    numbers: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def expression(self) -> str:
        return render(list(self.numbers), list(self.ops))

    @property
    def question(self) -> str:
        return f"Evaluate: {self.expression}"

    @property
    def steps(self) -> int:
        return len(self.ops)

    @property
    def answer(self) -> int:
        return evaluate(list(self.numbers), list(self.ops))


def render(numbers: list[int], ops: list[str]) -> str:
    out = [str(numbers[0])]
    for op, n in zip(ops, numbers[1:], strict=True):
        out.append(op)
        out.append(str(n))
    return "".join(out)


def parse_expression(text: str) -> tuple[list[int], list[str]]:
    """Split ``3+-4*5`` into numbers and operators; raise ValueError if malformed."""
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text.replace(" ", ""):
        raise ValueError(f"not an expression: {text!r}")
    numbers: list[int] = []
    ops: list[str] = []
    expect_number = True
    for tok in tokens:
        if expect_number:
            numbers.append(int(tok))
        elif tok in "+-*":
            ops.append(tok)
        else:  # "-3" directly after a number reads as "- 3"
            ops.append("-")
            numbers.append(int(tok[1:]))
            continue
        expect_number = not expect_number
    if len(numbers) != len(ops) + 1:
        raise ValueError(f"not an expression: {text!r}")
    return numbers, ops


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def next_reduction(ops: list[str]) -> int:
    """Index of the operator reduced next: the first product, else the first sum."""
    return ops.index("*") if "*" in ops else 0


def evaluate(numbers: list[int], ops: list[str]) -> int:
    numbers, ops = list(numbers), list(ops)
    while ops:
        i = next_reduction(ops)
        numbers[i : i + 2] = [_apply(numbers[i], ops[i], numbers[i + 1])]
        del ops[i]
    return numbers[0]


def generate_problem(
    rng: random.Random, steps: int, split: Split = "all", max_operand: int | None = None
) -> ArithProblem:
    """A random problem with ``steps`` operators and no chained products, from ``split``
    of the problem space (drawn again until it falls there).

    Operands are the domain's (2-9 in products, 1-30 elsewhere); with ``max_operand``
    every operand is drawn from 2 (products) or 1 up to it instead: problems past the
    times tables a policy learns, for out-of-distribution tests."""
    while True:
        problem = _draw(rng, steps, max_operand)
        if split == "all" or split_of(problem.question) == split:
            return problem


def mixed_operands(rng: random.Random, wide_share: float, top: int = 999) -> int | None:
    """``max_operand`` for one training problem of a mix: ``top`` with probability
    ``wide_share``, else None (the domain's operands). Draws nothing at share 0, so a
    seeded stream of problems stays as it was without a mix."""
    return top if wide_share > 0 and rng.random() < wide_share else None


def _draw(rng: random.Random, steps: int, max_operand: int | None = None) -> ArithProblem:
    ops: list[str] = []
    for _ in range(steps):
        choices = ["+", "-"] if ops and ops[-1] == "*" else ["+", "-", "*"]
        ops.append(rng.choice(choices))
    product_top, sum_top = (9, 30) if max_operand is None else (max_operand, max_operand)
    numbers = [
        rng.randint(2, product_top) if _touches_product(ops, i) else rng.randint(1, sum_top) for i in range(steps + 1)
    ]
    return ArithProblem(tuple(numbers), tuple(ops))


def _touches_product(ops: list[str], i: int) -> bool:
    return (i > 0 and ops[i - 1] == "*") or (i < len(ops) and ops[i] == "*")


def plan_line(problem: ArithProblem) -> str:
    products = problem.ops.count("*")
    sums = problem.steps - products
    parts = []
    if products:
        parts.append(f"{products} product{'s' if products > 1 else ''} first")
    if sums:
        parts.append(f"{sums} sum{'s' if sums > 1 else ''} left to right")
    return "Plan: " + ", then ".join(parts) + "."


def solution_steps(problem: ArithProblem) -> list[str]:
    """The correct step lines, without plan or answer line."""
    numbers, ops = list(problem.numbers), list(problem.ops)
    lines = []
    while ops:
        i = next_reduction(ops)
        a, op, b = numbers[i], ops[i], numbers[i + 1]
        c = _apply(a, op, b)
        numbers[i : i + 2] = [c]
        del ops[i]
        line = f"{a}{op}{b}={c}"
        lines.append(line + (f", leaving {render(numbers, ops)}" if ops else ""))
    return lines


def training_trace(problem: ArithProblem, rng: random.Random, error_rate: float = 0.15) -> list[tuple[str, bool]]:
    """Solution lines for training, each with whether the loss should train on it.

    With probability ``error_rate`` one step is first written with a wrong result
    (masked out of the loss: the policy should learn to correct, not to err), then
    corrected on the next line by an explicit ``check:`` reflection.
    """
    lines: list[tuple[str, bool]] = []
    if problem.steps >= 3:
        lines.append((plan_line(problem), True))
    steps = solution_steps(problem)
    bad = rng.randrange(len(steps)) if rng.random() < error_rate else -1
    for k, line in enumerate(steps):
        if k == bad:
            fact, _, rest = line.partition(",")
            lhs, _, value = fact.partition("=")
            wrong = int(value) + rng.choice([-10, -2, -1, 1, 2, 10])
            lines.append((f"{lhs}={wrong}", False))
            lines.append((f"check: {lhs}={wrong} is wrong, {line}", True))
        else:
            lines.append((line, True))
    lines.append((f"Answer: {problem.answer}", True))
    return lines


def tool_trace(problem: ArithProblem) -> list[tuple[str, bool]]:
    """A solution that asks the calculator for every operation, each line with whether
    the loss trains on it: the call and the step are trained, the observation (the
    calculator environment's ``= value`` line) is not."""
    lines: list[tuple[str, bool]] = []
    if problem.steps >= 3:
        lines.append((plan_line(problem), True))
    for line in solution_steps(problem):
        fact, _, _ = line.partition(",")
        operation, _, value = fact.partition("=")
        lines += [(f"call: calc({operation})", True), (f"= {value}", False), (line, True)]
    lines.append((f"Answer: {problem.answer}", True))
    return lines


def check_call(previous: str, line: str) -> tuple[float, str]:
    """Score a calculator call (``call: calc(4*5)``) given the expression it starts
    from: 1.0 when it computes the operation due next, 0.0 otherwise."""
    body = line.strip().removeprefix("call:").strip()
    if not (body.startswith("calc(") and body.endswith(")")):
        return 0.0, f"not a calc call: {line.strip()!r}"
    try:
        numbers, ops = parse_expression(previous)
    except ValueError as exc:
        return 0.0, str(exc)
    if not ops:
        return 0.0, "nothing left to compute"
    i = next_reduction(ops)
    due = f"{numbers[i]}{ops[i]}{numbers[i + 1]}"
    if body[len("calc(") : -1].replace(" ", "") != due:
        return 0.0, f"the next operation is {due}"
    return 1.0, "call"


def check_step(previous: str, line: str) -> tuple[float, str]:
    """Score one solution line given the expression it starts from.

    Returns ``(score, explanation)``: 1.0 when the arithmetic is right and the
    restated remainder is the original expression with exactly that reduction
    applied, 0.0 otherwise. ``Plan:`` lines and a correct ``Answer:`` line score 1.0.
    """
    line = line.strip()
    if line.startswith("Plan:"):
        return 1.0, "plan"
    try:
        numbers, ops = parse_expression(previous)
    except ValueError as exc:
        return 0.0, str(exc)
    if line.startswith("Answer:"):
        if ops:
            return 0.0, f"answered before finishing: {previous} is not reduced"
        given = line.removeprefix("Answer:").strip()
        ok = given == str(numbers[0])
        return (1.0, "answer") if ok else (0.0, f"answer {given} but the value is {numbers[0]}")
    match = _STEP.match(line)
    if not match:
        return 0.0, f"unreadable step: {line!r}"
    a, op, b, c = int(match["a"]), match["op"], int(match["b"]), int(match["c"])
    if not ops:
        return 0.0, "nothing left to compute"
    if _apply(a, op, b) != c:
        return 0.0, f"{a}{op}{b}={c} is wrong, {a}{op}{b}={_apply(a, op, b)}"
    i = next_reduction(ops)
    if (numbers[i], ops[i], numbers[i + 1]) != (a, op, b):
        return 0.0, f"the next operation is {numbers[i]}{ops[i]}{numbers[i + 1]}"
    numbers[i : i + 2] = [c]
    del ops[i]
    expected = render(numbers, ops) if ops else None
    if match["rest"] != expected:
        return 0.0, f"what is left should be {expected}"
    return 1.0, "correct"


def remaining_after(previous: str, line: str) -> str:
    """The expression a correct step line leaves (unchanged for plan lines)."""
    match = _STEP.match(line.strip())
    if not match:
        return previous
    return match["rest"] or match["c"]
