"""`pgfanout trace`: a marker through the stream, and each subscriber's hops for it (pgfanout.core.trace)."""

from __future__ import annotations

import time

import psycopg

from pgfanout.core.config import Config
from pgfanout.core.errors import PgfanoutError
from pgfanout.core.trace import end_to_end, hops
from pgfanout.runtime.pg import connect
from pgfanout.runtime.primaries import current_primary
from subscriber.traces import full_stamps

POLL_SECONDS = 0.05


def trace(config: Config, source: str, wait: float) -> int:
    """Put a marker in; with ``wait``, print each subscriber's hops for it. 0 when every one applied it."""
    with connect(current_primary(config, source)[1], "pgfanout-trace") as conn:
        trace_id = conn.execute("INSERT INTO pgfanout.trace DEFAULT VALUES RETURNING trace_id").fetchone()[0]
    print(f"trace {trace_id} committed on source {source}")
    if wait <= 0:
        return 0
    subscribers = [name for name, sub in config.subscribers.items() if config.origin_source(sub.route) == source]
    deadline = time.monotonic() + wait
    missing = 0
    for name in subscribers:
        try:
            found = _wait_for(config, name, trace_id, deadline)
        except (PgfanoutError, psycopg.Error) as exc:
            print(f"subscriber {name}: unreachable: {exc}")
            missing += 1
            continue
        if found is None:
            print(f"subscriber {name}: not applied within {wait:g} s")
            missing += 1
            continue
        print(f"subscriber {name}: {end_to_end(found) * 1000:.1f} ms end to end")
        for hop in hops(found):
            clocks = "  (two clocks: includes their difference)" if hop.two_clocks else ""
            print(f"  {hop.seconds * 1000:9.1f} ms  {hop.name}{clocks}")
    return 1 if missing else 0


def _wait_for(config: Config, subscriber: str, trace_id: int, deadline: float) -> list | None:
    with connect(config.subscribers[subscriber], "pgfanout-trace") as conn:
        while True:
            row = (
                conn.execute(
                    "SELECT committed_at, stamps, applied_at FROM pgfanout_replica.trace WHERE subscriber = %s AND trace_id = %s",
                    (subscriber, trace_id),
                ).fetchone()
                if conn.execute("SELECT to_regclass('pgfanout_replica.trace')").fetchone()[0]
                else None
            )
            if row is not None:
                return full_stamps(row[0], row[1], f"applied by subscriber {subscriber}", row[2])
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_SECONDS)
