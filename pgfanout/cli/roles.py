"""`pgfanout roles`: the CREATE ROLE and GRANT script of each role that runs pgfanout, and nothing more.

- on a source's primary, the agent's role: the `pgfanout` schema's state, and SELECT on the published tables
  (`subscriber init` and `compare` copy and read them through the source's connection); nothing on any
  other table. The installing role (`agent install`) stays the tables' owner (and a superuser for the C
  trigger and the event triggers);
- on a subscriber's replica, the applier's role: its state schema, the replicated tables' rows and
  triggers, and `session_replication_role` (PostgreSQL 15+: GRANT SET ON PARAMETER; no superuser).
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from agent.capture import agent_grants
from pgfanout.core.config import Config
from pgfanout.core.errors import ConfigError
from pgfanout.core.names import parse_table
from pgfanout.runtime.pg import connect
from pgfanout.runtime.primaries import current_primary
from subscriber.ddl import PUBLISHED_TABLES


def default_role(kind: str, name: str) -> str:
    return f"pgfanout_{kind}_{re.sub(r'[^a-z0-9_]', '_', name.lower())}"


def _database(conn: psycopg.Connection) -> sql.Identifier:
    return sql.Identifier(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]


def _server_version(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


def _published(conn: psycopg.Connection) -> list[tuple[str, str]]:
    if conn.execute("SELECT to_regclass('pgfanout.tables')").fetchone()[0] is None:  # type: ignore[index]
        raise ConfigError("command line", ["capture is not installed on the source: run `pgfanout agent install` first"])
    return sorted({(s, t) for s, t, _, _ in conn.execute(PUBLISHED_TABLES)})


def agent_script(conn: psycopg.Connection, role: str) -> list[sql.Composable]:
    """The agent's role on the primary (run after `agent install`, and again after a reinstall)."""
    who = sql.Identifier(role)
    tables = _published(conn)
    statements: list[sql.Composable] = [
        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(who),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(_database(conn), who),
        *agent_grants(role),
    ]
    for schema_name in sorted({s for s, _ in tables}):
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema_name), who))
    for schema_name, table_name in tables:
        statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(schema_name, table_name), who))
    return statements


def applier_script(replica: psycopg.Connection, tables: list[tuple[str, str]], role: str) -> list[sql.Composable]:
    """The subscriber's role on its replica: the replicated tables must exist (their owner keeps them)."""
    who = sql.Identifier(role)
    if _server_version(replica) < 15:
        raise ConfigError(
            "command line",
            ["the replica runs PostgreSQL before 15: its applier needs a superuser for session_replication_role"],
        )
    statements: list[sql.Composable] = [
        sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(who),
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(_database(replica), who),
        sql.SQL("CREATE SCHEMA IF NOT EXISTS pgfanout_replica AUTHORIZATION {}").format(who),
        sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(who),
    ]
    for schema_name in sorted({s for s, _ in tables}):
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema_name), who))
    for schema_name, table_name in tables:
        statements.append(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER ON {} TO {}").format(
                sql.Identifier(schema_name, table_name), who
            )
        )
    return statements


def replicated_tables(config: Config, subscriber: str, published: list[tuple[str, str]]) -> list[tuple[str, str]]:
    share = config.share_of(config.subscribers[subscriber].route)
    if share is None:
        return published
    wanted = {parse_table(table) for table in share}
    return [table for table in published if table in wanted]


def run(config: Config, source: str | None, subscriber: str | None, role: str | None) -> int:
    if (source is None) == (subscriber is None):
        raise ConfigError("command line", ["name one of --source or --subscriber"])
    if source is not None:
        if source not in config.sources:
            raise ConfigError("command line", [f"no source named {source!r}"])
        with connect(current_primary(config, source)[1], "pgfanout-roles") as conn:
            statements = agent_script(conn, role or default_role("agent", source))
            text = _render(conn, statements, f"the agent of source {source}, on its primary; run after `agent install`")
    else:
        assert subscriber is not None
        if subscriber not in config.subscribers:
            raise ConfigError("command line", [f"no subscriber named {subscriber!r}"])
        origin = config.origin_source(config.subscribers[subscriber].route)
        with connect(current_primary(config, origin)[1], "pgfanout-roles") as primary:
            tables = replicated_tables(config, subscriber, _published(primary))
        with connect(config.subscribers[subscriber], "pgfanout-roles") as replica:
            statements = applier_script(replica, tables, role or default_role("applier", subscriber))
            text = _render(
                replica,
                statements,
                f"the applier of subscriber {subscriber}, on its replica; the replicated tables stay their owner's, "
                "so schema changes from the source need that owner's rights: make the applier their owner "
                "(ALTER TABLE ... OWNER TO) to follow them",
            )
    print(text, end="")
    return 0


def _render(conn: psycopg.Connection, statements: list[sql.Composable], what: str) -> str:
    return f"-- {what}\n-- its password: ALTER ROLE ... PASSWORD, set from your secret store, never here\n" + "".join(
        statement.as_string(conn) + ";\n" for statement in statements
    )
