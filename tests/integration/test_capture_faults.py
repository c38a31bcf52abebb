"""No state of capture's own makes a write on the primary fail: each such path becomes a capture fault,
which stops the agent before the transaction, loudly, until the operator repairs and accepts it."""

import psycopg
import pytest

from agent import capture
from devstack import processes
from tests.integration.pipeline import logged

C_ONLY = pytest.mark.parametrize("pipeline", ["c"], indirect=True)


def faults(conn) -> list[tuple[str, str]]:
    return conn.execute("SELECT relation, reason FROM pgfanout.capture_fault ORDER BY noticed_at").fetchall()


def write(pipeline, statement: str, params: tuple = ()) -> list[str]:
    """Run a write in a new session (no layout cached yet); it must succeed. Returns the warnings it got."""
    warnings = []
    with psycopg.connect(pipeline.primary_dsn, autocommit=True) as writer:
        writer.add_notice_handler(lambda d: warnings.append(d.message_primary) if d.severity == "WARNING" else None)
        writer.execute(statement, params)
    return warnings


PATHS = {
    # a layout row deleted
    "no layout": (
        ["DELETE FROM pgfanout.tables WHERE table_name = 'accounts'"],
        "INSERT INTO public.accounts VALUES (101, 1)",
        "public.accounts",
        "no layout in pgfanout.tables",
    ),
    # a published table renamed where the event trigger did not fire (the layout is found by name)
    "renamed table": (
        [
            "SET session_replication_role = replica",
            "ALTER TABLE public.accounts RENAME TO ledger",
            "RESET session_replication_role",
        ],
        "INSERT INTO public.ledger VALUES (102, 1)",
        "public.ledger",
        "no layout in pgfanout.tables",
    ),
    # a column renamed where the ALTER TABLE event trigger did not fire (session_replication_role = replica)
    "stale layout": (
        [
            "SET session_replication_role = replica",
            "ALTER TABLE public.customers RENAME COLUMN email TO mail",
            "RESET session_replication_role",
        ],
        "INSERT INTO public.customers (id, name) VALUES (9001, 'x')",
        "public.customers",
        'names column "email", which the table does not have',
    ),
    # a key column that lost NOT NULL and holds NULL
    "null key": (
        [
            "ALTER TABLE public.products DROP CONSTRAINT products_pkey CASCADE",
            "ALTER TABLE public.products ALTER COLUMN sku DROP NOT NULL",
        ],
        "INSERT INTO public.products (sku, title, price) VALUES (NULL, 'n', 1)",
        "public.products",
        'key column "sku" is NULL',
    ),
    # a log table of another library version
    "log table": (
        ["ALTER TABLE pgfanout.log ADD COLUMN surprise integer"],
        "INSERT INTO public.accounts VALUES (103, 1)",
        "the pgfanout log",
        '"surprise" of log table "log_1" is unknown',
    ),
    "log triggers": (
        [
            "CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
            "CREATE TRIGGER audit BEFORE INSERT ON pgfanout.log_1 FOR EACH ROW EXECUTE FUNCTION public.noop()",
        ],
        "INSERT INTO public.accounts VALUES (104, 1)",
        "the pgfanout log",
        "which capture would bypass",
    ),
    "agent state": (
        ["DELETE FROM pgfanout.agent_state"],
        "INSERT INTO public.accounts VALUES (105, 1)",
        "the pgfanout log",
        "agent_state has no row",
    ),
}


@C_ONLY
@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_capture_fault_never_fails_the_write(pipeline, path):
    setup, statement, relation, reason = PATHS[path]
    pipeline.prepare()
    pipeline.seed()
    with pipeline.primary() as conn:
        for step in setup:
            conn.execute(step)
        conn.execute("TRUNCATE pgfanout.log_1, pgfanout.log_2")  # the setup's schema changes are logged
    warnings = write(pipeline, statement)
    assert any("in this transaction are not captured" in w and reason in w for w in warnings), warnings
    with pipeline.primary() as conn:
        assert [(r, reason in why) for r, why in faults(conn)] == [(relation, True)]
        assert logged(conn) == [], "nothing of the transaction is logged"


