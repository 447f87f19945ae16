"""The code verifier's sandbox contains hostile candidates: each attack of the threat
model is its own test, run on every tier that works here (bwrap, unshare, and the
process fallback, forced so that it is tested even where bwrap works). Where a tier
cannot contain an attack in this environment (the process tier has no network
namespace), the test skips and says so."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from runtime.core.errors import VerifierError
from runtime.core.types import Task
from runtime.rewards.code_exec import CodeExecution, run_tests
from runtime.tools.sandbox import MARKER, Limits, SandboxMode, available_tiers, run_python

pytestmark = pytest.mark.anyio

ROOT = os.geteuid() == 0
REPO = Path(__file__).parents[1]
TESTS = ["assert add(1, 2) == 3", "assert add(20, 22) == 42", "assert add(-5, 2) == -3"]
WRONG = "def add(a, b):\n    return a - b\n"  # fails all three
RIGHT = "def add(a, b):\n    return a + b\n"

#: (tier, what) -> why the tier cannot contain it here.
WEAK: dict[tuple[str, str], str] = {("process", "network"): "the process tier has no network namespace"}
if not ROOT:
    same_uid = "the {} tier runs the candidate as the runtime's own uid (not root here)"
    WEAK |= {
        ("process", "signals"): same_uid.format("process"),
        ("process", "environ"): same_uid.format("process"),
        ("process", "files"): same_uid.format("process"),
        ("unshare", "files"): same_uid.format("unshare"),
    }


@pytest.fixture(scope="module")
def usable() -> dict[str, str]:
    return dict(anyio.run(available_tiers))


@pytest.fixture(params=["bwrap", "unshare", "process"])
def tier(request: pytest.FixtureRequest, usable: dict[str, str]) -> SandboxMode:
    name: SandboxMode = request.param
    if usable[name]:
        pytest.skip(f"sandbox {name} cannot run here: {usable[name]}")
    return name


def require(tier: str, what: str) -> None:
    if (tier, what) in WEAK:
        pytest.skip(f"not contained by the {tier} tier here: {WEAK[tier, what]}")


def leftovers(*names: str) -> list[str]:
    """Live processes of a sandbox (its marker on their command line) or named ``names``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        line = " ".join(process.info["cmdline"] or [])
        if process.info["name"] in names or MARKER in line:
            found.append(f"{process.pid} {process.info['name']} {line[:80]}")
    return found


async def verdict(code: str, tier: SandboxMode, tests: list[Any] | None = None, **settings: Any) -> tuple[float, str]:
    verifier = CodeExecution(sandbox=tier, **settings)
    task = Task(id="t", prompt="p", metadata={"tests": TESTS if tests is None else tests})
    score = await verifier.score(task, None, f"```python\n{code}\n```\n")
    return score.value, score.explanation or ""


NAME = "def name(title):\n    import ctypes\n    ctypes.CDLL(None).prctl(15, title, 0, 0, 0)\n"


# -- what a correct program gets -------------------------------------------------------------


async def test_a_correct_candidate_scores_one(tier: SandboxMode) -> None:
    value, why = await verdict(RIGHT, tier)
    assert value == 1.0 and why == f"3 of 3 tests pass [sandbox: {tier}]"


async def test_a_half_correct_candidate_scores_half(tier: SandboxMode) -> None:
    code = "def add(a, b):\n    return 3 if (a, b) == (1, 2) else 0\n"
    value, why = await verdict(code, tier, ["assert add(1, 2) == 3", "assert add(2, 2) == 4"])
    assert value == 0.5 and "1 of 2 tests pass; test 2: add(2, 2) returned 0" in why


async def test_stdin_stdout_tests(tier: SandboxMode) -> None:
    code = "a, b = map(int, input().split())\nprint(a + b, ' ')\nprint()\n"
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "20 22", "output": "42"}, {"input": "2 2", "output": "5"}]
    value, why = await verdict(code, tier, tests)
    assert math.isclose(value, 2 / 3) and "test 3: wrong output '4  \\n\\n'" in why and "5" not in why
    value, why = await verdict("raise ValueError('no')", tier, tests[:1])
    assert value == 0.0 and "exit status 1: ValueError: no" in why


