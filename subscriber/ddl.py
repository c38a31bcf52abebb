"""Table definitions read from the source catalog, turned into DDL for the replica.

A replica table gets the source's columns (types, collations, NOT NULL, generated
columns), its primary key, unique and check constraints and its indexes. Foreign keys
are left out on purpose: the source enforces them, the applier runs with
``session_replication_role = replica`` where they are not checked, and they would
make a replicated TRUNCATE of a referenced table fail. Column defaults are left out
too: only the applier writes, always with every column.

Names are read with ``search_path = pg_catalog``, so every name that is not built in
comes back schema-qualified from ``format_type`` and ``pg_get_*def``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgfanout.core.errors import MaterializeError
from pgfanout.core.names import qualified
from pgfanout.core.schemachange import mentions

# The tables a source publishes now, from its primary's layouts: each name's latest layout, unless the table
# was dropped, or renamed away (no table of that name has a capture trigger), and not pgfanout's own.
PUBLISHED_TABLES = """
SELECT latest.schema_name, latest.table_name, latest.columns, latest.key_columns
FROM (SELECT DISTINCT ON (schema_name, table_name) * FROM pgfanout.tables WHERE schema_name <> 'pgfanout'
      ORDER BY schema_name, table_name, table_id DESC) latest
WHERE NOT coalesce((latest.definition->>'dropped_table')::boolean, false)
  AND EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_catalog.pg_trigger g ON g.tgrelid = c.oid AND g.tgname = 'pgfanout_capture'
              WHERE n.nspname = latest.schema_name AND c.relname = latest.table_name)
ORDER BY latest.table_id
"""


@dataclass(frozen=True)
class Column:
    name: str
    type_sql: str  # format_type(): qualified, with its modifiers
    not_null: bool
    collation: str | None  # qualified, only when it differs from the type's default
    generated: str | None  # the expression of a STORED generated column


@dataclass(frozen=True)
class UserType:
    oid: int
    qualified: str  # schema-qualified and quoted, as format_type writes it
    kind: str  # pg_type.typtype: e enum, d domain, c composite, r range, b base
    enum_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableDefinition:
    schema_name: str
    table_name: str
    columns: tuple[Column, ...]
    constraints: tuple[tuple[str, str], ...]  # (name, definition) of PRIMARY KEY, UNIQUE, CHECK, EXCLUDE
    indexes: tuple[tuple[str, str], ...]  # (name, CREATE INDEX statement) of indexes that back no constraint
    user_types: tuple[UserType, ...]
    is_partitioned: bool
    estimated_rows: int  # from the catalog's statistics; 0 when unknown
    size_bytes: int

    @property
    def qualified(self) -> str:
        return qualified(self.schema_name, self.table_name)

    @property
    def copied_columns(self) -> tuple[str, ...]:
        """Generated columns are computed by the replica itself, as by the source."""
        return tuple(c.name for c in self.columns if c.generated is None)

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema_name, self.table_name)


def project(definition: TableDefinition, kept: frozenset[str] | None) -> TableDefinition:
    """The definition with only the ``kept`` columns, for a route with a column list.

    Constraints, indexes and generated columns over a column left out are left out too.
    """
    if kept is None:
        return definition
    dropped = {c.name for c in definition.columns if c.name not in kept and c.generated is None}
    columns = tuple(
        c for c in definition.columns if c.name in kept or (c.generated is not None and not mentions(c.generated, dropped))
    )
    return TableDefinition(
        definition.schema_name,
        definition.table_name,
        columns,
        tuple(c for c in definition.constraints if not mentions(c[1], dropped)),
        tuple(i for i in definition.indexes if not mentions(i[1].split(" USING ", 1)[-1], dropped)),
        definition.user_types,
        definition.is_partitioned,
        definition.estimated_rows,
        definition.size_bytes,
    )


def read_definition(conn: psycopg.Connection, schema_name: str, table_name: str) -> TableDefinition:
    """The definition of one table; call inside a transaction with ``search_path = pg_catalog`` set locally."""
    row = conn.execute(
        """SELECT c.oid, c.relkind, greatest(c.reltuples, 0)::bigint, pg_table_size(c.oid)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')""",
        (schema_name, table_name),
    ).fetchone()
    if row is None:
        raise MaterializeError(f"table {qualified(schema_name, table_name)} does not exist in the copy source")
    oid, relkind, estimated_rows, size_bytes = row
    columns = tuple(
        Column(*r)
        for r in conn.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                       THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
                  CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           LEFT JOIN pg_collation co ON co.oid = a.attcollation
           LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
            (oid,),
        )
    )
    constraints = tuple(
        (r[0], r[1])
        for r in conn.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
           WHERE conrelid = %s AND contype IN ('p', 'u', 'c', 'x')
           ORDER BY contype <> 'p', conname""",
            (oid,),
        )
    )
    indexes = tuple(
        (r[0], r[1])
        for r in conn.execute(
            """SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE i.indrelid = %s AND NOT EXISTS (
               SELECT 1 FROM pg_constraint k WHERE k.conrelid = i.indrelid AND k.conindid = i.indexrelid)
           ORDER BY i.indexrelid""",
            (oid,),
        )
    )
    return TableDefinition(
        schema_name, table_name, columns, constraints, indexes, _user_types(conn, oid), relkind == "p", estimated_rows, size_bytes
    )


def _user_types(conn: psycopg.Connection, oid: int) -> tuple[UserType, ...]:
    """Types of the table's columns (or of their array elements) that are not built in."""
    rows = conn.execute(
        """SELECT DISTINCT t.oid, format_type(t.oid, NULL), t.typtype,
                  ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
           FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid
           JOIN pg_type t ON t.oid = CASE WHEN at.typelem <> 0 AND at.typcategory = 'A' THEN at.typelem ELSE at.oid END
           JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')""",
        (oid,),
    ).fetchall()
    return tuple(UserType(r[0], r[1], r[2], tuple(r[3])) for r in rows)


def create_table(definition: TableDefinition) -> sql.Composed:
    """CREATE TABLE without constraints or indexes: those are built after the copy, which is faster."""
    columns = []
    for column in definition.columns:
        parts = [sql.Identifier(column.name), sql.SQL(column.type_sql)]
        if column.collation:
            parts.append(sql.SQL("COLLATE {}").format(sql.SQL(column.collation)))
        if column.generated is not None:
            parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(column.generated)))
        if column.not_null:
            parts.append(sql.SQL("NOT NULL"))
        columns.append(sql.SQL(" ").join(parts))
    return sql.SQL("CREATE TABLE {} ({})").format(definition.identifier, sql.SQL(", ").join(columns))


def after_copy(definition: TableDefinition) -> list[sql.Composable]:
    """The constraints and indexes, built once the rows are in."""
    statements: list[sql.Composable] = [
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(definition.identifier, sql.Identifier(name), sql.SQL(text))
        for name, text in definition.constraints
    ]
    statements += [sql.SQL(text) for _, text in definition.indexes]
    return statements


def create_enum(user_type: UserType) -> sql.Composed:
    return sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
        sql.SQL(user_type.qualified), sql.SQL(", ").join(sql.Literal(label) for label in user_type.enum_labels)
    )


def missing_types(conn: psycopg.Connection, definitions: list[TableDefinition]) -> list[UserType]:
    """User types the replica lacks (``to_regtype`` resolves the qualified names format_type wrote)."""
    wanted = {t.qualified: t for d in definitions for t in d.user_types}
    return [t for name, t in sorted(wanted.items()) if conn.execute("SELECT to_regtype(%s)", (name,)).fetchone()[0] is None]  # type: ignore[index]
