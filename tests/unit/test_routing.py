"""What a route receives of a batch: filters, column lists, row migration, empty transactions."""

import pytest

from distributor.routing import RouteFilter
from pgfanout.core.config import TableSubscription
from pgfanout.core.errors import RouteError

ACCOUNTS = {
    "table_id": 1,
    "schema_name": "public",
    "table_name": "accounts",
    "columns": ["id", "region", "balance", "secret"],
    "key_columns": ["id"],
    "column_types": ["integer", "text", "numeric", "text"],
    "missing_values": {},
    "old_columns": ["region"],
}
OTHER = {
    "table_id": 2,
    "schema_name": "public",
    "table_name": "other",
    "columns": ["id"],
    "key_columns": ["id"],
    "column_types": ["integer"],
    "missing_values": {},
    "old_columns": [],
}
EAST = {"public.accounts": TableSubscription(where="region = 'east'", columns=["id", "region", "balance"])}


def change(op, values=(), nulls=(), old_key=(), old_values=(), old_nulls=(), table=1):
    return {
        "table": table,
        "op": op,
        "values": list(values),
        "nulls": list(nulls),
        "old_key": list(old_key),
        "old_values": list(old_values),
        "old_nulls": list(old_nulls),
    }


def plain(value):
    """Tuples and lists alike (the hot path uses shared empty tuples; Avro encodes both as arrays)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def route(changes, tables=EAST):
    message = {
        "source": "s",
        "tick_id": 1,
        "tick_time": 0,
        "batch_end": True,
        "tables": [ACCOUNTS, OTHER],
        "transactions": [{"position": 10, "xid": 5, "chunk": 0, "last_chunk": True, "changes": changes}],
    }
    return plain(RouteFilter("east", tables).batch(message, "topic[0]@3"))


def test_insert_passes_projected_or_is_dropped():
    out = route(
        [change("INSERT", ["1", "east", "5", "pw"]), change("INSERT", ["2", "west", "5", "pw"]), change("INSERT", ["3"], table=2)]
    )
    assert out["transactions"][0]["changes"] == [change("INSERT", ["1", "east", "5"])]
    assert out["tables"] == [dict(ACCOUNTS, columns=["id", "region", "balance"], column_types=["integer", "text", "numeric"])]
    assert "secret" not in repr(out) and "pw" not in repr(out) and "other" not in repr(out)


@pytest.mark.parametrize(
    "old_region, new_region, expected",
    [
        ("east", "east", change("UPDATE", ["1", "east", "6"], old_values=["east"])),
        ("west", "east", change("INSERT", ["1", "east", "6"])),  # migrates in: the whole row
        ("east", "west", change("DELETE", old_key=["1"], old_values=["east"])),  # migrates out: by key
        ("west", "west", None),
    ],
)
def test_row_migration(old_region, new_region, expected):
    out = route([change("UPDATE", ["1", new_region, "6", "pw"], old_values=[old_region])])
    assert out["transactions"][0]["changes"] == ([expected] if expected else [])


def test_key_change_migrating_out_deletes_the_old_key():
    out = route([change("UPDATE", ["2", "west", "6", "pw"], old_key=["1"], old_values=["east"])])
    assert out["transactions"][0]["changes"] == [change("DELETE", old_key=["1"], old_values=["east"])]


def test_delete_of_a_row_the_route_never_had_is_not_sent():
    out = route(
        [change("DELETE", old_key=["7"], old_values=["west"]), change("DELETE", old_key=["8"], old_nulls=[0], old_values=[""])]
    )
    assert out["transactions"][0]["changes"] == []
    assert out["transactions"][0]["position"] == 10 and out["tables"] == []  # the transaction still advances


def test_filter_on_a_column_whose_old_value_is_not_captured_stops():
    tables = {"public.accounts": TableSubscription(where="balance > 0")}
    with pytest.raises(RouteError, match="balance.*agent install"):
        route([change("INSERT", ["1", "east", "5", "pw"])], tables)


def test_column_list_without_the_key_is_refused():
    with pytest.raises(RouteError, match="must include the key"):
        route([change("INSERT", ["1", "east", "5", "pw"])], {"public.accounts": TableSubscription(columns=["region"])})


def test_old_values_missing_from_an_older_capture_stop_loudly():
    with pytest.raises(RouteError, match=r"topic\[0\]@3, position 10.*lacks the old values"):
        route([change("UPDATE", ["1", "east", "6", "pw"])])


def definition_of(columns, renamed=None, previous=("", "")):
    return {
        "columns": [{"name": c, "type": "text", "not_null": False, "collation": "", "generated": ""} for c in columns],
        "constraints": [{"name": "accounts_pkey", "definition": "PRIMARY KEY (id)"}],
        "indexes": [
            {"name": "accounts_secret", "definition": "CREATE INDEX accounts_secret ON public.accounts USING btree (secret)"}
        ],
        "renamed_columns": renamed or {},
        "dropped_columns": [],
        "dropped_constraints": [],
        "dropped_indexes": [],
        "previous_schema": previous[0],
        "previous_table": previous[1],
        "created": False,
        "dropped_table": False,
    }


def schema_message(*layouts, changes):
    return {
        "source": "s",
        "tick_id": 1,
        "tick_time": 0,
        "batch_end": True,
        "tables": list(layouts),
        "transactions": [{"position": 10, "xid": 5, "chunk": 0, "last_chunk": True, "changes": changes}],
    }


def test_a_schema_change_goes_to_a_route_cut_to_its_columns_unless_it_changes_nothing_there():
    before = dict(ACCOUNTS, definition=definition_of(ACCOUNTS["columns"]))
    added = dict(ACCOUNTS, table_id=3, columns=[*ACCOUNTS["columns"], "note"], column_types=[*ACCOUNTS["column_types"], "text"])
    added["definition"] = definition_of(added["columns"])
    east = RouteFilter("east", EAST)
    routed = plain(east.batch(schema_message(before, added, changes=[change("SCHEMA", table=3)]), "t[0]@1"))
    assert routed["transactions"][0]["changes"] == []  # a column the route does not carry: not sent
    indexed = dict(added, table_id=4)
    indexed["definition"] = dict(added["definition"], indexes=[])  # the index on secret went: not carried either
    assert (
        plain(east.batch(schema_message(indexed, changes=[change("SCHEMA", table=4)]), "t[0]@2"))["transactions"][0]["changes"]
        == []
    )
    whole = RouteFilter("all", {"public.accounts": TableSubscription()})
    whole.batch(schema_message(before, changes=[]), "t[0]@1")
    sent = plain(whole.batch(schema_message(added, changes=[change("SCHEMA", table=3)]), "t[0]@2"))
    assert [c["op"] for c in sent["transactions"][0]["changes"]] == ["SCHEMA"]
    assert [c["name"] for c in sent["tables"][0]["definition"]["columns"]] == [*ACCOUNTS["columns"], "note"]
    cut = east.plans[3].table["definition"]  # what the route carries of the table: its columns only
    assert [c["name"] for c in cut["columns"]] == ["id", "region", "balance"] and cut["indexes"] == []


def test_a_rename_of_a_column_a_route_names_stops_it_and_its_new_name_in_the_config_goes_on():
    renamed = dict(ACCOUNTS, table_id=3, columns=["id", "area", "balance", "secret"], old_columns=["area"], key_columns=["id"])
    renamed["definition"] = definition_of(renamed["columns"], {"area": "region"})
    message = schema_message(
        ACCOUNTS,
        renamed,
        changes=[
            change("UPDATE", ["1", "east", "5", "s"], old_values=["east"]),
            change("SCHEMA", table=3),
            change("UPDATE", ["1", "east", "6", "s"], old_values=["east"], table=3),
        ],
    )
    with pytest.raises(RouteError, match=r"renamed columns .* \(region -> area\); name them so in routes.east.tables"):
        RouteFilter("east", EAST).batch(message, "t[0]@1")
    # started again with the new name: the changes before the rename, in the same message, still route
    renamed_config = {"public.accounts": TableSubscription(where="area = 'east'", columns=["id", "area", "balance"])}
    routed = plain(RouteFilter("east", renamed_config).batch(message, "t[0]@1"))
    assert [(c["op"], c["values"]) for c in routed["transactions"][0]["changes"]] == [
        ("UPDATE", ["1", "east", "5"]),
        ("SCHEMA", []),
        ("UPDATE", ["1", "east", "6"]),
    ]
    assert [t["columns"] for t in routed["tables"]] == [["id", "region", "balance"], ["id", "area", "balance"]]


def test_a_table_renamed_under_a_route_that_names_it_stops_it():
    moved = dict(ACCOUNTS, table_id=3, table_name="ledger")
    moved["definition"] = definition_of(ACCOUNTS["columns"], previous=("public", "accounts"))
    with pytest.raises(RouteError, match=r"renamed table public.accounts to public.ledger \(layout 3\)"):
        RouteFilter("east", EAST).batch(schema_message(moved, changes=[change("SCHEMA", table=3)]), "t[0]@1")
