"""The log is emptied by switching tables and TRUNCATE, never under a transaction that still writes into it."""

import threading
import time

import psycopg
import pytest

from devstack.demo import wait_caught_up
from devstack.sample import run_workload
from pgfanout.cli.status import gather, lines
from tests.integration.pipeline import logged, read_topic, transactions


def log_rows(pipeline) -> dict[int, int]:
    with pipeline.primary() as conn:
        return {n: conn.execute(f"SELECT count(*) FROM pgfanout.log_{n}").fetchone()[0] for n in (1, 2)}


def current_log(pipeline) -> int:
    with pipeline.primary() as conn:
        return conn.execute("SELECT current_log FROM pgfanout.agent_state").fetchone()[0]


# The PL/pgSQL triggers write into the log as the transaction goes; the C trigger only at commit (or past
# 256 kB), so an open transaction holds a log table only with the former: test_c_trigger.py covers the latter.
@pytest.mark.parametrize("pipeline", ["plpgsql"], indirect=True)
def test_log_tables_switch_and_empty_without_losing_an_open_transaction(pipeline):
    pipeline.data["sources"][pipeline.source]["log_switch_bytes"] = 8192  # switch at every chance
    pipeline.reconfigure(pipeline.data)
    pipeline.prepare()
    pipeline.seed()
    pipeline.start("agent")
    pipeline.wait_for_log("agent", "ready:")

    with psycopg.connect(pipeline.primary_dsn, autocommit=True) as late:
        late.execute("BEGIN")
        late_xid = late.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]
        # rows the workload never touches: `late` must block nobody, only the emptying of its log table
        late.execute("INSERT INTO public.accounts VALUES (9001, 5)")
        with pipeline.primary() as conn:  # the log table it wrote into (reading the log would lock both)
            held = conn.execute(
                "SELECT relation::regclass::text FROM pg_locks WHERE pid = %s AND mode = "
                "'RowExclusiveLock' AND relation::regclass::text ~ '^pgfanout\\.log_[12]$'",
                (late.info.backend_pid,),
            ).fetchone()[0]
        first = run_workload(pipeline.primary_dsn, seconds=8, writers=2, seed_value=21, record_xids=True)
        assert first.committed > 100, "writers must not wait for the agent's log switching"
        current = current_log(pipeline)
        assert held != f"pgfanout.log_{current}", "the agent switched away from the full table"
        time.sleep(2)  # time for the agent to try emptying that table, which `late` still holds
        assert log_rows(pipeline)[3 - current] > 0, "a table an open transaction wrote into must not be emptied"
        assert current_log(pipeline) == current, "no switch back before the old table is empty"
        # the operator is told what holds the log, by the agent and by `pgfanout status`
        warning = pipeline.wait_for_log("agent", f"{held} cannot be emptied", timeout=10)
        assert f"pid {late.info.backend_pid} (idle in transaction" in warning
        status = "\n".join(lines(gather(pipeline.config)))
        assert f"{held} waiting to be emptied, held by pid {late.info.backend_pid} (idle in transaction" in status
        late.execute("INSERT INTO public.accounts VALUES (9002, -5)")
        late.execute("COMMIT")

    switched_again = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not switched_again.is_set():
            if current_log(pipeline) != current:
                switched_again.set()
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    second = run_workload(pipeline.primary_dsn, seconds=8, writers=2, seed_value=22, record_xids=True)
    watcher.join()
    assert switched_again.is_set(), "once `late` committed and was published, its table was emptied and reused"
    wait_caught_up(pipeline.config.model_copy(update={"subscribers": {}}), timeout=60)

    parts = transactions(read_topic(pipeline.config, pipeline.source))
    positions = [p["position"] for p in parts]
    assert positions == list(range(1, len(positions) + 1))
    published = [p["xid"] for p in parts]
    assert len(published) == len(set(published)), "a transaction was published twice"
    assert set(first.xids) | set(second.xids) | {late_xid} <= set(published), "a committed transaction was lost"
    late_part = next(p for p in parts if p["xid"] == late_xid)
    assert len(late_part["changes"]) == 2, "the transaction open across switches is published whole"
    assert pipeline.log("agent").count("log switched") >= 3
    assert "no longer held by an open transaction" in pipeline.log("agent")


