"""Keeping the primary's log small: two log tables, switched and emptied with TRUNCATE, as PgQ and Slony-I do.

Triggers write into the current table (``agent_state.current_log``). When it has grown past
``log_switch_bytes`` or been written for ``log_switch_seconds``, the agent has ``pgfanout.switch_log()``
(which runs as the installing role, the capture functions' owner) point every capture function at the
other table, which is empty by then. The old table is emptied with one
TRUNCATE once (a) no transaction that wrote into it is still open, which the agent learns by taking
its ACCESS EXCLUSIVE lock with NOWAIT, never by waiting in the lock queue ahead of writers, and (b)
every committed row in it is covered by the published tick. Rows may sit in either table at any time
(a transaction open across a switch writes into both): the agent reads both, by txid, so a switch
never moves, splits or loses a transaction; only TRUNCATE removes anything, under those two checks.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql

from agent.logtables import log_table, unpublished

log = logging.getLogger(__name__)


class Step(enum.Enum):
    SWITCH = "switch"
    EMPTY_OLD = "empty the old table"


@dataclass(frozen=True)
class Holder:
    """A session holding a lock on a log table: a transaction that wrote into it and is still open."""

    pid: int
    state: str | None  # None where this role may not see other roles' sessions (pg_read_all_stats)
    transaction_seconds: float | None


@dataclass(frozen=True)
class Held:
    """The old log table cannot be emptied, and so the current one cannot be switched away from."""

    current: int  # the log table being written; the held one is the other
    current_bytes: int
    holders: tuple[Holder, ...]


def switch_due(current_bytes: int, seconds_since_switch: float, switch_bytes: int, switch_seconds: float) -> bool:
    return current_bytes >= switch_bytes or (current_bytes > 0 and seconds_since_switch >= switch_seconds)


def next_step(
    old_table_empty: bool, current_bytes: int, seconds_since_switch: float, switch_bytes: int, switch_seconds: float
) -> Step | None:
    """What the log needs now. The old table must be empty before the next switch, so that a switch
    never leaves consumed rows behind in a table that is written to again."""
    if not old_table_empty:
        return Step.EMPTY_OLD
    if switch_due(current_bytes, seconds_since_switch, switch_bytes, switch_seconds):
        return Step.SWITCH
    return None


def describe_holder(holder: Holder) -> str:
    if holder.state is None:
        return f"pid {holder.pid}"
    age = "" if holder.transaction_seconds is None else f", its transaction open for {holder.transaction_seconds:,.0f} s"
    return f"pid {holder.pid} ({holder.state}{age})"


def held_message(held: Held) -> str:
    """What the operator is told while open transactions keep the log from switching."""
    one = len(held.holders) == 1
    return (
        f"log table {log_name(other(held.current))} cannot be emptied: "
        f"{', '.join(map(describe_holder, held.holders))} wrote into it "
        f"and {'is' if one else 'are'} still open, so {log_name(held.current)} cannot be switched away from and "
        f"keeps growing ({held.current_bytes / 1024 / 1024:,.1f} MB). Ending {'that transaction' if one else 'them'} "
        f"(commit, roll back, or pg_terminate_backend({held.holders[0].pid})) lets the agent empty it; "
        "nothing committed is lost"
    )


def other(number: int) -> int:
    return 2 if number == 1 else 1


def log_name(number: int) -> str:
    """A log table's name as people write it (pgfanout.log_1), for messages."""
    return f"pgfanout.log_{number}"


def state(conn: psycopg.Connection) -> tuple[int, int, float, bool]:
    """(current table, its size in bytes, seconds since the last switch, whether the other table is empty)."""
    current, seconds = conn.execute(
        "SELECT current_log, extract(epoch FROM now() - log_switched_at)::float8 FROM pgfanout.agent_state"
    ).fetchone()
    size = conn.execute("SELECT pg_relation_size(%s::regclass)", (log_table(current).as_string(conn),)).fetchone()[0]
    old_empty = not conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(log_table(other(current)))).fetchone()[0]
    return current, size, seconds, old_empty


def switch(conn: psycopg.Connection) -> int | None:
    """Point every capture function at the other log table (``pgfanout.switch_log``, installed by
    ``agent install``); the new current table, or None if an install or an ALTER TABLE on a published
    table holds the locks right now (try again later)."""
    try:
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '1s'")
            target = conn.execute("SELECT pgfanout.switch_log()").fetchone()[0]
    except errors.LockNotAvailable:
        return None
    if target is not None:
        log.info("log switched to %s", log_name(target))
    return target


def empty_if_published(conn: psycopg.Connection, number: int) -> bool:
    """TRUNCATE log table ``number`` if nobody writes into it any more and all of it is published."""
    table = log_table(number)
    try:
        with conn.transaction():
            # NOWAIT: a writer still holding the table means a transaction that logged into it is open;
            # waiting in the lock queue would stall every writer queued behind this request
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT").format(table))
            if conn.execute(sql.SQL("SELECT EXISTS ({})").format(unpublished(table))).fetchone()[0]:
                return False
            conn.execute(sql.SQL("TRUNCATE {}").format(table))
    except errors.LockNotAvailable:
        return False
    log.debug("log table %s emptied", table.as_string(conn))
    return True


def holders(conn: psycopg.Connection, number: int) -> tuple[Holder, ...]:
    """The other sessions holding a lock on log table ``number``, longest open first."""
    rows = conn.execute(
        "SELECT DISTINCT l.pid, a.state, extract(epoch FROM clock_timestamp() - a.xact_start)::float8 "
        "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'relation' AND l.relation = %s::regclass AND l.granted AND l.pid <> pg_backend_pid() "
        "ORDER BY 3 DESC NULLS LAST, 1",
        (log_table(number).as_string(conn),),
    ).fetchall()
    return tuple(Holder(*row) for row in rows)


def status_line(conn: psycopg.Connection) -> str:
    """The log tables as `pgfanout status` shows them."""
    with conn.transaction():
        current, size, _, old_empty = state(conn)
        found = () if old_empty else holders(conn, other(current))
    line = f"log: {log_name(current)} being written ({size / 1024 / 1024:,.1f} MB)"
    if old_empty:
        return line
    waiting = f"{log_name(other(current))} waiting to be emptied"
    if not found:
        return f"{line}; {waiting} (its rows are not all published yet)"
    return f"{line}; {waiting}, held by {', '.join(map(describe_holder, found))}, an open transaction that wrote into it"


def maintain(conn: psycopg.Connection, switch_bytes: int, switch_seconds: float) -> Held | None:
    """One look at the log: empty the old table if it can be, then switch if it is time. Returns what holds
    the old table when a switch is due and open transactions keep it from being emptied."""
    with conn.transaction():
        current, size, seconds, old_empty = state(conn)
    if next_step(old_empty, size, seconds, switch_bytes, switch_seconds) is Step.EMPTY_OLD:
        old_empty = empty_if_published(conn, other(current))
    step = next_step(old_empty, size, seconds, switch_bytes, switch_seconds)
    if step is Step.SWITCH:
        switch(conn)
    elif step is Step.EMPTY_OLD and switch_due(size, seconds, switch_bytes, switch_seconds):
        found = holders(conn, other(current))
        if found:
            return Held(current, size, found)
    return None
