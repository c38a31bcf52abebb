"""pgfanout side by side with PostgreSQL's native logical replication and Slony-I, in one run.

Every system replicates the same pgbench database (scale 10, pgbench_history with a key, a heartbeat
table) between the same two throwaway PostgreSQL clusters (same settings, fsync on, wal_level logical
on both), one system at a time, in an order that rotates each round. Per system and round:

- initial copy: from an empty replica database to caught up (schema, rows, replication running);
- ``--transactions`` TPC-B-like transactions (4 clients, 2 threads) with replication running: pgbench's
  TPS over the round's baseline (no replication), and transactions per second from start to caught up;
- the same with the applying side stopped (capture goes on): the TPS ratio, then the catch-up of that
  backlog, from the restarted applier running (native: its worker's pid; pgfanout: the subscriber's
  "ready"; Slony-I: slon started) to caught up;
- one UPDATE of every pgbench_accounts row (1,000,000 at scale 10), from its start to caught up;
- visible lag at ``pgbench -R 200``: a heartbeat row written every 100 ms, the replica polled every
  10 ms; p50 and p99, and the whole machine's CPU in cores;
- idle CPU of each of the system's processes over ``--idle-seconds``.

"Caught up" means a heartbeat row written after the work is visible on the replica. Every figure is
also given as a ratio to native in the same run (above 1: better than native). Results go to
bench/results/peers.json with the chart bench/results/peers.png.

    .venv/bin/python -m bench.peers [--rounds 2] [--systems native,pgfanout,slony]
    .venv/bin/python -m bench.peers --systems native,pgfanout --only stopped,bulk --rounds 1 --name peers-split
        (a part of the measurements; --settle-before-catchup S waits S seconds before restarting the applier)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psycopg

from bench.common import REPO, RESULTS, CpuAccount, Timer, warm_broker, write_result
from bench.peers import report, systems
from bench.peers.workload import LagProbe, MachineCpu, caught_up, fixed_rate, fresh_primary, transactions
from devstack.stack import Stack
from pgfanout.core.config import KafkaCluster

DB = "peers"
HOME = REPO / ".pgfanout-peers"
SETTLE_SECONDS = 3
PHASES = ("running", "stopped", "bulk", "lag", "idle")  # after the initial copy, which every run makes


def logical_clusters(stack: Stack) -> None:
    """wal_level logical on both clusters (native replication needs it on the primary; both alike)."""
    for name in ("primary", "replica"):
        cluster = stack.postgres(name)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            if conn.execute("SHOW wal_level").fetchone()[0] == "logical":
                continue
            conn.execute("ALTER SYSTEM SET wal_level = 'logical'")
        cluster.restart()


def measure(stack: Stack, kind, args, baseline_tps: float) -> dict:
    primary, replica = stack.postgres("primary"), stack.postgres("replica")
    primary_dsn, replica_dsn = primary.dsn(DB), replica.dsn(DB)
    fresh_primary(primary, DB, args.scale)
    replica.create_database(DB, drop_first=True)
    system = kind(stack, DB)
    figures: dict = {}
    timeout = args.timeout

    def step(what: str) -> None:
        print(f"  {system.name}: {what}", flush=True)

    try:
        system.prepare()
        step("initial copy")
        with Timer() as timer:
            system.start()
            caught_up(primary_dsn, replica_dsn, timeout, f"{system.name} initial copy")
        figures["initial_copy_s"] = round(timer.seconds, 2)

        if "running" in args.phases:
            step(f"{args.transactions} transactions, replication running")
            with Timer() as timer:
                tps = transactions(primary, DB, args.transactions)
                caught_up(primary_dsn, replica_dsn, timeout, f"{system.name} small transactions")
            figures["tps_ratio_running"] = round(tps / baseline_tps, 3)
            figures["small_tx_per_s"] = round(args.transactions / timer.seconds)

        if "stopped" in args.phases:
            step(f"{args.transactions} transactions, apply stopped, then catch-up")
            system.stop_apply()
            tps = transactions(primary, DB, args.transactions)
            figures["tps_ratio_apply_stopped"] = round(tps / baseline_tps, 3)
            time.sleep(args.settle_before_catchup)
            system.start_apply()
            with Timer() as timer:
                caught_up(primary_dsn, replica_dsn, timeout, f"{system.name} catch-up")
            figures["catchup_tx_per_s"] = round(args.transactions / timer.seconds)

        if "bulk" in args.phases:
            step("one UPDATE of every account")
            with Timer() as timer:
                with psycopg.connect(primary_dsn, autocommit=True) as conn, Timer() as statement:
                    rows = conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1").rowcount
                caught_up(primary_dsn, replica_dsn, timeout, f"{system.name} bulk update")
            figures["bulk_update_rows"] = rows
            figures["bulk_update_rows_per_s"] = round(rows / timer.seconds)
            figures["bulk_update_statement_s"] = round(statement.seconds, 2)  # the UPDATE itself, capture included
            figures["bulk_update_after_commit_s"] = round(timer.seconds - statement.seconds, 2)

        if "lag" in args.phases:
            step(f"lag at {args.rate} tps for {args.lag_seconds} s")
            with MachineCpu() as cpu, LagProbe(primary_dsn, replica_dsn) as probe:
                fixed_rate(primary, DB, args.rate, args.lag_seconds)
            figures |= probe.figures()
            figures["host_cpu_cores_200tps"] = round(cpu.cores, 3)

        if "idle" in args.phases:
            step(f"idle for {args.idle_seconds} s")
            caught_up(primary_dsn, replica_dsn, timeout, f"{system.name} before idle")
            time.sleep(SETTLE_SECONDS)
            with CpuAccount(system.processes()) as account:
                time.sleep(args.idle_seconds)
            idle = {name: round(100 * seconds / args.idle_seconds, 2) for name, seconds in account.seconds.items()}
            figures["idle_percent_of_a_core"] = idle
    finally:
        system.remove()
    return figures


def baseline(stack: Stack, args) -> float:
    """pgbench's TPS with no replication, on the same cluster and a database made the same way."""
    primary = stack.postgres("primary")
    fresh_primary(primary, DB, args.scale)
    return transactions(primary, DB, args.transactions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", default="native,pgfanout,slony")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--lag-seconds", type=int, default=20)
    parser.add_argument("--idle-seconds", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=600, help="seconds any system may take to catch up")
    parser.add_argument("--name", default="peers", help="the result's file name in bench/results/")
    parser.add_argument("--only", default=",".join(PHASES), help=f"the measurements to make, of {','.join(PHASES)}")
    parser.add_argument(
        "--settle-before-catchup", type=float, default=0, help="seconds between making the backlog and restarting the applier"
    )
    args = parser.parse_args()
    args.phases = {p.strip() for p in args.only.split(",") if p.strip()}
    if args.phases - set(PHASES):
        raise SystemExit(f"--only: unknown {', '.join(sorted(args.phases - set(PHASES)))}; choose among {', '.join(PHASES)}")

    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in systems.SYSTEMS]
    if unknown or "native" not in wanted:
        raise SystemExit(f"--systems: {', '.join(unknown) or 'native is missing'}; choose among native (always), pgfanout, slony")
    skipped = {}
    if "slony" in wanted and (why := systems.Slony.available()):
        print(f"Slony-I skipped: {why}", flush=True)
        skipped["slony"] = why
        wanted.remove("slony")

    stack = Stack.load(HOME)
    stack.up()
    logical_clusters(stack)
    warmed = warm_broker(KafkaCluster(bootstrap_servers=[stack.kafka("main").bootstrap])) if "pgfanout" in wanted else 0
    started = time.monotonic()
    rounds: list[dict] = []
    baselines: list[float] = []
    for round_ in range(args.rounds):
        order = wanted[round_ % len(wanted) :] + wanted[: round_ % len(wanted)]
        print(f"round {round_ + 1}: baseline, then {', '.join(order)}", flush=True)
        needs_baseline = args.phases & {"running", "stopped"}
        baselines.append(round(baseline(stack, args), 1) if needs_baseline else 0.0)
        rounds.append({name: measure(stack, systems.SYSTEMS[name], args, baselines[-1]) for name in order})
        print(json.dumps(rounds[-1], indent=1), flush=True)
    summarized = report.summary(rounds)
    better = report.ratios(summarized)
    chart = report.chart(
        better, RESULTS / f"{args.name}.png", f"pgbench scale {args.scale}, {args.rounds} rounds, one run on this machine"
    )
    markdown = report.table(summarized, better)
    print(markdown)
    write_result(
        args.name,
        {
            "settings": {key: sorted(value) if isinstance(value, set) else value for key, value in vars(args).items()},
            "skipped": skipped,
            "broker_warm_up_requests": warmed,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "baseline_tps": baselines,
            "rounds": rounds,
            "summary": summarized,
            "ratio_to_native": better,
            "idle_percent_of_a_core_worst_round": report.idle(rounds),
            "table": markdown.splitlines(),
            "chart": str(Path(chart).relative_to(REPO)),
        },
        notes="Ratios: above 1 is better than native (for lag, CPU and seconds: native's over the system's). "
        "Native's subscription and pgfanout's subscriber commit with synchronous_commit=off (their defaults), "
        "Slony-I with the cluster's default (on). Slony-I's slon runs with -s 100 (SYNC check every 100 ms). "
        "pgfanout runs with its default settings and the C trigger.",
    )


if __name__ == "__main__":
    main()
