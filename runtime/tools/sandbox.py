"""A sandbox for untrusted programs (a model's candidate code, run by the ``code``
verifier in :mod:`runtime.rewards.code_exec`).

:func:`run_python` runs one Python program once per stdin, each run in a fresh
sandbox, and returns for each run what it printed (stdout, stderr), what it wrote to its
result channel (fd 3), how it ended and which tier contained it. The program gets the
standard library only (``python -I -S``, not the runtime's virtual environment).

Three tiers; ``mode`` picks one, ``auto`` the first that works here. Each is probed
once per process by running a trivial program through it (bwrap, for one, fails inside
many containers), and the answer is cached. What each contains ("root": the runtime
runs as root, and the program then runs as a fresh uid, one per call, far above real
accounts; **bold**: not contained):

=====================  =========================  =========================  =========================
attack                 ``bwrap`` (bubblewrap)     ``unshare`` (util-linux)   ``process`` (fallback)
=====================  =========================  =========================  =========================
descendants outliving  no: pid namespace, and     no: pid namespace (our     no: the supervisor is a
the run (fork,         the supervisor's sweep     init is its pid 1), and    child subreaper; it kills
setsid, double fork)                              the sweep                  all it finds till none
signals to the         no: pid namespace          no: pid namespace          root: no (another uid);
runtime                                                                      else **yes**
the runtime's /proc    no: own /proc              no: own /proc              root: environ and mem no,
                                                                             **cmdline yes**; else
                                                                             **all of it**
environment            none inherited             none inherited             none inherited
reading files          only /usr, /lib*, the      **what the uid may read**  **what the uid may read**
                       interpreter, the inputs    (root: world-readable)     (root: world-readable)
writing files          only /tmp and /dev/shm,    root: world-writable dirs  as ``unshare``; also
                       private, 64 MiB each       only, emptied after¹;      **SysV IPC objects**
                                                  else **as the runtime**
network                no: net namespace          no: net namespace          **yes** (loopback too)
memory (address        yes, per process           yes, per process           yes, per process
space), CPU, open
files, file size
processes              yes                        yes                        root: yes; else counted
                                                                             with the runtime's own
output, wall clock     yes                        yes                        yes
the runtime killed     bwrap dies with it         unshare kills its child    the program dies; **its
mid-run (SIGKILL)      (--die-with-parent)        (--kill-child)             forks live on**
=====================  =========================  =========================  =========================

¹ entries the run's uid owns at the top of /tmp, /var/tmp, /dev/shm and /run/lock are
deleted after the run; deeper ones (inside someone else's world-writable directory) are
not, and until then they use the host's disk or memory (bounded per file only).
Total memory is bounded per process, not per run (rlimits have no sum; that takes a
cgroup), so a run may use up to ``max_processes`` times ``memory_mb``.

Design decisions:
- Two trusted stages around the program, the *supervisor* (a child subreaper outside
  the sandbox: pipes with one output cap, the deadline, the sweep of every descendant)
  and the *launcher* (the first code inside it: rlimits, the drop to the fresh uid, then
  the program). They live in :mod:`runtime.tools.sandbox_stages`, whose docstring
  says why each does what it does; this module lays out their inputs (a JSON plan, a
  JSON config), sends their source to ``python -I -S`` with :func:`function_script`
  and turns the supervisor's JSON report into :class:`RunResult` values.
- A run's environment is built, never inherited: PATH, LANG, HOME and TMPDIR only.
- The fresh uid (when root) makes the process limit exact (RLIMIT_NPROC counts per
  uid, and root is exempt from it) and keeps concurrent runs apart. Where the
  interpreter lies out of its reach (a pyenv under a 0700 /root), bwrap shows the
  prefix's parents as 0755; the other tiers open the interpreter's ``sys.path``
  directories before the drop and import through ``/proc/self/fd``.
- The tier that ran is in every :class:`RunResult` (the code verifier puts it in its
  explanation).
- Linux only (namespaces, prctl, /proc); bubblewrap as in Flatpak, unshare from
  util-linux.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import anyio
from anyio.abc import ByteReceiveStream

from runtime.core.errors import VerifierError
from runtime.tools.sandbox_stages import launch, supervise

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MAX_PROCESSES",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT",
    "MARKER",
    "Limits",
    "RunResult",
    "SandboxMode",
    "Tier",
    "available_tiers",
    "function_script",
    "run_python",
    "select_tier",
]

Tier = Literal["bwrap", "unshare", "process"]
SandboxMode = Literal["auto", "bwrap", "unshare", "process"]

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_MB = 256
DEFAULT_MAX_PROCESSES = 32
DEFAULT_MAX_OPEN_FILES = 64
DEFAULT_MAX_FILE_BYTES = 16 << 20
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
#: Size of the private /tmp (and of /dev/shm) of the bwrap tier.
SCRATCH_BYTES = 64 << 20
#: In the command line of every sandboxed process (tests look for leftovers by it).
MARKER = "searchlearn-sandbox"
_INSIDE = "/sandbox"  # where the bwrap tier shows the inputs (read-only)
_UID_BASE = 1 << 30  # fresh uids when the runtime is root: far above any real account
_SUPERVISOR_SLACK = 10.0  # seconds the supervisor may take beyond the runs' deadlines


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use."""

    timeout: float = DEFAULT_TIMEOUT
    """Wall-clock seconds; then everything in the sandbox is SIGKILLed."""
    memory_mb: int = DEFAULT_MEMORY_MB
    """Address space of each process, in MiB."""
    max_processes: int = DEFAULT_MAX_PROCESSES
    """Processes and threads the program may have at once."""
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    """Open file descriptors per process."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest file the program may write."""
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    """stdout, stderr and fd 3 together; past it the program is killed."""

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.timeout))


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one run ended and what it wrote (each stream cut at the output cap)."""

    tier: Tier
    exit_code: int | None
    """The program's exit status; None when a signal ended it."""
    signal: int | None
    timed_out: bool
    output_exceeded: bool
    stdout: str
    stderr: str
    channel: str
    """What the program wrote to fd 3 (its result channel)."""
    seconds: float
    timeout: float
    max_output_bytes: int
    leftovers: int
    """Descendants still alive when the program ended (all killed)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_exceeded

    def ending(self) -> str:
        """How the run ended, in words."""
        if self.timed_out:
            return f"timed out after {self.timeout}s"
        if self.output_exceeded:
            return f"killed at the output limit ({self.max_output_bytes} bytes)"
        if self.signal is not None:
            name = signal.Signals(self.signal).name if self.signal in signal.valid_signals() else str(self.signal)
            return f"killed by {name}" + (" (CPU limit)" if self.signal == signal.SIGXCPU else "")
        return f"exit status {self.exit_code}"


async def run_python(
    files: Mapping[str, str],
    main: str,
    *,
    stdins: Sequence[str] = ("",),
    limits: Limits = Limits(),
    mode: SandboxMode = "auto",
) -> list[RunResult]:
    """Run ``files[main]`` as ``__main__`` once per entry of ``stdins``, each time in a fresh
    sandbox of the tier ``mode`` selects; ``files`` lie read-only beside it."""
    if main not in files:
        raise ValueError(f"{main!r} is not among the files")
    return await _run(await select_tier(mode), files, main, stdins, limits)


async def select_tier(mode: SandboxMode = "auto") -> Tier:
    """The tier ``mode`` means here; an unusable explicit tier is a :class:`VerifierError`."""
    if mode != "auto":
        reason = await _probe(mode)
        if reason:
            raise VerifierError(f"sandbox {mode!r} cannot run here: {reason}")
        return mode
    reasons = []
    for tier in get_args(Tier):
        reason = await _probe(tier)
        if not reason:
            return cast(Tier, tier)
        reasons.append(f"{tier}: {reason}")
    raise VerifierError("no sandbox works here (" + "; ".join(reasons) + ")")


async def available_tiers() -> dict[Tier, str]:
    """Every tier, with why it cannot run here ("" when it can)."""
    return {cast(Tier, tier): await _probe(tier) for tier in get_args(Tier)}


def function_script(function: Callable[[], None]) -> str:
    """A script that defines ``function`` (self-contained: its imports inside) and calls it."""
    source = textwrap.dedent(inspect.getsource(function))
    return f"from __future__ import annotations\n\n{source}\n\n{function.__name__}()\n"


_PROBED: dict[str, str] = {}


async def _probe(tier: str) -> str:
    """Why ``tier`` cannot run here, or "" (checked once per process)."""
    if tier not in _PROBED:
        _PROBED[tier] = await _try(tier)
    return _PROBED[tier]


async def _try(tier: str) -> str:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if tier in ("bwrap", "unshare") and shutil.which(tier) is None:
        return f"{tier} is not installed"
    probe = "import os\nos.write(3, b'ok')\n"
    try:
        (result,) = await _run(cast(Tier, tier), {"probe.py": probe}, "probe.py", ("",), Limits(timeout=20))
    except VerifierError as error:
        return str(error)
    if result.ok and result.channel == "ok":
        return ""
    return f"a trivial program failed in it ({result.ending()}): {result.stderr.strip()[-300:]}"


async def _run(
    tier: Tier, files: Mapping[str, str], main: str, stdins: Sequence[str], limits: Limits
) -> list[RunResult]:
    holder = await anyio.to_thread.run_sync(
        functools.partial(tempfile.TemporaryDirectory, prefix="searchlearn-sandbox-", ignore_cleanup_errors=True)
    )
    try:
        command = await anyio.to_thread.run_sync(_lay_out, Path(holder.name), tier, files, main, stdins, limits)
        reports = await _supervisor(command, len(stdins) * (limits.timeout + 2.0) + _SUPERVISOR_SLACK)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(holder.cleanup)
    return [_result(tier, report, limits) for report in reports]


def _lay_out(
    top: Path, tier: Tier, files: Mapping[str, str], main: str, stdins: Sequence[str], limits: Limits
) -> list[str]:
    """Write the inputs, the launcher, the supervisor and its plan under ``top``; the
    supervisor's command line."""
    root = os.geteuid() == 0
    uid = _UID_BASE + secrets.randbelow(1 << 20) if root else None
    python = os.path.realpath(sys.executable)
    top.chmod(0o711)  # a fresh uid may pass through (to its run dir), not list
    inputs = top / "inputs"
    inputs.mkdir()
    inputs.chmod(0o755)
    for name, text in {**files, "launcher.py": function_script(launch)}.items():
        if Path(name).name != name:
            raise ValueError(f"file names are plain names, not paths: {name!r}")
        (inputs / name).write_text(text, encoding="utf-8")
        (inputs / name).chmod(0o644)
    where = _INSIDE if tier == "bwrap" else str(inputs)
    limit = {
        "memory": limits.memory_mb << 20,
        "cpu": limits.cpu_seconds,
        "processes": limits.max_processes,
        "files": limits.max_open_files,
        "file_bytes": limits.max_file_bytes,
    }
    config = {"main": f"{where}/{main}", "uid": uid, "chown_cwd": tier != "bwrap", "limits": limit}
    config["relative_nproc"] = uid is None and tier == "process"
    argv = _wrap(tier, [python, "-I", "-S", f"{where}/launcher.py", MARKER, json.dumps(config)], inputs, python, root)
    runs = []
    for k, stdin in enumerate(stdins):
        (top / f"stdin-{k}").write_text(stdin, encoding="utf-8")
        cwd = top / f"run-{k}"
        cwd.mkdir()
        home = "/tmp" if tier == "bwrap" else str(cwd)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}
        runs.append({"argv": argv, "cwd": str(cwd), "env": env, "stdin": str(top / f"stdin-{k}")})
    plan = {
        "runs": runs,
        "timeout": limits.timeout,
        "max_output": limits.max_output_bytes,
        "cleanup_uid": uid if tier != "bwrap" else None,
    }
    (top / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    (top / "supervisor.py").write_text(function_script(supervise), encoding="utf-8")
    return [python, "-I", "-S", str(top / "supervisor.py"), str(top / "plan.json")]


def _result(tier: Tier, report: dict[str, Any], limits: Limits) -> RunResult:
    code: int = report["returncode"]
    # Popen reports a signal as -N; bwrap and our namespace init as 128 + N
    sig = -code if code < 0 else code - 128 if tier != "process" and code > 128 else None
    return RunResult(
        tier=tier,
        exit_code=None if sig is not None else code,
        signal=sig,
        timed_out=report["timed_out"],
        output_exceeded=report["output_exceeded"],
        stdout=report["stdout"],
        stderr=report["stderr"],
        channel=report["channel"],
        seconds=report["seconds"],
        timeout=limits.timeout,
        max_output_bytes=limits.max_output_bytes,
        leftovers=report["leftovers"],
    )


def _wrap(tier: Tier, command: list[str], inputs: Path, python: str, root: bool) -> list[str]:
    """``command`` inside the namespaces of ``tier``."""
    if tier == "process":
        return command
    if tier == "unshare":
        user = [] if root else ["--user", "--map-root-user"]
        unshare = [
            _tool("unshare"),
            *user,
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--net",
            "--ipc",
            "--uts",
        ]
        return [*unshare, "--", *command]
    argv = [_tool("bwrap"), "--die-with-parent", "--new-session"]
    if root:  # no user namespace: the launcher drops to a fresh uid (so the process limit holds)
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all"]
    argv += ["--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for prefix in _prefixes(python):
        for parent in reversed(Path(prefix).parents[:-1]):  # bwrap would copy a 0700 /root
            argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", str(inputs), _INSIDE]
    for scratch in ("/tmp", "/dev/shm"):  # the only writable places, of bounded size
        argv += ["--perms", "01777", "--size", str(SCRATCH_BYTES), "--tmpfs", scratch]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp"]
    return [*argv, "--", *command]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise VerifierError(f"{name} is not installed")
    return path


def _prefixes(python: str) -> list[str]:
    """The interpreter's installation directories outside /usr."""
    found: list[str] = []
    candidates = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    candidates.add(os.path.dirname(os.path.dirname(python)))
    for path in sorted(candidates):
        if path in ("/", "/usr") or path.startswith("/usr/") or any(path.startswith(f + "/") for f in found):
            continue
        found.append(path)
    return found


async def _supervisor(command: list[str], budget: float) -> list[dict[str, Any]]:
    """Run the supervisor and read its report; it stops everything if we go away."""
    process = await anyio.open_process(command, env={}, start_new_session=True)
    out, err = bytearray(), bytearray()
    try:
        with anyio.move_on_after(budget) as scope:
            assert process.stdout is not None and process.stderr is not None
            async with anyio.create_task_group() as group:
                group.start_soon(_drain, process.stderr, err)
                await _drain(process.stdout, out)
            await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None and process.stdin is not None:
                await process.stdin.aclose()  # EOF: the supervisor kills the sandbox and exits
                with anyio.move_on_after(5):
                    await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()
    if scope.cancelled_caught:
        raise VerifierError(f"the sandbox supervisor did not finish within {budget:.0f}s")
    if process.returncode != 0:
        tail = err.decode("utf-8", "replace").strip()[-500:]
        raise VerifierError(f"the sandbox supervisor failed (exit {process.returncode}): {tail}")
    return cast(list[dict[str, Any]], json.loads(out)["runs"])


async def _drain(stream: ByteReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into += chunk
