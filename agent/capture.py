"""Installing and removing capture on the primary.

Capture is a log in the ``pgfanout`` schema (agent/sql/schema.sql) fed by a trigger on each
published table: the C trigger (agent/capture_c) where its library is installed, else a PL/pgSQL
function per table layout made from one template (agent/sql/capture_function.sql). Either writes
each row change as the columns' text, with the settings that shape those texts pinned, so that
the replica's input functions read them back exactly. Functions are SECURITY DEFINER so
application roles need no rights on the pgfanout schema. Event triggers follow DDL on published
tables where the installing role is a superuser (agent/sql/follow_ddl.sql); partitioned tables
are followed by agent/sql/partitions.sql.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from agent import ctrigger, partitions
from agent.logtables import LOG_TABLES, SCHEMA, current_log, log_table
from agent.sqlfiles import pin_all_settings, script
from agent.tables import (
    PublishedTable,
    Subscriptions,
    describe_tables,
    filtered_columns,
    own_tables,
    patterns,
    subscription_problems,
)
from pgfanout.core import names
from pgfanout.core.config import Source
from pgfanout.core.errors import CaptureError
from pgfanout.core.scripts import is_own

log = logging.getLogger(__name__)
TRIGGER = "pgfanout_capture"


def table_statements(
    table: PublishedTable, log_number: int, c_trigger: bool = False, follow_schema: bool = False
) -> list[sql.Composable]:
    """A table's layout row, its capture function (PL/pgSQL) and its triggers. ``follow_schema``: the event
    triggers put schema changes in the stream, and the layout records the table's definition for them."""
    target = sql.Identifier(table.schema_name, table.table_name)
    function = sql.Identifier(SCHEMA, ctrigger.FUNCTION if c_trigger else f"capture_{table.table_id}")
    settings = sql.Literal(ctrigger.settings_pairs(table.settings))
    statements: list[sql.Composable] = [
        sql.SQL(
            "INSERT INTO pgfanout.tables (table_id, schema_name, table_name, columns, key_columns, column_types, "
            "missing_values, old_columns, settings) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}::text[]) "
            "ON CONFLICT (table_id) DO NOTHING"
        ).format(
            sql.Literal(table.table_id),
            sql.Literal(table.schema_name),
            sql.Literal(table.table_name),
            sql.Literal(list(table.columns)),
            sql.Literal(list(table.key_columns)),
            sql.Literal(list(table.column_types)),
            sql.Literal(json.dumps(dict(table.missing_values))),
            sql.Literal(list(table.old_columns)),
            settings,
        ),
        # the table it follows through renames, and its definition as replicas build it, as of now
        sql.SQL("UPDATE pgfanout.tables SET relid = {0}::regclass, definition = {1} WHERE table_id = {2}").format(
            sql.Literal(target.as_string(None)),
            sql.SQL("pgfanout.table_definition({}::regclass)" if follow_schema else "NULL").format(
                sql.Literal(target.as_string(None))
            ),
            sql.Literal(table.table_id),
        ),
    ]
    if not c_trigger:
        statements.append(
            sql.SQL("SELECT pgfanout.create_capture_function({}, {}, {}::text[], {}::text[], {}::text[], {}, {}::text[])").format(
                sql.Literal(function.as_string(None)),
                sql.Literal(table.table_id),
                sql.Literal(list(table.columns)),
                sql.Literal(list(table.key_columns)),
                sql.Literal(list(table.old_columns)),
                sql.Literal(log_table(log_number).as_string(None)),
                settings,
            )
        )
    triggers = [(TRIGGER, "INSERT OR UPDATE OR DELETE", "ROW"), (TRIGGER + "_truncate", "TRUNCATE", "STATEMENT")]
    if is_own(table.schema_name, table.table_name):
        triggers = [(TRIGGER, "INSERT", "ROW")]  # markers and scripts are published once; deleting old ones publishes nothing
    for name, events, level in triggers:
        statements += [
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name), target),
            sql.SQL("CREATE TRIGGER {} AFTER {} ON {} FOR EACH {} EXECUTE FUNCTION {}()").format(
                sql.Identifier(name), sql.SQL(events), target, sql.SQL(level), function
            ),
        ]
    return statements


@dataclass(frozen=True)
class InstallPlan:
    statements: list[sql.Composable]
    notes: list[str]  # what install does beyond the obvious, for the operator


def published_patterns(source: Source) -> list[sql.Composable]:
    """What tables created later are published by: the source's schema.* and schema.prefix* entries, less
    its exclude list (agent/sql/new_tables.sql)."""
    statements: list[sql.Composable] = [
        sql.SQL("DELETE FROM pgfanout.publish_pattern"),
        sql.SQL("DELETE FROM pgfanout.publish_exclude"),
    ]
    for schema_name, prefix in patterns(source.tables):
        statements.append(
            sql.SQL("INSERT INTO pgfanout.publish_pattern (schema_name, prefix) VALUES ({}, {})").format(
                sql.Literal(schema_name), sql.Literal(prefix)
            )
        )
    for entry in source.exclude or ():
        schema_name, table_name = names.parse_table(entry)
        statements.append(
            sql.SQL("INSERT INTO pgfanout.publish_exclude (schema_name, table_name) VALUES ({}, {})").format(
                sql.Literal(schema_name), sql.Literal(table_name)
            )
        )
    return statements


