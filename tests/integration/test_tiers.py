"""A three-level tree across two Kafka clusters: HQ -> region -> branch, with row filters and column lists.

The source publishes to the HQ cluster; the HQ distributor routes a filtered, projected
share to the region cluster; the region distributor routes a narrower share to the branch
route in the same cluster. Under a concurrent workload whose updates move rows in and out
of the filters (balances, order status, prices, key changes), each replica must equal the
primary's rows as selected by the same filters in SQL.
"""

import json
import re
import time
from pathlib import Path

import jsonschema
from psycopg import sql

from pgfanout.core.rowfilter import parse_filter
from tests.integration.pipeline import read_raw, read_topic, transaction_positions

REPO = Path(__file__).resolve().parents[2]
REGION = {
    "public.accounts": {"where": "balance >= 1000"},
    "public.customers": {"where": "email IS NOT NULL", "columns": ["id", "name"]},
    "public.orders": {"where": "status = 'new'", "columns": ["id", "customer_id", "status"]},
    "public.products": {"where": "price < 40", "columns": ["sku", "price"]},
}
BRANCH = {
    "public.accounts": {"where": "id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) AND balance < 1100"},
    "public.products": {"where": "price >= 10"},
    "public.customers": {},
}
KEYS = {"public.accounts": ["id"], "public.customers": ["id"], "public.orders": ["id"], "public.products": ["sku"]}


def tree(pipeline, second_kafka) -> dict:
    name = pipeline.name
    data = pipeline.data
    return {
        "kafka": {"hq": data["kafka"]["local"], "region": {"bootstrap_servers": [second_kafka.bootstrap]}},
        "sources": {name: dict(data["sources"][name], kafka="hq")},
        "routes": {
            f"{name}.east": {"upstream": name, "kafka": "region", "tables": REGION},
            f"{name}.branch": {"upstream": f"{name}.east", "kafka": "region", "tables": BRANCH},
        },
        # HQ routes in worker processes (one per core), the region in its own process: both paths are tested
        "distributors": {
            f"{name}.hq": {"routes": [f"{name}.east"]},
            f"{name}.regional": {"routes": [f"{name}.branch"], "workers": 1},
        },
        "subscribers": {
            f"{name}.sub1": dict(data["subscribers"][f"{name}.sub1"], route=f"{name}.east"),
            f"{name}.sub2": dict(data["subscribers"][f"{name}.sub2"], route=f"{name}.branch"),
        },
    }


def expected_rows(pipeline, subscriber: str, table: str) -> tuple[list[str], list[tuple]]:
    """The primary's rows of ``table`` as the subscriber's route selects them, by running its filters as SQL."""
    share = pipeline.config.share_of(pipeline.config.subscribers[subscriber].route)[table]
    columns, filters = share
    with pipeline.primary() as conn:
        all_columns = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum",
                (table,),
            )
        ]
        kept = [c for c in all_columns if columns is None or c in columns]
        where = sql.SQL(" AND ").join(sql.SQL("({})").format(sql.SQL(f.sql())) for f in filters) if filters else sql.SQL("true")
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in kept),
                sql.Identifier(*table.split(".")),
                where,
                sql.SQL(", ").join(map(sql.Identifier, KEYS[table])),
            )
        ).fetchall()
    return kept, rows


def replica_rows(pipeline, subscriber: str, table: str, columns: list[str]) -> list[tuple]:
    with pipeline.replica(subscriber) as conn:
        return conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                sql.Identifier(*table.split(".")),
                sql.SQL(", ").join(map(sql.Identifier, KEYS[table])),
            )
        ).fetchall()


def assert_leaves_equal_filtered_primary(pipeline) -> None:
    for subscriber in pipeline.subscribers:
        compared = 0
        for table in pipeline.config.share_of(pipeline.config.subscribers[subscriber].route):
            columns, expected = expected_rows(pipeline, subscriber, table)
            actual = replica_rows(pipeline, subscriber, table, columns)
            assert actual == expected, f"{subscriber} {table}: {len(actual)} rows, expected {len(expected)}"
            compared += len(expected)
        assert compared > 20, f"{subscriber}: the filters select almost nothing; the comparison proves little"


