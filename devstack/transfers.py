"""A constant-total transfer workload whose writers follow the primary role, and a sampler of every replica
(the switchover tests and the chaos run).

Writers connect with libpq's multi-host form and ``target_session_attrs=read-write``: a database that is not
the primary defaults to read-only sessions, so libpq passes it over. A refused write (the guard of a primary
handing over, or a read-only session) is tried again, with the same transfer id, on a new connection.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import psycopg

ACCOUNTS = 20
OPENING = 1000
TOTAL = ACCOUNTS * OPENING

SCHEMA = [
    "CREATE TABLE public.accounts (id integer PRIMARY KEY, balance numeric(14,2) NOT NULL)",
    """CREATE TABLE public.transfers (
        id text PRIMARY KEY,
        from_id integer NOT NULL,
        to_id integer NOT NULL,
        amount integer NOT NULL,
        xid bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint)""",
]
TABLES = ["public.accounts", "public.transfers"]


def create(conn: psycopg.Connection) -> None:
    for statement in SCHEMA:
        conn.execute(statement)


def seed(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO public.accounts SELECT i, %s FROM generate_series(1, %s) i", (OPENING, ACCOUNTS))


@dataclass
class Writers:
    """``count`` writers moving money between accounts until stopped (at most ``seconds``). With ``groups``
    above 1 the accounts are cut into that many blocks of consecutive ids and money stays in its block, so
    that a route filtering accounts by id range holds a constant total too."""

    dsn: str
    count: int = 2
    seconds: float = 300.0
    pause: float = 0.005
    groups: int = 1
    committed: set[str] = field(default_factory=set)
    refused: int = 0
    commit_times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._write, args=(i,), daemon=True) for i in range(self.count)]

    def start(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def longest_pause(self, after: float, before: float) -> float:
        """The longest time without any commit between two moments (the application's write unavailability)."""
        with self.lock:
            times = sorted(t for t in self.commit_times if after <= t <= before)
        return max((b - a for a, b in zip([after, *times], [*times, before], strict=True)), default=before - after)

    def _write(self, writer: int) -> None:
        rng = random.Random(writer)
        deadline = time.monotonic() + self.seconds
        conn: psycopg.Connection | None = None
        number = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            number += 1
            transfer = f"w{writer}-{number}"
            size = ACCOUNTS // self.groups
            block = rng.randrange(self.groups) * size
            a, b = rng.sample(range(block + 1, block + size + 1), 2)
            amount = rng.randint(1, 50)
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                    with conn.transaction():
                        for account in sorted((a, b)):
                            conn.execute("SELECT 1 FROM public.accounts WHERE id = %s FOR UPDATE", (account,))
                        conn.execute("UPDATE public.accounts SET balance = balance - %s WHERE id = %s", (amount, a))
                        conn.execute("UPDATE public.accounts SET balance = balance + %s WHERE id = %s", (amount, b))
                        conn.execute(
                            "INSERT INTO public.transfers (id, from_id, to_id, amount) VALUES (%s, %s, %s, %s)",
                            (transfer, a, b, amount),
                        )
                    with self.lock:
                        self.committed.add(transfer)
                        self.commit_times.append(time.monotonic())
                    break
                except psycopg.errors.UniqueViolation:
                    with self.lock:  # committed before, its answer lost: it is there once
                        self.committed.add(transfer)
                    break
                except (psycopg.errors.ReadOnlySqlTransaction, psycopg.OperationalError) as exc:
                    with self.lock:
                        self.refused += 1
                        if len(self.errors) < 20:
                            self.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(0.02)
            time.sleep(self.pause)
        if conn is not None:
            conn.close()


@dataclass
class Sampler:
    """Reads every replica's total in REPEATABLE READ snapshots until stopped (at most ``seconds``): it must
    never change. ``expected``: (accounts, total) of a replica that holds a share, (ACCOUNTS, TOTAL) otherwise."""

    dsns: dict[str, str]
    expected: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 600.0
    samples: int = 0
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> Sampler:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)

    def _sample(self) -> None:
        conns: dict[str, psycopg.Connection | None] = {name: None for name in self.dsns}
        try:
            deadline = time.monotonic() + self.seconds
            while not self.stop.is_set() and time.monotonic() < deadline:
                for name, conn in conns.items():
                    try:
                        if conn is None or conn.closed:
                            conn = conns[name] = psycopg.connect(self.dsns[name], autocommit=True, connect_timeout=2)
                        with conn.transaction():
                            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                            total, count = conn.execute("SELECT sum(balance), count(*) FROM public.accounts").fetchone()
                    except psycopg.OperationalError:
                        if conn is not None:
                            conn.close()
                        continue
                    self.samples += 1
                    accounts, expected_total = self.expected.get(name, (ACCOUNTS, TOTAL))
                    if count and (total != expected_total or count != accounts):
                        self.violations.append(f"{name}: {count} accounts, total {total}")
                time.sleep(0.05)
        finally:
            for conn in conns.values():
                if conn is not None:
                    conn.close()
