"""`pgfanout compare` and `pgfanout repair` on live replicas: an unfiltered one (tier 1) and a filtered one
(tier 2, through a second distributor), while writers run on the primary."""

from __future__ import annotations

import json
import threading
import time

import psycopg

from pgfanout.core.errors import CompareError
from subscriber import compare as comparing
from tests.integration.pipeline import Pipeline, contiguous, eventually, scrape, two_tiers

RUNS = 20
CUSTOMERS = 5  # customers the workload never changes (it only inserts new ones): the tampering's targets


def tamper(pipeline: Pipeline, subscriber: str, *statements: str) -> None:
    """As a superuser past the read-only guard, as a hand edit would be."""
    with pipeline.replica(subscriber) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)


def compare_json(pipeline: Pipeline, subscriber: str, *more: str) -> tuple[int, dict]:
    done = pipeline.command("compare", subscriber, "--json", *more)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def with_customers(pipeline: Pipeline) -> None:
    with pipeline.primary() as conn:
        conn.execute(
            "INSERT INTO public.customers (id, name, email) SELECT i, 'Customer ' || i, 'c' || i || '@example.org' "
            "FROM generate_series(1, %s) i",
            (CUSTOMERS,),
        )


def test_compare_under_a_running_workload_finds_no_difference_on_either_replica(pipeline, monkeypatch):
    two_tiers(pipeline)
    first, second = pipeline.subscribers
    with_customers(pipeline)
    stop = threading.Event()
    thread, _ = pipeline.workload_in_background(seconds=300, writers=2, pause_seconds=0.002, stop=stop)
    try:
        positions = {first: [], second: []}
        for run in range(RUNS):
            for subscriber in (first, second):
                found = comparing.targets(pipeline.config, subscriber, None)
                # every other run in many segments: each table at a position of its own, and paced
                segment = 0 if run % 2 else 1.0
                with monkeypatch.context() as patch:
                    patch.setattr(comparing, "SEGMENT_SECONDS", segment)
                    result = comparing.compare(pipeline.config, subscriber, found, timeout=30, examples=5, pace=0.5 + segment / 2)
                assert [r.table for r in result.reports] == [t.name for t in found]
                for report in result.reports:
                    assert report.equal, f"run {run}, {subscriber}: {report.lines(['key'])}"
                assert (len(result.positions) == 1) if segment else (len(result.positions) > len(found)), result.positions
                assert result.positions == sorted(result.positions)
                positions[subscriber] += result.positions
            assert thread.is_alive(), "the workload ended before the compares did"
        # the compares ran against a stream that kept moving: each at a later position than the one before
        for subscriber, seen in positions.items():
            assert seen == sorted(seen) and seen[-1] > seen[0] + RUNS, (subscriber, seen)
        # the filtered replica's share was compared: its rows are fewer than the primary's table holds
        found = {t.name: t for t in comparing.targets(pipeline.config, second, None)}
        assert set(found) == {"public.accounts", "public.customers"}
        assert found["public.customers"].columns == ("id", "name")
        assert found["public.accounts"].filters == ("id <= 10",)
    finally:
        stop.set()
        thread.join()
    pipeline.wait_caught_up()
    for subscriber in (first, second):
        contiguous(pipeline, subscriber)
    # the compare ticks kept a valid serial order: both replicas equal the primary once caught up
    assert compare_json(pipeline, first)[0] == 0
    assert compare_json(pipeline, second)[0] == 0


