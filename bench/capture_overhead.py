"""Capture overhead and the trigger-design measurement.

1. pgbench (scale 10, -c 4, --duration seconds) without capture, then with capture installed and the
   agent running, once with the C trigger and once with the PL/pgSQL triggers, runs alternating: the TPS
   ratios (the issue's bar: >= 0.90; peers: Slony-I 0.87-0.95, Bucardo 0.78-0.83). The log tables' size
   is sampled during the captured runs, to show consumed rows do not pile up. Each run's CPU time per
   transaction is also accounted, for the machine and for the agent, its backend and the broker: single
   runs' TPS varies by more than capture costs, their CPU time per transaction much less.
2. The trigger designs alone (agent stopped): the C trigger, PL/pgSQL row triggers, and statement-level
   triggers with transition tables (a prototype built here only for the measurement), with pgbench and
   with a 1,000,000-row UPDATE.

Every run uses the same schema: pgbench_history gets a bigserial primary key in all of them, because a
table without a key cannot be replicated.

pgbench's client runs one thread by default (-j 1), as in the issue's run (`-c 4`), the one its peers' figures
come from; `--jobs 2` measures with a thread per two connections, as this benchmark did until the sixteenth
session, and writes a result of its own (docs/benchmarks.md, "Which pgbench run").

    .venv/bin/python -m bench.capture_overhead [--duration 30] [--repetitions 3] [--jobs 1]
                                               [--autogroups as-is|on|off]
"""

from __future__ import annotations

import argparse
import statistics
import threading

import psycopg
from psycopg import sql

from agent import capture, logtables, tables
from bench.common import (
    CpuAccount,
    Timer,
    autogroups,
    bench_stack,
    pgbench,
    scheduler_autogroups,
    tps_of,
    transactions_of,
    wait_for_ready,
    warm_broker,
    write_result,
)
from bench.publish_throughput import TABLES, prepare_pgbench_db
from devstack import processes
from devstack.demo import daemon_argv, reset_streams, start_daemon, write_config
from devstack.stack import free_port
from pgfanout.core.config import parse_config
from pgfanout.runtime.pg import connect

DB = "bench_capture"


def pgbench_arguments(duration: int, jobs: int) -> list[str]:
    """The measured run: 4 clients for ``duration`` seconds on ``jobs`` client threads; no vacuum of its own
    (quiesce() vacuums before every run)."""
    return ["-c", "4", "-j", str(jobs), "-T", str(duration), "-n"]


def result_name(jobs: int, autogroups_setting: str) -> str:
    """The issue's run on the machine as it comes is `capture_overhead`; any other run writes a file of its own."""
    return "capture_overhead" + ("" if jobs == 1 else f"_jobs{jobs}") + ("_autogroups_off" if autogroups_setting == "off" else "")


def run_pgbench(port: int, arguments: list[str]) -> float:
    return run_pgbench_accounted(port, arguments, {})[0]


def run_pgbench_accounted(port: int, arguments: list[str], processes: dict[str, list[int]]) -> tuple[float, dict[str, float]]:
    """TPS, and CPU milliseconds per 1,000 transactions of the machine and of ``processes``."""
    with CpuAccount(processes) as account:
        output = pgbench(*arguments, dsn_port=port, db=DB)
    return tps_of(output), account.ms_per_1000(transactions_of(output))


def agent_backends(conn_info: str) -> list[int]:
    with psycopg.connect(conn_info, autocommit=True) as conn:
        return [
            pid
            for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"pgfanout-agent-{DB}",))
        ]


def statement_trigger_statements(table: tables.PublishedTable) -> list[sql.Composable]:
    """Statement-level capture with transition tables, for the measurement only (key changes not paired)."""
    target = sql.Identifier(table.schema_name, table.table_name)
    statements: list[sql.Composable] = []
    for event, transition, op, values in (("INSERT", "NEW", "I", "n"), ("UPDATE", "NEW", "U", "n"), ("DELETE", "OLD", "D", "o")):
        function = sql.Identifier(logtables.SCHEMA, f"capture_stmt_{event.lower()}_{table.table_id}")
        alias = sql.Identifier(values)
        columns = table.columns if op != "D" else table.key_columns
        array = sql.SQL("ARRAY[{}]::text[]").format(
            sql.SQL(", ").join(sql.SQL("{}.{}::text").format(alias, sql.Identifier(c)) for c in columns)
        )
        new_row, old_key = (array, sql.NULL) if op != "D" else (sql.NULL, array)
        body = sql.SQL(
            "BEGIN INSERT INTO pgfanout.log (table_id, op, new_row, old_key) "
            "SELECT {tid}, {op}, {new_row}, {old_key} FROM changed_rows {alias}; RETURN NULL; END"
        ).format(tid=sql.Literal(table.table_id), op=sql.Literal(op), new_row=new_row, old_key=old_key, alias=alias)
        statements += [
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
                "SET search_path = pg_catalog, pg_temp AS {}"
            ).format(function, sql.Literal(body.as_string())),
            sql.SQL(
                "CREATE TRIGGER {} AFTER {} ON {} REFERENCING {} TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(f"pgfanout_stmt_{event.lower()}"), sql.SQL(event), target, sql.SQL(transition), function),
        ]
    return statements


