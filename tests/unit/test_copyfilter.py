"""Snapshot visibility and what a copied table already holds."""

import pytest

from pgfanout.core.snapshots import Snapshot, parse_snapshot, visible
from subscriber.copyfilter import CopyFilter, CopyFilters
from subscriber.ddl import Column, TableDefinition, after_copy, create_table


def test_snapshot_text_round_trips_and_bad_text_is_refused():
    snapshot = parse_snapshot("100:110:103,105")
    assert snapshot == Snapshot(100, 110, frozenset({103, 105}))
    assert str(snapshot) == "100:110:103,105"
    assert parse_snapshot("7:7:") == Snapshot(7, 7, frozenset())
    for bad in ("", "1:2", "a:b:", "10:5:", "1:5:9"):
        with pytest.raises(ValueError):
            parse_snapshot(bad)


@pytest.mark.parametrize(
    ("xid", "seen"),
    [(99, True), (100, True), (103, False), (104, True), (105, False), (109, True), (110, False), (10**12, False)],
)
def test_visibility_follows_postgresql_rules(xid, seen):
    assert visible(xid, parse_snapshot("100:110:103,105")) is seen


def test_a_copy_holds_what_its_snapshot_saw_and_everything_up_to_its_position():
    copy = CopyFilter.from_row(50, "100:110:103")
    assert copy.holds(50, 10**9) and copy.holds(49, 10**9)  # published before the copy: held whatever its xid
    assert copy.holds(51, 104) and not copy.holds(51, 103) and not copy.holds(51, 110)
    assert CopyFilter.from_row(50, None).holds(50, 1) and not CopyFilter.from_row(50, None).holds(51, 1)
    # copied from a replica at 70 that had itself been copied at 50 in that snapshot
    assert copy.after_upstream(70) == CopyFilter(70, copy.snapshot)
    assert CopyFilter(80, None).after_upstream(70) == CopyFilter(80, None)


class T:
    def __init__(self, schema_name, table_name):
        self.schema_name, self.table_name = schema_name, table_name


def change(table):
    return {"table": table, "op": "INSERT", "values": [], "nulls": [], "old_key": []}


def test_only_the_changes_to_tables_whose_copy_holds_the_transaction_are_dropped():
    filters = CopyFilters({("s", "a"): CopyFilter.from_row(10, "100:110:105"), ("s", "b"): CopyFilter(20, None)})
    tables = {1: T("s", "a"), 2: T("s", "b"), 3: T("s", "c")}
    part = {"position": 15, "xid": 104, "changes": [change(1), change(2), change(3), change(1)]}
    assert [c["table"] for c in filters.changes_to_apply(part, tables)] == [3]
    part = {"position": 15, "xid": 105, "changes": [change(1), change(2), change(3)]}
    assert [c["table"] for c in filters.changes_to_apply(part, tables)] == [1, 3]
    later = {"position": 21, "xid": 110, "changes": [change(1), change(2)]}
    assert not filters.could_hold(21, 110)
    assert filters.changes_to_apply(later, tables) is later["changes"]
    assert not CopyFilters({})


def test_replica_tables_get_columns_first_and_keys_and_indexes_after_the_copy():
    definition = TableDefinition(
        "app",
        "Orders",
        (
            Column("id", "bigint", True, None, None),
            Column("note", "text", False, '"C"', None),
            Column("total", "numeric(10,2)", False, None, "(id * 2)"),
        ),
        (("orders_pkey", "PRIMARY KEY (id)"),),
        (("o_note", 'CREATE INDEX o_note ON app."Orders" USING btree (note)'),),
        (),
        False,
        0,
        0,
    )
    assert create_table(definition).as_string(None) == (
        'CREATE TABLE "app"."Orders" ("id" bigint NOT NULL, "note" text COLLATE "C", '
        '"total" numeric(10,2) GENERATED ALWAYS AS ((id * 2)) STORED)'
    )
    assert definition.copied_columns == ("id", "note")
    assert [s.as_string(None) for s in after_copy(definition)] == [
        'ALTER TABLE "app"."Orders" ADD CONSTRAINT "orders_pkey" PRIMARY KEY (id)',
        'CREATE INDEX o_note ON app."Orders" USING btree (note)',
    ]
