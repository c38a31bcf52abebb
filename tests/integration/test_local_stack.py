"""`python -m devstack local up|down|status` and `python -m devstack demo`, on stacks of their own, from a private
directory (mode 0700, as a home directory is) that the PostgreSQL server's user cannot enter."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest

from devstack.processes import alive
from devstack.stack import Stack

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_dir():
    """A directory only its owner may enter, like a home directory (root's, or a user's)."""
    path = Path(tempfile.mkdtemp(prefix="pgfanout-private-"))
    os.chmod(path, 0o700)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def cli(home, *args, command="local"):
    env = dict(os.environ, PGFANOUT_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "devstack", *([command] if command else []), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


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


def test_up_twice_is_fast_and_harmless_and_down_leaves_nothing_running(private_dir):
    home = private_dir / ".pgfanout-test-stack"
    try:
        first = cli(home, "up")
        assert first.returncode == 0, first.stderr
        assert "postgres primary" in first.stdout and "kafka    main" in first.stdout
        clusters = Stack.load(home).pg_home
        if os.geteuid() == 0:  # initdb and postgres run as the postgres user, who cannot enter private_dir
            assert f"PostgreSQL data: {clusters}" in first.stdout
            assert str(clusters).startswith("/var/lib/pgfanout/")
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
    assert not home.exists() and not clusters.exists()


def test_the_demo_runs_from_a_private_directory(private_dir):
    home = private_dir / "checkout" / ".pgfanout"
    try:
        demo = cli(home, "demo", "--seconds", "3", "--writers", "2", command=None)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "EQUAL: every subscriber matches the primary" in demo.stdout
        assert "Traceback" not in demo.stderr
        for node in ("source shop", "distributor hq", "route all", "subscriber sub1", "subscriber sub2", "last trace"):
            assert node in demo.stdout, f"the demo's status tree lacks {node}"
        status = subprocess.run(
            [sys.executable, "-m", "pgfanout", "status", "--json", "--config", str(home / "demo.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        tree = json.loads(status.stdout)
        jsonschema.validate(tree, json.loads((REPO / "schemas" / "status.schema.json").read_text()))
        assert {n["state"] for n in walk(tree["sources"][0])} == {"running", "ok"}, "every daemon of the demo serves /readyz"
    finally:
        cli(home, "down", "--purge")


def walk(node: dict) -> list[dict]:
    return [node] + [n for child in node["children"] for n in walk(child)]


def test_an_initdb_failure_shows_initdbs_message_and_exits_4(private_dir):
    home = private_dir / ".pgfanout"
    data = Stack.load(home).postgres("primary").data
    data.mkdir(parents=True)
    (data / "left-behind").write_text("not a cluster")  # initdb refuses a directory that is not empty
    os.chmod(data, 0o777)
    try:
        result = cli(home, "up")
        assert result.returncode == 4, result.stderr
        assert "Traceback" not in result.stderr
        assert f"initdb could not create PostgreSQL cluster primary in {data}" in result.stderr
        assert "initdb: error: directory" in result.stderr and "exists but is not empty" in result.stderr
    finally:
        cli(home, "down", "--purge")