def use_statement_triggers(conn: psycopg.Connection) -> None:
    with conn.transaction():
        for table in tables.describe_tables(conn, TABLES):
            target = sql.Identifier(table.schema_name, table.table_name)
            conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(capture.TRIGGER), target))
            for statement in statement_trigger_statements(table):
                conn.execute(statement)


def bulk_update_seconds(conn: psycopg.Connection) -> float:
    with Timer() as timer, conn.transaction():
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1")
    conn.execute("TRUNCATE pgfanout.log") if capture.installed(conn) else None
    conn.execute("VACUUM pgbench_accounts")
    return timer.seconds


LOG_SIZE = "SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits WHERE inhparent = 'pgfanout.log'::regclass"


def sample_log_size(conn_info: str, stop: threading.Event, samples: list[int]) -> None:
    with psycopg.connect(conn_info, autocommit=True) as conn:
        while not stop.is_set():
            samples.append(conn.execute(LOG_SIZE).fetchone()[0])
            stop.wait(2)


def quiesce(conn: psycopg.Connection) -> None:
    """Start every run from the same state: no checkpoint or vacuum debt carried over from the last one."""
    conn.execute("VACUUM pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history")
    conn.execute("CHECKPOINT")


def with_trigger(source, trigger: str):
    return source.model_copy(update={"capture_trigger": trigger})