def plan_install(
    conn: psycopg.Connection, source: Source, subscriptions: Subscriptions | None = None, first_table_id: int = 1
) -> InstallPlan:
    subscriptions = subscriptions or {}
    tables = describe_tables(conn, source.tables, source.exclude, source.keys, filtered_columns(subscriptions), first_table_id)
    problems = subscription_problems(tables, subscriptions)
    if problems:
        raise CaptureError("the routes' subscriptions do not fit the published tables: " + "; ".join(problems))
    log_number = current_log(conn)
    c_trigger = ctrigger.use_c_trigger(conn, source.capture_trigger)
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
    statements: list[sql.Composable] = [
        script("schema"),
        script("definitions"),
        script("capture_function"),
        script("capture_c"),
        script("partitions"),
        *(ctrigger.pinned_settings_function(), *pin_all_settings('pgfanout.log_rows(regclass, regclass, "char")')),
        *([script("c_functions")] if c_trigger else []),
    ]
    for table in [*tables, *own_tables(conn, tables, first_table_id)]:
        statements += table_statements(table, log_number, c_trigger, follow_schema=superuser)
    partitioned = [t for t in tables if t.partitions is not None]
    statements += partitions.publish_statements([t.qualified for t in partitioned])
    notes = [line for t in partitioned for line in partitions.plan_lines(t.qualified, t.partitions or (), superuser)]
    if superuser:
        statements += [
            script("new_tables"),
            *published_patterns(source),
            script("follow_ddl"),
            *pin_all_settings("pgfanout.follow_alter_table()"),
        ]
    else:
        notes.append(
            "not a superuser: no event triggers, so ALTER TABLE on published tables is not followed; "
            "run `pgfanout agent install` again after each one"
        )
    statements.append(sql.SQL("SELECT pgfanout.point_capture_at({}::smallint)").format(sql.Literal(log_number)))
    return InstallPlan(statements, notes)


def install_statements(
    conn: psycopg.Connection, source: Source, subscriptions: Subscriptions | None = None
) -> list[sql.Composable]:
    return plan_install(conn, source, subscriptions).statements


def render(conn: psycopg.Connection, plan: InstallPlan) -> str:
    """The plan as an SQL script: its notes as comments, then its statements."""
    notes = "".join(f"-- {line}\n" for line in plan.notes)
    return notes + ("\n" if notes else "") + "".join(s.as_string(conn).strip() + ";\n\n" for s in plan.statements)


def install(conn: psycopg.Connection, source: Source, subscriptions: Subscriptions | None = None) -> list[str]:
    """Install capture in one transaction; running it again changes nothing. Returns the plan's notes."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgfanout.install'))")
        if installed(conn):
            handed_to = conn.execute("SELECT to_jsonb(s) ->> 'handed_to' FROM pgfanout.agent_state s").fetchone()
            if handed_to and handed_to[0]:
                raise CaptureError(
                    f"this database handed the primary role to subscriber {handed_to[0]} (`pgfanout switchover` or "
                    "`failover`): it is not the primary, and capture here stays as it is. To install on the primary, "
                    "name its database in sources.NAME.dsn"
                )
        plan = plan_install(conn, source, subscriptions)
        for statement in plan.statements:
            conn.execute(statement)
    for note in plan.notes:
        log.info("%s", note)
    log.info("capture installed")
    return plan.notes


def agent_grants(role: str) -> list[sql.Composable]:
    """What a role running the agent, not the installer, needs (docs: README, Privileges)."""
    who = sql.Identifier(role)
    return [
        sql.SQL("GRANT USAGE ON SCHEMA pgfanout TO {}").format(who),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgfanout TO {}").format(who),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA pgfanout TO {}").format(who),
        sql.SQL("GRANT TRUNCATE ON {} TO {}").format(sql.SQL(", ").join(log_table(n) for n in LOG_TABLES), who),
        sql.SQL("GRANT EXECUTE ON FUNCTION pgfanout.switch_log() TO {}").format(who),
    ]


def uninstall(conn: psycopg.Connection) -> None:
    """Remove triggers, functions and the pgfanout schema; user tables and their rows stay as they are."""
    with conn.transaction():
        if conn.execute("SELECT to_regclass('pgfanout.tables')").fetchone()[0] is None:
            log.info("capture is not installed; nothing to remove")
            return
        for schema_name, table_name in conn.execute("SELECT schema_name, table_name FROM pgfanout.tables").fetchall():
            if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema_name, table_name).as_string(conn),)).fetchone()[0]:
                target = sql.Identifier(schema_name, table_name)
                for trigger in (TRIGGER, TRIGGER + "_truncate"):
                    conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), target))
        conn.execute("DROP SCHEMA pgfanout CASCADE")
    log.info("capture removed")


def installed(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('pgfanout.agent_state') IS NOT NULL").fetchone()[0]
