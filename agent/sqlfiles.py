"""The SQL that installs capture, kept in agent/sql/*.sql and run as it is written there."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from psycopg import sql

from agent.typesettings import pinned

DIRECTORY = Path(__file__).parent / "sql"


@cache
def script(name: str) -> sql.SQL:
    """One .sql file, as one statement string (PostgreSQL runs its statements in turn)."""
    return sql.SQL((DIRECTORY / f"{name}.sql").read_text().strip().rstrip(";"))


def pin_all_settings(function: str) -> list[sql.Composable]:
    """Pin every setting that shapes a value's text on a function (its signature, e.g. ``pgfanout.f()``)."""
    return [
        sql.SQL("ALTER FUNCTION {} SET {} = {}").format(sql.SQL(function), sql.Identifier(name), sql.Literal(value))
        for name, value in pinned(None).items()
    ]
