"""A primary and a replica read at one stream position (docs/compare.md).

The compare opens a REPEATABLE READ transaction on the primary and asks the agent to take its next tick
with that very snapshot (pgfanout.snapshot_request, agent/snapshot_requests.py); the agent does so only
if the snapshot is later than its last tick, so the tick order stays a valid one. A tick's batch is
every transaction visible in its snapshot and not in the one before: once a replica has applied that
batch to its end, it holds exactly what the snapshot sees. The agent names the subscriber in the
batch's last message (or a heartbeat), and the subscriber, there, commits, exports a snapshot of its
replica and waits an instant until the compare has imported it (subscriber/exporter.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgfanout.core.config import Config
from pgfanout.core.errors import CompareError
from pgfanout.runtime.pg import AGENT_WAKE_CHANNEL, connect
from pgfanout.runtime.primaries import current_primary
from subscriber.exporter import compare_application_name

log = logging.getLogger(__name__)
POLL_SECONDS = 0.003
TICK_ATTEMPTS = 20  # a busy primary under a loaded host may tick between snapshot and request several times
# compiling each range's query costs more than it saves on a range
NO_JIT = "SET LOCAL jit = off"


@dataclass
class Aligned:
    """Both sides open in snapshots of one stream position."""

    primary: psycopg.Connection  # in a REPEATABLE READ transaction: the tick's snapshot
    replica: psycopg.Connection  # in a REPEATABLE READ transaction: the replica at the end of that tick
    tick_id: int
    position: int


class Aligner:
    """A compare's connections to both sides, aligned again and again at later positions."""

    def __init__(self, config: Config, subscriber: str, timeout: float):
        self.subscriber, self.timeout = subscriber, timeout
        settings = config.subscribers[subscriber]
        self.source = config.origin_source(settings.route)
        name = compare_application_name(subscriber)
        self.conns: list[psycopg.Connection] = []
        try:
            # the replica's first: the subscriber waits for a compare only while one of them is there
            self.replica_control = self._open(connect(settings, name))
            self.replica = self._open(connect(settings, name))
            primary = current_primary(config, self.source)[1]  # the database that is the primary now
            self.control = self._open(connect(primary, name))
            self.primary = self._open(connect(primary, name))
        except BaseException:
            self.close()
            raise

    def _open(self, conn: psycopg.Connection) -> psycopg.Connection:
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    def __enter__(self) -> Aligner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def align(self, hold: bool = False) -> Aligned:
        """Both sides in snapshots of the end of one tick; with ``hold``, the subscriber waits there until
        release() (for a repair)."""
        tick_id = self._primary_at_a_tick(hold)
        exported, position = self._wait_for_export(tick_id)
        self.replica.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self.replica.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
        self.replica.execute(NO_JIT)
        self.replica_control.execute(
            "UPDATE pgfanout_replica.snapshot_request SET imported = true WHERE subscriber = %s AND tick_id = %s",
            (self.subscriber, tick_id),
        )
        log.debug("compare: primary and subscriber %s at the end of tick %d (position %d)", self.subscriber, tick_id, position)
        return Aligned(self.primary, self.replica, tick_id, position)

    def end(self) -> None:
        """Let go of both snapshots."""
        for conn in (self.primary, self.replica):
            if not conn.closed:
                conn.rollback()

    def release(self, tick_id: int) -> None:
        """Let a held subscriber go on."""
        self.replica_control.execute(
            "UPDATE pgfanout_replica.snapshot_request SET imported = true, released = true "
            "WHERE subscriber = %s AND tick_id = %s",
            (self.subscriber, tick_id),
        )

    def _primary_at_a_tick(self, hold: bool) -> int:
        """The primary connection in a REPEATABLE READ snapshot the agent took as a tick's; the tick."""
        deadline = time.monotonic() + self.timeout
        for _attempt in range(TICK_ATTEMPTS):
            self.primary.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = self.primary.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
            self.primary.execute(NO_JIT)
            request = self.control.execute(
                "INSERT INTO pgfanout.snapshot_request (subscriber, snapshot, hold) VALUES (%s, %s, %s) RETURNING request_id",
                (self.subscriber, snapshot, hold),
            ).fetchone()[0]
            self.control.execute("SELECT pg_notify(%s, '')", (AGENT_WAKE_CHANNEL,))  # an idle agent ticks now
            while True:
                tick_id, refused = self.control.execute(
                    "SELECT tick_id, refused FROM pgfanout.snapshot_request WHERE request_id = %s", (request,)
                ).fetchone()
                if tick_id is not None:
                    return tick_id
                if refused is not None:
                    log.info("compare: the agent ticked after this snapshot was taken; taking another")
                    self.primary.rollback()
                    break
                if time.monotonic() > deadline:
                    self.control.execute("DELETE FROM pgfanout.snapshot_request WHERE request_id = %s", (request,))
                    raise CompareError(
                        f"the agent of source {self.source} took no tick within {self.timeout:g}s; "
                        "is it running? (pgfanout status)"
                    )
                time.sleep(POLL_SECONDS)
        raise CompareError(
            f"the agent of source {self.source} ticked after each of {TICK_ATTEMPTS} snapshots; run the compare again"
        )

    def _wait_for_export(self, tick_id: int) -> tuple[str, int]:
        """The replica snapshot the subscriber exported at the end of the tick, and its position."""
        deadline = time.monotonic() + self.timeout
        while True:
            row = (
                self.replica_control.execute(
                    "SELECT exported, position FROM pgfanout_replica.snapshot_request WHERE subscriber = %s AND tick_id = %s",
                    (self.subscriber, tick_id),
                ).fetchone()
                if self._has_state()
                else None
            )
            if row is not None:
                return row[0], row[1]
            if time.monotonic() > deadline:
                raise CompareError(self._behind())
            time.sleep(POLL_SECONDS)

    def _has_state(self) -> bool:
        return self.replica_control.execute("SELECT to_regclass('pgfanout_replica.snapshot_request') IS NOT NULL").fetchone()[0]

    def _behind(self) -> str:
        published = self.control.execute("SELECT next_position - 1 FROM pgfanout.agent_state").fetchone()[0]
        applied = (
            self.replica_control.execute(
                "SELECT position FROM pgfanout_replica.position WHERE subscriber = %s", (self.subscriber,)
            ).fetchone()
            if self._has_state()
            else None
        )
        at = applied[0] if applied else 0
        return (
            f"subscriber {self.subscriber} did not reach the compare's position within {self.timeout:g}s: "
            f"it is at position {at}, {max(0, published - at)} transactions behind its source "
            f"(published up to {published}); is it running (pgfanout status)? Let it catch up, or give --timeout more"
        )
