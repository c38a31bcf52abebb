"""Partitioned tables with either capture trigger: every partition's rows, rows moving between partitions,
partitions created, attached, detached and emptied while writers run (agent/partitions.py)."""

import random
import threading
import time

import psycopg
import pytest

from agent import capture
from pgfanout.core.errors import CaptureError
from tests.integration.pipeline import BOTH_TRIGGERS

DDL = [
    # range, with a default partition and one level of sub-partitions
    """CREATE TABLE public.readings (id integer, k integer, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k)""",
    "CREATE TABLE public.readings_low PARTITION OF public.readings FOR VALUES FROM (0) TO (100)",
    """CREATE TABLE public.readings_mid PARTITION OF public.readings FOR VALUES FROM (100) TO (200)
       PARTITION BY HASH (id)""",
    "CREATE TABLE public.readings_mid_0 PARTITION OF public.readings_mid FOR VALUES WITH (MODULUS 2, REMAINDER 0)",
    "CREATE TABLE public.readings_mid_1 PARTITION OF public.readings_mid FOR VALUES WITH (MODULUS 2, REMAINDER 1)",
    "CREATE TABLE public.readings_rest PARTITION OF public.readings DEFAULT",
    # list; its partitions' columns in another order than the table's (their own attribute numbers)
    """CREATE TABLE public.sites (region text NOT NULL, id integer NOT NULL, name text, PRIMARY KEY (region, id))
       PARTITION BY LIST (region)""",
    "CREATE TABLE public.sites_north (name text, id integer NOT NULL, region text NOT NULL)",
    "ALTER TABLE public.sites ATTACH PARTITION public.sites_north FOR VALUES IN ('north')",
    "CREATE TABLE public.sites_south PARTITION OF public.sites FOR VALUES IN ('south')",
    "CREATE TABLE public.sites_other PARTITION OF public.sites DEFAULT",
]
TABLES = ["public.readings", "public.sites"]
REGIONS = ["north", "south", "east", "west"]
WRITERS = 3


def writer(dsn: str, index: int, stop: threading.Event, wide: threading.Event, failures: list, done: list) -> None:
    """Writes its own ids only, each id in one row of a table, so that writes never conflict: a failure is capture's."""
    rng = random.Random(index)
    ids = range(index * 1000, index * 1000 + 60)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            row = rng.choice(ids)
            top = 300 if wide.is_set() else 200  # 200..300 is a partition attached later
            action = rng.random()
            try:
                with conn.transaction():
                    if action < 0.35:
                        conn.execute(
                            "INSERT INTO public.readings SELECT %s, %s, 'new' "
                            "WHERE NOT EXISTS (SELECT FROM public.readings WHERE id = %s)",
                            (row, rng.randrange(top), row),
                        )
                    elif action < 0.6:  # moves rows across partitions
                        conn.execute("UPDATE public.readings SET k = %s, v = v || '+' WHERE id = %s", (rng.randrange(top), row))
                    elif action < 0.7:
                        conn.execute("DELETE FROM public.readings WHERE id = %s", (row,))
                    elif action < 0.8:
                        conn.execute(
                            "INSERT INTO public.sites SELECT %s, %s, 'site' "
                            "WHERE NOT EXISTS (SELECT FROM public.sites WHERE id = %s)",
                            (rng.choice(REGIONS), row, row),
                        )
                    elif action < 0.95:
                        conn.execute(
                            "UPDATE public.sites SET region = %s, name = name || '*' WHERE id = %s", (rng.choice(REGIONS), row)
                        )
                    else:
                        conn.execute("DELETE FROM public.sites WHERE id = %s", (row,))
                done.append(1)
            except psycopg.Error as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.002)


def rows(conn: psycopg.Connection, table: str) -> list[tuple]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()  # noqa: S608 (a fixed name)


