"""Python as a tool: the ``python`` environment runs a model's code in the sandbox
(:mod:`runtime.tools.sandbox`), one cell per call, and answers with what the cell
printed (and the value of a last expression, as a notebook shows it)::

    call: python(x = 12 * 7)
    = (no output)
    call: python(x + 3)
    = 87

Design decisions:
- Stateful by replay: the episode state is the tuple of cells that ran without an
  error along the path. Each call runs those cells again (their output discarded),
  then the new one, in a fresh sandbox, so a branch of the search needs no snapshot of
  a live interpreter: forking copies a tuple. A cell that raised is not replayed (its
  partial effects are lost, unlike a notebook's); the cost is a re-run of the path's
  cells per call, which the cell count and the timeout bound.
- Not deterministic (a cell may read the clock or draw random numbers), so identical
  calls from one state never share an execution and the environment never forks by
  replaying calls; each branch replays its own cells.
- Contained: every limit of the sandbox holds (wall clock, memory, processes, output,
  files, no network where the tier allows); a cell that hangs, prints too much, forks,
  or kills its parent ends as an error observation, the episode goes on, and the call
  counts against ``max_calls`` like any other.
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from runtime.core.registry import ComponentField
from runtime.core.text import clean_text, cut_text
from runtime.core.types import Task
from runtime.tools.base import ForkMode, ToolCall, ToolOutput, Turn
from runtime.tools.environment import BaseEnvironment, tool_message
from runtime.tools.sandbox import Limits, RunResult, SandboxMode, function_script, run_python
from runtime.tools.spec import BaseTool

__all__ = ["PythonEnvironment", "PythonTool"]

_NO_OUTPUT = "(no output)"
_MAX_PARSED = 100_000
"""Characters of a cell parsed in the runtime's process (a longer cell is parsed in part)."""


async def python(code: str) -> str:
    """Run Python code; the cells run before it on this path are run again first.

    Args:
        code: Python statements; the value of a last expression is shown, as in a notebook.
    """
    raise RuntimeError("the python tool runs through its environment (environment: {name: python})")


class PythonTool(BaseTool):
    """Python code run in the sandbox, one cell a call (``python(x = 2**10)``)."""

    name: Literal["python"] = "python"
    deterministic: ClassVar[bool] = False
    side_effect_free: ClassVar[bool] = False
    timeout: float = Field(10.0, gt=0, le=3600)
    """Seconds a call may take, the replayed cells included; then everything it started is killed."""
    memory_mb: int = Field(512, ge=64)
    """Address space of each process of the call, in MiB."""
    max_cells: int = Field(32, ge=1)
    """Cells replayed at most; a path with more is answered with an error."""
    sandbox: SandboxMode = "auto"
    """The sandbox tier (auto: the strongest that works here; see docs/components.md)."""

    def function(self) -> Callable[..., Any]:
        return python


class PythonEnvironment(BaseEnvironment):
    """Python in the sandbox: the ``python`` tool, its state the path's earlier cells."""

    name: Literal["python"] = "python"
    tools: list[ComponentField("tools", BaseTool)] = Field(default_factory=lambda: [PythonTool()])  # type: ignore[valid-type]
    """The tools a model may call (default: python)."""
    fork: ForkMode = "copy"
    """copy: a branch keeps its own tuple of cells (the only mode this environment needs)."""

    def reset(self, task: Task) -> Any:
        """No cells yet."""
        return ()

    def check(self, call: ToolCall) -> str | None:
        """The schema's checks, and for a python call that its code parses (only parsed,
        never compiled or run here): a verifier rejects a cell that cannot run before it
        costs a sandbox."""
        problem = super().check(call)
        if problem is None and call.name == "python":
            code = str((call.arguments or {}).get("code", ""))
            try:
                ast.parse(code[:_MAX_PARSED], "<cell>", "exec")
            except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                return f"python: the cell does not parse: {type(exc).__name__}: {exc}"[:300]
        return problem

    async def step(self, state: Any, call: ToolCall) -> Turn:
        problem = self.check(call)
        if problem is not None:
            return self.error_turn(state, problem)
        tool = next((t for t in self.tools if isinstance(t, PythonTool) and t.name == call.name), None)
        if tool is None:  # another tool configured beside python: a plain stateless call
            return await super().step(state, call)
        cells: tuple[str, ...] = tuple(state or ())
        if len(cells) >= tool.max_cells:
            return self.error_turn(state, f"this path has run {len(cells)} cells, the most python.max_cells allows")
        code = str((call.arguments or {}).get("code", ""))
        output, ran = await run_cell(cells, code, tool)
        new_state = (*cells, code) if ran else cells
        text = self.format.observation(output)
        return Turn(new_state, text, [tool_message(call.name, output.error or output.text)], output=output)


async def run_cell(cells: tuple[str, ...], code: str, tool: PythonTool) -> tuple[ToolOutput, bool]:
    """Run ``cells`` (quietly), then ``code``, in one fresh sandbox: the cell's output and
    whether it ran without an error (so it joins the path's cells)."""
    files = {"cells.json": json.dumps([*cells, code]), "main.py": function_script(_cell_runner)}
    limits = Limits(timeout=tool.timeout, memory_mb=tool.memory_mb, max_output_bytes=4 * tool.max_output_chars + 4096)
    started = time.monotonic()
    try:
        (result,) = await run_python(files, "main.py", limits=limits, mode=tool.sandbox)
    except Exception as exc:  # the sandbox itself failed (no tier works): the model sees it, the run goes on
        return ToolOutput("", f"python: the sandbox failed: {type(exc).__name__}: {exc}"[:500]), False
    seconds = time.monotonic() - started
    return _output(result, tool.max_output_chars, seconds)


def _output(result: RunResult, cap: int, seconds: float) -> tuple[ToolOutput, bool]:
    printed = clean_text(result.stdout)
    text, capped = cut_text(printed, cap)
    if not result.ok:
        return ToolOutput("", f"python: {result.ending()}", capped, seconds), False
    error = clean_text(result.channel).strip()
    if error:
        shown = f"{text.rstrip()}\n{error}".strip() if text.strip() else error
        return ToolOutput("", cut_text(shown, cap)[0], capped, seconds), False
    return ToolOutput(text.rstrip() or _NO_OUTPUT, None, capped, seconds), True


def _cell_runner() -> None:
    """The program the sandbox runs (stdlib only): the earlier cells with their output
    discarded, then the new cell; the new cell's exception, if any, on fd 3."""
    import ast
    import contextlib
    import io
    import json
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "cells.json"), encoding="utf-8") as file:
        cells = json.load(file)
    channel = os.fdopen(3, "w", encoding="utf-8", errors="backslashreplace")
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]  # a lone surrogate prints escaped
    scope: dict[str, object] = {"__name__": "__main__"}
    for index, cell in enumerate(cells[:-1]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                exec(compile(cell, f"<cell {index}>", "exec"), scope)
            except BaseException:
                pass
    try:
        tree = ast.parse(cells[-1], "<cell>", "exec")
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:
            tree.body.pop()
        exec(compile(tree, "<cell>", "exec"), scope)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), scope)
            if value is not None:
                print(repr(value))  # noqa: T201 (the cell's output is its stdout)
    except BaseException as error:  # noqa: BLE001 (any error of the cell is the model's to see)
        sys.stdout.flush()
        channel.write(f"{type(error).__name__}: {error}"[:2000])
    channel.flush()