# -- attacks on the runtime ------------------------------------------------------------------


async def test_the_candidate_cannot_kill_the_runtime(tier: SandboxMode) -> None:
    require(tier, "signals")
    token = f"sbx-decoy-{uuid.uuid4().hex[:8]}"
    decoy = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(60)", token])
    # it kills its parent, this process and the decoy by pid, and whatever it finds in /proc
    # that is theirs (kept to them, should the sandbox fail, on a machine others share)
    code = f"""
import os
targets = {{os.getppid(), {os.getpid()}, {decoy.pid}}}
for name in os.listdir("/proc"):
    try:
        line = open(f"/proc/{{name}}/cmdline", "rb").read()
    except OSError:
        continue
    if b"{token}" in line or (b"{MARKER}" in line and b"supervisor.py" in line):
        targets.add(int(name))
for pid in targets - {{os.getpid()}}:
    try:
        os.kill(pid, 9)
    except OSError:
        pass
{WRONG}"""
    try:
        value, why = await verdict(code, tier)
        assert value == 0.0 and "0 of 3 tests pass" in why  # a verdict: the supervisor lived too
        assert decoy.returncode is None and psutil.pid_exists(decoy.pid)
    finally:
        decoy.kill()
        await decoy.aclose()


@pytest.mark.parametrize("how", ["raise", "return", "print"])
async def test_the_candidate_cannot_read_the_runtime_environment(
    tier: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(tier, "environ")
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("SEARCHLEARN_TEST_SECRET", secret)  # in this process's memory
    runtime = await anyio.open_process(  # and a runtime started with the key in its environment
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ}
    )
    code = f"""
import os, re, sys
found = [repr(dict(os.environ))]
for pid in [os.getppid(), {os.getpid()}, {runtime.pid}, "self", *os.listdir("/proc")]:
    try:
        found.append(open(f"/proc/{{pid}}/environ", "rb").read().decode("latin-1"))
    except OSError:
        pass
try:  # the parent's memory, where os.environ keeps what was set after it started
    mem = open("/proc/{os.getpid()}/mem", "rb", buffering=0)
    for line in open("/proc/{os.getpid()}/maps"):
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if perms.startswith("rw") and end - start < 64 << 20:
            try:
                mem.seek(start)
                found += [m.decode() for m in re.findall(rb"sk-[0-9a-f]{{32}}", mem.read(end - start))]
            except (OSError, OverflowError):
                pass
except OSError:
    pass
hits = [chunk for blob in found for chunk in re.findall(r"sk-[0-9a-f]{{32}}", blob)]
leak = " ".join(sorted(set(hits))) or "nothing found"
print(leak)
print(leak, file=sys.stderr)
open("leak.txt", "w").write(leak)
def add(a, b):
    return leak
if {how!r} == "raise":
    raise RuntimeError(leak)
"""
    try:
        value, why = await verdict(code, tier)
        assert value == 0.0 and secret not in why and "nothing found" in why
        (result,) = await run_python({"candidate.py": code}, "candidate.py", mode=tier)
        assert result.stdout.strip() == "nothing found"
        assert secret not in result.stdout + result.stderr + result.channel
    finally:
        runtime.kill()
        await runtime.aclose()


# -- forging the verdict ---------------------------------------------------------------------