@BOTH_TRIGGERS
def test_partitioned_tables_replicate_through_partition_changes_under_writes(pipeline):
    first, second = pipeline.subscribers
    data = pipeline.data
    data["sources"][pipeline.source]["tables"] = TABLES
    pipeline.reconfigure(data)
    pipeline.prepare(install=False, bare=(first, second))
    with pipeline.primary() as conn:
        for statement in DDL:
            conn.execute(statement)
        conn.execute("INSERT INTO public.readings SELECT i, i % 200, 'early' FROM generate_series(1, 300) i")
        conn.execute(
            "INSERT INTO public.sites SELECT (ARRAY['north', 'south', 'east'])[i % 3 + 1], i, 'early' "
            "FROM generate_series(1, 90) i"
        )
    installed = pipeline.command("agent", "install")
    assert installed.returncode == 0, installed.stderr
    assert "public.readings is partitioned (4 partitions with rows" in installed.stdout
    assert "replicas hold one table public.readings" in installed.stdout
    for subscriber in pipeline.subscribers:
        init = pipeline.command("subscriber", "init", subscriber)
        assert init.returncode == 0, init.stderr
    pipeline.start()

    stop, wide, failures, done = threading.Event(), threading.Event(), [], []
    threads = [
        threading.Thread(target=writer, args=(pipeline.primary_dsn, i, stop, wide, failures, done)) for i in range(1, WRITERS + 1)
    ]
    for thread in threads:
        thread.start()
    try:
        with pipeline.primary() as conn:
            time.sleep(1.0)
            # a partition attached after install, holding rows already
            conn.execute("CREATE TABLE public.readings_high (id integer NOT NULL, k integer NOT NULL, v text)")
            conn.execute(
                "INSERT INTO public.readings_high SELECT i, 200 + i % 100, 'attached' FROM generate_series(5001, 5040) i"
            )
            conn.execute("ALTER TABLE public.readings ATTACH PARTITION public.readings_high FOR VALUES FROM (200) TO (300)")
            wide.set()
            time.sleep(1.0)
            conn.execute("CREATE TABLE public.sites_east PARTITION OF public.sites FOR VALUES IN ('zzz')")
            conn.execute("TRUNCATE public.readings_low")  # one partition emptied alone
            time.sleep(1.0)
            with conn.transaction():  # detached with its rows, and attached back, in one transaction
                conn.execute("ALTER TABLE public.sites DETACH PARTITION public.sites_south")
                conn.execute("UPDATE public.sites_south SET name = 'while detached'")
                conn.execute("ALTER TABLE public.sites ATTACH PARTITION public.sites_south FOR VALUES IN ('south')")
            time.sleep(0.5)
            conn.execute("ALTER TABLE public.readings DETACH PARTITION public.readings_mid")
            with pytest.raises(psycopg.errors.RaiseException, match="detach it first"):
                conn.execute("DROP TABLE public.readings_high")
            time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [], "no write on the primary may fail"
    assert len(done) > 300

    pipeline.wait_caught_up()
    with pipeline.primary() as conn:
        expected = {table: rows(conn, table) for table in TABLES}
        assert conn.execute("SELECT count(*) FROM pgfanout.capture_fault").fetchone()[0] == 0
    assert {k for _, k, _ in expected["public.readings"]} & set(range(200, 300)), "rows of the attached partition"
    for subscriber in pipeline.subscribers:
        with pipeline.replica(subscriber) as conn:
            assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'public.readings'::regclass").fetchone()[0] == "r"
            for table in TABLES:
                assert rows(conn, table) == expected[table], f"{table} on {subscriber}"


def test_install_refuses_what_capture_could_not_follow(pipeline):
    pipeline.prepare(install=False)
    source = pipeline.config.sources[pipeline.source]
    with pipeline.primary() as conn:
        for statement in DDL[:2]:
            conn.execute(statement)
        conn.execute("CREATE TABLE public.base (id integer PRIMARY KEY)")
        conn.execute("CREATE TABLE public.derived (extra text, PRIMARY KEY (id)) INHERITS (public.base)")
        with pytest.raises(CaptureError) as err:
            capture.install(conn, source.model_copy(update={"tables": ["public.readings", "public.readings_low", "public.base"]}))
        message = str(err.value)
        assert "public.readings_low is a partition of public.readings, which is published too" in message
        assert "public.base has inheritance children (public.derived)" in message
        # an inheritance child of a published table writes as before: it has no trigger of its own
        capture.install(conn, source.model_copy(update={"tables": ["public.readings", "public.derived"]}))
        conn.execute("INSERT INTO public.base VALUES (1)")
        conn.execute("INSERT INTO public.derived VALUES (2, 'x')")
