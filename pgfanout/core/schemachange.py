"""Schema changes on the wire: a layout's definition, what a route with a column list makes of it, and
which of a route's column names a change renamed.

A schema change on the primary gives the table a new layout whose definition (schemas/table.avsc) is
what replicas build; a SCHEMA change in the stream says where that layout takes effect.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from pgfanout.core.messages import TableDefinition

_WORDS = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')


def mentions(text: str, names: Collection[str]) -> bool:
    """Whether SQL text (a constraint, index or expression definition) names any of these columns."""
    found = {quoted.replace('""', '"') if quoted else plain for quoted, plain in _WORDS.findall(text)}
    return bool(found & set(names))


def wire_definition(stored: Mapping[str, Any] | None) -> TableDefinition | None:
    """The Avro record of a definition as pgfanout.tables stores it (agent/sql/definitions.sql)."""
    if stored is None:
        return None
    return {
        "columns": [
            {
                "name": c["name"],
                "type": c["type"],
                "not_null": bool(c["not_null"]),
                "collation": c.get("collation") or "",
                "generated": c.get("generated") or "",
            }
            for c in stored["columns"]
        ],
        "constraints": [{"name": c["name"], "definition": c["definition"]} for c in stored.get("constraints") or ()],
        "indexes": [{"name": i["name"], "definition": i["definition"]} for i in stored.get("indexes") or ()],
        "renamed_columns": dict(stored.get("renamed_columns") or {}),
        "dropped_columns": list(stored.get("dropped_columns") or ()),
        "dropped_constraints": list(stored.get("dropped_constraints") or ()),
        "dropped_indexes": list(stored.get("dropped_indexes") or ()),
        "previous_schema": stored.get("previous_schema") or "",
        "previous_table": stored.get("previous_table") or "",
        "created": bool(stored.get("created")),
        "dropped_table": bool(stored.get("dropped_table")),
    }


def project_definition(definition: TableDefinition, kept: Collection[str]) -> TableDefinition:
    """The definition a route with a column list carries: its columns (and generated columns computed from
    them), and only the constraints and indexes over them."""
    dropped = {c["name"] for c in definition["columns"] if c["name"] not in kept and not c["generated"]}
    if not dropped:
        return definition
    return {
        **definition,
        "columns": [
            c for c in definition["columns"] if c["name"] in kept or (c["generated"] and not mentions(c["generated"], dropped))
        ],
        "constraints": [c for c in definition["constraints"] if not mentions(c["definition"], dropped)],
        "indexes": [i for i in definition["indexes"] if not mentions(i["definition"].split(" USING ", 1)[-1], dropped)],
        "renamed_columns": {new: old for new, old in definition["renamed_columns"].items() if new in kept},
    }


def renames_of(definition: TableDefinition | None, names: Collection[str]) -> dict[str, str]:
    """Of ``names`` (columns a route's filter or column list uses), those the change renamed: old -> new."""
    if not definition:
        return {}
    return {old: new for new, old in definition["renamed_columns"].items() if old in names}


def previous_name(definition: TableDefinition | None) -> tuple[str, str] | None:
    """The table's schema and name before the change that made this layout, when it renamed the table."""
    if not definition or not definition["previous_table"]:
        return None
    return definition["previous_schema"], definition["previous_table"]
