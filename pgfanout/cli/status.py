"""`pgfanout status`: where every source and subscriber stands."""

from __future__ import annotations

import psycopg
from psycopg import sql

from agent import logswitch
from agent.logtables import UNPUBLISHED_CHANGES
from pgfanout.core.config import Config
from pgfanout.core.errors import PgfanoutError
from pgfanout.runtime.pg import connect, describe


def source_position(conn: psycopg.Connection) -> tuple[int, int, int]:
    """(last published position, published tick, changes not yet published) of a primary."""
    with conn.transaction():
        # one statement, so the backlog and the position are read in one snapshot
        next_position, tick, backlog = conn.execute(
            sql.SQL("SELECT next_position, published_tick, {} FROM pgfanout.agent_state").format(UNPUBLISHED_CHANGES)
        ).fetchone()
    return next_position - 1, tick, backlog


def subscriber_position(conn: psycopg.Connection, name: str) -> tuple[int, float | None]:
    """(applied position, seconds since the applied tick was taken on the primary)."""
    with conn.transaction():
        if conn.execute("SELECT to_regclass('pgfanout_replica.position')").fetchone()[0] is None:
            return 0, None
        row = conn.execute(
            "SELECT position, extract(epoch FROM clock_timestamp() - source_time)::float8 "
            "FROM pgfanout_replica.position WHERE subscriber = %s",
            (name,),
        ).fetchone()
    return (row[0], row[1]) if row else (0, None)


def status_lines(config: Config) -> list[str]:
    lines = []
    published: dict[str, int] = {}
    for name, source in config.sources.items():
        try:
            with connect(source, "pgfanout-status") as conn:
                position, tick, backlog = source_position(conn)
                log_line = logswitch.status_line(conn)
            published[name] = position
            lines.append(
                f"source {name} ({describe(source.dsn)}): published up to position {position} "
                f"(tick {tick}), {backlog} changes pending"
            )
            lines.append(f"  {log_line}")
        except PgfanoutError as exc:
            lines.append(f"source {name}: {exc}")
    for name, sub in config.subscribers.items():
        try:
            with connect(sub, "pgfanout-status") as conn:
                position, age = subscriber_position(conn, name)
            origin = config.origin_source(sub.route)
            behind = published.get(origin, position) - position
            age_text = f"{age:.2f}s" if age is not None else "unknown"
            lines.append(
                f"subscriber {name} ({describe(sub.dsn)}): position {position}, {behind} transactions behind, "
                f"applied tick taken {age_text} ago"
            )
        except PgfanoutError as exc:
            lines.append(f"subscriber {name}: {exc}")
    return lines
