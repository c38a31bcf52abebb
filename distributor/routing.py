"""Pure logic: what one route receives of a batch (tables, row filters, column lists, row migration).

A route with a subscription gets, of each batch, only the changes of its tables whose rows
its filters let through, with only its columns; tables, keys and old values of anything
else never leave the distributor. Every transaction is kept, empty or not, so positions
downstream advance exactly as upstream (a subscriber's lag stays truthful).

Row migration, as Sybase Replication Server and PostgreSQL 15 do it: an UPDATE whose
old row did not pass the filter but whose new row does arrives as an INSERT of the row;
one whose old row passed and new row does not arrives as a DELETE; both: an UPDATE;
neither: nothing. The old row's filtered columns come from the change's old key and old
values, which capture logs for every column a filter of the source's routes uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from pgfanout.core.config import TableSubscription
from pgfanout.core.errors import FilterError, RouteError, Where
from pgfanout.core.messages import Batch, Change, Op, TableLayout
from pgfanout.core.names import qualified
from pgfanout.core.rowfilter import Evaluate, compile_filter
from pgfanout.core.schemachange import previous_name, project_definition, renames_of
from pgfanout.core.scripts import is_own

EMPTY: tuple = ()
WHOLE_TABLE = TableSubscription()


def _project(values: Sequence[str], nulls: Sequence[int], keep: list[int] | None) -> tuple[Any, Any]:
    if keep is None:
        return values, nulls
    if not nulls:
        return [values[i] for i in keep], EMPTY
    null_set = set(nulls)
    return [values[i] for i in keep], [j for j, i in enumerate(keep) if i in null_set]


@dataclass
class TablePlan:
    """What a route does with the changes of one table layout."""

    route: str
    table: TableLayout  # the Table record sent downstream: projected
    width: int  # columns of the upstream layout
    keep: list[int] | None  # upstream column indexes kept, in order (None: all)
    old_keep: list[int] | None  # indexes into old_values kept (None: all)
    evaluate: Evaluate | None
    key_positions: list[int]
    old_positions: list[int]  # upstream column index of each old value
    needs_old_values: bool  # the filter reads non-key columns of the old row
    table_old_columns: tuple[str, ...] = ()  # the upstream layout's old_columns
    passes_whole: bool = False  # no filter, no column list: changes go on as they are, without a copy

    def __post_init__(self) -> None:
        self.passes_whole = self.evaluate is None and self.keep is None and self.old_keep is None

    def new_row(self, change: Change) -> list[str | None]:
        row: list[str | None] = list(change["values"])
        for i in change["nulls"]:
            row[i] = None
        return row

    def old_row(self, change: Change, new_row: list[str | None] | None, where: Callable[[], str]) -> list[str | None]:
        row: list[str | None] = [None] * self.width
        key = change["old_key"]
        if key:
            for i, value in zip(self.key_positions, key, strict=True):
                row[i] = value
        elif new_row is not None:  # an UPDATE that kept its key
            for i in self.key_positions:
                row[i] = new_row[i]
        if self.needs_old_values:
            old_values = change.get("old_values") or EMPTY
            if len(old_values) != len(self.old_positions):
                table = qualified(self.table["schema_name"], self.table["table_name"])
                raise RouteError(
                    f"{where()}: a {change['op']} of {table} lacks the old "
                    f"values of {', '.join(self.table_old_columns)} that route {self.route}'s filter needs (it was "
                    "captured before capture was installed with this filter); run `pgfanout agent install`, then "
                    "resync this route's subscribers"
                )
            for i, value in zip(self.old_positions, old_values, strict=True):
                row[i] = value
            for j in change.get("old_nulls") or EMPTY:
                row[self.old_positions[j]] = None
        return row

    def passes(self, row: list[str | None]) -> bool:
        return self.evaluate is None or self.evaluate(row) is True

    def route_change(self, change: Change, where: Callable[[], str]) -> Change | None:
        """The change as the route receives it, or None; ``where`` names it, for error messages only."""
        op = change["op"]
        if op == "TRUNCATE" or op == "SCHEMA" or self.passes_whole:
            return change
        if self.evaluate is None:
            return self.projected(change, op)
        if op == "INSERT":
            return self.projected(change, op) if self.passes(self.new_row(change)) else None
        if op == "DELETE":
            return self.projected(change, op) if self.passes(self.old_row(change, None, where)) else None
        new_row = self.new_row(change)
        new_in = self.passes(new_row)
        old_in = self.passes(self.old_row(change, new_row, where))
        if new_in and old_in:
            return self.projected(change, "UPDATE")
        if new_in:  # migrates in
            return self.projected(dict(change, old_key=EMPTY, old_values=EMPTY, old_nulls=EMPTY), "INSERT")
        if old_in:  # migrates out: the replica deletes the row by its old key
            old_key = change["old_key"] or [new_row[i] for i in self.key_positions]
            return self.projected(dict(change, values=EMPTY, nulls=EMPTY, old_key=old_key), "DELETE")
        return None

    def projected(self, change: Change, op: Op) -> Change:
        values, nulls = _project(change["values"], change["nulls"], self.keep) if change["values"] else (EMPTY, EMPTY)
        old_values = change.get("old_values") or EMPTY
        old_nulls = change.get("old_nulls") or EMPTY
        if old_values and self.old_keep is not None:
            old_values, old_nulls = _project(old_values, old_nulls, self.old_keep)
        return {
            "table": change["table"],
            "op": op,
            "values": values,
            "nulls": nulls,
            "old_key": change["old_key"],
            "old_values": old_values,
            "old_nulls": old_nulls,
        }


def plan_table(
    route: str, table: TableLayout, subscription: TableSubscription, aliases: dict[str, str] | None = None
) -> TablePlan:
    """Check a subscription against a table layout and prepare its projection and filter. ``aliases``: the
    names the subscription knows some of the layout's columns by, when a later layout renamed them."""
    name = qualified(table["schema_name"], table["table_name"])
    columns, keys = list(table["columns"]), list(table["key_columns"])
    types = list(table.get("column_types") or ())
    old_columns = list(table.get("old_columns") or ())
    prefix = f"route {route}, table {name} (layout {table['table_id']})"
    keep = None
    row_filter = subscription.row_filter()
    used = {*(subscription.columns or ()), *(row_filter.columns if row_filter is not None else ())}
    renamed = renames_of(table.get("definition"), used)
    if renamed:
        listed = ", ".join(f"{old} -> {new}" for old, new in sorted(renamed.items()))
        raise RouteError(
            f"{prefix}: the source renamed columns that this route's filter or column list names ({listed}); "
            f"name them so in routes.{route}.tables, then start the distributor again"
        )
    if not aliases or not used & (set(aliases.values()) - set(columns)):
        aliases = {}  # the subscription still knows the columns by the names this layout has
    names = [aliases.get(c, c) for c in columns]  # as the subscription names them
    key_names = [aliases.get(k, k) for k in keys]
    old_names = [aliases.get(c, c) for c in old_columns]
    if subscription.columns is not None:
        unknown = [c for c in subscription.columns if c not in names]
        if unknown:
            raise RouteError(f"{prefix}: the column list names columns the table does not have: {', '.join(unknown)}")
        missing_key = [k for k in key_names if k not in subscription.columns]
        if missing_key:
            raise RouteError(f"{prefix}: the column list must include the key ({', '.join(missing_key)})")
        keep = [i for i, c in enumerate(names) if c in subscription.columns]  # in the table's column order
    evaluate, needs_old = None, False
    if row_filter is not None:
        if len(types) != len(columns):
            raise RouteError(
                f"{prefix}: the upstream sends no column types, which row filters need; "
                "upgrade the agent that publishes this source"
            )
        try:
            evaluate = compile_filter(row_filter, names, types)
        except FilterError as exc:
            raise RouteError(f"{prefix}: {exc}") from None
        uncaptured = sorted(row_filter.columns - set(key_names) - set(old_names))
        if uncaptured:
            raise RouteError(
                f"{prefix}: the filter reads {', '.join(uncaptured)}, whose values before an UPDATE or DELETE capture "
                "does not record, so rows could not migrate in and out; run `pgfanout agent install` for the source "
                "with this configuration (it records the old values of every filtered column), then resync this "
                "route's subscribers"
            )
        needs_old = bool(row_filter.columns - set(key_names))
    kept = set(columns if keep is None else (columns[i] for i in keep))
    old_keep = None if all(c in kept for c in old_columns) else [j for j, c in enumerate(old_columns) if c in kept]
    projected = dict(table)
    if keep is not None:
        projected.update(
            columns=[columns[i] for i in keep],
            column_types=[types[i] for i in keep] if types else [],
            missing_values={c: v for c, v in (table.get("missing_values") or {}).items() if c in kept},
            old_columns=[c for c in old_columns if c in kept],
        )
        if table.get("definition"):
            projected["definition"] = project_definition(table["definition"], kept)
    return TablePlan(
        route,
        projected,
        len(columns),
        keep,
        old_keep,
        evaluate,
        [columns.index(k) for k in keys],
        [columns.index(c) for c in old_columns],
        needs_old,
        tuple(old_columns),
    )


