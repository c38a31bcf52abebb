"""Property-based tests of every parser of outside input: the message decoder, the log shipping file reader,
the configuration loader and the row-filter parser. Whatever the input, the answer is the parsed value or
one of pgfanout's errors naming the culprit: never another exception, and never a hang.

`make test` runs a few hundred cases of each (the `ci` profile); the long form runs 10,000 each:
``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/unit/test_fuzz.py``.
"""

from __future__ import annotations

import io
import os
import string
from datetime import UTC, datetime
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgfanout.core import shipfile
from pgfanout.core.codec import default_codec
from pgfanout.core.config import load_config, parse_config
from pgfanout.core.errors import ConfigError, FilterError, PoisonMessage, ShipFileError
from pgfanout.core.rowfilter import compile_filter, parse_filter

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CODEC = default_codec()
BATCH = {
    "source": "shop",
    "tick_id": 7,
    "tick_time": datetime(2026, 1, 2, tzinfo=UTC),
    "batch_end": True,
    "snapshot": "10:12:11",
    "snapshot_requests": [],
    "generation": 2,
    "lineage": [{"generation": 1, "first_position": 1, "primary": ""}, {"generation": 2, "first_position": 5, "primary": "b"}],
    "tables": [
        {
            "table_id": 3,
            "schema_name": "public",
            "table_name": "t",
            "columns": ["id", "name"],
            "key_columns": ["id"],
            "column_types": ["integer", "text"],
            "missing_values": {},
            "old_columns": [],
            "definition": None,
        }
    ],
    "transactions": [
        {
            "position": 6,
            "xid": 900,
            "chunk": 0,
            "last_chunk": True,
            "changes": [{"table": 3, "op": "INSERT", "values": ["1", "a"], "old_key": [], "nulls": []}],
        }
    ],
}
MESSAGE = CODEC.encode("Batch", BATCH)


