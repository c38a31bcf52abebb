"""Capture install/uninstall/dry-run, key detection, and what the triggers log."""

import subprocess
import sys

import pytest

from agent import capture
from devstack.sample import SAMPLE_TABLES
from pgfanout.core.errors import CaptureError
from tests.integration.pipeline import BOTH_TRIGGERS, logged


def source_with(pipeline, **settings):
    return pipeline.config.sources[pipeline.source].model_copy(update=settings)


def triggers(conn):
    return sorted(
        r[0]
        for r in conn.execute(  # on user tables: pgfanout.trace, capture's own, has one too
            "SELECT tgrelid::regclass::text || ':' || tgname FROM pg_trigger WHERE tgname LIKE 'pgfanout%' "
            "AND tgrelid::regclass::text NOT LIKE 'pgfanout.%'"
        )
    )


def schema_exists(conn):
    return conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgfanout'").fetchone()[0] == 1


def test_install_is_idempotent_and_uninstall_leaves_user_data(pipeline):
    pipeline.prepare(install=False)
    pipeline.seed()
    with pipeline.primary() as conn:
        before = conn.execute("SELECT count(*), sum(balance) FROM public.accounts").fetchone()
        capture.install(conn, pipeline.config.sources[pipeline.source])
        installed = triggers(conn)
        assert len(installed) == 2 * len(SAMPLE_TABLES)
        capture.install(conn, pipeline.config.sources[pipeline.source])
        assert triggers(conn) == installed
        capture.uninstall(conn)
        assert triggers(conn) == [] and not schema_exists(conn)
        assert conn.execute("SELECT count(*), sum(balance) FROM public.accounts").fetchone() == before
        conn.execute("UPDATE public.accounts SET balance = balance WHERE id = 1")  # writes still work
        capture.uninstall(conn)  # a second uninstall is harmless