def test_tampered_replicas_are_reported_by_key_and_column_then_repaired_while_the_stream_goes_on(pipeline):
    # the filtered replica also compares its accounts by itself every 3 seconds, the result in its metrics
    schedule = {"compare": {"every_minutes": 0.05, "tables": ["public.accounts"], "pace": 0.5}}
    ports = two_tiers(pipeline, {"public.big": "CREATE TABLE public.big (id integer PRIMARY KEY, v text NOT NULL)"}, schedule)
    first, second = pipeline.subscribers
    extra_accounts = "pgfanout_compare_differences{kind=extra,subscriber=" + second + ",table=public.accounts}"

    def scheduled_extra() -> float | None:
        return scrape(ports[second]).get(extra_accounts)

    with_customers(pipeline)
    with pipeline.primary() as conn:  # three key ranges: each summed, the ones that differ cut down to rows
        conn.execute("INSERT INTO public.big SELECT i, 'value ' || i FROM generate_series(1, 120000) i")
        conn.execute("ANALYZE public.big")
    stop = threading.Event()
    thread, _ = pipeline.workload_in_background(seconds=300, writers=1, pause_seconds=0.01, stop=stop)
    try:
        pipeline.wait_caught_up()
        # not differences: a column the filtered route does not carry, changed on either side
        with pipeline.primary() as conn:
            conn.execute("UPDATE public.customers SET email = 'moved@example.org' WHERE id = 1")
        tamper(pipeline, second, "UPDATE public.customers SET email = 'hand@example.org' WHERE id = 2")
        time.sleep(1)
        code, report = compare_json(pipeline, second)
        assert code == 0, report
        assert all(t["equal"] for t in report["tables"])
        assert eventually(lambda: scheduled_extra() == 0, timeout=30), pipeline.log(second)[-2000:]

        tamper(
            pipeline,
            second,
            "UPDATE public.customers SET name = 'Tampered' WHERE id = 3",  # a changed value
            "INSERT INTO public.customers (id, name) VALUES (999999999, 'Extra')",  # an extra row
            "INSERT INTO public.accounts (id, balance) VALUES (15, 1)",  # a row the route's filter excludes
        )
        assert eventually(lambda: scheduled_extra() == 1, timeout=30), scheduled_extra()
        tamper(pipeline, first, "DELETE FROM public.customers WHERE id = 4")  # a deleted row
        tamper(
            pipeline,
            first,
            "UPDATE public.big SET v = 'changed' WHERE id = 77777",
            "DELETE FROM public.big WHERE id = 5",
            "INSERT INTO public.big VALUES (200000, 'extra')",
        )
        code, report = compare_json(pipeline, second)
        assert code == 1
        tables = {t["table"]: t for t in report["tables"]}
        customers, accounts = tables["public.customers"], tables["public.accounts"]
        assert customers["counts"] == {"missing": 0, "extra": 1, "different": 1}
        assert {"kind": "different", "key": {"id": "3"}, "columns": ["name"]} in customers["examples"]
        assert {"kind": "extra", "key": {"id": "999999999"}, "columns": []} in customers["examples"]
        assert customers["columns"] == {"name": 1}
        assert accounts["counts"] == {"missing": 0, "extra": 1, "different": 0}
        assert accounts["examples"] == [{"kind": "extra", "key": {"id": "15"}, "columns": []}]
        code, report = compare_json(pipeline, first, "--table", "public.big")
        big = report["tables"][0]
        assert code == 1 and big["counts"] == {"missing": 1, "extra": 1, "different": 1}, big
        assert big["ranges"] == 3 and 1 <= big["differing_ranges"] <= 3
        assert big["rows_primary"] == 120000 and big["rows_replica"] == 120000
        assert {"kind": "different", "key": {"id": "77777"}, "columns": ["v"]} in big["examples"]
        text = pipeline.command("compare", first)
        assert text.returncode == 1
        assert "public.customers: DIFFERENT: 1 missing" in text.stdout and "missing (id=4)" in text.stdout
        assert "public.accounts: equal" in text.stdout

        before = {s: contiguous(pipeline, s) for s in (first, second)}
        repaired = {s: pipeline.command("repair", s) for s in (second, first)}
        for done in repaired.values():
            assert done.returncode == 0, done.stdout + done.stderr
            assert "after the repair, both at position" in done.stdout
        assert "repaired public.customers: 2 rows" in repaired[second].stdout
        assert "repaired public.accounts: 1 row made" in repaired[second].stdout
        assert "repaired public.customers: 1 row made" in repaired[first].stdout
        assert "repaired public.big: 3 rows made" in repaired[first].stdout
        with pipeline.replica(second) as conn:
            repaired_row = conn.execute("SELECT name, email FROM public.customers WHERE id = 3").fetchone()
            assert repaired_row == ("Customer 3", None)  # email: not carried by the route, so never touched
            assert conn.execute("SELECT count(*) FROM public.customers WHERE id = 999999999").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM public.accounts WHERE id = 15").fetchone()[0] == 0
            audit = conn.execute(
                "SELECT table_name, rows FROM pgfanout_replica.repaired WHERE subscriber = %s ORDER BY table_name", (second,)
            ).fetchall()
            assert audit == [("public.accounts", 1), ("public.customers", 2)]
        with pipeline.replica(first) as conn:
            assert conn.execute("SELECT name FROM public.customers WHERE id = 4").fetchone() == ("Customer 4",)
        assert eventually(lambda: scheduled_extra() == 0, timeout=30)
        assert "scheduled compare: public.accounts: DIFFERENT: 1 extra" in pipeline.log(second)
        # the stream went on applying after the repairs, from exactly where they were made
        with pipeline.primary() as conn:
            conn.execute("UPDATE public.customers SET name = 'After' WHERE id = 4")
        pipeline.wait_caught_up()
        for subscriber in (first, second):
            assert contiguous(pipeline, subscriber) > before[subscriber]
            with pipeline.replica(subscriber) as conn:
                assert conn.execute("SELECT name FROM public.customers WHERE id = 4").fetchone() == ("After",)
    finally:
        stop.set()
        thread.join()
    pipeline.wait_caught_up()
    for subscriber in (first, second):
        contiguous(pipeline, subscriber)
        assert compare_json(pipeline, subscriber)[0] == 0


