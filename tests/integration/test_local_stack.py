"""`pgfanout local up|down|status` through the CLI, on a stack of its own."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pgfanout.local.processes import alive

REPO = Path(__file__).resolve().parents[2]


def cli(home, *args):
    env = dict(os.environ, PGFANOUT_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "pgfanout", "local", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def our_processes(home):
    """PIDs of every process whose command line mentions the stack's directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(home).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_up_twice_is_fast_and_harmless_and_down_leaves_nothing_running():
    home = REPO / ".pgfanout-test-stack"
    cli(home, "down", "--purge")
    try:
        first = cli(home, "up")
        assert first.returncode == 0, first.stderr
        assert "postgres primary" in first.stdout and "kafka    main" in first.stdout
        pids_before = sorted(our_processes(home))
        assert pids_before

        started = time.monotonic()
        second = cli(home, "up")
        assert second.returncode == 0, second.stderr
        assert time.monotonic() - started < 10
        assert sorted(our_processes(home)) == pids_before, "a second up must not start anything new"
        assert json.loads((home / "stack.json").read_text())["ports"]

        two = cli(home, "up", "--kafka-clusters", "2")
        assert two.returncode == 0, two.stderr
        assert "kafka    second" in two.stdout
        assert len(our_processes(home)) == len(pids_before) + 1, "only the second Kafka cluster is new"
        pids_before = sorted(our_processes(home))

        down = cli(home, "down")
        assert down.returncode == 0, down.stderr
        assert our_processes(home) == []
        assert not any(alive(pid) for pid in pids_before)
        status = cli(home, "status")
        assert "stopped" in status.stdout and "running" not in status.stdout
    finally:
        cli(home, "down", "--purge")
    assert not home.exists()
