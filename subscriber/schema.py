"""Schema changes on a replica: its table made like the definition a SCHEMA change carries, at that change's
place in the stream, in the replica transaction that applies its source transaction.

The plan is pure (``plan_alter``): renames first, then what goes (constraints and indexes that changed or
that the source dropped, columns it dropped), then what comes (columns, types, NOT NULL, constraints,
indexes). What the replica has of its own (a reporting index, a local column) is left as it is. A column added
with a constant default gets, in rows that existed, the value the source gave them (its "missing value").
Column defaults and foreign keys are not replicated (subscriber/ddl.py says why).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgfanout.core.errors import MaterializeError, PoisonMessage, Where
from pgfanout.core.messages import ColumnDefinition, TableDefinition, TableLayout
from pgfanout.core.names import qualified
from pgfanout.core.schemachange import previous_name
from subscriber import ddl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    statement: sql.Composable
    what: str  # for the log and for an error: what the statement does


def column_type(column: ColumnDefinition) -> sql.Composable:
    parts = [sql.SQL(column["type"])]
    if column["collation"]:
        parts.append(sql.SQL("COLLATE {}").format(sql.SQL(column["collation"])))
    return sql.SQL(" ").join(parts)


def plan_renames(current: ddl.TableDefinition, target: TableDefinition) -> list[Step]:
    """First the columns the source dropped, then those it renamed (where the replica still has them under their
    old name): in that order, so that a column renamed to a dropped one's name takes its place."""
    have = {c.name for c in current.columns}
    dropped = [name for name in target["dropped_columns"] if name in have]
    steps = [
        Step(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(current.identifier, sql.Identifier(name)), f"drop column {name}")
        for name in dropped
    ]
    have -= set(dropped)
    return steps + [
        Step(
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(current.identifier, sql.Identifier(old), sql.Identifier(new)),
            f"rename column {old} to {new}",
        )
        for new, old in target["renamed_columns"].items()
        if old in have and new not in have
    ]


def plan_alter(current: ddl.TableDefinition, target: TableDefinition, missing_values: Mapping[str, str]) -> list[Step]:
    """The statements that make the replica's table ``current`` (renames done) like ``target``."""
    table = current.identifier
    have = {c.name: c for c in current.columns}
    want = {c["name"]: c for c in target["columns"]}
    constraints = {c["name"]: c["definition"] for c in target["constraints"]}
    indexes = {i["name"]: i["definition"] for i in target["indexes"]}
    steps: list[Step] = []
    for name, text in current.constraints:  # changed, or dropped by the source (the replica's own stay)
        if constraints.get(name, text) != text or (name in target["dropped_constraints"] and name not in constraints):
            steps.append(Step(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(name)), f"drop {name}"))
    for name, text in current.indexes:
        if indexes.get(name, text) != text or (name in target["dropped_indexes"] and name not in indexes):
            index = sql.Identifier(current.schema_name, name)
            steps.append(Step(sql.SQL("DROP INDEX {}").format(index), f"drop index {name}"))
    for name, column in want.items():
        target_column = sql.Identifier(name)
        if name not in have:
            steps += _add_column(table, column, missing_values.get(name))
            continue
        now = have[name]
        if (now.type_sql, now.collation or "") != (column["type"], column["collation"]) and not column["generated"]:
            steps.append(
                Step(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
                        table, target_column, column_type(column), target_column, sql.SQL(column["type"])
                    ),
                    f"change column {name} to {column['type']}",
                )
            )
        if now.not_null != column["not_null"]:
            verb = "SET" if column["not_null"] else "DROP"
            steps.append(
                Step(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} {} NOT NULL").format(table, target_column, sql.SQL(verb)),
                    f"{verb.lower()} not null on {name}",
                )
            )
    current_constraints = dict(current.constraints)
    for name, text in constraints.items():
        if current_constraints.get(name) != text:
            steps.append(
                Step(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(table, sql.Identifier(name), sql.SQL(text)),
                    f"add {name}",
                )
            )
    current_indexes = dict(current.indexes)
    for name, text in indexes.items():
        if current_indexes.get(name) != text:
            steps.append(Step(sql.SQL(text), f"create index {name}"))
    return steps


