"""The two trusted stages of :mod:`runtime.tools.sandbox`: the supervisor and the
launcher. Neither is imported where it runs: :func:`runtime.tools.sandbox.function_script`
takes each function's source (``inspect.getsource``) and writes it to a file that a
separate ``python -I -S`` runs, so this module is linted and type-checked like any
other, but the body of each function must stand alone.

Design decisions:
- Each stage is self-contained: it imports what it needs inside its own body, from the
  standard library only (``-I -S``: no site-packages, not the runtime's virtual
  environment), and uses nothing else of this module or of the runtime (annotations
  are strings there, ``from __future__ import annotations``, so the ``Any`` imported
  here for the type checker is never looked up). Its inputs arrive as JSON (the
  supervisor's plan file, the launcher's config argument), never as Python objects.
- The *supervisor* (``python -I -S supervisor.py plan.json``, the runtime's user) is a
  child subreaper: it starts each run in its own session, reads stdout, stderr and fd 3
  through pipes with one byte cap (past it: SIGKILL, ``output_exceeded``), kills at the
  wall-clock deadline, then SIGKILLs every descendant it can find until none is left
  (orphans of setsid and double forks come back to a subreaper; a pid is checked
  through a pidfd to still be ours before it is killed, since pids get reused), and
  reports JSON on its stdout. It also kills everything and exits when the runtime goes
  away (its stdin closes). As root it deletes what the run's fresh uid left at the top
  of the world-writable directories.
- The *launcher* runs first inside the sandbox: rlimits (address space, CPU,
  processes, open files, file size, no core), the drop to the fresh uid, no new
  privileges, parent-death signal (set after the uid change, which clears it), then
  the program as ``__main__``. Under ``unshare`` it is the pid namespace's init (pid 1)
  and forks the program as its child, so that orphans are reaped. Where the
  interpreter lies out of the fresh uid's reach (a pyenv under a 0700 /root), it opens
  the ``sys.path`` directories before the drop and imports through ``/proc/self/fd``.
- The supervisor is a separate process so that the runtime never becomes a subreaper
  (it would collect every orphan of every library it runs) and never shares a uid, a
  pid namespace or a process group with the program.
- Linux only (prctl, pidfds, /proc).
"""

from __future__ import annotations

from typing import Any

__all__ = ["launch", "supervise"]


