"""DDL scripts run everywhere at one place in the stream: ``pgfanout ddl`` (Slony-I's EXECUTE SCRIPT,
ordered by the stream like everything else).

The script's text is inserted into the primary's ``pgfanout.script`` in the transaction that runs the
script, first; capture publishes that row (its trigger fires on INSERT only) and every route carries it,
whatever its subscription. A subscriber runs the script where that transaction comes, in its replica
transaction, instead of applying the transaction's changes: the script does on the replica what it did
on the primary.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgfanout.core.messages import TableLayout
from pgfanout.core.trace import is_trace

SCRIPT_SCHEMA, SCRIPT_TABLE = "pgfanout", "script"
SCRIPT_COLUMNS = ("script_id", "statements", "run_by")
SCRIPT_TYPES = ("bigint", "text", "text")


def is_script(schema_name: str, table_name: str) -> bool:
    return schema_name == SCRIPT_SCHEMA and table_name == SCRIPT_TABLE


def is_own(schema_name: str, table_name: str) -> bool:
    """pgfanout's own published tables (trace markers, scripts): every route carries them, none is a
    replica's table."""
    return is_trace(schema_name, table_name) or is_script(schema_name, table_name)


def script_ids(layouts: Iterable[TableLayout]) -> set[int]:
    return {t["table_id"] for t in layouts if is_script(t["schema_name"], t["table_name"])}
