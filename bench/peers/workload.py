"""The measurements every system gets alike: pgbench runs, a marker row to tell "caught up", the
heartbeat lag probe, and CPU from /proc."""

from __future__ import annotations

import threading
import time

import psycopg

from bench.common import machine_busy_seconds, pgbench, pgbench_database, tps_of
from bench.peers.report import percentile

HEARTBEAT = "bench_heartbeat"
TABLES = [
    "public.pgbench_accounts",
    "public.pgbench_tellers",
    "public.pgbench_branches",
    "public.pgbench_history",
    f"public.{HEARTBEAT}",
]


def fresh_primary(cluster, db: str, scale: int) -> None:
    """pgbench's tables (pgbench_history with a key: Slony-I and pgfanout need one) and the heartbeat table."""
    pgbench_database(cluster, db, scale=scale)
    with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {HEARTBEAT} (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL)")


def mark(primary_dsn: str) -> int:
    with psycopg.connect(primary_dsn, autocommit=True) as conn:
        return conn.execute(f"INSERT INTO {HEARTBEAT} (written_at) VALUES (clock_timestamp()) RETURNING id").fetchone()[0]


def wait_visible(replica_dsn: str, marker: int, timeout: float, what: str) -> None:
    """Poll the replica every 10 ms until the heartbeat row ``marker`` is there."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(replica_dsn, autocommit=True) as conn:
        while True:
            try:
                if conn.execute(f"SELECT EXISTS (SELECT FROM {HEARTBEAT} WHERE id = %s)", (marker,)).fetchone()[0]:
                    return
            except psycopg.errors.UndefinedTable:
                pass  # the initial copy has not created it yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: heartbeat row {marker} not on the replica after {timeout:.0f} s")
            time.sleep(0.01)


def caught_up(primary_dsn: str, replica_dsn: str, timeout: float, what: str) -> None:
    """Everything committed on the primary so far is on the replica (a row written now shows up there)."""
    wait_visible(replica_dsn, mark(primary_dsn), timeout, what)


def transactions(cluster, db: str, count: int) -> float:
    """``count`` TPC-B-like transactions from 4 clients on 2 threads; returns pgbench's TPS."""
    return tps_of(pgbench("-c", "4", "-j", "2", "-t", str(count // 4), "-n", dsn_port=cluster.port, db=db))


def fixed_rate(cluster, db: str, rate: int, seconds: int) -> str:
    return pgbench("-c", "4", "-j", "2", "-R", str(rate), "-T", str(seconds), "-n", dsn_port=cluster.port, db=db)


class LagProbe:
    """A row written on the primary every 100 ms, the replica polled every 10 ms: visible - written, in ms."""

    def __init__(self, primary_dsn: str, replica_dsn: str):
        self.primary_dsn, self.replica_dsn = primary_dsn, replica_dsn
        self.stop = threading.Event()
        self.lags_ms: list[float] = []
        self.threads = [threading.Thread(target=self._write), threading.Thread(target=self._watch)]

    def __enter__(self) -> LagProbe:
        with psycopg.connect(self.replica_dsn) as conn:
            self.after = conn.execute(f"SELECT coalesce(max(id), 0) FROM {HEARTBEAT}").fetchone()[0]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # the last heartbeats arrive
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _write(self) -> None:
        with psycopg.connect(self.primary_dsn, autocommit=True) as conn:
            while not self.stop.wait(0.1):
                conn.execute(f"INSERT INTO {HEARTBEAT} (written_at) VALUES (clock_timestamp())")

    def _watch(self) -> None:
        last = self.after
        with psycopg.connect(self.replica_dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    f"SELECT id, extract(epoch FROM clock_timestamp() - written_at) FROM {HEARTBEAT} WHERE id > %s", (last,)
                ).fetchall()
                for row_id, lag in rows:
                    self.lags_ms.append(float(lag) * 1000)
                    last = max(last, row_id)
                time.sleep(0.01)

    def figures(self) -> dict[str, float]:
        if not self.lags_ms:
            raise RuntimeError("no heartbeat reached the replica during the lag run")
        return {"lag_p50_ms": round(percentile(self.lags_ms, 0.5), 2), "lag_p99_ms": round(percentile(self.lags_ms, 0.99), 2)}


class MachineCpu:
    def __enter__(self) -> MachineCpu:
        self.started, self.busy = time.monotonic(), machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cores = (machine_busy_seconds() - self.busy) / (time.monotonic() - self.started)


def children(pid: int) -> list[int]:
    """``pid`` and every process below it (slon runs as a watchdog and a worker)."""
    from pathlib import Path

    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            for child in task.read_text().split():
                found.append(int(child))
                frontier.append(int(child))
    return found


def backends_of(dsn: str, condition: str) -> list[int]:
    """Backends of a cluster picked by a fixed pg_stat_activity condition (ours, not user input)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute(f"SELECT pid FROM pg_stat_activity WHERE {condition}")]
