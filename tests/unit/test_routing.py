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
