"""Capture install/uninstall/dry-run, key detection, and what the triggers log."""

import subprocess
import sys

import pytest

from agent import capture
from pgfanout.errors import CaptureError
from pgfanout.sample import SAMPLE_TABLES


def triggers(conn):
    return sorted(r[0] for r in conn.execute(
        "SELECT tgrelid::regclass::text || ':' || tgname FROM pg_trigger WHERE tgname LIKE 'pgfanout%'"))


def schema_exists(conn):
    return conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgfanout'").fetchone()[0] == 1


def test_install_is_idempotent_and_uninstall_leaves_user_data(pipeline):
    pipeline.prepare(install=False)
    pipeline.seed()
    with pipeline.primary() as conn:
        before = conn.execute("SELECT count(*), sum(balance) FROM public.accounts").fetchone()
        capture.install(conn, SAMPLE_TABLES)
        installed = triggers(conn)
        assert len(installed) == 2 * len(SAMPLE_TABLES)
        capture.install(conn, SAMPLE_TABLES)
        assert triggers(conn) == installed
        capture.uninstall(conn)
        assert triggers(conn) == [] and not schema_exists(conn)
        assert conn.execute("SELECT count(*), sum(balance) FROM public.accounts").fetchone() == before
        conn.execute("UPDATE public.accounts SET balance = balance WHERE id = 1")  # writes still work
        capture.uninstall(conn)  # a second uninstall is harmless


def test_dry_run_prints_sql_and_changes_nothing(pipeline):
    pipeline.prepare(install=False)
    result = subprocess.run([sys.executable, "-m", "pgfanout", "agent", "install", "--dry-run",
                             "--config", str(pipeline.config_path)], capture_output=True, text=True)
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
            capture.install(conn, ["public.orders", "public.events", "public.audit", "public.nowhere"])
        message = str(err.value)
        assert "public.events, public.audit" in message and "public.nowhere" in message
        assert not schema_exists(conn), "a refused install must leave nothing behind"


def test_keyless_table_via_cli_gives_exit_code_and_no_traceback(pipeline, tmp_path):
    pipeline.prepare(install=False)
    with pipeline.primary() as conn:
        conn.execute("CREATE TABLE public.events (what text)")
    data = dict(pipeline.data)
    data["sources"] = {pipeline.source: dict(pipeline.data["sources"][pipeline.source], tables=["public.events"])}
    from pgfanout.demo import write_config
    path = write_config(tmp_path / "keyless.yaml", data)
    result = subprocess.run([sys.executable, "-m", "pgfanout", "agent", "install", "--config", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "without a primary key" in result.stderr and "public.events" in result.stderr


def test_triggers_log_every_operation_with_old_keys(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("INSERT INTO public.accounts VALUES (1, 10), (2, 20)")
        conn.execute("UPDATE public.accounts SET balance = 11 WHERE id = 1")
        conn.execute("UPDATE public.accounts SET id = 3 WHERE id = 2")
        conn.execute("DELETE FROM public.accounts WHERE id = 1")
        conn.execute("TRUNCATE public.accounts")
        rows = conn.execute("SELECT op, new_row, old_key FROM pgfanout.log ORDER BY seq").fetchall()
    assert rows == [
        ("I", ["1", "10.00"], None),
        ("I", ["2", "20.00"], None),
        ("U", ["1", "11.00"], None),
        ("U", ["3", "20.00"], ["2"]),
        ("D", None, ["1"]),
        ("T", None, None),
    ]


def test_captured_text_ignores_the_writers_session_settings(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        conn.execute("SET extra_float_digits = -3")
        conn.execute("INSERT INTO public.customers VALUES (1, 'x', NULL, '2026-03-04 05:06:07.123456+00')")
        logged = conn.execute("SELECT new_row FROM pgfanout.log").fetchone()[0]
    assert logged[3] == "2026-03-04 05:06:07.123456+00"