def test_an_agent_role_with_only_the_documented_grants_switches_and_empties_the_log(pipeline):
    """The running agent is not the installer: it switches through pgfanout.switch_log(), which runs as the
    capture functions' owner, and needs no more than capture.agent_grants gives it."""
    from agent import capture
    from agent.agent import Agent

    role = "pgfanout_test_agent"
    pipeline.data["sources"][pipeline.source]["log_switch_bytes"] = 8192
    pipeline.reconfigure(pipeline.data)
    pipeline.prepare()
    pipeline.seed()
    with pipeline.primary() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        for statement in capture.agent_grants(role):
            conn.execute(statement)
    source = pipeline.config.sources[pipeline.source]
    restricted = pipeline.config.model_copy(
        update={"sources": {pipeline.source: source.model_copy(update={"dsn": source.dsn + f" user={role}"})}}
    )
    agent = Agent(restricted, pipeline.source)
    try:
        session = agent.connect()
        with session.conn.transaction():
            assert session.conn.execute("SELECT current_user").fetchone()[0] == role
        workload, result = pipeline.workload_in_background(seconds=6, writers=2, seed_value=31, record_xids=True)
        flips, last = 0, current_log(pipeline)
        deadline = time.monotonic() + 60
        while (workload.is_alive() or flips < 2) and time.monotonic() < deadline:
            agent.work()
            now = current_log(pipeline)
            flips, last = flips + (now != last), now
            time.sleep(agent.idle_seconds)
        workload.join()
        for _ in range(40):  # drain what the workload left
            agent.work()
            time.sleep(agent.idle_seconds)
    finally:
        agent.close()
        with pipeline.primary() as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    assert flips >= 2, "the restricted agent switched log tables, and emptied the old one before switching back"
    published = [p["xid"] for p in transactions(read_topic(pipeline.config, pipeline.source))]
    assert len(published) == len(set(published)) and set(result["stats"].xids) <= set(published)


@pytest.mark.parametrize("pipeline", ["c", "plpgsql"], indirect=True)
def test_switching_keeps_what_install_and_alter_table_wrote_into_the_capture_functions(pipeline):
    pipeline.prepare()
    with pipeline.primary() as conn:
        conn.execute("ALTER TABLE public.accounts ADD COLUMN note text")  # the event trigger rewrites its function
        settings_before = conn.execute(
            "SELECT proconfig FROM pg_proc WHERE proname LIKE 'capture\\_%' ORDER BY proname"
        ).fetchall()
        conn.execute("INSERT INTO public.accounts VALUES (1, 1, 'one')")
        assert conn.execute("SELECT pgfanout.switch_log()").fetchone()[0] == 2
        conn.execute("INSERT INTO public.accounts VALUES (2, 2, 'two')")
        conn.execute("INSERT INTO public.products VALUES ('S', 't', 1, NULL)")  # a function install wrote
        conn.execute("TRUNCATE pgfanout.log_1")  # as the agent would, once log_1 is published
        assert conn.execute("SELECT pgfanout.switch_log()").fetchone()[0] == 1
        conn.execute("INSERT INTO public.accounts VALUES (3, 3, 'three')")
        rows = [(table, new_row) for _, new_row, _, table in logged(conn, "tableoid::regclass::text")]
        assert (
            conn.execute("SELECT proconfig FROM pg_proc WHERE proname LIKE 'capture\\_%' ORDER BY proname").fetchall()
            == settings_before
        ), "each function keeps its settings"
    assert rows == [
        ("pgfanout.log_2", ["2", "2.00", "two"]),
        ("pgfanout.log_2", ["S", "t", "1.00", None]),
        ("pgfanout.log_1", ["3", "3.00", "three"]),
    ]
