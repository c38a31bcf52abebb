"""End-to-end visible lag: primary -> agent -> Kafka -> distributor -> Kafka -> subscriber.

pgbench runs its TPC-B-like transaction at a fixed rate (-R, default 200/s), each one also inserting a
probe row stamped with clock_timestamp() just before commit. A watcher polls the replica every
millisecond and notes when each probe becomes visible there. Primary and replica run on this machine,
so both timestamps come from one clock. Reported: p50, p95, p99 and max of (visible - written).

    .venv/bin/python -m bench.lag [--rate 200] [--duration 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from agent import capture
from bench.common import CpuAccount, bench_stack, pgbench, pgbench_database, write_result
from devstack import processes
from devstack.demo import daemon_argv, reset_streams, start_daemon, wait_caught_up, write_config
from devstack.stack import free_port
from pgfanout.core.config import parse_config
from pgfanout.runtime.pg import connect

SCRIPT = """\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO lag_probe (written_at) VALUES (clock_timestamp());
END;
"""
TABLES = [
    "public.pgbench_accounts",
    "public.pgbench_tellers",
    "public.pgbench_branches",
    "public.pgbench_history",
    "public.lag_probe",
]


def prepare(
    stack,
    name: str,
    tiers: int = 1,
    filtered: bool = False,
    metrics: bool = False,
    scale: int = 10,
    source_settings: dict | None = None,
) -> dict:
    """A chain of ``tiers`` distributors; with ``filtered``, each route has a subscription with a row filter
    (that keeps every row, so the replica still equals the primary) and runs the routing code path."""
    primary, replica = stack.postgres("primary"), stack.postgres("replica")
    for cluster in (primary, replica):  # both start equal
        pgbench_database(cluster, name, scale=scale, probe=True)
    kafka = stack.kafka("main").bootstrap
    subscription = {table: {} for table in TABLES}
    subscription["public.pgbench_accounts"] = {"where": "aid > 0 AND bid IS NOT NULL"}
    routes, upstream = {}, name
    for tier in range(1, tiers + 1):
        routes[f"{name}-route{tier}"] = {"upstream": upstream, "kafka": "local", **({"tables": subscription} if filtered else {})}
        upstream = f"{name}-route{tier}"
    # with metrics: every daemon serves them, and the agent puts a trace marker in every second
    observed = (lambda: {"metrics_port": free_port()}) if metrics else dict
    return {
        "kafka": {"local": {"bootstrap_servers": [kafka]}},
        "sources": {
            name: {
                "dsn": primary.dsn(name),
                "kafka": "local",
                "tables": TABLES,
                **observed(),
                **({"trace_interval_seconds": 1} if metrics else {}),
                **(source_settings or {}),
            }
        },
        "routes": routes,
        "distributors": {f"{name}-dist{tier}": {"routes": [f"{name}-route{tier}"], **observed()} for tier in range(1, tiers + 1)},
        "subscribers": {f"{name}-sub": {"route": upstream, "dsn": replica.dsn(name), **observed()}},
    }


class BenchPipeline:
    """A pgbench database on the primary and the replica, capture installed, topics fresh, and its daemons."""

    def __init__(self, stack, name: str, **options):
        """``options``: those of prepare()."""
        self.stack, self.name = stack, name
        self.data = prepare(stack, name, **options)
        self.config = parse_config(self.data)
        reset_streams(self.config)
        self.config_path = write_config(stack.home / f"{name}.yaml", self.data)
        with connect(self.config.sources[name], "bench") as conn:
            capture.install(conn, self.config.sources[name], self.config.subscriptions_of(name))
        self.subscriber = f"{name}-sub"
        self.pids: dict[str, int] = {}

    def start(self, *roles: str) -> None:
        commands = {
            "agent": ("agent", "run", "--source", self.name),
            "subscriber": ("subscriber", "run", self.subscriber),
            **{d: ("distributor", "run", d) for d in self.config.distributors},
        }
        for role in roles:
            # "distributor" stands for every distributor of the chain
            for daemon in list(self.config.distributors) if role == "distributor" else [role]:
                log_name = self.subscriber if daemon == "subscriber" else f"{self.name}-{daemon}"
                self.pids[daemon] = start_daemon(self.stack, log_name, daemon_argv(self.config_path, *commands[daemon]))

    def stop(self) -> None:
        for pid in self.pids.values():
            processes.stop(pid)


def watch(dsn: str, stop: threading.Event, lags: list[float]) -> None:
    last = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(
                "SELECT id, extract(epoch FROM clock_timestamp() - written_at) FROM lag_probe WHERE id > %s", (last,)
            ).fetchall()
            for probe_id, lag in rows:
                lags.append(float(lag))
                last = max(last, probe_id)
            time.sleep(0.001)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--tiers", type=int, default=1, help="distributors chained between agent and subscriber")
    parser.add_argument("--filtered", action="store_true", help="every route has a subscription with a row filter")
    parser.add_argument("--metrics", action="store_true", help="every daemon serves metrics, and the agent traces every second")
    parser.add_argument("--woken-tick-gap-ms", type=int, help="the source's woken_tick_gap_ms (default: the setting's default)")
    args = parser.parse_args()
    stack = bench_stack()
    name = "bench_lag"
    gap = {} if args.woken_tick_gap_ms is None else {"woken_tick_gap_ms": args.woken_tick_gap_ms}
    pipeline = BenchPipeline(stack, name, tiers=args.tiers, filtered=args.filtered, metrics=args.metrics, source_settings=gap)
    config = pipeline.config
    pipeline.start("agent", "distributor", "subscriber")
    time.sleep(3)  # let every daemon connect
    lags: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stack.postgres("replica").dsn(name), stop, lags))
    watcher.start()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "tpcb_probe.sql"
        script.write_text(SCRIPT)
        daemons = {role: [pid] for role, pid in pipeline.pids.items()} | {"Kafka broker": [stack.kafka("main").pid()]}
        started = time.monotonic()
        with CpuAccount(daemons) as account:
            output = pgbench(
                "-c",
                "4",
                "-j",
                "2",
                "-R",
                str(args.rate),
                "-T",
                str(args.duration),
                "-n",
                "-f",
                str(script),
                dsn_port=stack.postgres("primary").port,
                db=name,
            )
        elapsed = time.monotonic() - started
        cores = {process: round(seconds / elapsed, 3) for process, seconds in account.seconds.items()}
    wait_caught_up(config, timeout=60)
    time.sleep(0.2)
    stop.set()
    watcher.join()
    pipeline.stop()
    millis = [lag * 1000 for lag in lags]
    tps = next((line.split()[2] for line in output.splitlines() if line.startswith("tps = ")), "?")
    figures = {
        "rate": args.rate,
        "duration_s": args.duration,
        "tiers": args.tiers,
        "filtered": args.filtered,
        "metrics_and_tracing": args.metrics,
        "pgbench_tps": tps,
        "woken_tick_gap_ms": config.sources[name].woken_tick_gap_ms,
        "cpu_cores": cores,  # while pgbench ran: each daemon, the broker, and the whole machine
        "probes": len(millis),
        "lag_ms": {
            "p50": round(statistics.median(millis), 1),
            "p95": round(percentile(millis, 0.95), 1),
            "p99": round(percentile(millis, 0.99), 1),
            "max": round(max(millis), 1),
        },
    }
    suffix = f"-tiers{args.tiers}{'-filtered' if args.filtered else ''}" if args.tiers != 1 or args.filtered else ""
    suffix += "-metrics" if args.metrics else ""
    suffix += f"-gap{args.woken_tick_gap_ms}" if args.woken_tick_gap_ms is not None else ""
    write_result(
        f"lag{suffix}",
        figures,
        notes=(
            f"visible lag of each committed transaction on the replica through {args.tiers} distributor hop(s)"
            f"{' each applying a row filter' if args.filtered else ''}, default settings (tick_interval_ms=50); "
            "everything on this 2-core machine. Target p99 < 100 ms end to end, < 50 ms more per extra tier."
        ),
    )


if __name__ == "__main__":
    main()
