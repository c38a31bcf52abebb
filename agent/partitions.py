"""Partitioned tables and inheritance: what capture publishes of them, and what it refuses.

A published partitioned table is replicated as one table under its own name, whatever partitions
hold its rows: replicas need not share the primary's partitioning (a reporting copy may keep the
years the primary detaches, or be partitioned otherwise), and partitions come and go on the primary
without touching the stream. Rows that arrive or leave with a partition (ATTACH, DETACH), and the
rows of a partition emptied alone (TRUNCATE), are published as inserts and deletes of the table;
agent/sql/partitions.sql follows them.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from pgfanout.core import names


def _tables(conn: psycopg.Connection, oids_query: str, oid: int) -> tuple[str, ...]:
    """The canonical names of the relations ``oids_query`` (taking %(oid)s) selects as ``relid``."""
    return tuple(
        names.qualified(schema_name, table_name)
        for schema_name, table_name in conn.execute(
            f"SELECT n.nspname, c.relname FROM ({oids_query}) r JOIN pg_class c ON c.oid = r.relid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2",
            {"oid": oid},
        )
    )


def leaves(conn: psycopg.Connection, oid: int) -> tuple[str, ...]:
    """The partitions of a partitioned table that hold rows (at every level)."""
    return _tables(conn, "SELECT relid FROM pg_partition_tree(%(oid)s::oid) WHERE isleaf", oid)


def problems(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """Tables capture could not follow: with inheritance children, or partitions published beside an ancestor."""
    found = []
    for table in tables:
        oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
        children = _tables(
            conn,
            "SELECT i.inhrelid AS relid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %(oid)s::oid AND NOT c.relispartition",
            oid,
        )
        if children:
            found.append(
                f"{table} has inheritance children ({', '.join(children)}), whose rows its triggers never "
                "see; publish the children as tables of their own instead, or make it a partitioned table"
            )
        ancestors = _tables(conn, "SELECT relid FROM pg_partition_ancestors(%(oid)s::oid) WHERE relid <> %(oid)s::oid", oid)
        published = [a for a in ancestors if a in tables]
        if published:
            found.append(
                f"{table} is a partition of {published[0]}, which is published too: its rows are published "
                f"as rows of {published[0]}; leave {table} out"
            )
    return found


def publish_statements(partitioned: list[str]) -> list[sql.Composable]:
    """Record the partitions of these published partitioned tables and watch their TRUNCATEs (partitions.sql)."""
    return [sql.SQL("SELECT pgfanout.publish_partitions({}::regclass)").format(sql.Literal(table)) for table in partitioned]


def plan_lines(name: str, partitions: tuple[str, ...], superuser: bool) -> list[str]:
    """What install does with a partitioned table, for the operator."""
    lines = [
        f"{name} is partitioned ({len(partitions)} partitions with rows: {', '.join(partitions) or 'none yet'}): "
        f"the rows of every partition are published as rows of {name}, and replicas hold one table {name}"
    ]
    if superuser:
        lines.append(
            f"  partitions created, attached or detached later are followed; a partition of {name} "
            "cannot be dropped before it is detached"
        )
    else:
        lines.append(
            "  not a superuser: no event triggers, so the rows of partitions attached or detached later "
            "are not published; install as a superuser, or run agent install again and resync after each"
        )
    return lines
