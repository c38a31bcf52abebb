from datetime import UTC, datetime

import pytest

from pgfanout.core.codec import HEADER_SIZE, MAGIC, Codec, default_codec
from pgfanout.core.errors import PoisonMessage

CHANGES = {
    "changes": [
        {
            "table": 3,
            "op": "INSERT",
            "values": ["1", "ünïcode 'quoted'", ""],
            "nulls": [2],
            "old_key": [],
            "old_values": [],
            "old_nulls": [],
        },
        {
            "table": 3,
            "op": "UPDATE",
            "values": ["2", "", "x" * 100_000],
            "nulls": [],
            "old_key": ["1"],
            "old_values": ["before", ""],
            "old_nulls": [1],
        },
        {"table": 3, "op": "DELETE", "values": [], "nulls": [], "old_key": ["2"], "old_values": ["", ""], "old_nulls": []},
        {"table": 3, "op": "TRUNCATE", "values": [], "nulls": [], "old_key": [], "old_values": [], "old_nulls": []},
        {"table": 4, "op": "SCHEMA", "values": [], "nulls": [], "old_key": [], "old_values": [], "old_nulls": []},
    ]
}
DEFINITION = {
    "columns": [
        {"name": "id", "type": "integer", "not_null": True, "collation": "", "generated": ""},
        {"name": "label", "type": "text", "not_null": False, "collation": '"C"', "generated": ""},
        {"name": "note", "type": "text", "not_null": False, "collation": "", "generated": ""},
    ],
    "constraints": [{"name": "t_pkey", "definition": "PRIMARY KEY (id)"}],
    "indexes": [{"name": "t_label", "definition": "CREATE INDEX t_label ON public.t USING btree (label)"}],
    "renamed_columns": {"label": "name"},
    "dropped_columns": ["gone"],
    "dropped_constraints": [],
    "dropped_indexes": ["t_name"],
    "previous_schema": "",
    "previous_table": "",
    "created": False,
    "dropped_table": False,
}
TX = {
    "source": "shop",
    "tick_id": 7,
    "tick_time": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    "batch_end": True,
    "snapshot": "1000:1005:1001,1003",
    "snapshot_requests": [{"subscriber": "report1", "hold": False}, {"subscriber": "branch7", "hold": True}],
    "generation": 2,
    "lineage": [
        {"generation": 1, "first_position": 1, "primary": ""},
        {"generation": 2, "first_position": 40, "primary": "report1"},
    ],
    "tables": [
        {
            "table_id": 3,
            "schema_name": "public",
            "table_name": "t",
            "columns": ["id", "name", "note"],
            "key_columns": ["id"],
            "column_types": ["integer", "text", "text"],
            "missing_values": {"note": "n/a"},
            "old_columns": ["name", "note"],
            "definition": None,
        },
        {
            "table_id": 4,
            "schema_name": "public",
            "table_name": "t",
            "columns": ["id", "label", "note"],
            "key_columns": ["id"],
            "column_types": ["integer", "text", "text"],
            "missing_values": {},
            "old_columns": [],
            "definition": DEFINITION,
        },
    ],
    "transactions": [
        {"position": 42, "xid": 1234, "chunk": 0, "last_chunk": True, **CHANGES},
        {"position": 43, "xid": 1240, "chunk": 0, "last_chunk": False, "changes": []},
    ],
}


def test_transaction_round_trip():
    codec = default_codec()
    data = codec.encode("Batch", TX)
    assert data.startswith(MAGIC)
    assert codec.decode(data, "t[0]@0") == ("Batch", TX)


# TX as written before schema changes travelled: its first layout without a definition, no SCHEMA change (and
# before generations)
BEFORE_GENERATIONS = {"generation": 1, "lineage": []}  # what a message written before generations reads as
BEFORE_SCHEMA_CHANGES = dict(
    {k: v for k, v in TX.items() if k not in BEFORE_GENERATIONS},
    tables=[{k: v for k, v in TX["tables"][0].items() if k != "definition"}],
    transactions=[dict(t, changes=[c for c in t["changes"] if c["op"] != "SCHEMA"]) for t in TX["transactions"]],
)


def older_schema(name: str) -> dict:
    import json

    from pgfanout.core.codec import schema_dir

    return json.loads((schema_dir() / "history" / f"{name}.avsc").read_text())


def written_with(older: dict, record: dict) -> bytes:
    """A message as a writer of that older schema framed it."""
    import io

    import fastavro

    from pgfanout.core.codec import fingerprint

    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(older), record)
    return MAGIC + fingerprint(older) + body.getvalue()


def test_messages_written_with_an_older_schema_stay_readable():
    import json

    older = older_schema("Batch-e9dd0aa706b65861")
    assert "column_types" not in json.dumps(older)
    old_tables = [
        {k: v for k, v in TX["tables"][0].items() if k not in ("column_types", "missing_values", "old_columns", "definition")}
    ]
    old_transactions = [
        dict(t, changes=[{k: v for k, v in c.items() if not k.startswith("old_") or k == "old_key"} for c in t["changes"]])
        for t in BEFORE_SCHEMA_CHANGES["transactions"]
    ]
    data = written_with(older, dict(BEFORE_SCHEMA_CHANGES, tables=old_tables, transactions=old_transactions))
    kind, message = default_codec().decode(data, "t[0]@0")
    assert message["generation"] == 1 and message["lineage"] == []
    assert kind == "Batch" and message["transactions"] == [
        dict(t, changes=[dict(c, old_values=[], old_nulls=[]) for c in t["changes"]]) for t in old_transactions
    ]
    assert message["tables"] == [dict(old_tables[0], column_types=[], missing_values={}, old_columns=[], definition=None)]
    assert message["snapshot_requests"] == []


