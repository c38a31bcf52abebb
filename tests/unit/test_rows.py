"""Typed rows: PostgreSQL's text of each type to Avro values, and the generated schemas."""

import datetime
import io
from decimal import Decimal

import fastavro
import pytest

from pgfanout.core.rows import (
    column_type,
    parse_array,
    parse_date,
    parse_interval,
    parse_timestamp,
    table_schemas,
)
from pgfanout.core.sqlvalues import days_from_civil

EPOCH = datetime.date(1970, 1, 1)


@pytest.mark.parametrize(
    "day",
    [
        datetime.date(1, 1, 1),
        datetime.date(1969, 12, 31),
        datetime.date(2000, 2, 29),
        datetime.date(2024, 3, 1),
        datetime.date(9999, 12, 31),
    ],
)
def test_days_agree_with_python_where_python_reaches(day):
    assert days_from_civil(day.year, day.month, day.day) == (day - EPOCH).days


def test_dates_beyond_python_bc_and_infinity():
    assert parse_date("0001-12-31 BC") == days_from_civil(0, 12, 31) == (datetime.date(1, 1, 1) - EPOCH).days - 1
    assert parse_date("4713-01-01 BC") == -2440550  # PostgreSQL: '4713-01-01 BC'::date - '1970-01-01'::date
    assert parse_date("0401-03-01 BC") - parse_date("0401-02-28 BC") == 2  # 400 BC is year -400: a leap year
    assert parse_date("294276-12-31") - parse_date("294276-12-30") == 1
    assert (parse_date("infinity"), parse_date("-infinity")) == ("infinity", "-infinity")


def test_timestamps_in_microseconds_utc():
    assert parse_timestamp("1970-01-01 00:00:00") == 0
    assert parse_timestamp("1970-01-01 00:00:01.5+00") == 1_500_000
    moment = datetime.datetime(1999, 12, 31, 23, 59, 59, 999999) - datetime.datetime(1970, 1, 1)
    assert parse_timestamp("1999-12-31 23:59:59.999999") == moment // datetime.timedelta(microseconds=1)
    assert parse_timestamp("0044-03-15 12:00:00+00 BC") < parse_timestamp("0001-01-01 00:00:00+00")
    assert (parse_timestamp("infinity"), parse_timestamp("-infinity")) == ("infinity", "-infinity")
    # PostgreSQL reaches 294276 AD; microseconds since 1970 overflow a long after about 294247
    assert parse_timestamp("294276-12-31 23:59:59.999999") == "294276-12-31 23:59:59.999999"
    assert parse_timestamp("294246-01-01 00:00:00+00") > 0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("00:00:00", (0, 0, 0)),
        ("1 year 2 mons 3 days 04:05:06.7", (14, 3, 14_706_700_000)),
        ("-1 years -2 days -03:04:05.678901", (-12, -2, -11_045_678_901)),
        ("1 mon -1 days +00:00:00.000001", (1, -1, 1)),
        ("178000000 years", (2_136_000_000, 0, 0)),
        ("-00:00:01", (0, 0, -1_000_000)),
    ],
)
def test_intervals_keep_months_days_and_microseconds_apart(text, expected):
    assert tuple(parse_interval(text).values()) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("{}", []),
        ("{1,NULL,3}", ["1", None, "3"]),
        ('{"a,b","",NULL,"NULL","q\\"uote","back\\\\slash"}', ["a,b", "", None, "NULL", 'q"uote', "back\\slash"]),
        ("{{1,2},{3,4}}", None),
        ("[0:1]={1,2}", None),
    ],
)
def test_one_dimensional_arrays_parse_and_others_do_not(text, expected):
    assert parse_array(text) == expected


def test_values_by_type():
    assert column_type("numeric(12,4)").convert("1.5000") == Decimal("1.5000")
    assert column_type("numeric(12,4)").convert("NaN") == "NaN"
    assert column_type("numeric").convert("1e-300") == "1e-300"  # unconstrained: exact text
    assert column_type("double precision").convert("-Infinity") == float("-inf")
    assert column_type("bytea").convert("\\x00ff") == b"\x00\xff"
    assert column_type("boolean").convert("false") is False and column_type("boolean").convert("true") is True
    assert column_type("integer[]").convert("{1,NULL}") == [1, None]
    assert column_type("integer[]").convert("{{1}}") == "{{1}}"
    assert column_type("public.mood").convert("happy") == "happy"
    assert column_type("timestamp(3) with time zone").branches[1]["logicalType"] == "timestamp-micros"


def test_a_generated_schema_encodes_and_decodes_edge_values():
    table = {
        "table_id": 7,
        "schema_name": "public",
        "table_name": "odd-name",
        "key_columns": ["id"],
        "columns": ["id", "1st col", "n", "iv", "ivs", "d"],
        "column_types": ["bigint", "text", "numeric(5,2)", "interval", "interval[]", "date"],
    }
    schemas = table_schemas(table)
    assert schemas.row["namespace"] == "pgfanout.rows.public.odd_name"
    assert schemas.field_names == ["id", "_1st_col", "n", "iv", "ivs", "d"]
    texts = ["1", "x", "NaN", "-1 days", '{"1 mon",NULL}', "-infinity"]
    row = {name: convert(text) for name, convert, text in zip(schemas.field_names, schemas.converters, texts, strict=True)}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schemas.row), row)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, fastavro.parse_schema(without_logical_types(schemas.row)), None)
    assert decoded["n"] == "NaN" and decoded["iv"] == {"months": 0, "days": -1, "micros": 0}
    assert decoded["ivs"] == [{"months": 1, "days": 0, "micros": 0}, None]
    assert decoded["d"] == "-infinity" and decoded["_1st_col"] == "x"
    assert schemas.key["fields"][0]["type"] == "long"


def without_logical_types(node):
    if isinstance(node, dict):
        return {k: without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [without_logical_types(item) for item in node]
    return node
