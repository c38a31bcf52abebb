"""The C capture trigger: the same changes as the PL/pgSQL triggers, one log row per transaction, and
subtransactions rolled back exactly (agent/capture_c/pgfanout_capture.c)."""

import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from agent import capture
from pgfanout.core.codec import decode_changes, default_codec
from pgfanout.core.errors import CaptureError
from tests.integration.pipeline import logged
from tests.integration.test_types import ROWS, TYPES_DDL

C_ONLY = pytest.mark.parametrize("pipeline", ["c"], indirect=True)
FLUSH_BYTES = 256 * 1024


def log_rows(conn) -> list[tuple]:
    return conn.execute("SELECT op, ordinal, change_count, tableoid::regclass::text FROM pgfanout.log ORDER BY seq").fetchall()


def ids_logged(conn) -> list[tuple[str, str]]:
    return [(op, (new_row or old_key)[0]) for op, new_row, old_key in logged(conn)]


@contextmanager
def scratch_role(pipeline, prefix: str) -> Iterator[str]:
    """A login role without privileges, for this test only."""
    name = f"{prefix}_{pipeline.name}"[:60]
    role = sql.Identifier(name)
    with pipeline.primary() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    try:
        yield name
    finally:
        with pipeline.primary() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
            conn.execute(sql.SQL("DROP ROLE {}").format(role))


def install(pipeline, trigger: str, tables: list[str] | None = None) -> None:
    source = pipeline.config.sources[pipeline.source]
    update = {"capture_trigger": trigger} | ({"tables": [*source.tables, *tables]} if tables else {})
    with pipeline.primary() as conn:
        capture.install(conn, source.model_copy(update=update))


def test_both_triggers_log_the_same_changes_of_every_type(pipeline):
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        for statement in TYPES_DDL:
            conn.execute(statement)
    seen = {}
    for trigger in ("plpgsql", "c"):
        install(pipeline, trigger, ["public.everything"])
        with pipeline.primary() as conn:
            for setting in (
                "DateStyle = 'SQL, DMY'",
                "IntervalStyle = 'sql_standard'",
                "TimeZone = 'Pacific/Chatham'",
                "extra_float_digits = -15",
                "bytea_output = 'escape'",
            ):
                conn.execute(f"SET {setting}")
            with conn.transaction():
                for n, row in enumerate(ROWS):
                    fixed = row.replace("gen_random_uuid()", f"'00000000-0000-0000-0000-00000000000{n}'")
                    conn.execute(f"INSERT INTO public.everything VALUES {fixed}")
            conn.execute("UPDATE public.everything SET id = 6, t = t || '!' WHERE id = 3")  # a key change
            conn.execute("UPDATE public.everything SET t = 'same key' WHERE id = 5")
            conn.execute("DELETE FROM public.everything WHERE id = 2")
            conn.execute("TRUNCATE public.everything")
            seen[trigger] = logged(conn)
            kinds = {r[0] for r in conn.execute("SELECT DISTINCT op FROM pgfanout.log")}
            conn.execute("TRUNCATE pgfanout.log_1, pgfanout.log_2")
        assert kinds == ({"P"} if trigger == "c" else {"I", "U", "D", "T"})
    assert len(seen["c"]) == len(ROWS) + 4
    for plpgsql, c in zip(seen["plpgsql"], seen["c"], strict=True):
        assert c == plpgsql


def test_pinned_settings_are_skipped_only_when_the_session_formats_alike(pipeline):
    """The C trigger skips pinning when the session's settings print the same text (for DateStyle: any
    ISO style); a table whose only pinned setting is DateStyle shows whether that judgement is right."""
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE TABLE public.events (id int PRIMARY KEY, at timestamp, day date)")
    install(pipeline, "c", ["public.events"])
    with pipeline.primary() as conn:
        assert conn.execute("SELECT settings FROM pgfanout.tables WHERE table_name = 'events'").fetchone()[0][0] == "DateStyle"
        for n, style in enumerate(("SQL, DMY", "German, DMY", "ISO, DMY", "ISO, MDY"), start=1):
            conn.execute("SELECT set_config('DateStyle', %s, false)", (style,))
            conn.execute("INSERT INTO public.events VALUES (%s, '2024-01-02 03:04:05', '2024-01-02')", (n,))
        conn.execute("RESET DateStyle")
        rows = [new_row for op, new_row, _ in logged(conn)]
    assert rows == [[str(n), "2024-01-02 03:04:05", "2024-01-02"] for n in range(1, 5)]


