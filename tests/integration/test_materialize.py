"""subscriber init and resync: consistent copies under concurrent writes, interrupted and resumed."""

import signal
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import sql

from devstack import processes
from devstack.demo import daemon_argv
from devstack.sample import SCHEMA_SQL
from subscriber.applier import ReplicaSession
from subscriber.copyfilter import CopyFilter
from subscriber.state import resync_lock_key

PRODUCTS_DDL = SCHEMA_SQL[1]


def materialized(conn, subscriber):
    return {
        r[0]
        for r in conn.execute(
            "SELECT schema_name || '.' || table_name FROM pgfanout_replica.materialized WHERE subscriber = %s", (subscriber,)
        )
    }


def has_copied(conn, subscriber, table):
    exists = conn.execute("SELECT to_regclass('pgfanout_replica.materialized')").fetchone()[0]
    return exists is not None and table in materialized(conn, subscriber)


def position_of(conn, subscriber):
    row = conn.execute(
        "SELECT position, kafka_offset FROM pgfanout_replica.position WHERE subscriber = %s", (subscriber,)
    ).fetchone()
    return row


def test_init_under_writes_is_interrupted_resumed_and_copied_onwards(pipeline, stack):
    first, second = pipeline.subscribers
    pipeline.prepare(install=False, bare=(first, second))
    pipeline.seed()
    with pipeline.primary() as conn:  # rows that exist before capture: only the copy can bring them
        conn.execute(
            "INSERT INTO public.customers (id, name, email) "
            "SELECT i, 'Early ' || i, 'early' || i || '@example.org' FROM generate_series(1, 30000) i"
        )
    assert pipeline.command("agent", "install").returncode == 0
    pipeline.start("agent", "distributor")
    pipeline.wait_for_log("agent", "ready:")
    workload, result = pipeline.workload_in_background(seconds=60, writers=3, max_transactions=1200, seed_value=5)
    time.sleep(1.0)

    # The copy of the second table (products, already on the replica) waits on a lock held here; the
    # init is killed there, after the first table (customers) committed.
    blocker = pipeline.replica(first)
    blocker.execute(PRODUCTS_DDL)
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE public.products IN ACCESS SHARE MODE")
    log_path = stack.log_dir / f"{pipeline.name}-init.log"
    pid = processes.spawn(
        daemon_argv(pipeline.config_path, "subscriber", "init", first), log_path, stack.run_dir / f"{pipeline.name}-init.pid"
    )
    with pipeline.replica(first) as conn:
        deadline = time.monotonic() + 60
        while not has_copied(conn, first, "public.customers"):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # now waiting for the lock on products
        processes.stop(pid, signal.SIGKILL)
        blocker.execute("ROLLBACK")
        blocker.close()
        assert materialized(conn, first) == {"public.customers"}
        assert position_of(conn, first) is None, "an interrupted init must not look complete"
        assert conn.execute("SELECT count(*) FROM public.products").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('public.orders')").fetchone()[0] is None

    again = pipeline.command("subscriber", "init", first)
    assert again.returncode == 0, again.stderr
    assert "resuming an interrupted init; already copied: public.customers" in again.stderr
    pipeline.start(first)

    # A second replica, materialized from the first one while both streams run.
    pipeline.wait_for_log(first, "ready:")
    from_replica = pipeline.command("subscriber", "init", second, "--copy-from", first)
    assert from_replica.returncode == 0, from_replica.stderr
    pipeline.start(second)

    workload.join()
    assert result["stats"].committed > 1000
    pipeline.wait_caught_up(timeout=120)
    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)
    with pipeline.replica(first) as conn:
        assert conn.execute("SELECT count(*) FROM public.customers WHERE name LIKE 'Early %'").fetchone()[0] == 30000
        # keys and indexes came along; foreign keys on purpose not
        constraints = {
            r[0] for r in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'public.order_lines'::regclass")
        }
        assert constraints == {"order_lines_pkey"}
    # The copied replica is read-only like a streamed one.
    with (
        pipeline.replica(second) as conn,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="pgfanout replica of source"),
    ):
        conn.execute("DELETE FROM public.accounts")

    already = pipeline.command("subscriber", "init", first)
    assert already.returncode == 3 and "already initialized" in already.stderr and "resync" in already.stderr


def test_resync_of_one_table_runs_while_the_subscriber_applies(pipeline):
    pipeline.prepare()
    pipeline.start()
    pipeline.seed()
    pipeline.wait_caught_up(timeout=60)
    victim = pipeline.subscribers[0]
    with pipeline.replica(victim) as conn:  # a replica gone wrong behind pgfanout's back
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE public.products SET title = 'wrong'")
        conn.execute("INSERT INTO public.products VALUES ('BOGUS', 'not on the source', 1)")
    equal, _ = pipeline.proof()
    assert not equal
    workload, _ = pipeline.workload_in_background(seconds=30, writers=3, max_transactions=800, seed_value=8)
    time.sleep(1.0)
    resync = pipeline.command("subscriber", "resync", victim, "--table", "public.products")
    assert resync.returncode == 0, resync.stderr
    assert pipeline.pid(victim), "the subscriber kept running"
    workload.join()
    pipeline.wait_caught_up(timeout=120)
    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)


