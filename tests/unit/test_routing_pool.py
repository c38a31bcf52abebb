"""Routing workers obey SIGTERM even though they are forked from a daemon whose handler only sets a flag."""

import os
import signal
import subprocess
import sys
import time

SCRIPT = """
import threading, time
from pgfanout.runtime import daemon
from distributor.executors import RoutingPool
daemon.install_signal_handlers(threading.Event())  # what `pgfanout distributor run` does before forking
pool = RoutingPool(None, None, [], 2)
print(" ".join(str(p.pid) for p in pool.pool._pool), flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, its stat was read
        return False


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_a_worker_stops_on_sigterm_and_all_leave_with_their_distributor():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, cwd=repo) as parent:
        try:
            workers = [int(p) for p in parent.stdout.readline().split()]
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGTERM)  # what Pool.terminate() sends
            assert wait_gone(workers[:1], 5) == [], "a worker ignored SIGTERM"
            parent.kill()  # SIGKILL: the distributor cannot clean up
            parent.wait()
            assert wait_gone(workers, 5) == [], "workers outlived their distributor"
        finally:
            if parent.poll() is None:
                parent.kill()