def mutated(data: bytes, draw) -> bytes:  # noqa: ANN001
    """``data`` truncated, with bytes flipped, or with bytes inserted, where the strategy chooses."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "replace_tail"]))
    at = draw(st.integers(0, max(0, len(data) - 1)))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    return data[:at] + draw(st.binary(max_size=64))


def decodes_or_is_poison(data: bytes) -> None:
    try:
        kind, message = CODEC.decode(data, "fuzz[0]@0")
    except PoisonMessage as exc:
        assert "fuzz[0]@0" in str(exc)
        return
    assert kind in ("Batch", "Heartbeat", "RowBatch") and isinstance(message, dict)


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_are_a_poison_message(data):
    decodes_or_is_poison(data)


@given(st.data())
def test_a_damaged_message_decodes_or_is_a_poison_message(data):
    decodes_or_is_poison(mutated(MESSAGE, data.draw))


def shipping_file() -> bytes:
    out = io.BytesIO()
    shipfile.write(out, CODEC, "shop", "all", "pgfanout.route.all", 6, [(0, MESSAGE, 6), (1, MESSAGE, 6)])
    return out.getvalue()


SHIPPED = shipping_file()


def reads_or_is_refused(path: Path) -> None:
    try:
        shipment = shipfile.verify(path, default_codec())
    except ShipFileError as exc:
        assert str(path) in str(exc)
        return
    assert shipment.messages == len(list(shipfile.messages(path)))


@given(st.data())
def test_a_damaged_shipping_file_is_read_whole_or_refused(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ship") / "shipped.avro"
    path.write_bytes(mutated(SHIPPED, data.draw))
    reads_or_is_refused(path)


@given(st.binary(max_size=2048))
def test_any_bytes_as_a_shipping_file_are_refused(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ship") / "random.avro"
    path.write_bytes(data)
    reads_or_is_refused(path)


GOOD_CONFIG = {
    "kafka": {"hq": {"bootstrap_servers": ["127.0.0.1:9092"]}},
    "sources": {"shop": {"dsn": "host=127.0.0.1 dbname=shop", "kafka": "hq", "tables": ["public.orders"]}},
    "routes": {"all": {"upstream": "shop", "kafka": "hq", "tables": {"public.orders": {"where": "id > 1"}}}},
    "distributors": {"d": {"routes": ["all"]}},
    "subscribers": {"r": {"route": "all", "dsn": "host=10.0.0.5 dbname=r", "on_gap": "stop"}},
}
KEYS = [
    "kafka", "sources", "routes", "distributors", "subscribers", "hq", "shop", "all", "d", "r", "dsn", "tables",
    "upstream", "route", "where", "columns", "bootstrap_servers", "as_subscriber", "candidates", "keys", "format",
    "copy_from", "compare", "every_minutes", "metrics_port", "tick_interval_ms", "public.orders", "on_gap",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(KEYS),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=20,
)


def parses_or_is_refused(data: object) -> None:
    try:
        parse_config(data, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.source == "fuzz.yaml" and exc.problems
        assert all(isinstance(problem, str) and problem for problem in exc.problems)


@given(VALUES)
def test_any_structure_is_a_config_or_a_list_of_problems(data):
    parses_or_is_refused(data)


@given(st.data())
def test_a_changed_good_config_is_a_config_or_a_list_of_problems(data):
    config = yaml.safe_load(yaml.safe_dump(GOOD_CONFIG))
    for _ in range(data.draw(st.integers(1, 3))):
        node, path = config, []
        while isinstance(node, dict) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node, key=str)))
            path.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if isinstance(node, dict):
            node[data.draw(st.sampled_from(KEYS))] = data.draw(VALUES)
    parses_or_is_refused(config)


@given(st.text(max_size=300))
def test_any_text_as_a_config_file_is_a_config_or_refused(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("config") / "pgfanout.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.source == str(path)


COLUMNS = ["id", "region", "amount", "active", "born", "tag"]
TYPES = ["bigint", "text", "numeric(12,2)", "boolean", "timestamp with time zone", "uuid"]
TOKENS = [
    *COLUMNS, "'east'", "'2026-01-01'", "1", "-2", "3.5", "NULL", "TRUE", "FALSE", "=", "<>", "<", ">=", "AND", "OR",
    "NOT", "IN", "(", ")", ",", "BETWEEN", "IS", "DISTINCT", "FROM", "LIKE", "ILIKE", "lower", "upper", "length",
    "abs", "coalesce", "+", "*", "||", "::", "text", "SELECT", "now()", "x.id", '"Id"', "$1", ";",
]  # fmt: skip


def filter_parses_or_is_refused(text: str) -> None:
    try:
        row_filter = parse_filter(text)
        evaluate = compile_filter(row_filter, COLUMNS, TYPES)
    except FilterError as exc:
        assert exc.expression == text and exc.reason
        return
    assert evaluate([None] * len(COLUMNS)) in (True, False, None)  # every column NULL: a valid row


@given(st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join))
def test_any_sequence_of_filter_tokens_parses_or_is_refused(text):
    filter_parses_or_is_refused(text)


@given(st.text(alphabet=string.printable, max_size=60))
def test_any_text_as_a_row_filter_parses_or_is_refused(text):
    filter_parses_or_is_refused(text)


# -- what the fuzzing found, kept as plain regression tests ------------------------------------------


def test_a_shipping_file_whose_header_schemas_are_damaged_is_refused(tmp_path):
    # inside the schemas the header carries (outside the trailer's checksum)
    at = SHIPPED.index(b'\\"type\\"', SHIPPED.index(b"pgfanout.schemas"))  # \"type\" in JSON text in JSON
    for damaged in (SHIPPED[:at] + b"X" + SHIPPED[at + 1 :], SHIPPED[:at] + b'\\"tYpe' + SHIPPED[at + 6 :]):
        path = tmp_path / "damaged.avro"
        path.write_bytes(damaged)
        try:
            shipfile.verify(path, default_codec())
        except ShipFileError as exc:
            assert "damaged" in str(exc) and str(path) in str(exc)
        else:
            raise AssertionError("a damaged header was accepted")


def test_names_that_are_lists_are_problems_not_crashes():
    config = yaml.safe_load(yaml.safe_dump(GOOD_CONFIG))
    config["routes"]["all"]["upstream"] = ["shop"]
    config["routes"]["more"] = {"upstream": ["all"], "kafka": "hq", "tables": {"public.orders": {}}}
    config["distributors"]["d"]["routes"] = [["all"], "all"]
    parses_or_is_refused(config)


def test_a_number_postgresql_would_not_read_is_refused_in_a_filter():
    filter_parses_or_is_refused("amount = 0E")
    try:
        compile_filter(parse_filter("amount > 1E"), COLUMNS, TYPES)
    except FilterError as exc:
        assert "1E is not a number" in exc.reason
    else:
        raise AssertionError("1E was taken for a number")