def wait_until(conn, query: str, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not conn.execute(query).fetchone()[0]:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_applier_that_waited_for_a_resync_reads_the_filter_it_committed(pipeline):
    """The applier waits for a running `resync --table` at the start of each replica transaction. The copy
    filters it then reads must be the resync's: with older ones it would apply transactions the new copy
    holds, and drop later ones by the new filter in its next transaction, setting rows back (a statement
    reads in a snapshot taken before it waited, and a REPEATABLE READ transaction in its first one's)."""
    pipeline.prepare()
    name = pipeline.subscribers[0]
    with pipeline.replica(name) as conn:  # the applier must not depend on the replica's default isolation
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'").format(
                sql.Identifier(conn.execute("SELECT current_database()").fetchone()[0])
            )
        )
    applier = ReplicaSession.open(pipeline.config, name)
    try:
        with pipeline.replica(name) as resync:
            resync.execute("BEGIN")
            resync.execute("SELECT pg_advisory_xact_lock(%s, %s)", resync_lock_key(name))
            waiting = threading.Thread(target=applier.read_copy_filters, kwargs={"wait_for_resync": True})
            waiting.start()
            wait_until(
                resync,
                "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                "the applier to wait for the resync",
            )
            resync.execute(
                "INSERT INTO pgfanout_replica.materialized (subscriber, schema_name, table_name, "
                "start_position, snapshot, copied_from) VALUES (%s, 'public', 'products', 42, "
                "'100:105:101', 'test')",
                (name,),
            )
            resync.execute("COMMIT")
            waiting.join(timeout=30)
            assert not waiting.is_alive()
        assert applier.copy_filters.filters == {("public", "products"): CopyFilter.from_row(42, "100:105:101")}
    finally:
        applier.close()


def _delete_first_half(pipeline) -> None:
    """What retention does to a topic: its oldest records are gone."""
    from pgfanout.runtime import kafka as kafkautil

    cluster_name, topic = pipeline.config.stream(pipeline.route)
    cluster = pipeline.config.kafka[cluster_name]
    consumer = kafkautil.consumer(cluster)
    try:
        end = kafkautil.end_offset(consumer, topic)
    finally:
        consumer.close()
    assert end >= 4
    admin = kafkautil.admin(cluster)
    try:
        admin.delete_records({kafkautil.partition(topic): end // 2})
    finally:
        admin.close()


def test_retention_gap_stops_then_resync_recovers_and_on_gap_resync_recovers_alone(pipeline):
    manual, automatic = pipeline.subscribers
    pipeline.data["subscribers"][automatic]["on_gap"] = "resync"
    pipeline.reconfigure(pipeline.data)
    pipeline.prepare()
    pipeline.start("agent", "distributor")
    pipeline.wait_for_log("agent", "ready")  # each round in its own batches, not all in the first
    pipeline.wait_for_log("distributor", "ready")
    pipeline.seed()
    from devstack.sample import run_workload

    for round_ in range(8):  # several batches, so several records in the route
        run_workload(pipeline.primary_dsn, seconds=20, writers=2, max_transactions=20, seed_value=3 + round_)
        time.sleep(0.3)
    time.sleep(3.0)  # the distributor forwards them
    _delete_first_half(pipeline)  # retention took what neither subscriber has read yet

    code, log = pipeline.run_until_it_stops(manual)
    assert code == 3, log
    assert "positions 1.." in log and "are missing (deleted by retention" in log
    assert f"pgfanout subscriber resync {manual}" in log

    resync = pipeline.command("subscriber", "resync", manual)
    assert resync.returncode == 0, resync.stderr
    pipeline.start(manual, automatic)
    pipeline.wait_for_log(automatic, "on_gap is resync")
    run_workload(pipeline.primary_dsn, seconds=10, writers=2, max_transactions=100, seed_value=4)
    pipeline.wait_caught_up(timeout=120)
    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)


def test_init_refuses_a_source_without_capture(pipeline):
    pipeline.prepare(install=False, bare=(pipeline.subscribers[0],))
    result = subprocess.run(
        daemon_argv(pipeline.config_path, "subscriber", "init", pipeline.subscribers[0]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "capture is not installed on source" in result.stderr and "pgfanout agent install" in result.stderr


def test_init_into_a_table_that_does_not_match_names_it_and_keeps_nothing(pipeline):
    sub = pipeline.subscribers[0]
    pipeline.prepare(bare=(sub,))
    pipeline.seed()
    with pipeline.replica(sub) as conn:
        conn.execute("CREATE TABLE public.accounts (id integer PRIMARY KEY, amount numeric)")  # balance is missing
    result = pipeline.command("subscriber", "init", sub)
    assert result.returncode == 3, result.stderr
    assert "copying public.accounts from source" in result.stderr and '"balance"' in result.stderr
    with pipeline.replica(sub) as conn:
        assert conn.execute("SELECT count(*) FROM pgfanout_replica.position").fetchone()[0] == 0
        copied = materialized(conn, sub)
        assert "public.accounts" not in copied and len(copied) == 4  # the tables before it are kept for a resume
