"""Initial materialization: `pgfanout subscriber init` against `pg_dump | psql` for the same tables, side by side.

The primary holds a pgbench database (scale 10 by default: 1,000,000 accounts, ~130 MB); capture is
installed. Each round copies the four pgbench tables into an empty replica database twice: once with
`pg_dump --table ... | psql` (schema, data, keys, as an operator would do by hand) and once with
`pgfanout subscriber init`, alternating which goes first. Reported: the median seconds of each and
their ratio (target: init within 1.5x of pg_dump | psql).

    .venv/bin/python -m bench.materialize [--scale 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess

import psycopg

from agent import capture
from bench.common import Timer, bench_stack, pgbench_database, write_result
from devstack.demo import daemon_argv, write_config
from devstack.postgres import bin_dir
from pgfanout.core.config import parse_config
from pgfanout.runtime.pg import connect

TABLES = ["public.pgbench_accounts", "public.pgbench_tellers", "public.pgbench_branches", "public.pgbench_history"]


def pg_dump_into(primary, replica, db: str, target: str) -> None:
    replica.create_database(target, drop_first=True)
    dump = subprocess.Popen(
        [
            str(bin_dir() / "pg_dump"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "--no-owner",
            "--no-privileges",
            *[f"--table={t}" for t in TABLES],
            db,
        ],
        stdout=subprocess.PIPE,
    )
    # The dump also holds the capture triggers, which fail on the replica (no pgfanout schema there):
    # harmless, they come last; the rows are compared afterwards.
    subprocess.run(
        [str(bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(replica.port), "-U", "postgres", "-q", "-o", "/dev/null", target],
        stdin=dump.stdout,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    assert dump.stdout is not None
    dump.stdout.close()
    if dump.wait() != 0:
        raise RuntimeError("pg_dump failed")


def pgfanout_init(config_path, replica, target: str, subscriber: str) -> None:
    replica.create_database(target, drop_first=True)
    subprocess.run(
        daemon_argv(config_path, "subscriber", "init", subscriber),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stack = bench_stack()
    primary, replica = stack.postgres("primary"), stack.postgres("replica")
    name = "bench_materialize"
    pgbench_database(primary, name, scale=args.scale)
    data = {
        "kafka": {"local": {"bootstrap_servers": [stack.kafka("main").bootstrap]}},
        "sources": {name: {"dsn": primary.dsn(name), "kafka": "local", "tables": TABLES}},
        "routes": {f"{name}-route": {"upstream": name, "kafka": "local"}},
        "subscribers": {f"{name}-sub": {"route": f"{name}-route", "dsn": replica.dsn(f"{name}_init")}},
    }
    config = parse_config(data)
    config_path = write_config(stack.home / f"{name}.yaml", data)
    with connect(config.sources[name], "bench") as conn:
        capture.install(conn, config.sources[name])
        rows = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0]
        size = conn.execute("SELECT sum(pg_table_size(t::regclass)) FROM unnest(%s::text[]) t", (TABLES,)).fetchone()[0]

    dump_seconds, init_seconds = [], []
    for round_ in range(args.rounds):
        order = ["dump", "init"] if round_ % 2 == 0 else ["init", "dump"]
        for which in order:
            with Timer() as timer:
                if which == "dump":
                    pg_dump_into(primary, replica, name, f"{name}_dump")
                else:
                    pgfanout_init(config_path, replica, f"{name}_init", f"{name}-sub")
            (dump_seconds if which == "dump" else init_seconds).append(timer.seconds)
            print(f"round {round_ + 1}: {which} {timer.seconds:.2f} s", flush=True)
    with psycopg.connect(replica.dsn(f"{name}_init")) as a, psycopg.connect(replica.dsn(f"{name}_dump")) as b:
        for table in TABLES:
            query = f"SELECT count(*), sum(hashtext(t::text)) FROM {table} t"
            assert a.execute(query).fetchone() == b.execute(query).fetchone(), f"{table} differs"
    dump, init = statistics.median(dump_seconds), statistics.median(init_seconds)
    write_result(
        "materialize",
        {
            "scale": args.scale,
            "accounts_rows": rows,
            "table_bytes": int(size),
            "pg_dump_psql_seconds": [round(s, 2) for s in dump_seconds],
            "pgfanout_init_seconds": [round(s, 2) for s in init_seconds],
            "median_pg_dump_psql_seconds": round(dump, 2),
            "median_pgfanout_init_seconds": round(init, 2),
            "ratio_init_to_pg_dump": round(init / dump, 3),
        },
        notes="Both copy the four pgbench tables with their keys into an empty database on the replica cluster; "
        "init also runs in a REPEATABLE READ snapshot, records what each copy holds and makes the tables "
        "read-only. Both results are checked equal (count and hash of every row).",
    )


if __name__ == "__main__":
    main()
