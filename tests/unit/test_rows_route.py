"""A format: rows route: its subscription's share of a batch, typed by per-table schemas."""

import io
import json

import fastavro

from distributor.routing import RouteFilter
from distributor.rowsroute import RowsRoute
from pgfanout.core.rows import schema_text
from tests.unit.test_routing import ACCOUNTS, EAST, OTHER, change


def batch(changes):
    return {
        "source": "s",
        "tick_id": 1,
        "tick_time": 0,
        "batch_end": True,
        "tables": [ACCOUNTS, OTHER],
        "transactions": [{"position": 10, "xid": 5, "chunk": 0, "last_chunk": True, "changes": changes}],
    }


def decode(learned, fingerprint, data):
    schema = fastavro.parse_schema(json.loads(learned[fingerprint.hex()]))
    return fastavro.schemaless_reader(io.BytesIO(data), schema, None)


def test_the_share_is_typed_with_schemas_of_the_projected_columns_only():
    rows = RowsRoute("east.rows", RouteFilter("east.rows", EAST))
    out = rows.batch(
        batch(
            [
                change("INSERT", ["1", "east", "5.5", "pw"]),
                change("INSERT", ["2", "west", "5", "pw"]),
                change("UPDATE", ["3", "east", "1", "pw"], old_key=["1"], old_values=["east"]),
                change("INSERT", ["9"], table=2),
            ]
        ),
        "topic[0]@3",
    )
    learned = dict(rows.take_learned())
    assert rows.take_learned() == [], "each schema is handed over once"
    changes = out["transactions"][0]["changes"]
    assert [c["op"] for c in changes] == ["INSERT", "UPDATE"]
    assert {c["table"] for c in changes} == {"public.accounts"}
    first = decode(learned, changes[0]["row_schema"], changes[0]["row"])
    assert first == {"id": 1, "region": "east", "balance": "5.5"}  # unconstrained numeric: its exact text
    assert decode(learned, changes[1]["key_schema"], changes[1]["old_key"]) == {"id": 1}
    assert decode(learned, changes[1]["key_schema"], changes[1]["key"]) == {"id": 3}
    assert "secret" not in repr(learned) and "other" not in repr(learned)
    row_schema = [text for text in learned.values() if '"name": "Row"' in text]
    assert row_schema == [schema_text(rows.layouts[1].schemas.row)]


def test_without_a_subscription_every_table_is_typed_and_truncate_has_no_row():
    rows = RowsRoute("all.rows", None)
    out = rows.batch(batch([change("DELETE", old_key=["4"], old_values=["x"]), change("TRUNCATE", table=2)]), "t[0]@1")
    delete, truncate = out["transactions"][0]["changes"]
    learned = dict(rows.take_learned())
    assert decode(learned, delete["key_schema"], delete["key"]) == {"id": 4} and delete["row"] is None
    assert truncate["table"] == "public.other" and truncate["key"] is None and truncate["row"] is None
    assert len(learned) == 4  # a Key and a Row schema per table