def test_dry_run_prints_sql_and_changes_nothing(pipeline):
    pipeline.prepare(install=False)
    result = subprocess.run(
        [sys.executable, "-m", "pgfanout", "agent", "install", "--dry-run", "--config", str(pipeline.config_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert 'CREATE TRIGGER "pgfanout_capture" AFTER INSERT OR UPDATE OR DELETE ON "public"."orders"' in result.stdout
    assert "CREATE TABLE IF NOT EXISTS pgfanout.log" in result.stdout
    with pipeline.primary() as conn:
        assert not schema_exists(conn) and triggers(conn) == []


def test_keyless_and_missing_tables_are_refused_all_at_once(pipeline):
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE TABLE public.events (happened timestamptz, what text)")
        conn.execute("CREATE TABLE public.audit (line text)")
        with pytest.raises(CaptureError) as err:
            capture.install(
                conn, source_with(pipeline, tables=["public.orders", "public.events", "public.audit", "public.nowhere"])
            )
        message = str(err.value)
        assert "public.events, public.audit" in message and "public.nowhere" in message
        assert not schema_exists(conn), "a refused install must leave nothing behind"


def test_keyless_table_via_cli_gives_exit_code_and_no_traceback(pipeline, tmp_path):
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE TABLE public.events (what text)")
    data = dict(pipeline.data)
    data["sources"] = {pipeline.source: dict(pipeline.data["sources"][pipeline.source], tables=["public.events"])}
    from devstack.demo import write_config

    path = write_config(tmp_path / "keyless.yaml", data)
    result = subprocess.run(
        [sys.executable, "-m", "pgfanout", "agent", "install", "--config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "without a primary key" in result.stderr and "public.events" in result.stderr


def test_install_writes_into_the_current_log_table_and_moves_rows_an_older_version_left(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("UPDATE pgfanout.agent_state SET current_log = 2")  # as the agent leaves it after a switch
        conn.execute("INSERT INTO pgfanout.log (table_id, op) VALUES (1, 'T')")  # where older versions logged
        capture.install(conn, pipeline.config.sources[pipeline.source])
        conn.execute("INSERT INTO public.accounts VALUES (1, 10)")
        rows = [(change[3], change[0]) for change in logged(conn, "tableoid::regclass::text")]
    assert rows == [("pgfanout.log_1", "T"), ("pgfanout.log_2", "I")]


@BOTH_TRIGGERS
def test_triggers_log_every_operation_with_old_keys(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("INSERT INTO public.accounts VALUES (1, 10), (2, 20)")
        conn.execute("UPDATE public.accounts SET balance = 11 WHERE id = 1")
        conn.execute("UPDATE public.accounts SET id = 3 WHERE id = 2")
        conn.execute("DELETE FROM public.accounts WHERE id = 1")
        conn.execute("TRUNCATE public.accounts")
        rows = logged(conn)
    assert rows == [
        ("I", ["1", "10.00"], None),
        ("I", ["2", "20.00"], None),
        ("U", ["1", "11.00"], None),
        ("U", ["3", "20.00"], ["2"]),
        ("D", None, ["1"]),
        ("T", None, None),
    ]


@BOTH_TRIGGERS
def test_captured_text_ignores_the_writers_session_settings(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        conn.execute("SET extra_float_digits = -3")
        conn.execute("INSERT INTO public.customers VALUES (1, 'x', NULL, '2026-03-04 05:06:07.123456+00')")
        new_row = logged(conn)[0][1]
    assert new_row[3] == "2026-03-04 05:06:07.123456+00"


def test_schema_wildcard_with_exclusions(pipeline):
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE SCHEMA other")
        conn.execute("CREATE TABLE other.skipped (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE public.extra (id int PRIMARY KEY)")
        capture.install(conn, source_with(pipeline, tables=["public.*"], exclude=["public.accounts"]))
        published = sorted(
            f"{s}.{t}"
            for s, t in conn.execute("SELECT schema_name, table_name FROM pgfanout.tables WHERE schema_name <> 'pgfanout'")
        )
    assert published == sorted(set(SAMPLE_TABLES) - {"public.accounts"} | {"public.extra"})


@BOTH_TRIGGERS
def test_a_configured_unique_not_null_key_stands_in_for_a_primary_key(pipeline):
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE TABLE public.events (seen timestamptz, code text NOT NULL, zone int NOT NULL, note text)")
        conn.execute("CREATE UNIQUE INDEX ON public.events (zone, code)")
        conn.execute("CREATE TABLE public.loose (code text, note text)")
        conn.execute("CREATE UNIQUE INDEX ON public.loose (code)")
        with pytest.raises(CaptureError, match=r"public.loose \(columns code allow NULL\)"):
            capture.install(
                conn,
                source_with(
                    pipeline,
                    tables=["public.events", "public.loose"],
                    keys={"public.events": ["code", "zone"], "public.loose": ["code"]},
                ),
            )
        capture.install(conn, source_with(pipeline, tables=["public.events"], keys={"public.events": ["code", "zone"]}))
        conn.execute("INSERT INTO public.events VALUES (now(), 'a', 1, 'x')")
        conn.execute("UPDATE public.events SET code = 'b' WHERE code = 'a'")
        rows = [(op, old_key) for op, _, old_key in logged(conn)]
    assert rows == [("I", None), ("U", ["a", "1"])]


def test_columns_of_server_bound_types_are_refused_at_install(pipeline):
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE DOMAIN public.table_ref AS regclass")
        conn.execute(
            "CREATE TABLE public.objects (id int PRIMARY KEY, owner regclass, refs public.table_ref[], fine oid, at tid)"
        )
        with pytest.raises(CaptureError) as err:
            capture.install(conn, source_with(pipeline, tables=["public.orders", "public.objects"]))
        message = str(err.value)
        assert "public.objects.owner (regclass; regclass: an object id" in message
        assert "public.objects.refs (public.table_ref[]; regclass" in message  # through an array of a domain
        assert "public.objects.at (tid; tid: a physical row address" in message
        assert "fine" not in message
        assert not schema_exists(conn)


def test_adding_a_column_to_a_table_with_user_defined_types_is_followed(pipeline):
    """The layout's type names must not depend on the installer's search_path (format_type qualifies
    only types not on it), or the ALTER TABLE event trigger sees `mood` become `public.mood` and refuses."""
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE TYPE public.mood AS ENUM ('sad', 'happy')")
        conn.execute("CREATE TABLE public.moods (id int PRIMARY KEY, m public.mood)")
        capture.install(conn, source_with(pipeline, tables=["public.moods"]))
        conn.execute("ALTER TABLE public.moods ADD COLUMN note text")
        layouts = conn.execute("SELECT columns, column_types FROM pgfanout.tables ORDER BY table_id").fetchall()
    assert layouts[-1] == (["id", "m", "note"], ["integer", "public.mood", "text"])
