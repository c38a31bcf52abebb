"""The subscriber's side of `pgfanout compare` (subscriber.compare): at the end of the tick the compare asked
for, a snapshot of the replica exported for it, and a wait until the compare has imported it (an instant),
or for a repair, until it has repaired and released the subscriber. The wait ends too when no connection
of the compare is left on the replica (a compare interrupted), and after a bound in any case."""

from __future__ import annotations

import logging
import time

import psycopg

from pgfanout.core.config import Subscriber
from pgfanout.runtime.pg import connect

log = logging.getLogger(__name__)
IMPORT_SECONDS = 30.0  # a compare that asked and went away does not hold the subscriber longer
HOLD_SECONDS = 120.0  # a repair's wait at most
POLL_SECONDS = 0.002


def compare_application_name(subscriber: str) -> str:
    """The application_name of a compare's connections to the replica of ``subscriber``."""
    return f"pgfanout-compare-{subscriber}"


class Exporter:
    """The subscriber's exports for compares, on a connection of their own kept open between them."""

    def __init__(self, settings: Subscriber, subscriber: str):
        self.settings, self.subscriber = settings, subscriber
        self.exporting: psycopg.Connection | None = None

    def close(self) -> None:
        if self.exporting is not None:
            self.exporting.close()

    def serve(self, conn: psycopg.Connection, tick_id: int, position: int, hold: bool) -> None:
        """Export the replica as it is now (the subscriber just committed the tick) and wait for the compare."""
        started = time.monotonic()
        subscriber = self.subscriber
        if self.exporting is None or self.exporting.closed:
            self.exporting = connect(self.settings, f"pgfanout-subscriber-{subscriber}-export")
        try:
            self.exporting.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            name = self.exporting.execute("SELECT pg_export_snapshot()").fetchone()[0]
            conn.execute(
                "INSERT INTO pgfanout_replica.snapshot_request (subscriber, tick_id, exported, position, hold) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (subscriber, tick_id, name, position, hold),
            )
            conn.commit()
            self._wait(conn, tick_id, hold, started + (HOLD_SECONDS if hold else IMPORT_SECONDS))
        finally:
            self.exporting.rollback()
        conn.execute(
            "DELETE FROM pgfanout_replica.snapshot_request WHERE subscriber = %s AND tick_id = %s "
            "OR exported_at < clock_timestamp() - interval '1 hour'",
            (subscriber, tick_id),
        )
        conn.commit()
        log.info(
            "subscriber %s: exported the replica at position %d (tick %d) for a compare%s, %.3fs",
            subscriber,
            position,
            tick_id,
            " and a repair" if hold else "",
            time.monotonic() - started,
        )

    def _wait(self, conn: psycopg.Connection, tick_id: int, hold: bool, deadline: float) -> None:
        """Until the compare imported the snapshot (or, ``hold``, released the subscriber), or is gone."""
        subscriber = self.subscriber
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT imported, released, EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s) "
                "FROM pgfanout_replica.snapshot_request WHERE subscriber = %s AND tick_id = %s",
                (compare_application_name(subscriber), subscriber, tick_id),
            ).fetchone()
            conn.rollback()
            if row is None or (row[1] if hold else row[0]):
                return
            if not row[2]:
                log.warning(
                    "subscriber %s: the compare that asked for a snapshot at tick %d is gone; going on", subscriber, tick_id
                )
                return
            time.sleep(POLL_SECONDS)
        log.warning(
            "subscriber %s: the compare that asked for a snapshot at tick %d did not take it in time; going on",
            subscriber,
            tick_id,
        )