def renamed_later(tables: Sequence[TableLayout]) -> dict[int, dict[str, str]]:
    """For layouts of a message that a later layout of the same table in it renamed columns of: old name -> new.

    A distributor stopped at a rename of a column its subscription names starts again with the new name in
    its configuration, and reads that message again: its transactions before the rename still use the old
    layout, whose columns the configuration now knows by their new names.
    """
    aliases: dict[int, dict[str, str]] = {}
    for later in tables:
        definition = later.get("definition")
        if not definition or not definition["renamed_columns"]:
            continue
        names = {(later["schema_name"], later["table_name"]), previous_name(definition)}
        renamed = {old: new for new, old in definition["renamed_columns"].items()}
        for earlier in tables:
            if earlier["table_id"] < later["table_id"] and (earlier["schema_name"], earlier["table_name"]) in names:
                aliases.setdefault(earlier["table_id"], {}).update(renamed)
    return aliases


def _shape(layout: TableLayout) -> tuple:
    definition = dict(layout.get("definition") or {})
    for what_changed in ("renamed_columns", "previous_schema", "previous_table"):
        definition.pop(what_changed, None)
    return tuple(layout["columns"]), tuple(layout["key_columns"]), tuple(layout.get("column_types") or ()), repr(definition)


class RouteFilter:
    """One route's subscription, applied to whole batches; table layouts are planned once each."""

    kind = "Batch"  # what it makes of a Batch

    def __init__(self, route: str, tables: dict[str, TableSubscription]):
        self.route = route
        self.tables = tables
        self.plans: dict[int, TablePlan | None] = {}
        self.shapes: dict[str, dict[int, tuple]] = {}  # per table: what this route carries of each layout seen

    def plan(self, table: TableLayout, aliases: dict[str, str] | None = None) -> TablePlan | None:
        table_id = table["table_id"]
        if table_id not in self.plans:
            subscription = self.tables.get(qualified(table["schema_name"], table["table_name"]))
            if is_own(table["schema_name"], table["table_name"]):
                subscription = WHOLE_TABLE  # every route carries trace markers and scripts
            previous = previous_name(table.get("definition"))
            if subscription is None and previous is not None and qualified(*previous) in self.tables:
                raise RouteError(
                    f"route {self.route}: the source renamed table {qualified(*previous)} to "
                    f"{qualified(table['schema_name'], table['table_name'])} (layout {table_id}); name it so in "
                    f"routes.{self.route}.tables, then start the distributor again"
                )
            self.plans[table_id] = None if subscription is None else plan_table(self.route, table, subscription, aliases)
            if self.plans[table_id] is not None:
                shaped = self.plans[table_id].table  # type: ignore[union-attr]
                self.shapes.setdefault(qualified(shaped["schema_name"], shaped["table_name"]), {})[table_id] = _shape(shaped)
        return self.plans[table_id]

    def carries_no_change(self, table_id: int) -> bool:
        """Whether a SCHEMA change to this layout leaves what the route carries as it was with the previous
        layout it saw of the table (a change to a column it does not carry): then it is not sent."""
        plan = self.plans.get(table_id)
        if plan is None or not plan.table.get("definition"):
            return False
        seen = self.shapes.get(qualified(plan.table["schema_name"], plan.table["table_name"]), {})
        earlier = [i for i in seen if i < table_id]
        return bool(earlier) and seen[max(earlier)] == seen[table_id]

    def batch(self, message: Batch, where: Where) -> Batch:
        """The route's copy of a Batch message: same transactions, in the same order, each with its share."""
        try:
            aliases = renamed_later(message["tables"])
            plans = {t["table_id"]: self.plan(t, aliases.get(t["table_id"])) for t in message["tables"]}
        except RouteError as exc:
            exc.locate(where, None)
            raise
        used: set[int] = set()
        transactions = []
        for transaction in message["transactions"]:
            changes = []
            here = partial("{}, position {}".format, where, transaction["position"])
            try:
                for change in transaction["changes"]:
                    plan = plans[change["table"]]
                    if plan is None or (change["op"] == "SCHEMA" and self.carries_no_change(change["table"])):
                        continue
                    routed = plan.route_change(change, here)
                    if routed is not None:
                        changes.append(routed)
                        used.add(change["table"])
            except RouteError as exc:
                exc.locate(where, transaction["position"])
                raise
            transactions.append(dict(transaction, changes=changes))
        tables = [plan.table for table_id, plan in plans.items() if table_id in used and plan is not None]
        return dict(message, tables=tables, transactions=transactions)
