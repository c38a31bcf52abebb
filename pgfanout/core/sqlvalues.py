"""SQL values from PostgreSQL's text forms, compared as PostgreSQL compares them.

Capture writes every value as its type's text output (with pinned DateStyle, TimeZone...);
the row filter evaluator reads the columns it needs with these parsers. Each parser gives
a Python value whose ordering is PostgreSQL's for that type: numeric and float NaN equal
themselves and sort above all numbers, dates and timestamps become microseconds since
1970-01-01 UTC for any year (BC included) with +-infinity as floats, char(n) loses its padding.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pgfanout.core.errors import FilterError


class _NaN:
    """NaN of numeric or float columns: equal to itself, greater than every number (PostgreSQL's rule)."""

    def __repr__(self) -> str:
        return "NaN"


NAN = _NaN()

# -- values from PostgreSQL's text forms -------------------------------------------


def parse_int(text: str) -> int:
    return int(text.strip())


def parse_numeric(text: str) -> Any:
    text = text.strip()
    if text.lower() == "nan":
        return NAN
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"invalid numeric {text!r}") from None
    if value.is_nan():
        raise ValueError(f"invalid numeric {text!r}")
    return value


def parse_float(text: str) -> Any:
    value = float(text)
    return NAN if value != value else value


def parse_real(text: str) -> Any:
    value = parse_float(text)  # a real compared with a double is widened, so round to single precision first
    return value if value is NAN else struct.unpack("f", struct.pack("f", value))[0]


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("t", "true", "y", "yes", "on", "1"):
        return True
    if word in ("f", "false", "n", "no", "off", "0"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


TIME = re.compile(
    r"^\s*(\d{4,})-(\d\d)-(\d\d)(?:[ T](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)?)?"
    r"\s*(?:(Z|[+-]\d\d(?::?\d\d(?::?\d\d)?)?))?(\s+BC)?\s*$",
    re.IGNORECASE,
)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar, for any year (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400  # Python's floor division; the C form (year - 399) / 400 truncates, and is off by a day here
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def parse_time(text: str) -> Any:
    """date, timestamp and timestamptz as microseconds since 1970-01-01 UTC (±infinity as floats)."""
    word = text.strip().lower()
    if word in ("infinity", "+infinity"):
        return float("inf")
    if word == "-infinity":
        return float("-inf")
    match = TIME.match(text)
    if not match:
        raise ValueError(f"invalid date/time {text!r} (write ISO 8601: 2024-01-31 or 2024-01-31 12:00:00+02)")
    year, month, day, hour, minute, second, fraction, zone, bc = match.groups()
    year = int(year)
    if bc:
        year = 1 - year
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31):
        raise ValueError(f"invalid date {text!r}")
    micros = days_from_civil(year, int(month), int(day)) * 86_400_000_000
    micros += ((int(hour or 0) * 60 + int(minute or 0)) * 60 + int(second or 0)) * 1_000_000
    micros += int((fraction or "0").ljust(6, "0"))
    if zone and zone.upper() != "Z":
        digits = zone[1:].replace(":", "")
        offset = int(digits[0:2]) * 3600 + int(digits[2:4] or 0) * 60 + int(digits[4:6] or 0)
        micros -= (offset if zone[0] == "+" else -offset) * 1_000_000
    return micros


def parse_uuid(text: str) -> str:
    return str(uuid.UUID(text.strip()))


def parse_bpchar(text: str) -> str:
    return text.rstrip(" ")  # char(n) compares without its padding


@dataclass(frozen=True)
class Kind:
    name: str  # number, float, text, bool, time, uuid
    parse: Callable[[str], Any]


TYPE_KINDS: dict[str, Kind] = {}
for _names, _kind in (
    (("smallint", "integer", "bigint"), Kind("number", parse_int)),
    (("numeric",), Kind("number", parse_numeric)),
    (("double precision",), Kind("float", parse_float)),
    (("real",), Kind("float", parse_real)),
    (("text", "character varying", "name"), Kind("text", str)),
    (("character", "bpchar"), Kind("text", parse_bpchar)),
    (("boolean",), Kind("bool", parse_bool)),
    (("date", "timestamp without time zone", "timestamp with time zone"), Kind("time", parse_time)),
    (("uuid",), Kind("uuid", parse_uuid)),
):
    for _name in _names:
        TYPE_KINDS[_name] = _kind
UNKNOWN = Kind("unknown", str)  # a string constant, typed by what it meets (as PostgreSQL's unknown literals)
NUMBER_LITERAL = Kind("number", parse_numeric)
BOOL = Kind("bool", parse_bool)
NULL = Kind("null", str)
FLOAT = Kind("float", parse_float)


def kind_of_type(type_text: str) -> Kind | None:
    """The kind of a column from its format_type() text: 'numeric(10,2)' -> number."""
    base = re.sub(r"\(.*?\)", "", type_text).strip()
    return TYPE_KINDS.get(base)


# -- comparison, PostgreSQL style ---------------------------------------------------


def compare_values(a: Any, b: Any) -> int:
    if a is NAN:
        return 0 if b is NAN else 1
    if b is NAN:
        return -1
    return (a > b) - (a < b)


def to_float(value: Any) -> Any:
    return value if value is NAN or value is None else float(value)


TESTS: dict[str, Callable[[int], bool]] = {
    "=": lambda c: c == 0,
    "<>": lambda c: c != 0,
    "<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    ">=": lambda c: c >= 0,
}


def like_regex(pattern: str, escape: str | None, text: str) -> re.Pattern[str]:
    parts, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if escape and char == escape:
            if i + 1 == len(pattern):
                raise FilterError(text, f"LIKE pattern {pattern!r} must not end with the escape character")
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def fold_case(text: str, upper: bool = False) -> str:
    """Character by character, as PostgreSQL's lower()/upper() do: 'ß' stays one character."""
    out = []
    for char in text:
        mapped = char.upper() if upper else char.lower()
        out.append(mapped if len(mapped) == 1 else char)
    return "".join(out)