FORGERIES = {
    "result file": """
import json, os
for folder in (".", os.path.dirname(os.path.abspath(globals().get("__file__", "."))), "/tmp"):
    for name in ("result.json", "results.json", "verdict.json"):
        try:
            json.dump({"passed": 3, "total": 3, "failures": []}, open(os.path.join(folder, name), "w"))
        except OSError:
            pass
os._exit(0)
""",
    "records of its own": """
import os
for index in range(4):  # what it would need to know is the expected values: it guesses
    for guess in ("True", "1", "0", "None", "[]"):
        os.write(3, f"{index}\\tV\\t{guess}\\n".encode())
os._exit(0)
""",
    "patched builtins": """
import builtins, sys
builtins.exec = lambda *args, **kwargs: None
builtins.eval = lambda *args, **kwargs: True
builtins.repr = lambda value: "True"
builtins.__import__ = lambda *args, **kwargs: sys
sys.exit = lambda *args: None
""",
    "always equal": """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __repr__(self): return "3"
    __hash__ = object.__hash__
class Number(int):
    def __eq__(self, other): return True
    __hash__ = int.__hash__
class Pair(tuple):
    def __eq__(self, other): return True
    __hash__ = tuple.__hash__
answers = iter([Anything(), Number(7), Pair((1,))])
def add(a, b):
    return next(answers)
def even(n):
    return Anything()
""",
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_wrong_candidate_cannot_forge_its_verdict(tier: SandboxMode, forgery: str) -> None:
    code = WRONG + "def even(n):\n    return n % 2 == 1\n" + FORGERIES[forgery]
    # (a bare `assert even(4)` is passed by any `return True`: no forgery needed, so not here)
    value, why = await verdict(code, tier, [*TESTS, "assert not even(3)"])
    assert value == 0.0, why


# -- escaping the run ------------------------------------------------------------------------


async def test_forked_children_do_not_outlive_the_verdict(tier: SandboxMode) -> None:
    code = f"""
import os, time
{NAME}
forked = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        name(b"sbx-fork")
        time.sleep(60)
        os._exit(0)
    forked += 1
{RIGHT}"""
    value, why = await verdict(code, tier, [*TESTS, "assert forked < 32"], max_processes=32)
    assert value == 1.0, why
    assert leftovers("sbx-fork") == []


async def test_setsid_grandchildren_do_not_outlive_the_verdict(tier: SandboxMode) -> None:
    code = f"""
import os, time
{NAME}
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        name(b"sbx-setsid")
        for fd in range(4):
            os.close(fd)
        time.sleep(60)
    os._exit(0)
os.wait()
time.sleep(0.1)
{RIGHT}"""
    value, why = await verdict(code, tier)
    assert value == 1.0, why
    assert leftovers("sbx-setsid") == []


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[list[Path]]:
    tag = uuid.uuid4().hex[:8]
    paths = [tmp_path / "escape.txt", REPO / f"sbx-escape-{tag}", Path(f"/tmp/sbx-escape-{tag}")]
    paths += [Path(f"/var/tmp/sbx-escape-{tag}"), Path(f"/dev/shm/sbx-escape-{tag}")]
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


async def test_writes_outside_the_sandbox_fail(tier: SandboxMode, outside: list[Path]) -> None:
    require(tier, "files")
    code = f"""
import os
for path in {[str(p) for p in outside]!r}:
    try:
        with open(path, "w") as file:
            file.write("escaped")
    except OSError:
        pass
with open("scratch.txt", "w") as file:
    file.write("mine")
scratch = open("scratch.txt").read()
{RIGHT}"""
    value, why = await verdict(code, tier, [*TESTS, "assert scratch == 'mine'"])
    assert value == 1.0, why  # its own directory is writable
    assert [path for path in outside if path.exists()] == []


async def test_loopback_connections_fail(tier: SandboxMode) -> None:
    require(tier, "network")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        code = f"""
import socket
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=2) as s:
        s.sendall(b"hello")
    connected = True
except OSError:
    connected = False
{RIGHT}"""
        value, why = await verdict(code, tier, [*TESTS, "assert not connected"])
        listener.settimeout(0.2)
        try:
            accepted, _ = listener.accept()
        except TimeoutError:
            accepted = None
        if accepted is not None:
            accepted.close()
    assert accepted is None and value == 1.0, why


# -- exhausting resources --------------------------------------------------------------------


async def test_allocating_8_gb_fails_quickly(tier: SandboxMode) -> None:
    before, started = psutil.Process().memory_info().rss, time.monotonic()
    value, why = await verdict("x = bytearray(8 * 1024 ** 3)\n" + RIGHT, tier, memory_mb=256)
    assert value == 0.0 and "MemoryError" in why
    assert time.monotonic() - started < 5
    assert psutil.Process().memory_info().rss - before < 100 << 20


async def test_a_program_ignoring_sigterm_ends_at_the_deadline(tier: SandboxMode) -> None:
    code = f"""
import os, signal
{NAME}
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
    signal.signal(sig, signal.SIG_IGN)
if os.fork() == 0:  # parent and child both spin
    name(b"sbx-spin")
while True:
    pass
"""
    started = time.monotonic()
    value, why = await verdict(code, tier, timeout=1.0)
    assert value == 0.0 and "timed out after 1.0s" in why
    assert time.monotonic() - started < 4
    assert leftovers("sbx-spin") == []


async def test_printing_100_mb_is_killed_at_the_output_cap(tier: SandboxMode) -> None:
    code = "import sys\nchunk = 'x' * 65536\nfor _ in range(1600):\n    sys.stdout.write(chunk)\n" + RIGHT
    before, started = psutil.Process().memory_info().rss, time.monotonic()
    value, why = await verdict(code, tier, max_output_bytes=1 << 20)
    assert value == 0.0 and "killed at the output limit (1048576 bytes)" in why
    assert time.monotonic() - started < 5
    assert psutil.Process().memory_info().rss - before < 50 << 20


async def test_cancelling_a_run_leaves_nothing_behind(tier: SandboxMode) -> None:
    code = f"import os, time\n{NAME}\nos.fork()\nname(b'sbx-cancel')\ntime.sleep(60)\n"
    started = time.monotonic()
    with anyio.move_on_after(1.0):
        await verdict(code, tier, timeout=30)
    assert time.monotonic() - started < 4
    assert leftovers("sbx-cancel") == []


async def test_concurrent_runs_keep_to_themselves(tier: SandboxMode) -> None:
    results: dict[int, float] = {}

    async def one(k: int) -> None:
        results[k] = (await verdict(RIGHT if k % 2 else WRONG, tier))[0]

    async with anyio.create_task_group() as group:
        for k in range(4):
            group.start_soon(one, k)
    assert results == {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0}


# -- the parent's judgement ------------------------------------------------------------------


async def test_assertions_the_parent_judges() -> None:
    code = """
def f(x): return [3, 1, 2]
def area(r): return 3.14159 * r * r
def odd(n): return n % 2 == 1
def nothing(): return None
def pair(): return {"a": (1, 2.5), "b": {1, 2}, "c": frozenset(), "d": -1j, "e": float("inf")}
"""
    tests = [
        "assert sorted(f(0)) == [1, 2, 3]",
        "assert set(f(0)) == {1, 2, 3} and len(f(0)) == 3",
        "assert math.isclose(area(1), 3.14159, rel_tol=1e-6)",
        "assert not odd(2)",
        "assert odd(3)",
        "assert nothing() is None",
        "assert f(0)[0] in (2, 3)",
        "assert pair() == {'a': (1, 2.5), 'b': {1, 2}, 'c': frozenset(), 'd': -1j, 'e': float('inf')}",
    ]
    score = await run_tests(code, tests, sandbox="process")
    assert score.value == 1.0, score.explanation
    score = await run_tests(code, ["assert odd(2) == False", "assert not nothing()", "assert f(0)"], sandbox="process")
    assert score.value == 1 / 3 and "test 2: nothing() returned None" in (score.explanation or "")


async def test_tests_the_parent_cannot_judge_are_refused_or_run_inside() -> None:
    code = RIGHT + "import random\n"
    for test in ["assert add(1, 2) == add(2, 1)", "x = add(1, 2)\nassert x == 3"]:
        with pytest.raises(VerifierError, match="cannot be judged outside the sandbox"):
            await run_tests(code, [test], sandbox="process")
    score = await run_tests(code, ["assert add(1, 2) == add(2, 1)", *TESTS], sandbox="process", unchecked_tests="run")
    assert score.value == 1.0 and "1 unchecked" in (score.explanation or "")


async def test_an_unusable_tier_is_a_verifier_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.tools import sandbox

    monkeypatch.setitem(sandbox._PROBED, "bwrap", "bwrap is not installed")
    with pytest.raises(VerifierError, match="sandbox 'bwrap' cannot run here: bwrap is not installed"):
        await run_python({"m.py": "pass"}, "m.py", mode="bwrap", limits=Limits(timeout=1))