def _add_column(table: sql.Identifier, column: ColumnDefinition, existing_value: str | None) -> list[Step]:
    name = sql.Identifier(column["name"])
    if column["generated"]:
        statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {} GENERATED ALWAYS AS ({}) STORED").format(
            table, name, column_type(column), sql.SQL(column["generated"])
        )
        return [Step(statement, f"add generated column {column['name']}")]
    statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(table, name, column_type(column))
    steps = []
    if existing_value is not None:  # rows that existed hold the source's "missing value"
        statement = sql.SQL("{} DEFAULT {}::{}").format(statement, sql.Literal(existing_value), sql.SQL(column["type"]))
        steps = [Step(statement, f"add column {column['name']} {column['type']} (existing rows: {existing_value!r})")]
        steps.append(Step(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(table, name), "its default dropped"))
    else:
        steps = [Step(statement, f"add column {column['name']} {column['type']}")]
    if column["not_null"]:
        steps.append(
            Step(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(table, name), f"set not null on {column['name']}")
        )
    return steps


def create_steps(schema_name: str, table_name: str, target: TableDefinition) -> list[Step]:
    """A table the source created: its columns, then its constraints and indexes (subscriber/ddl.py)."""
    definition = ddl.TableDefinition(
        schema_name,
        table_name,
        tuple(
            ddl.Column(c["name"], c["type"], c["not_null"], c["collation"] or None, c["generated"] or None)
            for c in target["columns"]
        ),
        tuple((c["name"], c["definition"]) for c in target["constraints"]),
        tuple((i["name"], i["definition"]) for i in target["indexes"]),
        (),
        False,
        0,
        0,
    )
    name = qualified(schema_name, table_name)
    return [Step(ddl.create_table(definition), f"create table {name}")] + [
        Step(statement, "its constraints and indexes") for statement in ddl.after_copy(definition)
    ]


def comes_later(layout: TableLayout) -> bool:
    """Whether the replica's table of this layout may not be there before its schema change: one it renames,
    creates or drops."""
    definition = layout.get("definition")
    return bool(definition and (previous_name(definition) or definition["created"] or definition["dropped_table"]))


