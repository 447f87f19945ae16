"""Code execution verifier: run a candidate program against a task's tests in the
sandbox of :mod:`runtime.tools.sandbox`, and compute the verdict here, in the parent,
from plain data, so that a hostile candidate cannot forge it.

The task carries its tests in ``metadata['tests']``, in one of two forms:

- assertions (HumanEval / MBPP): a list of Python ``assert`` statements
  (``assert add(1, 2) == 3``), or one string of them, one per line;
- stdin/stdout pairs (APPS / CodeContests): a list of ``{"input": ..., "output": ...}``;
  the program runs once per pair, on that input, and passes when it exits 0 having
  printed the output (compared line by line, whitespace-separated tokens).

The candidate is the last fenced code block of the solution (```` ```python ... ``` ````),
else the extracted answer, else the whole text. The score is the share of tests that pass;
the explanation names the first failure and the sandbox tier (``[sandbox: bwrap]``).

Design decisions:
- The verdict is never taken from the candidate's process. The parent splits each
  assertion into what it evaluates itself and the *holes* that need the candidate's
  code; only the holes go to the sandbox, never the expected values, and their values
  come back as plain data that the parent judges (:mod:`runtime.rewards.code_checks`
  does the splitting, the reading back and the judging; the harness here runs inside
  the sandbox and writes each hole's value to fd 3).
- What the candidate can still do in its own process is emit any values it likes, which
  is no more than answering: without the expected values it cannot pass. So an assertion
  whose comparison has the candidate's code on both sides (``assert f(x) == g(y)``), or
  a test that is not a single ``assert``, cannot be checked this way. By default such a
  task is refused (a :class:`VerifierError` naming the test); ``unchecked_tests: run``
  runs them as statements inside the sandbox instead, where a hostile candidate can
  forge their verdict (the explanation counts them as unchecked).
- A candidate that fails to even define its code scores 0 with its error as the
  explanation: a wrong program is a verdict, not a verifier error. Whatever of the
  candidate's output or errors reaches the explanation is cut short; the sandbox gives
  it no environment, so it holds none of the runtime's secrets. An explanation names
  what the candidate's code returned or printed, never the expected value (it may be
  shown to a model, which could then answer the test by heart).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.base import Score, Verifier
from runtime.rewards.code_checks import clip, prepare, read_outcomes
from runtime.tools.sandbox import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT,
    Limits,
    SandboxMode,
    function_script,
    run_python,
)

__all__ = ["CodeExecution", "extract_code", "run_tests"]

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str, answer: str | None = None) -> str:
    """The last fenced code block of ``text``, else ``answer``, else ``text``."""
    blocks = _FENCE.findall(text)
    if blocks:
        return str(blocks[-1])
    return answer if answer else text


async def run_tests(
    code: str,
    tests: Sequence[str] | Sequence[Mapping[str, Any]],
    *,
    time_limit: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    sandbox: SandboxMode = "auto",
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    max_processes: int = DEFAULT_MAX_PROCESSES,
    unchecked_tests: Literal["refuse", "run"] = "refuse",
) -> Score:
    """Run ``code`` against ``tests`` (assertions, or stdin/stdout pairs) in the sandbox;
    the share that pass, judged here."""
    limits = Limits(
        timeout=time_limit, memory_mb=memory_mb, max_processes=max_processes, max_output_bytes=max_output_bytes
    )
    if not tests:
        raise VerifierError("no tests to run")
    if all(isinstance(test, Mapping) for test in tests):
        return await _run_io(code, [_io_pair(test) for test in tests if isinstance(test, Mapping)], limits, sandbox)
    if not all(isinstance(test, str) for test in tests):
        raise VerifierError("tests are either all assertions (strings) or all {input, output} pairs")
    checks, jobs = prepare([str(test) for test in tests], unchecked_tests)
    files = {"candidate.py": code, "jobs.json": json.dumps(jobs), "harness.py": function_script(_harness)}
    (result,) = await run_python(files, "harness.py", limits=limits, mode=sandbox)
    outcomes, failure = read_outcomes(result.channel, len(jobs))
    tag = f" [sandbox: {result.tier}]"
    if failure is not None:
        return Score(0.0, f"the program failed: {failure}{tag}")
    verdicts = [check.judge(outcomes, jobs) for check in checks]
    passed = sum(ok for ok, _ in verdicts)
    why = f"{passed} of {len(checks)} tests pass"
    failures = [f"test {i + 1}: {detail}" for i, (ok, detail) in enumerate(verdicts) if not ok]
    if failures:
        cut_short = result.timed_out or result.output_exceeded or result.signal is not None
        why += f"; {result.ending() if cut_short else failures[0]}"
    unchecked = sum(check.tree is None for check in checks)
    if unchecked:
        why += f"; {unchecked} unchecked (judged inside the sandbox)"
    return Score(passed / len(checks), why + tag)


class CodeExecution(Verifier):
    """Outcome verifier for code tasks: the share of ``metadata['tests']`` (assertions or
    stdin/stdout pairs) the candidate passes, run in a sandbox and judged outside it."""

    needs_reference: ClassVar[bool] = False  # the task's tests are the reference
    name: Literal["code"] = "code"
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0, le=600)
    """Wall-clock seconds one run may take (then everything it started is killed)."""
    memory_mb: int = Field(DEFAULT_MEMORY_MB, ge=32, le=65536)
    """Address-space limit of each process of a run, in MiB."""
    sandbox: SandboxMode = "auto"
    """Isolation: bwrap (bubblewrap namespaces), unshare (util-linux namespaces),
    process (rlimits and, as root, a fresh uid; no network isolation), or auto: the
    first of those that works here."""
    max_output_bytes: int = Field(DEFAULT_MAX_OUTPUT_BYTES, ge=1024, le=1 << 30)
    """What one run may print (stdout, stderr and its results together); past it, it is killed."""
    max_processes: int = Field(DEFAULT_MAX_PROCESSES, ge=1, le=4096)
    """Processes (and threads) one run may have at once."""
    unchecked_tests: Literal["refuse", "run"] = "refuse"
    """Tests the verifier cannot judge itself (not one assert, or the candidate's code on
    both sides of a comparison): refuse the task, or run them inside the sandbox, where a
    hostile candidate can forge their verdict."""

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        tests = task.metadata.get("tests")
        if isinstance(tests, str):
            tests = [line for line in tests.splitlines() if line.strip()]
        if not tests:
            raise VerifierError(f"task {task.id} has no metadata.tests to run")
        return await run_tests(
            extract_code(text, answer),
            list(tests),
            time_limit=self.timeout,
            memory_mb=self.memory_mb,
            sandbox=self.sandbox,
            max_output_bytes=self.max_output_bytes,
            max_processes=self.max_processes,
            unchecked_tests=self.unchecked_tests,
        )


# -- stdin/stdout tests ---------------------------------------------------------------------


def _io_pair(test: Mapping[str, Any]) -> tuple[str, str]:
    given, expected = test.get("input"), test.get("output")
    if not isinstance(given, str) or not isinstance(expected, str):
        raise VerifierError(f"a stdin/stdout test needs string input and output, not {sorted(test)}")
    return given, expected


def _tokens(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


async def _run_io(code: str, tests: list[tuple[str, str]], limits: Limits, sandbox: SandboxMode) -> Score:
    results = await run_python(
        {"candidate.py": code}, "candidate.py", stdins=[i for i, _ in tests], limits=limits, mode=sandbox
    )
    failures = []
    for k, ((_, expected), result) in enumerate(zip(tests, results, strict=True)):
        if not result.ok:
            last = (result.stderr.strip().splitlines() or [""])[-1]
            failures.append(f"test {k + 1}: {result.ending()}" + (f": {clip(last)}" if last else ""))
        elif _tokens(result.stdout) != _tokens(expected):
            failures.append(f"test {k + 1}: wrong output {clip(result.stdout)!r}")
    passed = len(tests) - len(failures)
    why = f"{passed} of {len(tests)} tests pass" + (f"; {failures[0]}" if failures else "")
    return Score(passed / len(tests), f"{why} [sandbox: {results[0].tier}]")


def _harness() -> None:
    """The program the sandbox runs for assertions (stdlib only): the candidate's code,
    then each job in its namespace, each value written to fd 3 as plain data."""
    import json
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "jobs.json"), encoding="utf-8") as file:
        jobs = json.load(file)
    with open(os.path.join(here, "candidate.py"), encoding="utf-8") as file:
        source = file.read()
    channel = os.fdopen(3, "w", encoding="utf-8", errors="backslashreplace")

    class NotPlain(Exception):
        pass

    def emit(index: object, kind: str, payload: str) -> None:
        channel.write(f"{index}\t{kind}\t{payload}\n")
        channel.flush()

    def plain(value: object, depth: int = 0) -> str:
        if depth > 64:
            raise NotPlain("data nested too deeply")
        if value is None or value is True or value is False:
            return str(value)
        for base in (int, float, complex, str, bytes):
            if isinstance(value, base):
                return str(base.__repr__(value))
        if isinstance(value, list):
            return "[" + ", ".join(plain(item, depth + 1) for item in list.__iter__(value)) + "]"
        if isinstance(value, tuple):
            items = [plain(item, depth + 1) for item in tuple.__iter__(value)]
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        if isinstance(value, set):
            inner = ", ".join(plain(item, depth + 1) for item in set.__iter__(value))
            return "{" + inner + "}" if inner else "set()"
        if isinstance(value, frozenset):
            inner = ", ".join(plain(item, depth + 1) for item in frozenset.__iter__(value))
            return "frozenset({" + inner + "})" if inner else "frozenset()"
        if isinstance(value, dict):
            pairs = (f"{plain(k, depth + 1)}: {plain(v, depth + 1)}" for k, v in dict.items(value))
            return "{" + ", ".join(pairs) + "}"
        raise NotPlain(type(value).__name__)

    def describe(error: BaseException) -> str:
        try:
            text = f"{type(error).__name__}: {error}"
        except BaseException:
            text = type(error).__name__
        return repr(text[:500])

    namespace: dict[str, object] = {"__name__": "__candidate__"}
    try:
        exec(compile(source, "candidate.py", "exec"), namespace)
    except BaseException as error:
        emit("-", "E", describe(error))
        return
    for index, (kind, text) in enumerate(jobs):
        try:
            if kind == "expr":
                value = eval(compile(text, f"<test {index + 1}>", "eval"), namespace)
                try:
                    emit(index, "V", plain(value))
                except NotPlain as why:
                    emit(index, "X", repr(str(why)))
            else:
                exec(compile(text, f"<test {index + 1}>", "exec"), namespace)
                emit(index, "P", "")
        except BaseException as error:
            emit(index, "E", describe(error))
    channel.close()