def supervise() -> None:
    """The supervisor (``python -I -S supervisor.py plan.json``, trusted, as the runtime's user)."""
    import ctypes
    import json
    import os
    import selectors
    import shutil
    import signal
    import subprocess
    import sys
    import time

    with open(sys.argv[1], encoding="utf-8") as file:
        plan = json.load(file)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 3)  # hold fd 3: each run's result channel is put there for the child
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass
    me = os.getpid()

    def parent_of(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                return int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None

    def descendants() -> set[int]:
        table = {int(name): parent_of(int(name)) for name in os.listdir("/proc") if name.isdigit()}
        tree, grown = {me}, True
        while grown:
            more = {pid for pid, parent in table.items() if parent in tree} - tree
            tree |= more
            grown = bool(more)
        return tree - {me}

    def kill(pid: int, tree: set[int]) -> None:
        try:
            handle = os.pidfd_open(pid)  # then check it is still ours: pids get reused
        except OSError:
            return
        try:
            if parent_of(pid) in tree or parent_of(pid) == me:
                signal.pidfd_send_signal(handle, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(handle)

    def sweep() -> int:
        """SIGKILL and reap descendants until none is left; how many there were."""
        seen: set[int] = set()
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            tree = descendants()
            seen |= tree
            for pid in tree:
                kill(pid, tree)
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                break
            time.sleep(0.001)
        return len(seen)

    def cleanup(uid: int) -> None:
        """Delete what the run's uid left at the top of the world-writable directories."""
        for top in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            try:
                entries = list(os.scandir(top))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
                except OSError:
                    pass

    def run(spec: dict[str, Any]) -> dict[str, object]:
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, channel
        os.dup2(pipes[2][1], 3)
        os.close(pipes[2][1])
        with open(spec["stdin"], "rb") as stdin:
            started = time.monotonic()
            try:
                child = subprocess.Popen(
                    spec["argv"],
                    stdin=stdin,
                    stdout=pipes[0][1],
                    stderr=pipes[1][1],
                    cwd=spec["cwd"],
                    env=spec["env"],
                    pass_fds=(3,),
                    start_new_session=True,
                )
            finally:
                os.close(pipes[0][1])
                os.close(pipes[1][1])
                os.dup2(devnull, 3)
        readers = [r for r, _ in pipes]
        kept = {r: bytearray() for r in readers}
        selector = selectors.DefaultSelector()
        for r in readers:
            selector.register(r, selectors.EVENT_READ)
        selector.register(0, selectors.EVENT_READ)  # the runtime: EOF means it is gone
        try:
            handle = os.pidfd_open(child.pid)
            selector.register(handle, selectors.EVENT_READ)
            exit_handle: int | None = handle
        except OSError:
            exit_handle = None
        cap, total = int(plan["max_output"]), 0
        timed_out = exceeded = orphaned = ended = False
        deadline = started + float(plan["timeout"])

        def take(fd: int, data: bytes) -> None:
            nonlocal total, exceeded
            kept[fd] += data[: max(0, cap - total)]
            total += len(data)
            exceeded = exceeded or total > cap

        while not (orphaned or exceeded or ended):
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in selector.select(left if exit_handle is not None else min(left, 0.02)):
                if key.fd == 0:
                    orphaned = orphaned or not os.read(0, 1 << 16)
                elif key.fd == exit_handle:
                    ended = True
                else:
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        take(key.fd, data)
                    else:
                        selector.unregister(key.fd)
            ended = ended or (exit_handle is None and child.poll() is not None)
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass
        child.kill()
        code = child.wait()
        seconds = time.monotonic() - started
        leftovers = sweep()
        for r in readers:  # every writer is gone: read what is left
            os.set_blocking(r, False)
            while not exceeded:
                try:
                    data = os.read(r, 1 << 16)
                except BlockingIOError:
                    break
                if not data:
                    break
                take(r, data)
            os.close(r)
        selector.close()
        if exit_handle is not None:
            os.close(exit_handle)
        if orphaned:
            if plan["cleanup_uid"] is not None:
                cleanup(int(plan["cleanup_uid"]))
            os._exit(1)
        text = {r: bytes(kept[r]).decode("utf-8", "replace") for r in readers}
        return {
            "returncode": code,
            "timed_out": timed_out,
            "output_exceeded": exceeded,
            "stdout": text[readers[0]],
            "stderr": text[readers[1]],
            "channel": text[readers[2]],
            "seconds": seconds,
            "leftovers": leftovers,
        }

    reports = [run(spec) for spec in plan["runs"]]
    if plan["cleanup_uid"] is not None:
        cleanup(int(plan["cleanup_uid"]))
    json.dump({"runs": reports}, sys.stdout)
    sys.stdout.flush()


def launch() -> None:
    """The launcher (``python -I -S launcher.py MARKER CONFIG``): the first code in the
    sandbox, trusted; it limits and unprivileges the process, then runs the program."""
    import ctypes
    import json
    import os
    import resource
    import signal
    import sys

    config = json.loads(sys.argv[2])
    if os.getpid() == 1:  # unshare: be the namespace's init (it reaps); the program is its child
        program = os.fork()
        if program:
            while True:
                pid, status = os.wait()
                if pid == program:
                    code = os.waitstatus_to_exitcode(status)
                    os._exit(code if code >= 0 else 128 - code)
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    with open(config["main"], encoding="utf-8") as file:
        source = file.read()

    def tasks_of(uid: int) -> int:
        count = 0
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{name}/status", encoding="utf-8") as status:
                    fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    count += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue
        return count

    def limit(which: int, soft: int, hard: int) -> None:
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:
            hard = min(hard, ceiling)
        resource.setrlimit(which, (min(soft, hard), hard))

    limits = config["limits"]
    processes = limits["processes"] + (tasks_of(os.getuid()) if config["relative_nproc"] else 0)
    limit(resource.RLIMIT_AS, limits["memory"], limits["memory"])
    limit(resource.RLIMIT_CPU, limits["cpu"], limits["cpu"] + 1)
    limit(resource.RLIMIT_NPROC, processes, processes)
    limit(resource.RLIMIT_NOFILE, limits["files"], limits["files"])
    limit(resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"])
    limit(resource.RLIMIT_CORE, 0, 0)
    os.closerange(4, 1 << 16)
    uid, held = config["uid"], {}
    if uid is not None:
        if config["chown_cwd"]:
            os.chown(".", uid, uid)
        for entry in sys.path:  # the interpreter may sit where the uid cannot pass (/root)
            try:
                held[entry] = os.open(entry, os.O_PATH | os.O_DIRECTORY)
            except OSError:
                pass
        for capability in range(64):
            libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP; fails harmlessly without CAP_SETPCAP
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        moved = {}
        for entry, handle in held.items():
            if os.access(entry, os.X_OK):
                os.close(handle)
            else:
                moved[entry] = f"/proc/self/fd/{handle}"

        def reach(path: str) -> str:
            for old, new in moved.items():
                if path == old or path.startswith(old + "/"):
                    return new + path[len(old) :]
            return path

        sys.path[:] = map(reach, sys.path)
        for module in list(sys.modules.values()):  # packages already imported look there too
            if isinstance(getattr(module, "__path__", None), list):
                module.__path__[:] = map(reach, module.__path__)
        sys.path_importer_cache.clear()
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG (a uid change clears it: set after)
    if os.getppid() != parent:
        os._exit(70)  # the supervisor is already gone
    os.umask(0o077)
    import builtins

    for name in ("exit", "quit"):  # site is not loaded
        setattr(builtins, name, sys.exit)
    module = type(sys)("__main__")
    module.__file__ = config["main"]
    sys.modules["__main__"] = module
    sys.argv = [config["main"]]
    exec(compile(source, config["main"], "exec"), module.__dict__)