def test_compare_refuses_bad_input_and_a_subscriber_far_behind_without_changing_anything(pipeline):
    two_tiers(pipeline)
    first, second = pipeline.subscribers
    with pipeline.primary() as conn:
        conn.execute("CREATE TABLE public.keyless (v integer)")
    unknown = pipeline.command("compare", "nobody")
    assert unknown.returncode == 2 and "no subscriber named 'nobody'" in unknown.stderr, unknown.stderr
    for table, reason in (
        ("public.keyless", "table public.keyless has no primary key"),
        ("public.nowhere", "there is no table public.nowhere on the primary"),
        ("public.products", f"subscriber {second} does not receive table public.products"),
    ):
        refused = pipeline.command("compare", second, "--table", table)
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr

    # the agent takes a compare's snapshot as a tick only if it is later than its last tick
    with pipeline.primary() as older, pipeline.primary() as conn:
        older.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        stale = older.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = 1")  # committed after that snapshot
        pipeline.wait_caught_up()
        answers = []
        for snapshot in (stale, None):  # None: one taken after the agent answered the stale one
            snapshot = snapshot or conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
            request = conn.execute(
                "INSERT INTO pgfanout.snapshot_request (subscriber, snapshot) VALUES (%s, %s) RETURNING request_id",
                (first, snapshot),
            ).fetchone()[0]
            deadline = time.monotonic() + 10
            while (
                answer := conn.execute(
                    "SELECT tick_id IS NOT NULL, refused IS NOT NULL FROM pgfanout.snapshot_request WHERE request_id = %s",
                    (request,),
                ).fetchone()
            ) == (False, False):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            answers.append(answer)
        assert answers == [(False, True), (True, False)]
        older.rollback()

    pipeline.wait_caught_up()
    pipeline.kill(first)
    with pipeline.replica(first) as conn:
        stopped_at = conn.execute("SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (first,)).fetchone()[0]
    with pipeline.primary() as conn:
        for i in range(30):
            conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = %s", (i % 20 + 1,))
    behind = pipeline.command("compare", first, "--timeout", "3")
    assert behind.returncode == 2, behind.stdout + behind.stderr
    assert f"subscriber {first} did not reach the compare's position within 3s" in behind.stderr
    assert f"it is at position {stopped_at}, 30 transactions behind" in behind.stderr, behind.stderr
    with pipeline.replica(first) as conn:
        assert (
            conn.execute("SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (first,)).fetchone()[0]
            == stopped_at
        )
        assert conn.execute("SELECT count(*) FROM pgfanout_replica.repaired").fetchone()[0] == 0

    # started again, it passes the compare's tick (nobody waits for it any more) and goes on
    pipeline.start(first)
    pipeline.wait_for_log(first, "is gone; going on")
    pipeline.wait_caught_up()
    assert compare_json(pipeline, first)[0] == 0
    try:
        comparing.targets(pipeline.config, first, ["public.nowhere"])
    except CompareError as exc:
        assert exc.exit_code == 2
    else:
        raise AssertionError("an unknown table was accepted")
    with psycopg.connect(pipeline.primary_dsn) as conn:
        assert (
            conn.execute("SELECT count(*) FROM pgfanout.snapshot_request WHERE tick_id IS NULL AND refused IS NULL").fetchone()[0]
            == 0
        )
