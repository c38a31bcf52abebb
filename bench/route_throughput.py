"""Routing throughput: changed rows per second one distributor routes through a filtered, projected route.

The source topic is filled first (the agent publishes a pgbench backlog, then stops):
many small transactions (4 changed rows each), then one 1,000,000-row UPDATE. Then the
distributor is started and timed, from its "ready" log line, until the route topic's
last message carries the source topic's last mark. Every message is decoded, filtered
(row filter on a non-key column, so UPDATEs are checked for row migration too),
projected and encoded again.

    .venv/bin/python -m bench.route_throughput [--transactions 50000] [--format rows]

With ``--format rows`` the route also types every change by its table's Avro schemas (a route for
consumers outside pgfanout); the result goes to route_throughput-rows.json.
"""

from __future__ import annotations

import argparse
import time

from agent import capture, logtables
from bench.common import bench_stack, peak_rss_mb, wait_for_ready, write_result
from bench.publish_throughput import SMALL_TRANSACTIONS, drain, prepare_pgbench_db
from devstack import processes
from devstack.demo import daemon_argv, start_daemon, write_config
from pgfanout.core.codec import default_codec
from pgfanout.core.config import Config, parse_config
from pgfanout.core.positions import Mark, mark_of
from pgfanout.runtime import kafka as kafkautil
from pgfanout.runtime.pg import connect

SUBSCRIPTION = {
    "public.pgbench_accounts": {"where": "bid <= 5 AND abalance > -1000000", "columns": ["aid", "bid", "abalance"]},
    "public.pgbench_tellers": {"where": "tid BETWEEN 1 AND 50"},
    "public.pgbench_branches": {},
    "public.pgbench_history": {"where": "delta > 0 OR aid IS NULL", "columns": ["id", "tid", "bid", "aid", "delta"]},
}


def last_mark(config: Config, stream: str, consumer=None) -> Mark | None:
    cluster, topic = config.stream(stream)
    own = consumer is None
    consumer = consumer or kafkautil.consumer(config.kafka[cluster])
    try:
        last = kafkautil.last_value(consumer, topic)
    finally:
        if own:
            consumer.close()
    if last is None:
        return None
    return mark_of(*default_codec().decode(last[1], f"{topic}@{last[0]}"))


def route(stack, data: dict, db: str) -> tuple[float, float]:
    """(seconds from the distributor's "ready" until the route holds the source's last mark, peak RSS MB)."""
    config_path = write_config(stack.home / f"{db}.yaml", data)
    config = parse_config(data)
    target = last_mark(config, db)
    log_file = stack.log_dir / f"{db}-distributor.log"
    log_file.unlink(missing_ok=True)
    pid = start_daemon(stack, f"{db}-distributor", daemon_argv(config_path, "distributor", "run", f"{db}-dist"))
    wait_for_ready(log_file)
    ready = time.perf_counter()
    # one consumer, asked for the end offset only; the last record is read only when that moved (watching
    # must not take the distributor's CPU on this 2-core machine)
    topic = config.route_topic(f"{db}-route")
    watcher = kafkautil.consumer(config.kafka["local"])
    try:
        seen_end = -1
        while True:
            end = kafkautil.end_offset(watcher, topic)
            if end != seen_end:
                seen_end = end
                if last_mark(config, f"{db}-route", watcher) == target:
                    break
            time.sleep(0.02)
    finally:
        watcher.close()
    done = time.perf_counter()
    peak = peak_rss_mb(pid)
    processes.stop(pid)
    return done - ready, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=50_000)
    parser.add_argument("--format", choices=["pgfanout", "rows"], default="pgfanout")
    args = parser.parse_args()
    stack = bench_stack()
    db = "bench_route"
    data = prepare_pgbench_db(stack, db)
    data["routes"] = {f"{db}-route": {"upstream": db, "kafka": "local", "tables": SUBSCRIPTION, "format": args.format}}
    data["distributors"] = {f"{db}-dist": {"routes": [f"{db}-route"]}}
    config = parse_config(data)
    kafkautil.delete_groups(config.kafka["local"], [f"pgfanout-distributor-{db}-dist"])
    kafkautil.delete_topics(config.kafka["local"], [config.route_topic(f"{db}-route")])
    results = {}
    with connect(config.sources[db], "bench") as conn:
        capture.install(conn, config.sources[db], config.subscriptions_of(db))
        conn.execute(SMALL_TRANSACTIONS % {"count": args.transactions})
        rows = logtables.unpublished_count(conn)
    drain(stack, {k: v for k, v in data.items() if k in ("kafka", "sources")}, db, args.transactions)
    seconds, peak = route(stack, data, db)
    results["many_small_transactions"] = {
        "transactions": args.transactions,
        "changed_rows": rows,
        "seconds_after_ready": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "distributor_peak_rss_mb": round(peak),
    }
    with connect(config.sources[db], "bench") as conn:
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1")  # one transaction, 1,000,000 rows
        rows = logtables.unpublished_count(conn)
    drain(stack, {k: v for k, v in data.items() if k in ("kafka", "sources")}, db, args.transactions + 1)
    seconds, peak = route(stack, data, db)
    results["one_large_transaction"] = {
        "transactions": 1,
        "changed_rows": rows,
        "seconds_after_ready": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "distributor_peak_rss_mb": round(peak),
    }
    name = "route_throughput" if args.format == "pgfanout" else "route_throughput-rows"
    write_result(
        name,
        results,
        notes=(
            "source topic filled first; one distributor timed from its 'ready' log line until the route topic ends with "
            "the source topic's last mark. Row filters on non-key columns (with row migration checks on UPDATEs) and "
            "column lists on two of four tables; target >= 100,000 changed rows/s per route"
            + ("; the route types every change by per-table Avro schemas (format: rows)" if args.format == "rows" else "")
        ),
    )


if __name__ == "__main__":
    main()
