"""Typed rows: per-table Avro schemas with logical types, for consumers outside pgfanout.

Inside the pipeline a value travels as PostgreSQL's own text, which every type has and which
the replicas read back exactly. A route with ``format: rows`` is for other consumers: each of
its changes carries the row (and the key) encoded with its table's own schemas, generated
from the table layout (column names and PostgreSQL types), stored in the schema registry and
named by fingerprint. Mapping (every column is ``["null", ...]``, default null):

- boolean; smallint and integer: int; bigint: long; real: float; double precision: double
  (NaN and +-Infinity included);
- numeric(p,s): decimal(p,s), or the string "NaN"; numeric without a precision: string;
- date: date (days), timestamp: local-timestamp-micros, timestamp with time zone:
  timestamp-micros (UTC), time: time-micros; any year, BC included. -infinity and infinity, and
  timestamps after about 294247 AD (beyond a long's microseconds since 1970), are the string
  of their exact text: PostgreSQL's own range is wider than Avro's;
- interval: a record of months, days and microseconds (what PostgreSQL stores; Avro's
  duration cannot hold negative parts);
- uuid: uuid; bytea: bytes;
- one-dimensional arrays of those: arrays; other arrays as their text;
- everything else (text types, json, jsonb, enums, domains, composites, ranges, network
  types, time with time zone...) as the exact text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pgfanout.core import sqlvalues
from pgfanout.core.codec import fingerprint
from pgfanout.core.messages import AvroSchema, TableLayout

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MICROS_PER_DAY = 86_400_000_000
INTERVAL = {
    "type": "record",
    "name": "Interval",
    "namespace": "pgfanout.rows",
    "fields": [{"name": "months", "type": "int"}, {"name": "days", "type": "int"}, {"name": "micros", "type": "long"}],
}

Convert = Callable[[str], Any]


def parse_time(text: str) -> int:
    hours, minutes, seconds = text.split(":")
    whole, _, fraction = seconds.partition(".")
    return ((int(hours) * 60 + int(minutes)) * 60 + int(whole)) * 1_000_000 + int(fraction.ljust(6, "0") or 0)


def parse_date(text: str) -> int | str:
    """Days since the epoch; the text itself for the infinities."""
    moment = sqlvalues.parse_time(text)
    return text if isinstance(moment, float) else moment // MICROS_PER_DAY


def parse_timestamp(text: str) -> int | str:
    """Microseconds since the epoch (capture pins TimeZone to UTC); the text itself for the infinities and
    for moments a long cannot count in microseconds."""
    micros = sqlvalues.parse_time(text)
    return micros if not isinstance(micros, float) and INT64_MIN <= micros <= INT64_MAX else text


_INTERVAL_PART = re.compile(r"([+-]?\d+) (year|mon|day)s?|([+-]?)(\d+):(\d+):(\d+(?:\.\d+)?)")


def parse_interval(text: str) -> dict[str, int]:
    """IntervalStyle postgres (pinned by capture): '-1 years +2 mons 3 days -04:05:06.5'."""
    months = days = micros = 0
    for match in _INTERVAL_PART.finditer(text):
        number, unit, sign, hours, minutes, seconds = match.groups()
        if unit == "year":
            months += int(number) * 12
        elif unit == "mon":
            months += int(number)
        elif unit == "day":
            days += int(number)
        else:
            micros = parse_time(f"{hours}:{minutes}:{seconds}") * (-1 if sign == "-" else 1)
    return {"months": months, "days": days, "micros": micros}


def parse_numeric(text: str) -> Decimal | str:
    return text if text in ("NaN", "Infinity", "-Infinity") else Decimal(text)


def parse_bytea(text: str) -> bytes:
    return bytes.fromhex(text[2:])  # capture pins bytea_output to hex: '\x00ff'


def parse_array(text: str) -> list[str | None] | None:
    """A one-dimensional array's elements as text (None for NULL); None if it has dimensions or bounds."""
    if not text.startswith("{"):
        return None  # '[0:2]={...}': explicit bounds
    body = text[1:-1]
    if body.startswith("{"):
        return None
    elements: list[str | None] = []
    i, n = 0, len(body)
    while i < n:
        if body[i] == '"':
            chars, i = [], i + 1
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                chars.append(body[i])
                i += 1
            elements.append("".join(chars))
            i += 2  # the closing quote and the comma
        else:
            end = body.find(",", i)
            end = n if end < 0 else end
            raw = body[i:end]
            elements.append(None if raw == "NULL" else raw)
            i = end + 1
    return elements


@dataclass(frozen=True)
class ColumnType:
    # Avro types besides null; "string" (the exact text of values the other branch cannot hold) comes first
    # because fastavro picks the first branch a value fits, and a date branch would try to parse any string
    branches: list[Any]
    convert: Convert


