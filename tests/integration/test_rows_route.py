"""A route with format: rows: every type typed by its table's own Avro schemas, checked by PostgreSQL itself."""

import io
import time

import fastavro
import pytest

from agent import capture
from pgfanout.core.codec import Codec
from pgfanout.core.errors import ConfigError
from pgfanout.runtime import registry
from tests.integration.pipeline import read_topic
from tests.integration.test_types import ROWS, TYPES_DDL

MICROS = "(%(v)s::bigint / 1000000) * interval '1 second' + (%(v)s::bigint %% 1000000) * interval '1 microsecond'"


def without_time_logical_types(node):
    """Dates and timestamps read as plain numbers: years before 1 or after 9999 have no Python datetime."""
    if isinstance(node, dict):
        if node.get("logicalType") in ("date", "local-timestamp-micros", "timestamp-micros", "time-micros"):
            return node["type"]
        return {k: without_time_logical_types(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_time_logical_types(item) for item in node]
    return node


def decode(schemas: dict, fingerprint: bytes, data: bytes) -> dict:
    schema = fastavro.parse_schema(without_time_logical_types(schemas[fingerprint]))
    return fastavro.schemaless_reader(io.BytesIO(data), schema, None)


def condition(pg_type: str, value) -> tuple[str, dict]:
    """SQL that is true when column {c} holds ``value``, the typed Avro value of a column of ``pg_type``."""
    if value is None:
        return "{c} IS NULL", {}
    if isinstance(value, list):
        parts, params = ["cardinality({c}) = %(n)s"], {"n": len(value)}
        for i, item in enumerate(value, start=1):
            sql, item_params = condition(pg_type[:-2], item)
            parts.append(sql.replace("{c}", f"{{c}}[{i}]").replace("%(", f"%(e{i}_"))
            params |= {f"e{i}_{k}": v for k, v in item_params.items()}
        return "(" + " AND ".join(parts) + ")", params
    if isinstance(value, str) and pg_type not in ("uuid",):
        return "{c}::text = %(v)s", {"v": value}
    if pg_type == "date":
        return "{c} = '1970-01-01'::date + %(v)s::int", {"v": value}
    if pg_type.startswith("timestamp"):
        zero = "'1970-01-01 00:00:00+00'::timestamptz" if "with time zone" in pg_type else "'1970-01-01'::timestamp"
        return f"{{c}} = {zero} + {MICROS}", {"v": value}
    if pg_type.startswith("time"):
        return "extract(epoch FROM {c}) * 1000000 = %(v)s", {"v": value}
    if pg_type == "interval":
        return (
            "{c}::text = (make_interval(months => %(m)s, days => %(d)s) + %(us)s::bigint * interval '1 microsecond')::text",
            {"m": value["months"], "d": value["days"], "us": value["micros"]},
        )
    cast = {"real": "::float4", "double precision": "::float8", "uuid": "::uuid"}.get(pg_type, "")
    if pg_type.startswith("numeric"):
        cast = "::numeric"
    return f"{{c}} = %(v)s{cast}", {"v": value}


def rows_route_pipeline(pipeline, **route_settings):
    data = pipeline.data
    route = f"{pipeline.name}.rows"
    data["routes"][route] = {"upstream": pipeline.source, "kafka": "local", "format": "rows", **route_settings}
    data["distributors"][pipeline.distributor]["routes"].append(route)
    pipeline.reconfigure(data)
    return route


def test_a_rows_route_types_every_value_as_postgresql_holds_it(pipeline):
    route = rows_route_pipeline(pipeline)
    pipeline.prepare(install=False)
    source = pipeline.config.sources[pipeline.source]
    with pipeline.primary() as conn:
        for statement in TYPES_DDL:
            conn.execute(statement)
        capture.install(conn, source.model_copy(update={"tables": [*source.tables, "public.everything"]}))
    pipeline.start("agent", "distributor")
    with pipeline.primary() as conn:
        with conn.transaction():
            for row in ROWS:
                conn.execute(f"INSERT INTO public.everything VALUES {row}")
        conn.execute("UPDATE public.everything SET id = 6, t = t || '!' WHERE id = 3")
        conn.execute("DELETE FROM public.everything WHERE id = 2")

    deadline = time.monotonic() + 60
    while True:
        messages = [m for _, kind, m in read_topic(pipeline.config, route) if kind == "RowBatch"]
        transactions = [t for m in messages for t in m["transactions"]]
        if sum(t["last_chunk"] for t in transactions) >= 3:
            break
        assert time.monotonic() < deadline, pipeline.log("distributor")[-3000:]
        time.sleep(0.5)
    # the first transaction (1 MB of text, 1 MB of bytea) comes in chunks, like any large one
    assert [t["position"] for t in transactions if t["last_chunk"]] == [1, 2, 3]

    codec = Codec()  # a consumer that knows nothing but the registry topic
    registry.load(pipeline.config.kafka["local"], codec)
    changes = [c for t in transactions for c in t["changes"]]
    assert [c["op"] for c in changes] == ["INSERT"] * 5 + ["UPDATE", "DELETE"]
    final = {}
    for change in changes:
        key = decode(codec.row_schemas, change["key_schema"], change["key"])
        if change["op"] == "DELETE":
            assert key == {"id": 2}
            del final[2]
            continue
        row = decode(codec.row_schemas, change["row_schema"], change["row"])
        assert key == {"id": row["id"]}
        if change["old_key"] is not None:
            assert decode(codec.row_schemas, change["key_schema"], change["old_key"]) == {"id": 3}
            del final[3]
        final[row["id"]] = row
    assert sorted(final) == [1, 4, 5, 6]

    row_schema = codec.row_schemas[changes[-2]["row_schema"]]
    types = {f["name"]: f["pg_type"] for f in row_schema["fields"]}
    checked = 0
    with pipeline.primary() as conn:
        for row_id, row in final.items():
            for column, value in row.items():
                sql, params = condition(types[column], value)
                holds = conn.execute(
                    f"SELECT {sql.format(c=column)} FROM public.everything WHERE id = %(id)s", params | {"id": row_id}
                ).fetchone()[0]
                assert holds, (row_id, column, types[column], value)
                checked += 1
    assert checked == 4 * 30
    fields = {f["name"]: f["type"] for f in row_schema["fields"]}
    assert fields["n2"][2] == {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 4}
    assert fields["tstz"][2]["logicalType"] == "timestamp-micros" and fields["d"][2]["logicalType"] == "date"
    assert fields["iv"][1]["name"] == "Interval" and fields["e"] == ["null", "string"]

    # a column added mid-stream: a new Row schema version, and old rows read with it get the default
    with pipeline.primary() as conn:
        conn.execute("ALTER TABLE public.everything ADD COLUMN added text")
        conn.execute("INSERT INTO public.everything (id, added) VALUES (7, 'new')")
    deadline = time.monotonic() + 60
    while True:
        later = [t for _, kind, m in read_topic(pipeline.config, route) if kind == "RowBatch" for t in m["transactions"]]
        if later[-1]["position"] == 5:  # 4 is the ALTER's: a schema change, no row for these consumers
            assert [t["changes"] for t in later if t["position"] == 4] == [[]]
            break
        assert time.monotonic() < deadline, pipeline.log("distributor")[-3000:]
        time.sleep(0.5)
    registry.load(pipeline.config.kafka["local"], codec)
    newer = later[-1]["changes"][0]
    assert newer["row_schema"] != changes[-2]["row_schema"]
    assert decode(codec.row_schemas, newer["row_schema"], newer["row"])["added"] == "new"
    new_schema = fastavro.parse_schema(without_time_logical_types(codec.row_schemas[newer["row_schema"]]))
    old_schema = fastavro.parse_schema(without_time_logical_types(row_schema))
    old_row = fastavro.schemaless_reader(io.BytesIO(changes[0]["row"]), old_schema, new_schema)
    assert old_row["added"] is None and old_row["id"] == 1


def test_subscribers_and_further_routes_cannot_take_a_rows_route(pipeline):
    from pgfanout.core.config import parse_config

    route = rows_route_pipeline(pipeline)
    data = pipeline.data
    data["subscribers"][pipeline.subscribers[0]]["route"] = route
    data["routes"]["next"] = {"upstream": route, "kafka": "local"}
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert f"subscribers.{pipeline.subscribers[0]}.route: route '{route}' has format: rows" in str(raised.value)
    assert f"routes.next.upstream: route '{route}' has format: rows" in str(raised.value)
