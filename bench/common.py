"""Shared benchmark plumbing: a stack of its own, machine facts, results written with their command."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from devstack.postgres import bin_dir
from devstack.processes import stat_fields
from devstack.stack import Stack
from pgfanout.core.config import KafkaCluster
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime.daemon import AUTOGROUP_SWITCH, autogroups_enabled

REPO = Path(__file__).resolve().parents[1]
BENCH_HOME = Path(os.environ.get("PGFANOUT_BENCH_HOME", REPO / ".pgfanout-bench"))
RESULTS = REPO / "bench" / "results"


def bench_stack() -> Stack:
    stack = Stack.load(BENCH_HOME)
    stack.up()
    return stack


WARMUP_TOPIC = "bench-broker-warmup"


def warm_broker(cluster: KafkaCluster, requests: int = 30_000, seconds: float = 60.0) -> int:
    """Produce-and-flush round trips, as the agent makes them, until the broker's JIT has compiled its
    request path; returns how many were made.

    A broker in service has run for days. One started for a benchmark runs its produce path interpreted
    for its first thousands of requests, at several times the CPU per request (docs/benchmarks.md), and
    that would be charged to whichever run publishes first.
    """
    kafkautil.ensure_topic(cluster, WARMUP_TOPIC, 1024 * 1024)
    producer = kafkautil.producer(cluster, 1024 * 1024)
    deadline = time.monotonic() + seconds
    made = 0
    try:
        while made < requests and time.monotonic() < deadline:
            producer.send(WARMUP_TOPIC, value=b"warm-up " * 16)
            producer.flush(timeout=30)
            made += 1
    finally:
        producer.close(timeout=5)
    return made


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    postgres = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{memory_kb / 1024 / 1024:.0f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgres": postgres,
        "kafka": (REPO / "kafka" / "pom.xml").read_text().split("<kafka.version>")[1].split("<")[0],
        "scheduler_autogroups": autogroups(),
    }


def autogroups() -> str:
    """Whether the kernel shares the CPUs between sessions first: it changes how pgbench's client competes."""
    return {True: "on", False: "off", None: "not available"}[autogroups_enabled()]


@contextmanager
def scheduler_autogroups(setting: str, switch: Path = AUTOGROUP_SWITCH) -> Iterator[None]:
    """Run with the kernel's autogroups "on" or "off" and put the machine's setting back after; "as-is"
    leaves the machine alone.

    Debian's kernels turn autogroups on (a desktop default: each terminal session gets an equal share of the
    CPUs); PostgreSQL servers are commonly tuned with them off (docs/benchmarks.md), because then every
    session's backends, and a co-located client, compete as processes. The kernel applies the switch to
    processes as they start, which is why it is made before the benchmark starts anything.
    """
    if setting == "as-is":
        yield
        return
    wanted = {"on": "1", "off": "0"}[setting]
    try:
        before = switch.read_text().strip()
        switch.write_text(wanted)
    except OSError as exc:
        raise SystemExit(
            f"cannot turn scheduler autogroups {setting} ({switch}: {exc}); "
            "run as root on a Linux kernel with autogroups, or use --autogroups as-is"
        ) from None
    try:
        yield
    finally:
        switch.write_text(before)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every CPU of the machine has spent busy since boot (user to steal; not idle, not iowait)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """CPU time a process (all its threads) has used; 0 if it is gone."""
    fields = stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class CpuAccount:
    """CPU time used while a run lasts, by the whole machine and by named processes."""

    def __init__(self, processes: dict[str, list[int]]) -> None:
        self.processes = processes
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> CpuAccount:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        self.seconds = {name: end[name] - self._start[name] for name in end}

    def _read(self) -> dict[str, float]:
        reading = {name: sum(process_cpu_seconds(pid) for pid in pids) for name, pids in self.processes.items()}
        reading["machine"] = machine_busy_seconds()
        return reading

    def ms_per_1000(self, transactions: int) -> dict[str, float]:
        return {name: round(seconds * 1000 * 1000 / transactions, 1) for name, seconds in self.seconds.items()}


def pgbench(*args: str, dsn_port: int, db: str) -> str:
    result = subprocess.run(
        [str(bin_dir() / "pgbench"), "-h", "127.0.0.1", "-p", str(dsn_port), "-U", "postgres", *args, db],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout + result.stderr


def tps_of(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise ValueError(f"no tps line in pgbench output:\n{output}")


def transactions_of(output: str) -> int:
    for line in output.splitlines():
        if line.startswith("number of transactions actually processed:"):
            return int(line.split(":")[1].split("/")[0])
    raise ValueError(f"no transaction count in pgbench output:\n{output}")


def write_result(name: str, figures: dict, notes: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    module = Path(sys.argv[0]).stem  # the benchmark's module: one module may write several results
    command = "python -m bench." + module + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    record = {
        "benchmark": name,
        "command": command,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "figures": figures,
        "notes": notes,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return path


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def pgbench_database(cluster, name: str, scale: int = 10, probe: bool = False) -> None:
    """A fresh pgbench database; pgbench_history gets a key (capture needs one), ``probe`` adds bench.lag's table.

    pgbench's initial data is deterministic, so two clusters initialized alike start equal.
    """
    cluster.create_database(name, drop_first=True)
    pgbench("-i", "-s", str(scale), "-q", dsn_port=cluster.port, db=name)
    with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
        conn.execute("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")
        if probe:
            conn.execute("CREATE TABLE lag_probe (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL)")
        conn.execute("VACUUM ANALYZE")


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def wait_for_ready(log_file: Path, timeout: float = 60.0) -> None:
    """Wait until a daemon has logged that it is connected and ready."""
    deadline = time.monotonic() + timeout
    while "ready:" not in (log_file.read_text() if log_file.exists() else ""):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no 'ready:' in {log_file} after {timeout:.0f} s")
        time.sleep(0.005)
