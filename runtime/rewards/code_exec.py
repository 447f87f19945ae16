"""Code execution verifier: run a candidate program against a task's tests in a
separate Python process with time and memory limits (as in HumanEval / MBPP /
APPS harnesses; never ``exec`` in the runtime's own process).

The task carries its tests in ``metadata['tests']``: a list of Python statements
(``assert add(1, 2) == 3``) or one string of them, one per line. The candidate is the
last fenced code block of the solution (```` ```python ... ``` ````), else the
extracted answer, else the whole text. The score is the share of tests that pass.

Design decisions:
- Isolation: ``python -I`` (no user site, no environment variables honoured) in a
  fresh temporary directory with an empty environment; the child sets its own
  limits before running anything of the candidate: address space (``memory_mb``), CPU
  seconds, file size, no core dumps. The parent kills it at the wall-clock
  ``timeout`` (a sleeping candidate uses no CPU), and the verdict is then 0, with why.
- The child reports through a result file, not stdout, so whatever the candidate
  prints cannot be mistaken for a verdict. The limits guard against runaway and
  careless programs, not hostile ones: this is not a security sandbox (use a
  container or a VM for untrusted code at scale).
- A candidate that fails to even define its code scores 0 with its error as the
  explanation: a wrong program is a verdict, not a verifier error.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

import anyio
from pydantic import Field

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.base import Score, Verifier

__all__ = ["CodeExecution", "extract_code", "run_tests"]

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)

_HARNESS = r"""
import json, resource, sys
limits, candidate_path, tests_path, out_path = sys.argv[1:5]
limits = json.loads(limits)
memory = limits["memory_mb"] * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
tests = json.load(open(tests_path))
out = open(out_path, "w")
namespace = {"__name__": "__candidate__"}
try:
    exec(compile(open(candidate_path).read(), "candidate.py", "exec"), namespace)
except BaseException as exc:
    json.dump({"passed": 0, "total": len(tests), "error": f"{type(exc).__name__}: {exc}"[:300]}, out)
    out.close()
    sys.exit(0)
passed, failures = 0, []
for test in tests:
    try:
        exec(compile(test, "test", "exec"), namespace)
        passed += 1
    except BaseException as exc:
        failures.append(f"{test[:80]}: {type(exc).__name__} {exc}"[:200])
json.dump({"passed": passed, "total": len(tests), "failures": failures[:5]}, out)
out.close()
"""


def extract_code(text: str, answer: str | None = None) -> str:
    """The last fenced code block of ``text``, else ``answer``, else ``text``."""
    blocks = _FENCE.findall(text)
    if blocks:
        return str(blocks[-1])
    return answer if answer else text


async def run_tests(code: str, tests: list[str], *, time_limit: float = 5.0, memory_mb: int = 256) -> Score:
    """Run ``code`` then each test in a limited child process; the share that pass."""
    with tempfile.TemporaryDirectory(prefix="searchlearn-code-") as tmp:
        root = Path(tmp)
        (root / "candidate.py").write_text(code, encoding="utf-8")
        (root / "tests.json").write_text(json.dumps(tests), encoding="utf-8")
        (root / "harness.py").write_text(_HARNESS, encoding="utf-8")
        limits = json.dumps({"memory_mb": memory_mb, "cpu_seconds": max(1, int(time_limit + 0.999))})
        command = [sys.executable, "-I", str(root / "harness.py"), limits, "candidate.py", "tests.json", "result.json"]
        process = await anyio.open_process(
            command, cwd=root, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        timed_out = False
        try:
            with anyio.move_on_after(time_limit) as scope:
                await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()
        if timed_out:
            return Score(0.0, f"timed out after {time_limit}s")
        result_file = root / "result.json"
        if not result_file.is_file():
            return Score(0.0, f"the program was killed (exit {process.returncode}; memory or CPU limit?)")
        result = json.loads(result_file.read_text(encoding="utf-8") or "{}")
    total = int(result.get("total") or 0)
    if "error" in result:
        return Score(0.0, f"the program failed: {result['error']}")
    value = result["passed"] / total if total else 0.0
    failures = result.get("failures") or []
    return Score(value, f"{result['passed']} of {total} tests pass" + (f"; {failures[0]}" if failures else ""))


class CodeExecution(Verifier):
    """Outcome verifier for code tasks: the share of ``metadata['tests']`` the candidate passes."""

    name: Literal["code"] = "code"
    timeout: float = Field(5.0, gt=0, le=600)
    """Wall-clock seconds one run may take."""
    memory_mb: int = Field(256, ge=32, le=65536)
    """Address-space limit of one run, in MiB."""

    async def score(self, task: Task, answer: str | None, text: str) -> Score:
        tests = task.metadata.get("tests")
        if isinstance(tests, str):
            tests = [line for line in tests.splitlines() if line.strip()]
        if not tests:
            raise VerifierError(f"task {task.id} has no metadata.tests to run")
        return await run_tests(
            extract_code(text, answer), list(tests), time_limit=self.timeout, memory_mb=self.memory_mb
        )