def start_capture(stack, data: dict, config, trigger: str = "auto") -> int:
    """Fresh capture (schema, log, positions from 1, empty topic) and a running agent; returns its pid."""
    source = config.sources[DB]
    with connect(source, "bench") as conn:
        capture.uninstall(conn)
        capture.install(conn, with_trigger(source, trigger))
    reset_streams(config)
    config_path = write_config(stack.home / f"{DB}.yaml", data)
    pid = start_daemon(stack, f"{DB}-agent", daemon_argv(config_path, "agent", "run", "--source", DB))
    log_file = stack.log_dir / f"{DB}-agent.log"
    wait_for_ready(log_file, timeout=30)
    return pid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2, 4),
        default=1,
        help="pgbench's client threads (-j): 1, pgbench's default, is the issue's run",
    )
    parser.add_argument(
        "--autogroups",
        choices=("as-is", "on", "off"),
        default="as-is",
        help="the kernel's scheduler autogroups during the benchmark, restored after "
        "(off: as PostgreSQL servers are commonly tuned; needs root)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also alternate a run with the agent serving metrics and putting a trace marker in every second; "
        "writes capture_overhead_metrics",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    with scheduler_autogroups(args.autogroups):
        measure(args)


def measure(args: argparse.Namespace) -> None:
    stack = bench_stack()
    primary = stack.postgres("primary")
    data = prepare_pgbench_db(stack, DB)
    config = parse_config(data)
    source = config.sources[DB]
    figures: dict[str, object] = {}
    runs: dict[str, list[float]] = {"without_capture": [], "c_trigger_and_agent": [], "plpgsql_triggers_and_agent": []}
    captured = [("c_trigger_and_agent", "c", data), ("plpgsql_triggers_and_agent", "plpgsql", data)]
    if args.metrics:  # the same C trigger and agent, serving metrics and tracing every second
        observed = {**data, "sources": {DB: {**data["sources"][DB], "metrics_port": free_port(), "trace_interval_seconds": 1}}}
        runs["c_trigger_agent_metrics_tracing"] = []
        captured.insert(1, ("c_trigger_agent_metrics_tracing", "c", observed))
    cpu: dict[str, list[dict[str, float]]] = {mode: [] for mode in runs}
    samples: list[int] = []
    broker = {"kafka_broker": [stack.kafka("main").pid() or 0]}

    measured_run = pgbench_arguments(args.duration, args.jobs)
    figures["pgbench_arguments"] = " ".join(measured_run)
    figures["broker_warmup_requests"] = warm_broker(config.kafka[source.kafka])
    run_pgbench(primary.port, pgbench_arguments(5, args.jobs))  # warm up caches
    for _ in range(args.repetitions):
        with connect(source, "bench") as conn:
            capture.uninstall(conn)
            quiesce(conn)
        tps, account = run_pgbench_accounted(primary.port, measured_run, broker)
        runs["without_capture"].append(tps)
        cpu["without_capture"].append(account)
        for mode, trigger, mode_data in captured:
            (stack.log_dir / f"{DB}-agent.log").unlink(missing_ok=True)
            agent = start_capture(stack, mode_data, config, trigger)
            with connect(source, "bench") as conn:
                quiesce(conn)
            stop = threading.Event()
            sampler = threading.Thread(target=sample_log_size, args=(primary.dsn(DB), stop, samples))
            sampler.start()
            processes_of_capture = {"agent_process": [agent], "agent_backend": agent_backends(primary.dsn(DB)), **broker}
            tps, account = run_pgbench_accounted(primary.port, measured_run, processes_of_capture)
            runs[mode].append(tps)
            cpu[mode].append(account)
            stop.set()
            sampler.join()
            processes.stop(agent)
    base = statistics.median(runs["without_capture"])
    figures["tps_runs"] = {mode: [round(tps) for tps in values] for mode, values in runs.items()}
    figures["tps_median"] = {mode: round(statistics.median(values)) for mode, values in runs.items()}
    figures["capture_tps_ratio"] = round(statistics.median(runs["c_trigger_and_agent"]) / base, 3)
    figures["capture_tps_ratio_plpgsql"] = round(statistics.median(runs["plpgsql_triggers_and_agent"]) / base, 3)
    # The machine's speed drifts over minutes: each captured run against the uncaptured run just before it
    # shows how much of the spread is drift rather than capture.
    figures["capture_tps_ratios_paired"] = {
        mode: [round(tps / without, 3) for tps, without in zip(runs[mode], runs["without_capture"], strict=True)]
        for mode, _, _ in captured
    }
    if args.metrics:
        figures["capture_tps_ratio_metrics_tracing"] = round(statistics.median(runs["c_trigger_agent_metrics_tracing"]) / base, 3)
        figures["metrics_tracing_over_plain_agent"] = round(
            statistics.median(runs["c_trigger_agent_metrics_tracing"]) / statistics.median(runs["c_trigger_and_agent"]), 3
        )
    # CPU milliseconds per 1,000 transactions (medians): "machine" is every process and the kernel
    cpu_medians = {
        mode: {name: round(statistics.median(account[name] for account in accounts), 1) for name in accounts[0]}
        for mode, accounts in cpu.items()
    }
    figures["cpu_ms_per_1000_transactions"] = cpu_medians
    figures["cpu_per_transaction_ratio"] = {  # uncaptured over captured: what the TPS ratio is when CPU-bound
        mode: round(cpu_medians["without_capture"]["machine"] / cpu_medians[mode]["machine"], 3) for mode, _, _ in captured
    }
    figures["log_size_bytes_during_captured_runs"] = {"min": min(samples), "max": max(samples), "samples": len(samples)}

    # The trigger-design measurement: triggers alone (agent stopped): C, PL/pgSQL rows, statement-level.
    with connect(source, "bench") as conn:
        capture.uninstall(conn)
        quiesce(conn)
        figures["bulk_update_1m_rows_seconds_without_capture"] = round(bulk_update_seconds(conn), 2)
    for trigger, name in (("c", "c_trigger"), ("plpgsql", "row_triggers")):
        with connect(source, "bench") as conn:
            capture.uninstall(conn)
            capture.install(conn, with_trigger(source, trigger))
            quiesce(conn)
        tps, account = run_pgbench_accounted(primary.port, measured_run, broker)
        figures[f"tps_{name}_agent_stopped"] = round(tps)
        figures[f"cpu_ms_per_1000_transactions_{name}_agent_stopped"] = account
        with connect(source, "bench") as conn:
            conn.execute("TRUNCATE pgfanout.log")
            figures[f"bulk_update_1m_rows_seconds_{name}"] = round(bulk_update_seconds(conn), 2)
    with connect(source, "bench") as conn:
        use_statement_triggers(conn)
        quiesce(conn)
    figures["tps_statement_triggers_agent_stopped"] = round(run_pgbench(primary.port, measured_run))
    with connect(source, "bench") as conn:
        conn.execute("TRUNCATE pgfanout.log")
        figures["bulk_update_1m_rows_seconds_statement_triggers"] = round(bulk_update_seconds(conn), 2)
        capture.uninstall(conn)
    write_result(
        result_name(args.jobs, autogroups()) + ("_metrics" if args.metrics else ""),
        figures,
        notes=(
            f"pgbench {figures['pgbench_arguments']}, scale 10, runs alternating without capture, with the C trigger and "
            "with the PL/pgSQL triggers (agent running, default settings), "
            "each after VACUUM and CHECKPOINT; medians. Before the runs the broker answers broker_warmup_requests "
            "produce requests, so that its JIT has compiled them as in a broker in service. "
            "PostgreSQL, pgbench, the agent and the Kafka broker share this "
            "2-core machine. CPU figures: milliseconds of CPU per 1,000 transactions while pgbench ran (machine: "
            "/proc/stat, not idle nor iowait; processes: /proc/PID/stat). Statement-trigger figures come from a "
            "measurement-only prototype, agent stopped."
        ),
    )


if __name__ == "__main__":
    main()
