"""Waking the agent when a transaction commits, rather than ticking on a timer while the source is quiet.

The C capture trigger (agent/capture_c, wake_agent_if_asleep) takes part: at commit, a transaction that
wrote the log tries the advisory lock (WAKE_LOCK, 0) in row exclusive mode without waiting. An agent
falls asleep by taking that lock in share mode, which is granted only when no such commit is under way;
it then looks at the log once more and listens on CHANNEL. A commit that comes after finds the lock
taken and notifies; one that came before held the lock until it was visible, so that last look sees it.
No commit goes unseen, and a busy agent, which holds nothing, costs the writers no NOTIFY (whose lock
serializes commits). Only the C trigger notifies: with PL/pgSQL triggers on any published table the
agent ticks on its timer, as it does while the source is busy.
"""

from __future__ import annotations

import psycopg

from pgfanout.runtime.pg import AGENT_WAKE_CHANNEL as CHANNEL

WAKE_LOCK = 0x7066_0004  # the advisory lock's first key (int4); the second is 0, as in capture_c

# Every capture trigger in the database is the C one (and there is one).
C_CAPTURE_ONLY = (
    "SELECT coalesce(bool_and(l.lanname = 'c'), false) FROM pg_trigger t "
    "JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang WHERE t.tgname = 'pgfanout_capture'"
)


class Waker:
    """The agent's side: listens on the channel; ``fall_asleep`` / ``sleep`` / ``wake`` around a quiet spell."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        conn.execute(f"LISTEN {CHANNEL}")

    def close(self) -> None:
        self.conn.execute(f"UNLISTEN {CHANNEL}")

    def fall_asleep(self) -> bool:
        """Take the lock; False when a commit that wrote the log is under way (then tick soon instead)."""
        for _ in self.conn.notifies(timeout=0):  # those that woke an earlier sleep
            pass
        return self.conn.execute("SELECT pg_try_advisory_lock_shared(%s::int4, 0)", (WAKE_LOCK,)).fetchone()[0]

    def sleep(self, seconds: float) -> bool:
        """Wait for a commit's notification, at most ``seconds``; True if one came."""
        return any(True for _ in self.conn.notifies(timeout=seconds, stop_after=1))

    def wake(self) -> None:
        self.conn.execute("SELECT pg_advisory_unlock_shared(%s::int4, 0)", (WAKE_LOCK,))


def c_capture_only(conn: psycopg.Connection) -> bool:
    return conn.execute(C_CAPTURE_ONLY).fetchone()[0]
