"""Replicas are read-only for everyone but the applier."""

import psycopg
import pytest

from devstack.sample import SAMPLE_TABLES, run_workload


def test_local_writes_to_a_replica_are_refused_while_the_applier_still_writes(pipeline):
    pipeline.prepare()
    pipeline.start()
    pipeline.seed()
    # tables are protected when they first appear in the stream (until `subscriber init` protects them up front)
    run_workload(pipeline.primary_dsn, seconds=20, writers=2, max_transactions=100, seed_value=5)
    pipeline.wait_caught_up(timeout=60)
    sub = pipeline.subscribers[0]
    with pipeline.replica(sub) as conn:
        for statement in (
            "INSERT INTO public.accounts VALUES (999, 1)",
            "UPDATE public.accounts SET balance = 0 WHERE id = 1",
            "DELETE FROM public.accounts WHERE id = 1",
            "TRUNCATE public.accounts CASCADE",
        ):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as err:
                conn.execute(statement)
            assert f"public.accounts is a pgfanout replica of source {pipeline.source}" in str(err.value)
        protected = conn.execute(
            "SELECT count(DISTINCT tgrelid) FROM pg_trigger WHERE tgname LIKE 'pgfanout_replica_deny_writes%'"
        ).fetchone()[0]
    assert protected == len(SAMPLE_TABLES)
    with pipeline.primary() as conn:
        conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id = 1")
    pipeline.wait_caught_up(timeout=60)
    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)