def _scalar(type_text: str) -> ColumnType | None:
    base = type_text.split("(")[0].strip()
    simple: dict[str, tuple[Any, Convert]] = {
        "boolean": ("boolean", sqlvalues.parse_bool),
        "smallint": ("int", int),
        "integer": ("int", int),
        "bigint": ("long", int),
        "real": ("float", float),
        "double precision": ("double", float),
        "bytea": ("bytes", parse_bytea),
        "uuid": ({"type": "string", "logicalType": "uuid"}, str),
        "date": (["string", {"type": "int", "logicalType": "date"}], parse_date),
        "time without time zone": ({"type": "long", "logicalType": "time-micros"}, parse_time),
        "interval": ("pgfanout.rows.Interval", parse_interval),
    }
    if base in simple:
        avro, convert = simple[base]
        return ColumnType(avro if isinstance(avro, list) else [avro], convert)
    if base == "timestamp without time zone" or re.fullmatch(r"timestamp\(\d\) without time zone", type_text):
        return ColumnType(["string", {"type": "long", "logicalType": "local-timestamp-micros"}], parse_timestamp)
    if base == "timestamp with time zone" or re.fullmatch(r"timestamp\(\d\) with time zone", type_text):
        return ColumnType(["string", {"type": "long", "logicalType": "timestamp-micros"}], parse_timestamp)
    if re.fullmatch(r"time\(\d\) without time zone", type_text):
        return ColumnType([{"type": "long", "logicalType": "time-micros"}], parse_time)
    if re.fullmatch(r"interval\(\d\)|interval [a-z ]+(\(\d\))?", type_text):
        return ColumnType(["pgfanout.rows.Interval"], parse_interval)
    decimal = re.fullmatch(r"numeric\((\d+),(\d+)\)", type_text)
    if decimal:
        precision, scale = int(decimal.group(1)), int(decimal.group(2))
        return ColumnType(
            ["string", {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}], parse_numeric
        )
    return None


def column_type(type_text: str) -> ColumnType:
    """The Avro branches and converter for a column of this PostgreSQL type (format_type's text)."""
    scalar = _scalar(type_text)
    if scalar is not None:
        return scalar
    if type_text.endswith("[]"):
        element = _scalar(type_text[:-2])
        if element is not None:

            def convert(text: str, element: ColumnType = element) -> Any:
                items = parse_array(text)
                if items is None:
                    return text
                return [None if item is None else element.convert(item) for item in items]

            return ColumnType(["string", {"type": "array", "items": ["null", *element.branches]}], convert)
    return ColumnType(["string"], str)


_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


def avro_name(name: str) -> str:
    """A PostgreSQL name as an Avro name: other characters become _, and a leading digit gets one."""
    cleaned = _NOT_NAME.sub("_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else "_" + cleaned


@dataclass
class TableSchemas:
    """The Key and Row schemas of one table layout, with their converters."""

    key: AvroSchema
    row: AvroSchema
    key_fingerprint: bytes
    row_fingerprint: bytes
    converters: list[Convert]
    key_positions: list[int]
    field_names: list[str]


def table_schemas(table: TableLayout) -> TableSchemas:
    """Schemas for a Table record (see schemas/table.avsc) as the route sends it."""
    columns, types = table["columns"], table["column_types"]
    namespace = f"pgfanout.rows.{avro_name(table['schema_name'])}.{avro_name(table['table_name'])}"
    names: list[str] = []
    for column in columns:  # distinct Avro field names, even when two columns differ only in odd characters
        name = avro_name(column)
        while name in names:
            name += "_"
        names.append(name)
    kinds = [column_type(t) for t in types]
    interval_defined = False

    def field(i: int, nullable: bool) -> AvroSchema:
        nonlocal interval_defined
        branches = [INTERVAL if b == "pgfanout.rows.Interval" and not interval_defined else b for b in kinds[i].branches]
        interval_defined = interval_defined or INTERVAL in branches
        avro = ["null", *branches] if nullable else (branches[0] if len(branches) == 1 else branches)
        return {
            "name": names[i],
            "type": avro,
            **({"default": None} if nullable else {}),
            "pg_column": columns[i],
            "pg_type": types[i],
        }

    key_positions = [columns.index(c) for c in table["key_columns"]]
    key = {"type": "record", "name": "Key", "namespace": namespace, "fields": [field(i, False) for i in key_positions]}
    interval_defined = False
    row = {"type": "record", "name": "Row", "namespace": namespace, "fields": [field(i, True) for i in range(len(columns))]}
    return TableSchemas(key, row, fingerprint(key), fingerprint(row), [k.convert for k in kinds], key_positions, names)


def schema_text(schema: AvroSchema) -> str:
    return json.dumps(schema, sort_keys=True)