@C_ONLY
def test_a_transaction_is_one_log_row_written_at_commit(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO public.accounts VALUES (1, 10), (2, 20)")
            conn.execute("UPDATE public.accounts SET balance = 11 WHERE id = 1")
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND relation::regclass::text LIKE 'pgfanout.log%'"
            ).fetchone()[0]
            assert held == 0, "an open transaction holds no log table, so log switches never wait for it"
            assert log_rows(conn) == [], "nothing is written before commit"
        assert log_rows(conn) == [("P", 0, 3, "pgfanout.log_1")]
        assert ids_logged(conn) == [("I", "1"), ("I", "2"), ("U", "1")]


@C_ONLY
def test_rolled_back_savepoints_and_exception_blocks_leave_nothing(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO public.accounts VALUES (1, 1)")
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():  # a savepoint, rolled back
                conn.execute("INSERT INTO public.accounts VALUES (2, 2)")
                with conn.transaction():  # nested, released: rolled back with its parent
                    conn.execute("INSERT INTO public.accounts VALUES (3, 3)")
                conn.execute("INSERT INTO public.accounts VALUES (1, 1)")
            with conn.transaction():  # released: kept
                conn.execute("INSERT INTO public.accounts VALUES (4, 4)")
                with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                    conn.execute("INSERT INTO public.accounts VALUES (5, 5)")
                    conn.execute("INSERT INTO public.accounts VALUES (4, 4)")
            conn.execute("""DO $$ BEGIN
                INSERT INTO public.accounts VALUES (6, 6);
                BEGIN
                    INSERT INTO public.accounts VALUES (7, 7);
                    RAISE EXCEPTION 'undo 7';
                EXCEPTION WHEN OTHERS THEN NULL;
                END;
                INSERT INTO public.accounts VALUES (8, 8);
            END $$""")
        assert ids_logged(conn) == [("I", "1"), ("I", "4"), ("I", "6"), ("I", "8")]
        assert sorted(r[0] for r in conn.execute("SELECT id FROM public.accounts")) == [1, 4, 6, 8]


@C_ONLY
def test_a_large_subtransaction_is_written_early_and_still_rolled_back_exactly(pipeline):
    """Past 256 kB the current subtransaction's changes are written early, never an enclosing level's."""
    pipeline.prepare()
    big = 100_000  # bytes per row: three rows pass the threshold
    with pipeline.primary() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO public.customers (id, name) VALUES (1, 'before')")
            with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
                for n in range(2, 8):
                    conn.execute("INSERT INTO public.customers (id, name) VALUES (%s, repeat('x', %s))", (n, big))
                assert any(r[2] for r in log_rows(conn)), "the subtransaction's changes were written early"
                conn.execute("SELECT 1 / 0")
            with conn.transaction():
                for n in range(10, 16):
                    conn.execute("INSERT INTO public.customers (id, name) VALUES (%s, repeat('y', %s))", (n, big))
            conn.execute("INSERT INTO public.customers (id, name) VALUES (20, 'after')")
        rows = log_rows(conn)
        assert len(rows) >= 3 and sum(r[2] for r in rows) == 1 + 6 + 1
        assert [int(i) for _, i in ids_logged(conn)] == [1, *range(10, 16), 20]


@C_ONLY
def test_the_library_loaded_inside_a_subtransaction_still_rolls_it_back(pipeline):
    pipeline.prepare()
    with psycopg.connect(pipeline.primary_dsn, autocommit=True) as fresh:  # a backend that never fired it
        fresh.execute("BEGIN")
        fresh.execute("SAVEPOINT a")
        fresh.execute("INSERT INTO public.accounts VALUES (1, 1)")  # loads the library
        fresh.execute("ROLLBACK TO SAVEPOINT a")
        fresh.execute("INSERT INTO public.accounts VALUES (2, 2)")
        fresh.execute("COMMIT")
    with pipeline.primary() as conn:
        assert ids_logged(conn) == [("I", "2")]


@C_ONLY
def test_alter_table_inside_a_transaction_and_under_repeatable_read(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO public.accounts VALUES (1, 1)")
            conn.execute("ALTER TABLE public.accounts ADD COLUMN note text")
            conn.execute("INSERT INTO public.accounts VALUES (2, 2, 'two')")
        with psycopg.connect(pipeline.primary_dsn, autocommit=True) as reader:
            reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            reader.execute("SELECT count(*) FROM public.customers")  # takes its snapshot before the next ALTER
            conn.execute("ALTER TABLE public.accounts ADD COLUMN extra int")
            reader.execute("INSERT INTO public.accounts VALUES (3, 3, 'three', 33)")
            reader.execute("COMMIT")
        layouts = dict(conn.execute("SELECT table_id, columns FROM pgfanout.tables WHERE table_name = 'accounts'"))
        rows = []
        for (encoded,) in conn.execute("SELECT changes FROM pgfanout.log WHERE changes IS NOT NULL ORDER BY seq"):
            rows += [(c["op"], layouts[c["table"]], c["values"]) for c, _ in decode_changes(default_codec(), encoded)]
    assert rows == [  # each ALTER in the stream where it happened, among the rows
        ("INSERT", ["id", "balance"], ["1", "1.00"]),
        ("SCHEMA", ["id", "balance", "note"], []),
        ("INSERT", ["id", "balance", "note"], ["2", "2.00", "two"]),
        ("SCHEMA", ["id", "balance", "note", "extra"], []),
        ("INSERT", ["id", "balance", "note", "extra"], ["3", "3.00", "three", "33"]),
    ]


@C_ONLY
def test_a_writer_follows_log_switches_made_by_another_session(pipeline):
    """The trigger keeps its log insert prepared per backend; a switch elsewhere must redirect it."""
    pipeline.prepare()
    with pipeline.primary() as conn, psycopg.connect(pipeline.primary_dsn, autocommit=True) as writer:
        writer.execute("INSERT INTO public.accounts VALUES (1, 1)")
        assert conn.execute("SELECT pgfanout.switch_log()").fetchone()[0] == 2
        writer.execute("INSERT INTO public.accounts VALUES (2, 2)")
        writer.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        writer.execute("SELECT count(*) FROM public.customers")  # its snapshot is older than the next switch
        conn.execute("TRUNCATE pgfanout.log_1")  # as the agent would, once log_1 is published
        assert conn.execute("SELECT pgfanout.switch_log()").fetchone()[0] == 1
        writer.execute("INSERT INTO public.accounts VALUES (3, 3)")
        writer.execute("COMMIT")
        tables = [table for *_, table in log_rows(conn)]
    assert tables == ["pgfanout.log_2", "pgfanout.log_1"], "each write went into the table current at its commit"


@C_ONLY
def test_a_writer_follows_log_tables_dropped_and_created_again(pipeline):
    """The trigger keeps the log table it last wrote across transactions; a reinstall elsewhere (new tables,
    new OIDs, a new sequence) must be followed, not written into tables that no longer exist."""
    pipeline.prepare()
    with psycopg.connect(pipeline.primary_dsn, autocommit=True) as writer:
        writer.execute("INSERT INTO public.accounts VALUES (1, 1)")
        with pipeline.primary() as conn:
            before = conn.execute("SELECT 'pgfanout.log_1'::regclass::oid").fetchone()[0]
            capture.uninstall(conn)
        install(pipeline, "c")
        writer.execute("INSERT INTO public.accounts VALUES (2, 2)")
        with pipeline.primary() as conn:
            after = conn.execute("SELECT 'pgfanout.log_1'::regclass::oid").fetchone()[0]
            assert after != before
            assert ids_logged(conn) == [("I", "2")]
            assert conn.execute("SELECT seq FROM pgfanout.log").fetchall() == [(1,)], "the new sequence"


@C_ONLY
def test_log_rows_are_indexed_and_filled_by_column_name(pipeline):
    """The trigger writes log rows without the executor: every row must reach the txid index (amcheck),
    columns are matched by name wherever a log table has them, and a log table it cannot fill is a capture fault."""
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        # moves ordinal and changes to the end of every log table, as an older version's table might have them
        for column, type_ in (("ordinal", "integer"), ("changes", "bytea")):
            conn.execute(f"ALTER TABLE pgfanout.log DROP COLUMN {column}")
            conn.execute(f"ALTER TABLE pgfanout.log ADD COLUMN {column} {type_}")
        with conn.transaction():
            conn.execute("INSERT INTO public.accounts VALUES (1, 1)")
            for n in range(2, 7):  # past 256 kB: written early, and toasted
                conn.execute("INSERT INTO public.customers (id, name) VALUES (%s, repeat('x', 100000))", (n,))
        conn.execute("INSERT INTO public.accounts VALUES (7, 7)")
        txids = [t for (t,) in conn.execute("SELECT DISTINCT txid FROM pgfanout.log_1")]
        conn.execute("SELECT bt_index_check('pgfanout.log_1_txid', true)")  # every heap row is in the index
        conn.execute("SET enable_seqscan = off")
        by_index = sum(conn.execute("SELECT count(*) FROM pgfanout.log_1 WHERE txid = %s", (t,)).fetchone()[0] for t in txids)
        conn.execute("RESET enable_seqscan")
        assert len(txids) == 2 and by_index == len(log_rows(conn))
        assert [int(i) for _, i in ids_logged(conn)] == [1, *range(2, 7), 7]
        assert conn.execute("SELECT bool_and(seq IS NOT NULL AND table_id = 0 AND new_row IS NULL) FROM pgfanout.log").fetchone()[
            0
        ]

        conn.execute("TRUNCATE pgfanout.log_1, pgfanout.log_2")  # SET NOT NULL below checks the rows
        conn.execute("CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'")
        # a log table this library cannot fill is a capture fault: the write goes on, the agent will stop
        for n, (change, undo, problem) in enumerate(
            (
                (
                    "ALTER TABLE pgfanout.log ADD COLUMN surprise integer",
                    "ALTER TABLE pgfanout.log DROP COLUMN surprise",
                    '"surprise" of log table "log_1" is unknown',
                ),
                (
                    "ALTER TABLE pgfanout.log ALTER COLUMN ordinal TYPE bigint",
                    "ALTER TABLE pgfanout.log ALTER COLUMN ordinal TYPE integer",
                    '"ordinal" .* another type',
                ),
                (
                    "ALTER TABLE pgfanout.log ALTER COLUMN new_row SET NOT NULL",
                    "ALTER TABLE pgfanout.log ALTER COLUMN new_row DROP NOT NULL",
                    '"new_row" .* NOT NULL',
                ),
                (
                    "ALTER TABLE pgfanout.log DROP COLUMN changes",
                    "ALTER TABLE pgfanout.log ADD COLUMN changes bytea",
                    '"changes" of log table "log_1" is missing',
                ),
                (
                    "CREATE TRIGGER audit BEFORE INSERT ON pgfanout.log_1 FOR EACH ROW EXECUTE FUNCTION public.noop()",
                    "DROP TRIGGER audit ON pgfanout.log_1",
                    '"log_1" has triggers, .* which capture would bypass',
                ),
                (
                    "ALTER TABLE pgfanout.log_1 ADD CONSTRAINT positive CHECK (seq > 0)",
                    "ALTER TABLE pgfanout.log_1 DROP CONSTRAINT positive",
                    '"log_1" has triggers, .* which capture would bypass',
                ),
            ),
            start=8,
        ):
            conn.execute(change)
            conn.execute("INSERT INTO public.accounts VALUES (%s, 8)", (n,))
            reason = conn.execute("DELETE FROM pgfanout.capture_fault RETURNING reason").fetchall()
            assert len(reason) == 1 and re.search(problem, reason[0][0]), reason
            assert log_rows(conn) == []
            conn.execute(undo)
        conn.execute("INSERT INTO public.accounts VALUES (20, 8)")
        assert ids_logged(conn) == [("I", "20")]


@C_ONLY
def test_writers_need_no_rights_on_the_pgfanout_schema(pipeline):
    pipeline.prepare()
    with scratch_role(pipeline, "writer") as role:
        with pipeline.primary() as conn:
            conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON public.accounts TO {}").format(sql.Identifier(role)))
        with psycopg.connect(pipeline.primary_dsn, user=role, autocommit=True) as writer:
            writer.execute("INSERT INTO public.accounts VALUES (1, 1)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                writer.execute("SELECT pgfanout.append_changes(0, 1, '{1}', '\\x00')")
        with pipeline.primary() as conn:
            assert ids_logged(conn) == [("I", "1")]


def test_capture_trigger_c_is_refused_where_it_cannot_be_used(pipeline):
    pipeline.prepare(install=False)
    source = pipeline.config.sources[pipeline.source]
    with (
        scratch_role(pipeline, "installer") as role,
        psycopg.connect(pipeline.primary_dsn, user=role, autocommit=True) as installer,
        pytest.raises(CaptureError, match="capture_trigger is c, but the library pgfanout_capture"),
    ):
        capture.install_statements(installer, source.model_copy(update={"capture_trigger": "c"}))
