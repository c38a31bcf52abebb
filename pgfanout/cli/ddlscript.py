"""`pgfanout ddl`: an SQL script run on a source's primary in one transaction, and by every subscriber at that
same place in its stream (pgfanout.core.scripts). For what capture cannot follow by itself: functions,
types, views, DDL of installs without event triggers, or anything an operator wants run everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg

from pgfanout.core.config import Config
from pgfanout.core.errors import ConfigError
from pgfanout.runtime.pg import connect
from pgfanout.runtime.primaries import current_primary


def run(config: Config, source: str, path: Path) -> int:
    """0 when the script committed on the primary; 1 when it failed there (and changed nothing anywhere)."""
    try:
        statements = path.read_text()
    except OSError as exc:
        raise ConfigError("command line", [f"cannot read the script {path}: {exc.strerror}"]) from None
    if not statements.strip():
        raise ConfigError("command line", [f"the script {path} is empty"])
    with connect(current_primary(config, source)[1], "pgfanout-ddl") as conn:
        if conn.execute("SELECT to_regclass('pgfanout.script')").fetchone()[0] is None:  # type: ignore[index]
            raise ConfigError(f"source {source}", ["capture is not installed there: run `pgfanout agent install` first"])
        try:
            with conn.transaction():
                # first in the transaction: the subscribers run the script in place of its changes
                script_id = conn.execute(
                    "INSERT INTO pgfanout.script (statements) VALUES (%s) RETURNING script_id", (statements,)
                ).fetchone()[0]  # type: ignore[index]
                conn.execute(statements)  # type: ignore[arg-type]  # the operator's own SQL, run as written
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            print(
                f"the script {path} failed on the primary of source {source}, so nothing of it ran there or will run "
                f"anywhere: {type(exc).__name__}: {str(exc).strip()}",
                file=sys.stderr,
            )
            return 1
    print(f"script {script_id} ran on the primary of source {source}; every subscriber runs it at that place in its stream")
    return 0