class SchemaChanges:
    """Applies SCHEMA changes on one replica connection, inside the applier's open transaction."""

    def __init__(self, conn: psycopg.Connection, subscriber: str, label: str, on_drop: str = "keep"):
        self.conn = conn
        self.subscriber = subscriber
        self.label = label
        self.on_drop = on_drop

    def apply(self, layout: TableLayout, where: Where, position: int) -> bool:
        """Make the replica's table like ``layout``'s definition; True if the table is new here or renamed
        (it must be made read-only for everyone but the applier)."""
        target = layout.get("definition")
        if not target:
            return False
        schema_name, table_name = layout["schema_name"], layout["table_name"]
        name = qualified(schema_name, table_name)
        if target["dropped_table"]:
            self._drop(schema_name, table_name, name, where, position)
            return False
        if target["created"] and not self._exists(schema_name, table_name):
            self._run(create_steps(schema_name, table_name, target), name, where, position)
            log.warning("%s: created %s at position %d, as the source did", self.label, name, position)
            return True
        steps: list[Step] = []
        previous = previous_name(target)
        if previous is not None and not self._exists(schema_name, table_name) and self._exists(*previous):
            steps += self._rename_table(previous, schema_name, table_name)
            self._run(steps, name, where, position)
        current = self._read(schema_name, table_name, name, where, position)
        renames = plan_renames(current, target)
        self._run(renames, name, where, position)
        if renames:
            current = self._read(schema_name, table_name, name, where, position)
        alter = plan_alter(current, target, layout.get("missing_values") or {})
        self._run(alter, name, where, position)
        done = steps + renames + alter
        if done:
            log.warning(
                "%s: schema change of %s at position %d, as the source did: %s",
                self.label,
                name,
                position,
                "; ".join(s.what for s in done),
            )
        return bool(steps)

    def run_script(self, values: Sequence[str], where: Where, position: int) -> None:
        """A `pgfanout ddl` script (its row's script_id, statements, run_by), run here as on the primary."""
        script_id, statements, run_by = values[0], values[1], values[2]
        self.conn.execute("SAVEPOINT pgfanout_script")
        try:
            self.conn.execute(statements)  # type: ignore[arg-type]  # the operator's own SQL, run as written
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            first = statements.strip().splitlines()[0][:200] if statements.strip() else ""
            what = f"script {script_id} (`pgfanout ddl` by {run_by}, beginning `{first}`) at {where} position {position}"
            raise self._refused(f"{what} failed on the replica", exc, where, position, "run what it needs by hand") from exc
        self.conn.execute("RELEASE SAVEPOINT pgfanout_script")
        # a SET in the script must not change the applier's session: back to its own settings
        self.conn.execute("RESET ALL")
        self.conn.execute("SET session_replication_role = replica")
        log.warning("%s: ran script %s of %s at position %d, as the primary did", self.label, script_id, run_by, position)

    def _drop(self, schema_name: str, table_name: str, name: str, where: Where, position: int) -> None:
        if self.on_drop != "drop" or not self._exists(schema_name, table_name):
            log.warning("%s: %s was dropped on the source at position %d; kept here (on_drop: keep)", self.label, name, position)
            return
        steps = [
            Step(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema_name, table_name)), f"drop table {name}"),
            Step(
                sql.SQL(
                    "DELETE FROM pgfanout_replica.materialized WHERE subscriber = {} AND schema_name = {} AND table_name = {}"
                ).format(*map(sql.Literal, (self.subscriber, schema_name, table_name))),
                "its copy's record goes with it",
            ),
        ]
        self._run(steps, name, where, position)
        log.warning("%s: dropped %s at position %d, as the source did (on_drop: drop)", self.label, name, position)

    def _rename_table(self, previous: tuple[str, str], schema_name: str, table_name: str) -> list[Step]:
        old = sql.Identifier(*previous)
        steps = []
        if previous[0] != schema_name:
            steps.append(
                Step(
                    sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(old, sql.Identifier(schema_name)),
                    f"move {qualified(*previous)} to schema {schema_name}",
                )
            )
            old = sql.Identifier(schema_name, previous[1])
        if previous[1] != table_name:
            steps.append(
                Step(sql.SQL("ALTER TABLE {} RENAME TO {}").format(old, sql.Identifier(table_name)), f"rename to {table_name}")
            )
        steps.append(
            Step(
                sql.SQL(
                    "UPDATE pgfanout_replica.materialized SET schema_name = {}, table_name = {} "
                    "WHERE subscriber = {} AND schema_name = {} AND table_name = {}"
                ).format(*map(sql.Literal, (schema_name, table_name, self.subscriber, *previous))),
                "its copy's record follows it",
            )
        )
        return steps

    def _refused(self, what: str, exc: psycopg.Error, where: Where, position: int, by_hand: str) -> PoisonMessage:
        """The error that stops the subscriber at a change its replica refused, and the two ways on."""
        return PoisonMessage(
            f"{what}: {type(exc).__name__}: {str(exc).strip()}. Nothing of this transaction was committed. Make the "
            f"replica accept it (a view or other object there that depends on the table?) and start the subscriber "
            f"again; or {by_hand} and skip the transaction (`pgfanout subscriber skip {self.subscriber} --position "
            f"{position}`)",
            at=where,
            position=position,
        )

    def _exists(self, schema_name: str, table_name: str) -> bool:
        found = self.conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema_name, table_name),
        ).fetchone()
        return found is not None

    def _read(self, schema_name: str, table_name: str, name: str, where: Where, position: int) -> ddl.TableDefinition:
        saved = self.conn.execute("SELECT current_setting('search_path')").fetchone()[0]  # type: ignore[index]
        self.conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
        try:
            return ddl.read_definition(self.conn, schema_name, table_name)
        except MaterializeError as exc:
            raise PoisonMessage(
                f"schema change of {name} at {where} position {position}: the replica has no such table ({exc}); "
                f"nothing of this transaction was committed. Create it (`pgfanout subscriber resync "
                f"{self.subscriber} --table {name}`) and start the subscriber again",
                at=where,
                position=position,
            ) from None
        finally:
            self.conn.execute("SELECT set_config('search_path', %s, true)", (saved,))

    def _run(self, steps: list[Step], name: str, where: Where, position: int) -> None:
        for step in steps:
            self.conn.execute("SAVEPOINT pgfanout_schema_change")
            try:
                self.conn.execute(step.statement)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                text = step.statement.as_string(self.conn)
                what = f"schema change of {name} at {where} position {position} failed on the replica: `{text}`"
                raise self._refused(what, exc, where, position, "apply the change by hand") from exc
            self.conn.execute("RELEASE SAVEPOINT pgfanout_schema_change")
