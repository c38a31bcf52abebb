"""Which session settings shape the text output of a column's type.

Capture writes values as text, so a setting that changes a type's output (DateStyle
for timestamps, extra_float_digits for floats...) must be pinned while a trigger
formats that type. Pinning costs a settings save and restore on every trigger call,
so a table's trigger pins only what its column types need. Unknown types get every
setting, to be safe.
"""

from __future__ import annotations

import psycopg

from pgfanout.runtime.pg import SESSION_SETTINGS

ALL = frozenset(SESSION_SETTINGS)
BY_TYPE_NAME = {
    "date": {"DateStyle"},
    "timestamp": {"DateStyle"},
    "timestamptz": {"DateStyle", "TimeZone"},
    "time": {"DateStyle"},
    "timetz": {"DateStyle"},
    "interval": {"IntervalStyle"},
    "float4": {"extra_float_digits"},
    "float8": {"extra_float_digits"},
    "money": {"lc_monetary"},
    "bytea": {"bytea_output"},
}
# Categories whose output no setting changes: booleans, strings, enums, network addresses, bit strings,
# and numerics other than the floats and money named above.
INDEPENDENT_CATEGORIES = {"B", "S", "E", "I", "V", "N"}
INDEPENDENT_NAMES = {"uuid", "json", "jsonb", "xml", "tsvector", "tsquery", "pg_lsn", "txid_snapshot", "pg_snapshot"}


def pinned(names: frozenset[str] | None) -> dict[str, str]:
    """The session settings a trigger pins, with their values (None: all of them)."""
    return {name: value for name, value in SESSION_SETTINGS.items() if names is None or name in names}


def settings_for_columns(conn: psycopg.Connection, type_oids: list[int]) -> frozenset[str]:
    needed: set[str] = set()
    for oid in type_oids:
        needed |= _settings(conn, oid, ())
    return frozenset(needed)


def _settings(conn: psycopg.Connection, oid: int, seen: tuple[int, ...]) -> frozenset[str]:
    if oid in seen:
        return ALL
    row = conn.execute(
        """SELECT t.typname, t.typtype, t.typcategory, t.typelem, t.typbasetype, t.typrelid,
                  (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid OR r.rngmultitypid = t.oid)
           FROM pg_type t WHERE t.oid = %s""",
        (oid,),
    ).fetchone()
    if row is None:
        return ALL
    name, kind, category, element, base, relid, range_subtype = row
    seen = (*seen, oid)
    if name in BY_TYPE_NAME:
        return frozenset(BY_TYPE_NAME[name])
    if kind == "d":
        return _settings(conn, base, seen)
    if kind in ("r", "m") and range_subtype:
        return _settings(conn, range_subtype, seen)
    if category == "A" and element:
        return _settings(conn, element, seen)
    if kind == "c" and relid:
        attributes = [
            r[0]
            for r in conn.execute(
                "SELECT atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (relid,)
            )
        ]
        found: set[str] = set()
        for attribute in attributes:
            found |= _settings(conn, attribute, seen)
        return frozenset(found)
    if kind == "e" or category in INDEPENDENT_CATEGORIES or name in INDEPENDENT_NAMES:
        return frozenset()
    if category == "G":  # geometric types print float8 coordinates
        return frozenset({"extra_float_digits"})
    return ALL


# Types whose values name things of the primary server itself: their text would mean another object, or
# nothing, on a replica. Refused at install, as are arrays, domains, ranges and composites over them.
UNSUPPORTED = {
    **{
        name: "an object id resolved by name; it would name another object (or none) on a replica"
        for name in (
            "regclass",
            "regproc",
            "regprocedure",
            "regoper",
            "regoperator",
            "regtype",
            "regconfig",
            "regdictionary",
            "regnamespace",
            "regrole",
            "regcollation",
        )
    },
    "tid": "a physical row address, meaningless on another server",
    "xid": "a transaction id of the primary",
    "xid8": "a transaction id of the primary",
    "cid": "a command id of the primary",
    "aclitem": "privileges naming the primary's roles",
    "pg_node_tree": "an internal parse tree",
}
NESTED_TYPES = """
WITH RECURSIVE nested(oid) AS (
    SELECT %s::oid
    UNION
    SELECT s.inner_type FROM nested n JOIN pg_type t ON t.oid = n.oid,
        LATERAL (SELECT t.typelem WHERE t.typcategory = 'A' AND t.typelem <> 0
                 UNION ALL SELECT t.typbasetype WHERE t.typtype = 'd'
                 UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid OR r.rngmultitypid = t.oid
                 UNION ALL SELECT a.atttypid FROM pg_attribute a
                     WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        ) s(inner_type))
SELECT t.typname FROM nested n JOIN pg_type t ON t.oid = n.oid"""


def unsupported_reason(conn: psycopg.Connection, type_oid: int) -> str | None:
    """Why values of this type (or of a type inside it) cannot be replicated; None if they can."""
    for (name,) in conn.execute(NESTED_TYPES, (type_oid,)):
        if name in UNSUPPORTED:
            return f"{name}: {UNSUPPORTED[name]}"
    return None
