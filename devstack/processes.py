"""Starting and stopping our own processes by PID, never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

# Popen objects of the processes we spawned, kept so they are reaped rather than
# garbage-collected while running.
_children: dict[int, subprocess.Popen] = {}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"  # a zombie child of ours counts as gone


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(pid_file: Path, expect_in_cmdline: str) -> int | None:
    """The PID in ``pid_file`` if that process is alive and is what we started."""
    pid = read_pid(pid_file)
    if pid is None or not alive(pid):
        return None
    line = cmdline(pid)
    # Just after exec (Popen has returned), the new image's arguments are not mapped yet for a moment and
    # /proc/PID/cmdline reads empty: taken at once for "not ours", a process just started looked exited.
    deadline = time.monotonic() + 0.5
    while not line and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.002)
        line = cmdline(pid)
    return pid if expect_in_cmdline in line else None


def spawn(argv: list[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    _children[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def wait_exit(pid: int, timeout: float) -> int | None:
    """The exit code of a process we spawned, once it exits by itself; None if still running at the timeout."""
    child = _children.get(pid)
    if child is None:
        raise ValueError(f"process {pid} was not spawned here")
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    del _children[pid]
    return code


def reap_exited() -> list[int]:
    """Reap the processes we spawned that have exited by themselves (a daemon that stopped with an error),
    which nothing stops: left unreaped, each is reported as still running when the interpreter exits."""
    known = list(_children)
    for pid in known:
        _reap(pid)
    return [pid for pid in known if pid not in _children]


def stop(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Ask a process to stop, wait for it, and kill it if it does not."""
    stop_all([pid], sig, timeout)


def stop_all(pids: Iterable[int], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Ask every process to stop at once, wait for them all, and kill those still running at the timeout.

    At once, because each takes up to its loop's wait to notice (about a second for a daemon): one after
    the other, those waits add up."""
    pids = list(pids)
    waiting = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            waiting.append(pid)
    try:
        _wait_gone(waiting, time.monotonic() + timeout)
        for pid in waiting:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(waiting, None)
    finally:
        for pid in pids:
            child = _children.pop(pid, None)
            if child is not None:
                child.wait(timeout=10)


def _wait_gone(pids: list[int], deadline: float | None) -> None:
    """Reap and forget each pid once it has exited; return when none is left or at the deadline."""
    while pids and (deadline is None or time.monotonic() < deadline):
        for pid in list(pids):
            _reap(pid)
            if not alive(pid):
                pids.remove(pid)
        if pids:
            time.sleep(0.05)


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
        os.waitpid(pid, os.WNOHANG)
