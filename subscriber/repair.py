"""`pgfanout repair`: the rows a compare found different made equal to the primary's share, in one replica
transaction, at a stream position where the subscriber waits (docs/compare.md).

The subscriber is asked to stop at the end of an aligned tick and to wait there (subscriber.alignment,
``hold``); the rows that differed are read again on both sides at that position, and the replica's are
made equal as the applier would (past the read-only guard, with the subscriber's resync lock held);
then the subscriber goes on, exactly after that position.
"""

from __future__ import annotations

import json
import logging

import psycopg
from psycopg import sql

from pgfanout.core.config import Config
from pgfanout.core.errors import CompareError
from pgfanout.runtime.pg import connect
from subscriber import checksums
from subscriber.alignment import Aligner
from subscriber.compare import Target
from subscriber.diff import Difference, Row, merge
from subscriber.exporter import compare_application_name
from subscriber.state import resync_lock_key

log = logging.getLogger(__name__)


def repair(
    config: Config, subscriber: str, found: list[Target], differences: dict[str, list[Difference]], timeout: float
) -> dict[str, int]:
    """Make the rows that differed equal to the primary's, at a position where the subscriber waits; per table,
    how many rows were changed."""
    wanted = {t.name: t for t in found if differences.get(t.name)}
    if not wanted:
        return {}
    changed: dict[str, int] = {}
    settings = config.subscribers[subscriber]
    with Aligner(config, subscriber, timeout) as aligner:
        sides = aligner.align(hold=True)
        try:
            with connect(settings, compare_application_name(subscriber)) as writer:
                writer.autocommit = False
                writer.execute("SET session_replication_role = replica")  # as the applier: past the deny triggers
                writer.execute("SELECT pg_advisory_xact_lock(%s, %s)", resync_lock_key(subscriber))
                at = writer.execute(
                    "SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (subscriber,)
                ).fetchone()[0]
                if at != sides.position:
                    raise CompareError(
                        f"subscriber {subscriber} went on from position {sides.position} (now {at}) "
                        "before the repair could be made; nothing was changed, run it again"
                    )
                for name, target in wanted.items():
                    changed[name] = _repair_table(sides.primary, writer, target, differences[name])
                writer.execute(
                    "INSERT INTO pgfanout_replica.repaired (subscriber, table_name, position, rows) "
                    "SELECT %s, t, %s, n FROM unnest(%s::text[], %s::bigint[]) r(t, n)",
                    (subscriber, at, list(changed), list(changed.values())),
                )
                writer.commit()
                log.warning(
                    "subscriber %s: repaired at position %d: %s",
                    subscriber,
                    at,
                    ", ".join(f"{t} ({n} rows)" for t, n in changed.items()),
                )
        finally:
            aligner.end()
            aligner.release(sides.tick_id)
    return changed


def _repair_table(primary: psycopg.Connection, writer: psycopg.Connection, target: Target, differences: list[Difference]) -> int:
    """The keys that differed, read again on both sides at the repair's position; the replica's rows made equal
    to the primary's share (a key that no longer differs is left alone). How many rows were changed."""
    keys = json.dumps([list(d.key) for d in differences])
    width = len(target.keys)
    primary_rows = [
        Row(tuple(r[:width]), tuple(r[width:]))
        for r in primary.execute(
            checksums.keyed_rows(target.identifier, target.keys, target.columns, target.filters), {"keys": keys}
        )
    ]
    replica_rows = [
        Row(tuple(r[:width]), tuple(r[width:]))
        for r in writer.execute(checksums.keyed_rows(target.identifier, target.keys, target.columns, ()), {"keys": keys})
    ]
    # values travel as text of unknown type: the server reads them as the column's type, as the applier does
    key_match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in target.keys)
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        target.identifier,
        sql.SQL(", ").join(map(sql.Identifier, target.columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(target.columns)),
    )
    count = 0
    for difference in merge(primary_rows, replica_rows, target.columns):
        if difference.kind == "extra":
            writer.execute(sql.SQL("DELETE FROM {} WHERE {}").format(target.identifier, key_match), difference.key)
        elif difference.kind == "missing":
            writer.execute(insert, difference.primary)
        else:
            changed = [(c, v) for c, v in zip(target.columns, difference.primary or (), strict=True) if c in difference.columns]
            writer.execute(
                sql.SQL("UPDATE {} SET {} WHERE {}").format(
                    target.identifier,
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c, _ in changed),
                    key_match,
                ),
                [*(v for _, v in changed), *difference.key],
            )
        count += 1
    return count
