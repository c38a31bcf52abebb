"""Schema changes of published tables through two distributor tiers: each one in the stream at its
transaction's place, applied by every replica there (within its share of columns), while writers run."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from devstack.postgres import bin_dir
from devstack.sample import run_workload
from subscriber import ddl
from tests.integration.pipeline import BOTH_TRIGGERS, Pipeline, contiguous, eventually, two_tiers

LEDGER = "CREATE TABLE public.ledger (id integer PRIMARY KEY, account integer NOT NULL, amount integer, memo text)"

# Run in this order on the primary, each in its own transaction unless a list; rows are written between them.
SCRIPT: list[str | list[str]] = [
    "ALTER TABLE public.customers ADD COLUMN tier integer DEFAULT 1",
    "ALTER TABLE public.customers ALTER COLUMN tier SET NOT NULL",
    "CREATE INDEX customers_tier ON public.customers (tier)",
    "ALTER TABLE public.customers RENAME COLUMN tier TO level",
    "ALTER TABLE public.customers ALTER COLUMN level TYPE bigint",  # a rewrite: the table is sent again
    "ALTER TABLE public.customers ADD CONSTRAINT level_positive CHECK (level > 0)",
    "ALTER TABLE public.customers ALTER COLUMN level DROP NOT NULL",
    "ALTER TABLE public.customers ALTER COLUMN level SET DEFAULT 5",  # defaults stay on the primary
    "DROP INDEX public.customers_tier",
    "ALTER TABLE public.customers ADD COLUMN secret text",  # not on the branch's column list
    "ALTER TABLE public.products ADD COLUMN weight numeric(8,3)",
    "ALTER TABLE public.products ADD CONSTRAINT weight_ok CHECK (weight >= 0)",
    "ALTER TABLE public.accounts ADD COLUMN opened date NOT NULL DEFAULT '2020-01-01'",
    "CREATE UNIQUE INDEX accounts_opened_id ON public.accounts (opened, id)",
    "ALTER TABLE public.ledger RENAME TO journal",
    "ALTER TABLE public.journal RENAME COLUMN memo TO note",
    [  # rows, a change, rows: in one transaction
        "INSERT INTO public.journal VALUES (1000, 1, 5, 'before')",
        "ALTER TABLE public.journal ALTER COLUMN amount TYPE numeric(12,2) USING amount / 4.0",  # a rewrite
        "INSERT INTO public.journal VALUES (1001, 1, 2.5, 'after')",
    ],
    "ALTER TABLE public.journal ADD COLUMN stamp timestamptz DEFAULT now()",
    "ALTER TABLE public.journal DROP COLUMN note",
    "ALTER TABLE public.journal ADD COLUMN luck float8 DEFAULT random()",  # volatile: a rewrite
    "ALTER TABLE public.journal DROP CONSTRAINT ledger_pkey, ADD PRIMARY KEY (id, account)",
    "ALTER TABLE public.journal ALTER COLUMN luck SET NOT NULL",
    [  # a table created that matches the source's public.report_* is published from its first row
        "CREATE TABLE public.report_daily (day date PRIMARY KEY, total numeric NOT NULL)",
        "INSERT INTO public.report_daily VALUES ('2026-01-01', 5), ('2026-01-02', 7)",
    ],
    "CREATE INDEX report_daily_total ON public.report_daily (total)",
    "CREATE TABLE public.report_weekly (week integer PRIMARY KEY, total numeric)",
    "INSERT INTO public.report_weekly SELECT g, g * 10 FROM generate_series(1, 5) g",
    "ALTER TABLE public.report_daily ADD COLUMN note text",
    "UPDATE public.report_daily SET note = 'checked' WHERE day = '2026-01-02'",
    "DROP TABLE public.report_weekly",  # sub1 drops it too (on_drop: drop); the branch never had it
    "CREATE TABLE public.notes_unpublished (id integer PRIMARY KEY)",  # matches no pattern
]


def journal_rows(conn: psycopg.Connection, step: int) -> None:
    """Rows written between the changes, by whatever names the table and its columns have then."""
    name = "journal" if conn.execute("SELECT to_regclass('public.journal')").fetchone()[0] else "ledger"
    table = sql.Identifier("public", name)
    base = 10 * step
    with conn.transaction():
        conn.execute(
            sql.SQL("INSERT INTO {} (id, account, amount) SELECT g, g %% 3, g FROM generate_series(%s::int, %s::int) g").format(
                table
            ),
            (base, base + 4),
        )
        conn.execute(sql.SQL("UPDATE {} SET amount = amount + 1 WHERE id = %s").format(table), (base - 9,))
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (base - 8,))


def rows(conn: psycopg.Connection, table: str, columns: str = "*", where: str = "true") -> list[tuple]:
    return conn.execute(f"SELECT {columns} FROM {table} WHERE {where} ORDER BY 1, 2").fetchall()


def definition(conn: psycopg.Connection, table: str) -> tuple:
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        found = ddl.read_definition(conn, "public", table)
    columns = tuple((c.name, c.type_sql, c.not_null, c.collation, c.generated) for c in found.columns)
    return columns, tuple(sorted(found.constraints)), tuple(sorted(found.indexes))


def published_definition(conn: psycopg.Connection, table: str, columns: set[str] | None = None) -> tuple:
    """The primary's definition as replicas build it: no foreign keys (read_definition leaves them out), and
    for a route with a column list, what is built on its columns only."""
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        found = ddl.read_definition(conn, "public", table)
    if columns is not None:
        found = ddl.project(found, frozenset(columns))
    return (
        tuple((c.name, c.type_sql, c.not_null, c.collation, c.generated) for c in found.columns),
        tuple(sorted(found.constraints)),
        tuple(sorted(found.indexes)),
    )


def run_script(pipeline: Pipeline, between: Callable[[int], None] = lambda step: None) -> None:
    """The script on the primary, rows written between its changes, writers running all along;
    ``between(step)`` runs after each step (to kill daemons)."""
    stop = threading.Event()
    workload = threading.Thread(target=run_workload, args=(pipeline.primary_dsn, 300, 2), kwargs={"stop": stop, "seed_value": 27})
    workload.start()
    try:
        with pipeline.primary() as conn:
            conn.autocommit = True
            for step, change in enumerate(SCRIPT, start=1):
                journal_rows(conn, step)
                if isinstance(change, list):
                    with conn.transaction():
                        for statement in change:
                            conn.execute(statement)
                else:
                    conn.execute(change)
                between(step)
            journal_rows(conn, len(SCRIPT) + 1)
    finally:
        stop.set()
        workload.join()


def dumped(dsn: str, table: str) -> list[str]:
    """`pg_dump -s` of one table, less what is deliberately not replicated (docs/ddl.md): column defaults,
    triggers (capture's on the primary, the read-only guard's on a replica) and foreign keys."""
    out = subprocess.run(
        [str(bin_dir() / "pg_dump"), "-s", "-t", table, "-d", dsn], capture_output=True, text=True, check=True
    ).stdout
    kept = []
    for statement in out.split(";\n"):
        lines = [line for line in statement.strip().splitlines() if line and not line.startswith(("--", "\\"))]
        text = "\n".join(re.sub(r" DEFAULT (.*?)( NOT NULL)?(,?)$", r"\2\3", line) for line in lines)
        if (
            text
            and not text.startswith(("SET ", "SELECT pg_catalog.set_config"))
            and not any(word in text for word in ("TRIGGER", "FOREIGN KEY"))
        ):
            kept.append(text)
    return kept


def check_every_replica(pipeline: Pipeline) -> None:
    first, second = pipeline.subscribers
    with pipeline.primary() as primary, pipeline.replica(first) as sub1, pipeline.replica(second) as sub2:
        for table in ("customers", "products", "orders", "order_lines", "accounts", "journal", "report_daily"):
            assert definition(sub1, table) == published_definition(primary, table), table
            assert rows(sub1, f"public.{table}") == rows(primary, f"public.{table}"), table
            primary_dsn, replica_dsn = pipeline.primary_dsn, pipeline.config.subscribers[first].dsn
            assert dumped(replica_dsn, f"public.{table}") == dumped(primary_dsn, f"public.{table}"), table
        assert definition(sub2, "accounts") == published_definition(primary, "accounts")
        assert rows(sub2, "public.accounts") == rows(primary, "public.accounts", where="id <= 10")
        # the branch's customers table was created whole (its own email and created_at stay); it gets nothing
        # of the columns its route does not carry, nor what is built on them
        columns, constraints, indexes = definition(sub2, "customers")
        own = {"email", "created_at"}
        assert (tuple(c for c in columns if c[0] not in own), constraints, indexes) == published_definition(
            primary, "customers", {"id", "name"}
        )
        assert rows(sub2, "public.customers", "id, name") == rows(primary, "public.customers", "id, name")
        # what the changes did, seen on the replica
        assert rows(sub1, "public.journal", "id, amount", "id IN (1000, 1001)") == [(1000, 1.25), (1001, 2.5)]
        assert sub1.execute("SELECT count(*) FROM public.customers WHERE level IS NULL").fetchone()[0] == 0
        assert sub1.execute("SELECT to_regclass('public.ledger')").fetchone()[0] is None
        for gone in ("report_weekly", "notes_unpublished"):
            assert sub1.execute("SELECT to_regclass(%s)", (f"public.{gone}",)).fetchone()[0] is None, gone
            assert sub2.execute("SELECT to_regclass(%s)", (f"public.{gone}",)).fetchone()[0] is None, gone
        assert sub2.execute("SELECT to_regclass('public.report_daily')").fetchone()[0] is None  # not its route's


def tree(pipeline: Pipeline) -> None:
    two_tiers(pipeline, more_tables={"public.ledger": LEDGER}, patterns=("public.report_*",), first_settings={"on_drop": "drop"})


@BOTH_TRIGGERS
def test_a_script_of_schema_changes_reaches_every_tier_in_order_while_writers_run(pipeline: Pipeline):
    tree(pipeline)
    run_script(pipeline)
    pipeline.wait_caught_up(timeout=180)
    check_every_replica(pipeline)
    log = pipeline.log(pipeline.subscribers[0])
    assert "schema change of public.customers" in log and "rename column tier to level" in log
    assert "rename to journal" in log and "created public.report_daily" in log and "dropped public.report_weekly" in log
    for subscriber in pipeline.subscribers:
        contiguous(pipeline, subscriber)


def test_daemons_killed_in_the_middle_of_the_script_apply_no_change_twice_or_in_part(pipeline: Pipeline):
    tree(pipeline)
    name = pipeline.name
    first, second = pipeline.subscribers
    victims = ["agent", f"{name}.hq", first, f"{name}.region", second]

    def kill_one(step: int) -> None:
        time.sleep(0.3)  # the stream is applied while the script goes on: kills land amid its changes
        if step % 3 == 0:  # every third change, the next daemon in turn: killed, then started again
            victim = victims[(step // 3) % len(victims)]
            started = pipeline.log(victim).count(" ready")
            pipeline.kill(victim)
            pipeline.start(victim)
            assert eventually(lambda: pipeline.log(victim).count(" ready") > started, timeout=60), f"{victim} did not start"

    run_script(pipeline, kill_one)
    pipeline.wait_caught_up(timeout=240)
    check_every_replica(pipeline)
    for subscriber in pipeline.subscribers:
        contiguous(pipeline, subscriber)


def test_a_rename_under_a_route_filter_stops_its_distributor_and_a_refused_change_stops_its_subscriber(pipeline: Pipeline):
    two_tiers(pipeline)
    first, second = pipeline.subscribers
    region = f"{pipeline.name}.region"
    with pipeline.replica(first) as conn:  # a view of the replica's own on a column the primary will drop
        conn.execute("CREATE VIEW public.mail_list AS SELECT id, email FROM public.customers")
    with pipeline.primary() as conn:
        conn.execute("INSERT INTO public.customers (id, name, email) VALUES (1, 'one', 'one@example.org')")
        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = 3")  # old layout, same message
        conn.execute("ALTER TABLE public.accounts RENAME COLUMN id TO account_id")
        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE account_id IN (4, 14)")
        conn.execute("ALTER TABLE public.customers DROP COLUMN email")
        conn.execute("INSERT INTO public.customers (id, name) VALUES (2, 'two')")

    # the branch's filter names accounts.id: its distributor stops, naming the route and what to change
    assert eventually(lambda: pipeline.pid(region) is None, timeout=60), "the region distributor goes on"
    log = pipeline.wait_for_log(region, "renamed columns that this route's filter or column list names (id -> account_id)")
    assert f"routes.{pipeline.name}.branch.tables" in log
    data = pipeline.data
    data["routes"][f"{pipeline.name}.branch"]["tables"] = {
        "public.accounts": {"where": "account_id <= 10"},
        "public.customers": {"columns": ["id", "name"]},
    }
    pipeline.reconfigure(data)
    pipeline.start(region)

    # sub1 cannot drop the column its view reads: it stops before the transaction, naming the statement
    log = pipeline.wait_for_log(first, 'failed on the replica: `ALTER TABLE "public"."customers" DROP COLUMN "email"`', 60)
    assert eventually(lambda: pipeline.pid(first) is None, timeout=30), "the subscriber goes on"
    assert "DependentObjectsStillExist" in log and "Nothing of this transaction was committed" in log
    with pipeline.replica(first) as conn:
        assert conn.execute("SELECT count(*) FROM public.customers WHERE id = 2").fetchone()[0] == 0
        conn.execute("DROP VIEW public.mail_list")
    pipeline.start(first)
    pipeline.wait_caught_up(timeout=120)
    with pipeline.primary() as primary, pipeline.replica(first) as sub1, pipeline.replica(second) as sub2:
        for table in ("customers", "accounts"):
            assert definition(sub1, table) == published_definition(primary, table)
            assert rows(sub1, f"public.{table}") == rows(primary, f"public.{table}")
        assert rows(sub2, "public.accounts") == rows(primary, "public.accounts", where="account_id <= 10")
        assert rows(sub2, "public.customers", "id, name") == rows(primary, "public.customers", "id, name")


def test_a_ddl_script_runs_on_the_primary_and_at_its_place_on_every_subscriber(pipeline: Pipeline, tmp_path):
    two_tiers(pipeline)
    first, second = pipeline.subscribers
    script = tmp_path / "grades.sql"
    script.write_text(
        "CREATE TYPE public.grade AS ENUM ('low', 'high');\n"
        "CREATE FUNCTION public.doubled(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';\n"
        "ALTER TABLE public.accounts ADD COLUMN grade public.grade;\n"
        "UPDATE public.accounts SET grade = 'high' WHERE id <= 3;\n"
    )
    done = pipeline.command("ddl", str(script))
    assert done.returncode == 0 and "ran on the primary" in done.stdout, done.stderr
    with pipeline.primary() as conn:
        conn.execute("UPDATE public.accounts SET grade = 'low' WHERE id = 4")  # captured as usual, after it

    # one that fails on the primary runs nowhere
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE FUNCTION public.tripled(x integer) RETURNS integer LANGUAGE sql AS 'SELECT x * 3';\nSELECT 1 / 0;\n")
    failed = pipeline.command("ddl", str(bad))
    assert failed.returncode == 1 and "division by zero" in failed.stderr and "nothing of it ran" in failed.stderr
    assert "Traceback" not in failed.stderr

    # one that a replica refuses stops that subscriber only, naming the script and its position
    with pipeline.replica(first) as conn:
        conn.execute("CREATE FUNCTION public.halved(x integer) RETURNS text LANGUAGE sql AS 'SELECT (x / 2)::text'")
    halved = tmp_path / "halved.sql"
    halved.write_text("CREATE FUNCTION public.halved(x integer) RETURNS integer LANGUAGE sql AS 'SELECT x / 2';\n")
    assert pipeline.command("ddl", str(halved)).returncode == 0
    log = pipeline.wait_for_log(first, "failed on the replica: DuplicateFunction", 60)
    assert eventually(lambda: pipeline.pid(first) is None, timeout=30), "the subscriber goes on"
    position = int(
        re.search(r"script \d+ \(`pgfanout ddl` by \w+, beginning `CREATE FUNCTION public.halved.*? position (\d+)", log).group(1)
    )
    skipped = pipeline.command("subscriber", "skip", first, "--position", str(position))
    assert skipped.returncode == 0, skipped.stderr
    pipeline.start(first)
    pipeline.wait_caught_up(timeout=120)

    with pipeline.primary() as primary, pipeline.replica(first) as sub1, pipeline.replica(second) as sub2:
        for replica, where in ((sub1, "true"), (sub2, "id <= 10")):
            assert replica.execute("SELECT public.doubled(21)").fetchone()[0] == 42
            assert rows(replica, "public.accounts", "id, balance, grade::text") == rows(
                primary, "public.accounts", "id, balance, grade::text", where
            )
            assert replica.execute("SELECT to_regprocedure('public.tripled(integer)')").fetchone()[0] is None
        assert rows(sub2, "public.accounts", "id, grade::text", "grade IS NOT NULL") == [
            (1, "high"),
            (2, "high"),
            (3, "high"),
            (4, "low"),
        ]
        assert sub1.execute("SELECT public.halved(9)").fetchone()[0] == "4"  # skipped: its own stays
        assert sub2.execute("SELECT public.halved(9)").fetchone()[0] == 4
