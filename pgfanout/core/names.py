"""Table and column names as PostgreSQL reads and psql shows them.

In the configuration and on the command line a name is written in PostgreSQL's identifier syntax:
unquoted names fold to lower case, double-quoted ones keep capitals, spaces, dots and doubled quotes
(``"Sales"."Order Lines"``, ``"Qty Ordered"``). Inside pgfanout a table is known by its canonical
qualified name, ``schema.table`` with each part quoted only where psql would need quotes to read it
back, so ``public.orders`` stays as it is and every spelling of one table compares equal.
"""

from __future__ import annotations

import re

from pgfanout.core.errors import NameSyntaxError

PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")  # what PostgreSQL reads back unquoted, as it is
UNQUOTED = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
QUOTED = re.compile(r'"((?:[^"]|"")+)"')
ALL_TABLES = None  # the table part of ``schema.*``


class TablePattern(str):
    """The table part of ``schema.prefix*``: every table of the schema whose name starts with ``prefix``."""

    def matches(self, table_name: str) -> bool:
        return table_name.startswith(self)


def quote(name: str) -> str:
    """``name`` as psql shows it: quoted (inner quotes doubled) unless it reads back unquoted as itself."""
    return name if PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def qualified(schema_name: str, table_name: str | None) -> str:
    """The canonical name of a table (or with None, of all a schema's tables): how pgfanout keys,
    compares and prints it."""
    if table_name is ALL_TABLES:
        return f"{quote(schema_name)}.*"
    if isinstance(table_name, TablePattern):
        return f"{quote(schema_name)}.{table_name}*"
    return f"{quote(schema_name)}.{quote(table_name)}"


def _identifiers(text: str) -> list[str | None]:
    """The dot-separated identifiers of ``text`` as PostgreSQL reads them; None for an unquoted ``*``."""
    parts: list[str | None] = []
    rest = text.strip()
    while True:
        if (quoted := QUOTED.match(rest)) is not None:
            parts.append(quoted.group(1).replace('""', '"'))
            rest = rest[quoted.end() :]
        elif (plain := UNQUOTED.match(rest)) is not None:
            rest = rest[plain.end() :]
            if rest.startswith("*") and parts:  # schema.prefix*
                parts.append(TablePattern(plain.group(0).lower()))
                rest = rest[1:]
            else:
                parts.append(plain.group(0).lower())
        elif rest.startswith("*") and parts:
            parts.append(ALL_TABLES)
            rest = rest[1:]
        else:
            raise NameSyntaxError(text, "expected a name at " + (repr(rest) if rest else "the end"))
        if not rest:
            return parts
        if not rest.startswith("."):
            raise NameSyntaxError(
                text,
                f"unexpected {rest[0]!r}; write names holding spaces, capitals, dots or "
                'other signs in double quotes, as in "Sales"."Order Lines"',
            )
        rest = rest[1:]


def parse_table(text: str, wildcard: bool = False) -> tuple[str, str | None]:
    """(schema, table) of ``schema.table``; with ``wildcard``, ``schema.*`` too (table ALL_TABLES) and
    ``schema.prefix*`` (a TablePattern)."""
    parts = _identifiers(text)
    if len(parts) != 2 or parts[0] is None or isinstance(parts[0], TablePattern):
        raise NameSyntaxError(text, "write a table as schema.table")
    if (parts[1] is ALL_TABLES or isinstance(parts[1], TablePattern)) and not wildcard:
        raise NameSyntaxError(text, "name one table here, not all of a schema's")
    return parts[0], parts[1]


def canonical_table(text: str, wildcard: bool = False) -> str:
    """The canonical name of the table ``text`` names (see the module's docstring)."""
    return qualified(*parse_table(text, wildcard))


def parse_column(text: str) -> str:
    """The column ``text`` names, as the catalog spells it."""
    parts = _identifiers(text)
    if len(parts) != 1 or parts[0] is None:
        raise NameSyntaxError(text, "name one column, without its table")
    return parts[0]