def test_batches_and_heartbeats_before_snapshot_requests_read_as_asking_nothing():
    import json

    for name, record in (
        ("Batch-3a82a0c15b3331f1", {k: v for k, v in BEFORE_SCHEMA_CHANGES.items() if k != "snapshot_requests"}),
        (
            "Heartbeat-5a671b4a29a51550",
            {"source": "s", "position": 1, "tick_id": 2, "tick_time": TX["tick_time"], "snapshot": ""},
        ),
    ):
        older = older_schema(name)
        assert "snapshot_requests" not in json.dumps(older)
        kind, message = default_codec().decode(written_with(older, record), "t[0]@0")
        expected = {**record, "snapshot_requests": [], **BEFORE_GENERATIONS}
        if kind == "Batch":
            expected["tables"] = [dict(t, definition=None) for t in record["tables"]]
        assert kind == name.split("-")[0] and message == expected


def test_batches_before_schema_changes_read_as_layouts_without_a_definition():
    import json

    older = older_schema("Batch-26cb2e1493d1ae74")
    assert "renamed_columns" not in json.dumps(older) and "SCHEMA" not in json.dumps(older)
    kind, message = default_codec().decode(written_with(older, BEFORE_SCHEMA_CHANGES), "t[0]@0")
    record = BEFORE_SCHEMA_CHANGES
    assert kind == "Batch" and message == dict(record, tables=[dict(record["tables"][0], definition=None)], **BEFORE_GENERATIONS)


def test_messages_before_generations_read_as_generation_1():
    for name, record in (
        ("Batch-8c2b62aca2d0d63f", {k: v for k, v in TX.items() if k not in BEFORE_GENERATIONS}),
        (
            "Heartbeat-79664004e07c5a7d",
            {"source": "s", "position": 1, "tick_id": 2, "tick_time": TX["tick_time"], "snapshot": "", "snapshot_requests": []},
        ),
    ):
        older = older_schema(name)
        assert "lineage" not in str(older)
        kind, message = default_codec().decode(written_with(older, record), "t[0]@0")
        assert kind == name.split("-")[0] and message == {**record, **BEFORE_GENERATIONS}


def test_a_schema_learned_from_the_registry_becomes_readable():
    import json

    codec = Codec()
    newer = json.loads(next(w.text for w in codec.all_schemas if w.name == "Heartbeat"))
    newer["fields"].append({"name": "note", "type": "string", "default": ""})
    from pgfanout.core.codec import fingerprint

    data = MAGIC + fingerprint(newer) + b"\x04s1\x02\x04" + b"\x00" * 8 + b"\x04hi"
    assert not codec.knows(data)
    with pytest.raises(PoisonMessage, match="not in the schema registry"):
        codec.decode(data, "here")
    assert codec.learn(json.dumps(newer)) and codec.knows(data)
    assert not codec.learn(json.dumps(dict(newer, name="Unknown")))


def test_heartbeat_round_trip():
    codec = default_codec()
    beat = {
        "source": "shop",
        "position": 42,
        "tick_id": 8,
        "tick_time": TX["tick_time"],
        "snapshot": "1006:1006:",
        "snapshot_requests": [{"subscriber": "report1", "hold": True}],
        "generation": 3,
        "lineage": [{"generation": 3, "first_position": 40, "primary": "branch7"}],
    }
    assert codec.decode(codec.encode("Heartbeat", beat), "here") == ("Heartbeat", beat)
    older = {key: value for key, value in beat.items() if key not in ("snapshot", "snapshot_requests")}  # older agents
    assert codec.decode(codec.encode("Heartbeat", older), "here") == (
        "Heartbeat",
        {**older, "snapshot": "", "snapshot_requests": []},
    )


def test_fingerprints_differ_per_schema_and_are_stable():
    first, second = Codec(), Codec()
    assert (
        first.encode("Heartbeat", {"source": "s", "position": 1, "tick_id": 1, "tick_time": TX["tick_time"]})[:HEADER_SIZE]
        == second.encode("Heartbeat", {"source": "s", "position": 1, "tick_id": 1, "tick_time": TX["tick_time"]})[:HEADER_SIZE]
    )
    tx = first.encode("Batch", TX)[:HEADER_SIZE]
    beat = first.encode("Heartbeat", {"source": "s", "position": 1, "tick_id": 1, "tick_time": TX["tick_time"]})[:HEADER_SIZE]
    assert tx != beat


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "bad header"),
        (b"not pgfanout at all", "bad header"),
        (MAGIC + b"\x00" * 8 + b"\x00", "unknown schema"),
    ],
)
def test_malformed_messages_are_refused_with_their_place(data, reason):
    with pytest.raises(PoisonMessage, match=reason) as err:
        default_codec().decode(data, "topic-x[0]@17")
    assert "topic-x[0]@17" in str(err.value)


def test_truncated_and_padded_bodies_are_refused():
    data = default_codec().encode("Batch", TX)
    with pytest.raises(PoisonMessage, match="cannot be decoded"):
        default_codec().decode(data[:-50], "t[0]@1")
    with pytest.raises(PoisonMessage, match="trailing bytes"):
        default_codec().decode(data + b"\x00", "t[0]@1")