@C_ONLY
def test_the_agent_stops_before_a_faulty_transaction_until_it_is_accepted(pipeline):
    first = pipeline.subscribers[0]
    pipeline.prepare()
    pipeline.seed()
    pipeline.start()
    with pipeline.primary() as conn:
        conn.execute("INSERT INTO public.accounts VALUES (201, 1)")
        pipeline.wait_caught_up()
        conn.execute("DELETE FROM pgfanout.tables WHERE table_name = 'accounts'")
    agent = pipeline.pid("agent")
    write(pipeline, "INSERT INTO public.accounts SELECT i, i FROM generate_series(202, 260) i")
    code, text = processes.wait_exit(agent, timeout=60), pipeline.log("agent")
    assert code == 3, text[-3000:]
    assert "capture could not record some changes (public.accounts in transaction" in text
    assert "Traceback" not in text
    listed = pipeline.command("agent", "faults")
    assert listed.returncode == 1 and "public.accounts: it has a capture trigger but no layout" in listed.stdout
    assert listed.stdout.count("public.accounts:") == 1, "one fault per transaction and table, not one per row"

    with pipeline.primary() as conn:  # repaired; rows written since are captured again
        capture.install(conn, pipeline.config.sources[pipeline.source])
    write(pipeline, "INSERT INTO public.accounts VALUES (261, 1)")
    code, text = pipeline.run_until_it_stops("agent", timeout=30)
    assert code == 3, "accepting is the operator's decision"
    accepted = pipeline.command("agent", "faults", "--accept")
    assert accepted.returncode == 0 and "copy public.accounts again" in accepted.stdout
    pipeline.start("agent")
    pipeline.wait_caught_up()
    with pipeline.replica(first) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM public.accounts WHERE id > 200 ORDER BY id")]
    assert ids == [201, 261], "the faulty transaction went out without the changes capture could not record"
    resync = pipeline.command("subscriber", "resync", first, "--table", "public.accounts")
    assert resync.returncode == 0, resync.stderr
    with pipeline.primary() as primary, pipeline.replica(first) as replica:
        query = "SELECT * FROM public.accounts ORDER BY id"
        assert replica.execute(query).fetchall() == primary.execute(query).fetchall()


@C_ONLY
def test_a_table_created_again_under_the_same_name_is_written_and_captured_with_its_new_layout(pipeline):
    """The C trigger caches layouts per relation and backend: a published table dropped and created again
    (another relation, other columns) must neither fail the writes nor be logged with the old layout."""
    pipeline.prepare()
    with psycopg.connect(pipeline.primary_dsn, autocommit=True) as writer, pipeline.primary() as conn:
        writer.execute("INSERT INTO public.accounts VALUES (1, 1)")  # the writer caches the layout
        conn.execute("DROP TABLE public.accounts")
        conn.execute("CREATE TABLE public.accounts (id integer PRIMARY KEY, balance numeric, opened date)")
        writer.execute("INSERT INTO public.accounts VALUES (2, 2, '2026-01-01')")  # no trigger yet: written
        capture.install(conn, pipeline.config.sources[pipeline.source])
        writer.execute("INSERT INTO public.accounts VALUES (3, 3, '2026-01-02')")
        assert faults(conn) == []
        table_ids = [
            r[0] for r in conn.execute("SELECT table_id FROM pgfanout.tables WHERE table_name = 'accounts' ORDER BY table_id")
        ]
        assert len(table_ids) == 3, "the dropped table's last layout says it was dropped; the new one has its own"
        assert [(op, row) for op, row, _ in logged(conn)] == [
            ("I", ["1", "1.00"]),
            ("S", None),  # the DROP TABLE, for the replicas (docs/ddl.md)
            ("I", ["3", "3", "2026-01-02"]),
        ]
