"""The pipeline run by the roles `pgfanout roles` prints, none of them a superuser (PostgreSQL 15+)."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from devstack.sample import run_workload

pytestmark = pytest.mark.integration


def as_role(dsn: str, role: str) -> str:
    return dsn.replace("user=postgres", f"user={role}")


def test_the_pipeline_runs_with_roles_that_have_only_what_they_need(pipeline):
    name, stack = pipeline.name, pipeline.stack
    suffix = secrets.token_hex(3)
    agent = f"agent_{suffix}"
    appliers = {subscriber: f"applier{i}_{suffix}" for i, subscriber in enumerate(pipeline.subscribers)}
    pipeline.prepare()  # capture installed by its installing role, a superuser (the C trigger, event triggers)
    admin_primary = pipeline.primary_dsn
    admin_replicas = {s: pipeline.config.subscribers[s].dsn for s in pipeline.subscribers}
    with psycopg.connect(admin_primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.secrets (id integer PRIMARY KEY, secret text)")
        conn.execute("INSERT INTO public.secrets VALUES (1, 'not for pgfanout')")
    pipeline.seed()

    script = pipeline.command("roles", "--source", name, "--role", agent)
    assert script.returncode == 0, script.stderr
    assert 'GRANT SELECT ON "public"."customers"' in script.stdout and "secrets" not in script.stdout
    with psycopg.connect(admin_primary, autocommit=True) as conn:
        conn.execute(script.stdout)
    for subscriber, role in appliers.items():
        script = pipeline.command("roles", "--subscriber", subscriber, "--role", role)
        assert script.returncode == 0, script.stderr
        assert "GRANT SET ON PARAMETER session_replication_role" in script.stdout
        with psycopg.connect(admin_replicas[subscriber], autocommit=True) as conn:
            conn.execute(script.stdout)

    data = pipeline.data
    data["sources"][name]["dsn"] = as_role(admin_primary, agent)
    for subscriber, role in appliers.items():
        data["subscribers"][subscriber]["dsn"] = as_role(admin_replicas[subscriber], role)
    pipeline.reconfigure(data)
    pipeline.start()
    for role in ("agent", *pipeline.subscribers):
        pipeline.wait_for_log(role, "ready")
    run_workload(admin_primary, seconds=4, writers=2)
    pipeline.wait_caught_up()
    equal, report = pipeline.proof()
    assert equal, report

    with psycopg.connect(stack.postgres("primary").dsn(), autocommit=True) as conn:
        assert not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (agent,)).fetchone()[0]
    with psycopg.connect(stack.postgres("replica").dsn(), autocommit=True) as conn:
        superusers = conn.execute("SELECT bool_or(rolsuper) FROM pg_roles WHERE rolname = ANY(%s)", (list(appliers.values()),))
        assert superusers.fetchone()[0] is False
    # the agent's role reads what it publishes, and nothing else
    with psycopg.connect(as_role(admin_primary, agent), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM public.customers").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM public.secrets")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.customers (id, name) VALUES (-1, 'not the agent')")
    # an application role with every right on a replicated table still cannot write it
    first = pipeline.subscribers[0]
    with psycopg.connect(admin_replicas[first], autocommit=True) as conn:
        conn.execute(f"CREATE ROLE app_{suffix} LOGIN")
        conn.execute(f"GRANT ALL ON public.customers TO app_{suffix}")
    with psycopg.connect(as_role(admin_replicas[first], f"app_{suffix}"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="only the pgfanout applier writes to it"):
            conn.execute("INSERT INTO public.customers (id, name) VALUES (-1, 'local')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET session_replication_role = replica")