def test_three_level_tree_across_two_kafka_clusters(pipeline, second_kafka):
    pipeline.reconfigure(tree(pipeline, second_kafka))
    pipeline.prepare(bare=tuple(pipeline.subscribers))  # replicas get their projected tables from `subscriber init`
    pipeline.seed()
    name = pipeline.name
    pipeline.start("agent", f"{name}.hq", f"{name}.regional")
    thread, result = pipeline.workload_in_background(seconds=14, writers=3)
    time.sleep(3)
    for subscriber in pipeline.subscribers:  # materialized under load, then the stream continues after the copy
        done = pipeline.command("subscriber", "init", subscriber)
        assert done.returncode == 0, done.stderr
    pipeline.start(*pipeline.subscribers)
    thread.join()
    assert result["stats"].committed > 200
    pipeline.wait_caught_up(timeout=120)
    assert_leaves_equal_filtered_primary(pipeline)

    # row migration, step by step, on the region replica (filter: balance >= 1000)
    steps = [
        ("UPDATE public.accounts SET balance = 500 WHERE id = 1", {1: None}),  # migrates out
        ("UPDATE public.accounts SET balance = 1500 WHERE id = 1", {1: "1500.00"}),  # migrates in, whole row
        ("UPDATE public.accounts SET balance = 1600 WHERE id = 1", {1: "1600.00"}),  # within
        ("UPDATE public.accounts SET id = 101 WHERE id = 1", {1: None, 101: "1600.00"}),  # key change within
        ("UPDATE public.accounts SET id = 102, balance = 5 WHERE id = 101", {101: None, 102: None}),  # key change, out
        ("UPDATE public.accounts SET id = 103, balance = 2000 WHERE id = 102", {102: None, 103: "2000.00"}),  # and in
        ("DELETE FROM public.accounts WHERE id = 103", {103: None}),
    ]
    region = pipeline.subscribers[0]
    for statement, expected in steps:
        with pipeline.primary() as conn:
            conn.execute(statement)
        pipeline.wait_caught_up(timeout=60)
        with pipeline.replica(region) as conn:
            for account, balance in expected.items():
                row = conn.execute("SELECT balance::text FROM public.accounts WHERE id = %s", (account,)).fetchone()
                assert (row[0] if row else None) == balance, f"after {statement!r}: account {account} is {row}"
    assert_leaves_equal_filtered_primary(pipeline)

    # projection reached the replicas' definitions too: no column outside the lists
    with pipeline.replica(pipeline.subscribers[0]) as conn:
        customer_columns = [
            r[0]
            for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'public.customers'::regclass AND attnum > 0")
        ]
        assert customer_columns == ["id", "name"]
        assert conn.execute("SELECT to_regclass('public.order_lines')").fetchone()[0] is None

    # every source transaction reached the leaf route, empty or not, in order: positions advance truthfully
    source_positions = transaction_positions(read_topic(pipeline.config, name))
    assert transaction_positions(read_topic(pipeline.config, f"{name}.branch")) == source_positions

    # the raw route topics hold nothing a route did not subscribe to
    assert_route_topic_holds_only_its_share(pipeline, f"{name}.east")
    assert_route_topic_holds_only_its_share(pipeline, f"{name}.branch")

    # `pgfanout status` draws the three levels, across both clusters, everything caught up
    status = pipeline.command("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    drawn = json.loads(status.stdout)
    jsonschema.validate(drawn, json.loads((REPO / "schemas" / "status.schema.json").read_text()))
    [source] = drawn["sources"]
    [hq] = source["children"]
    [east] = hq["children"]
    region_sub, regional = east["children"]
    [branch] = regional["children"]
    [branch_sub] = branch["children"]
    assert (source["name"], hq["name"], east["name"], regional["name"], branch["name"]) == (
        name,
        f"{name}.hq",
        f"{name}.east",
        f"{name}.regional",
        f"{name}.branch",
    )
    assert "kafka region" in east["where"] and "kafka hq" in source["where"]
    for node in (region_sub, branch_sub):
        assert node["state"] == "running" and node["lag_transactions"] == 0 and node["position"] == source["position"]


def assert_route_topic_holds_only_its_share(pipeline, route: str) -> None:
    raw = read_raw(pipeline.config, route)
    assert raw
    blob = b"".join(value for _, value in raw)
    # values and names of columns left out never appear, not even inside table descriptions or keys
    for secret in (b"@example.org", b"created_at", b"email", b"note", b"writer", b"order_lines", b"tags", b"title"):
        assert secret not in blob, f"{route} holds {secret!r}"
    share = pipeline.config.share_of(route)
    filters = {table: [parse_filter(f.text) for f in filters] for table, (_, filters) in share.items()}
    changes = 0
    for _, kind, message in read_topic(pipeline.config, route):
        if kind != "Batch":
            continue
        tables = {t["table_id"]: t for t in message["tables"]}
        for table in tables.values():
            qualified = f"{table['schema_name']}.{table['table_name']}"
            assert qualified in share
            columns = share[qualified][0]
            assert columns is None or set(table["columns"]) <= columns
        for transaction in message["transactions"]:
            for change in transaction["changes"]:
                changes += 1
                table = tables[change["table"]]
                if table["table_name"] == "accounts" and route.endswith("branch"):
                    ids = change["values"][:1] or change["old_key"]
                    assert 1 <= int(ids[0]) <= 10, change
                if table["table_name"] == "orders" and change["op"] in ("INSERT", "UPDATE"):
                    assert change["values"][table["columns"].index("status")] == "new", change
    assert changes > 50
    assert all(re.fullmatch(r"[\w.]+", t) for t in filters)
